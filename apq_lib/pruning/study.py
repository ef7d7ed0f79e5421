"""Notebook 08's experiments: the state of sparsity (Gale, Elsen & Hooker 2019, §3-4:
magnitude pruning on the Zhu & Gupta schedule vs variational dropout vs L0 at equal
training budget, with scratch / random-reinit controls) and lottery tickets with rewinding
(Frankle et al. 2020, §3-4: instability vs k, IMP with rewinding to k = 0 and a stable k),
on LeNet-300-100 (Frankle et al.'s MNIST network) and several seeds (Blalock et al. 2020).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn

from ..data import cycle
from ..quant.training import train_steps
from ..runtime import stream_rng, stream_seed
from .imp import apply_masks, copy_model, random_masks, reinit_like, rewind, run_imp, snapshot
from .l0 import add_l0_gates, l0_penalty, l0_sparsify
from .lmc import instability
from .magnitude import gradual_magnitude_prune, prunable_layers, sparsity
from .schedule import GradualSchedule
from .train import accuracy, sgd_finetune
from .variational import to_variational, vd_layers, vd_penalty, vd_sparsify

__all__ = ["LeNet300100", "SparsityStudy", "paired_bootstrap", "summarise"]


class LeNet300100(nn.Module):
    """The fully connected LeNet-300-100 (Frankle & Carbin 2019, Fig. 2)."""

    def __init__(self, in_features: int, num_classes: int = 10, hidden=(300, 100)):
        super().__init__()
        dims = [in_features, *hidden, num_classes]
        layers: list[nn.Module] = [nn.Flatten()]
        for i in range(len(dims) - 1):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < len(dims) - 2:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class SparsityStudy:
    """Holds the data, the recipe (``cfg``: a ``SparsityConfig``) and the training loops;
    the two ``run_*`` methods return the notebook's tables for one run (``0, 1, ...``, the
    tables' ``seed`` column). Every draw of run ``r`` is seeded from the ``sparsity`` stream
    of ``(seed, r, what)``."""

    def __init__(self, data, cfg, device="cpu", progress: Callable = lambda it, **k: it,
                 seed: int = 0):
        self.data, self.cfg, self.device, self.progress = data, cfg, device, progress
        self.seed = seed
        self.test = data.fixed_batches("test", cfg.test_images or len(data.test))
        self.n_train = len(data.train)
        self.in_features = data.in_channels * data.image_size ** 2

    # ------------------------------------------------------------------ building blocks
    def _seed(self, run: int, *what) -> int:
        return stream_seed(self.seed, "sparsity", run, *what)

    def init_model(self, run: int) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self._seed(run, "init"))
            return LeNet300100(self.in_features, self.data.num_classes,
                               tuple(self.cfg.hidden)).to(self.device)

    @staticmethod
    def layers(model: nn.Module):
        return prunable_layers(model, skip_first=False)

    def batches(self, seed: int):
        return cycle(self.data.loader("train", batch_size=self.cfg.batch_size,
                                      augment=False, seed=seed))

    def train(self, model, steps: int, seed: int, cosine: bool = True, on_step=None):
        """The SGD recipe (Nesterov, label smoothing 0.1) of ``pruning.train.finetune``."""
        lr = self.cfg.lr if cosine else self.cfg.lmc_lr
        torch.manual_seed(seed)
        sgd_finetune(model, self.batches(seed), steps, lr, self.device, on_step=on_step,
                 cosine=cosine)
        return model

    def train_regularised(self, model, penalty: Callable, lam: float, seed: int):
        """Adam (as Molchanov et al. and Louizos et al.) on CE + λ·penalty / N."""
        torch.manual_seed(seed)
        n = self.n_train

        def loss_fn(out, y):
            return F.cross_entropy(out, y, label_smoothing=0.1) + lam / n * penalty()

        loader = self.data.loader("train", batch_size=self.cfg.batch_size, augment=False,
                                  seed=seed)
        train_steps(model, loader, self.cfg.steps, self.cfg.reg_lr, optimizer="adam",
                    loss_fn=loss_fn, device=self.device)
        model.eval()
        return model

    def acc(self, model) -> float:
        return accuracy(model, self.test, self.device)

    def _row(self, seed, method, target, model, **kw):
        sp = sparsity(model, self.layers(model))["total"]
        return {"seed": seed, "method": method, "target": target, "sparsity": sp,
                "accuracy": self.acc(model), **kw}

    # ------------------------------------------------------------------ (a) Gale et al.
    def run_accuracy_sparsity(self, seed: int) -> list[dict]:
        """Dense, magnitude (gradual), scratch (pruned mask, original init), random-reinit
        (pruned mask, fresh init), VD and L0 (ranked to each target) for run ``seed``;
        every model of the run sees the same batches."""
        c, rows = self.cfg, []
        base = self.init_model(seed)
        w0 = snapshot(base)
        data_seed = self._seed(seed, "train")
        dense = self.train(copy_model(base), c.steps, data_seed)
        rows.append(self._row(seed, "dense", 0.0, dense))
        for target in self.progress(c.targets, desc=f"magnitude seed {seed}"):
            m = copy_model(base)
            sched = GradualSchedule.over(c.steps, target, c.prune_updates,
                                         start_frac=c.prune_start, end_frac=c.prune_end)
            gradual_magnitude_prune(m, self.batches(data_seed), c.steps, target, c.scope,
                                    c.lr, self.device, schedule=sched, layers=self.layers(m))
            rows.append(self._row(seed, "magnitude", target, m))
            masks = {n: x.weight.detach() != 0 for n, x in self.layers(m)}
            reinit = reinit_like(base, self._seed(seed, "reinit"))
            for ctrl, state in (("scratch", w0), ("reinit", reinit)):
                net = copy_model(base)
                rewind(net, state)
                apply_masks(self.layers(net), masks)
                self.train(net, c.steps, data_seed)
                rows.append(self._row(seed, ctrl, target, net))
        for method, lams in (("vd", c.vd_lambdas), ("l0", c.l0_lambdas)):
            for lam in lams:
                m = copy_model(base)
                if method == "vd":
                    to_variational(m)
                    self.train_regularised(m, lambda: vd_penalty(m), lam, data_seed)
                    nat = float(torch.cat([(v.log_alpha > v.threshold).flatten().float()
                                           for _, v in vd_layers(m)]).mean())
                    sparsify = vd_sparsify
                else:
                    add_l0_gates(m, self.layers(m), c.l0_init_drop, c.l0_gate_scale)
                    self.train_regularised(m, lambda: l0_penalty(m), lam, data_seed)
                    sparsify = l0_sparsify
                natural = sparsify(copy_model(m))
                if method == "l0":
                    nat = sparsity(natural, self.layers(natural))["total"]
                rows.append(self._row(seed, method, float("nan"), natural, lam=lam,
                                      natural=nat))
                for target in c.targets:
                    rows.append(self._row(seed, method, target,
                                          sparsify(copy_model(m), target), lam=lam,
                                          natural=nat))
        return rows

    # ------------------------------------------------------------------ (b) Frankle et al.
    def _error(self, model) -> float:
        return 100.0 - self.acc(model)

    def run_lmc(self, seed: int) -> tuple[list[dict], list[dict], list[dict]]:
        """Instability vs k of the dense network, then IMP with rewinding to k = 0 and to
        the first stable k > 0 (controls and the sparse networks' instability at the last
        round). Returns (curve rows, barrier rows, IMP rows)."""
        c = self.cfg
        base = self.init_model(seed)
        states = {}

        def keep(t):
            if t in c.lmc_ks:
                states[t] = snapshot(model)

        model = copy_model(base)
        self.train(model, c.lmc_steps, self._seed(seed, "train"), cosine=False, on_step=keep)
        trained = snapshot(model)
        curves, barriers, imp_rows = [], [], []

        def run_pair(net, state, k, kind, sp):
            def tr(n, s):
                self.train(n, c.lmc_steps - k, self._seed(seed, "lmc", s), cosine=False)
            r = instability(net, state, tr, self._error, k, (1, 2), c.lmc_points)
            curves.extend({"seed": seed, "kind": kind, "k": k, "sparsity": sp, "t": t,
                           "error": e} for t, e in zip(r.t, r.errors))
            barriers.append({"seed": seed, "kind": kind, "k": k, "sparsity": sp,
                             "barrier": r.barrier, "end_error": float(np.mean(r.end_errors))})
            return r

        for k in self.progress(c.lmc_ks, desc=f"instability seed {seed}"):
            run_pair(base, states[k], k, "dense", 0.0)
        dense_b = {b["k"]: b["barrier"] for b in barriers}
        stable = [k for k in c.lmc_ks if k > 0 and dense_b[k] <= c.stable_barrier]
        k_stable = stable[0] if stable else max(c.lmc_ks)
        for k in sorted({0, k_stable}):
            net = copy_model(base)
            net.load_state_dict(trained)
            lay = self.layers(net)

            def retrain(n, r, k=k):
                self.train(n, c.lmc_steps - k, self._seed(seed, "imp", r), cosine=False)
                return self.acc(n)

            rounds = run_imp(net, lay, c.imp_rounds, states[k], retrain, c.imp_rate,
                         c.imp_scope, c.imp_output_rate)
            imp_rows.append({"seed": seed, "k": k, "k_stable": k_stable, "method": "dense",
                             "round": 0, "sparsity": 0.0, "accuracy": self.acc(model)})
            imp_rows += [{"seed": seed, "k": k, "k_stable": k_stable, "method": "imp",
                          "round": r.round, "sparsity": r.sparsity, "accuracy": r.result}
                         for r in rounds]
            if not rounds:
                continue
            last = rounds[-1]
            for ctrl in ("random_prune", "reinit"):
                twin = copy_model(base)
                if ctrl == "reinit":
                    rewind(twin, reinit_like(base, self._seed(seed, "rewind reinit")))
                    apply_masks(self.layers(twin), last.masks)
                else:
                    apply_masks(self.layers(twin), random_masks(
                        last.masks, self._seed(seed, "random masks")))
                    rewind(twin, states[k])
                imp_rows.append({"seed": seed, "k": k, "k_stable": k_stable,
                                 "method": ctrl, "round": last.round,
                                 "sparsity": last.sparsity,
                                 "accuracy": retrain(twin, last.round)})
            sub = copy_model(base)
            apply_masks(self.layers(sub), last.masks)
            rewind(sub, states[k])
            run_pair(sub, {n: v.clone() for n, v in sub.state_dict().items()}, k, "imp",
                     last.sparsity)
        return curves, barriers, imp_rows


def paired_bootstrap(a, b, n_resamples: int = 2000, seed: int = 0) -> dict:
    """Mean of the paired differences a − b and a 95 % percentile bootstrap interval."""
    d = np.asarray(a, float) - np.asarray(b, float)
    if d.size < 2 or np.allclose(d, d[0]):
        return {"mean_diff": float(d.mean()), "ci_low": float(d.min()),
                "ci_high": float(d.max()), "n": int(d.size)}
    res = stats.bootstrap((d,), np.mean, n_resamples=n_resamples, method="percentile",
                          random_state=stream_rng(seed, "bootstrap", "sparsity"))
    ci = res.confidence_interval
    return {"mean_diff": float(d.mean()), "ci_low": float(ci.low), "ci_high": float(ci.high),
            "n": int(d.size)}


def summarise(acc: pd.DataFrame, barriers: pd.DataFrame, imp_df: pd.DataFrame,
              cfg) -> dict:
    """Means ± std over the seeds, paired magnitude-vs-X differences at equal sparsity,
    and the papers' findings as booleans."""
    ranked = acc[acc["target"].notna() & (acc["target"] > 0)]
    g = ranked.groupby(["method", "target"])["accuracy"].agg(["mean", "std"]).reset_index()
    dense = acc[acc["method"] == "dense"]["accuracy"]
    out = {"dense": {"mean": float(dense.mean()), "std": float(dense.std(ddof=1))},
           "accuracy": g.to_dict("records"), "paired": []}
    piv = ranked.pivot_table(index=["target", "seed"], columns="method",
                             values="accuracy").reset_index()
    for t, grp in piv.groupby("target"):
        for other in ("vd", "l0", "scratch", "reinit"):
            if other in grp and "magnitude" in grp:
                r = paired_bootstrap(grp["magnitude"], grp[other], cfg.bootstrap, int(t * 1e3))
                out["paired"].append({"target": float(t), "vs": other, **r})
    bd = barriers.groupby(["kind", "k"])["barrier"].agg(["mean", "std"]).reset_index()
    out["instability"] = bd.to_dict("records")
    im = imp_df.groupby(["k", "method", "round"]).agg(
        sparsity=("sparsity", "mean"), mean=("accuracy", "mean"),
        std=("accuracy", "std")).reset_index()
    out["imp"] = im.to_dict("records")
    dense_lmc = imp_df[imp_df["method"] == "dense"].groupby("seed")["accuracy"].first()
    out["imp_dense"] = {"mean": float(dense_lmc.mean()), "std": float(dense_lmc.std(ddof=1))}
    p = pd.DataFrame(out["paired"])
    f = {}
    if len(p):
        for other in ("vd", "l0", "scratch", "reinit"):
            q = p[p["vs"] == other]
            if len(q):          # magnitude not significantly worse at any target
                f[f"magnitude_ge_{other}"] = bool((q["ci_high"] >= 0).all())
                f[f"magnitude_gt_{other}_targets"] = [float(t) for t in
                                                      q[q["ci_low"] > 0]["target"]]
    kd = bd[bd["kind"] == "dense"]
    f["stable_at_k0"] = bool(kd[kd["k"] == 0]["mean"].iloc[0] <= cfg.stable_barrier)
    tol = out["imp_dense"]["mean"] - (out["imp_dense"]["std"] or 0.0)
    last = im[im["method"] == "imp"].sort_values("round").groupby("k").last()
    f["imp_matching_at_last_round"] = {int(k): bool(r["mean"] >= tol)
                                       for k, r in last.iterrows()}
    out["findings"] = f
    return out
