"""Notebook 05's stages (APQ §4 baselines on the suite's data, supernet, simulators and cost
accounting): the fixed-architecture MobileNetV2 (the space's 3×3 / expand-6 point, inherited
from the final supernet or trained from scratch), fixed precision
(PTQ / QAT), HAQ (linear, and k-means under a size target), HAWQ-V2, the multi-stage
pipeline and the magnitude-pruning sweep. Every result is one row of the same table.
"""
from __future__ import annotations

import json
import time
from typing import Optional

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..artifacts import ArtifactStore, StageKey, config_key, load_state, save_state
from ..config import Phase, Profile
from ..loops import finetune_batches, test_batches, train_steps
from ..pruning import (
    accuracy,
    cycle,
)
from ..quant import weight_calibration_kw
from ..realize import export_float, seed_id
from ..runtime import stream_seed
from ..search.sweep import COST_COLUMNS
from ..supernet import train as sn
from ..supernet.metrics import recalibrate_bn
from ..supernet.space import LARGEST_NAME, MBV2_NAME, SearchSpace
from .cost import CostMeter
from .fixed import (
    LayerCostTable,
    PolicyEvaluator,
    build_fixed_model,
    fixed_bits,
    is_fixed,
    to_float,
    uniform_policy,
)
from .haq import run_haq
from .hawq import hawq_allocate, hawq_sensitivity, hessian_traces
from .matching import best_under, cost_at_equal_accuracy, matched_by_cost, pick_targets, spread
from .multistage import METHOD, MultiStagePipeline

__all__ = ["BaselineSuite", "SCRATCH_STAGE", "ROW_COLUMNS", "pick_targets", "spread", "UNITS",
           "cost_at_equal_accuracy", "MBV2", "LARGEST", "MBV2_STANDALONE", "best_under",
           "matched_by_cost"]

SCRATCH_STAGE = "baseline_scratch"
# the fixed network trained from scratch (baselines.scratch_source: train)
SCRATCH_KEY = StageKey(SCRATCH_STAGE, version=6, skip=("data.test_subset",),
                       reads=("seed", "space", "data", "supernet.phases",
                              "baselines.scratch_epochs",
                              "baselines.scratch_images", "baselines.scratch_lr",
                              "baselines.reward_images", "finetune.recal_images"))
# the names every table uses: the fixed network of Tables 1 and 3 (a point of the space) and
# the space's largest corner (a labelled reference, not the paper's fixed network)
MBV2, LARGEST = MBV2_NAME, LARGEST_NAME
# the same network trained standalone (baselines.standalone_reference): a reference row
MBV2_STANDALONE = f"{MBV2_NAME}, standalone"
UNITS = {"latency": "ms", "energy": "mJ", "bitops": "G", "size": "kB"}
ROW_COLUMNS = ["method", "variant", "model", "constraint", "target", "target_from", "met",
           "test_acc", "seeds", "latency_ms", "energy_mj", "bitops_g", "size_kb", "search_s",
           "policy", "row_id"]
_METRIC_COL = {**COST_COLUMNS, "size": "size_kb"}
_SCALE = {"latency": 1.0, "energy": 1.0, "bitops": 1e9, "size": 8e3}   # table units → row


class BaselineSuite:
    """Holds the data batches, the cost meter and the results table of notebook 05."""

    def __init__(self, cfg: Profile, data, device=None, store: Optional[ArtifactStore] = None,
                 meter: Optional[CostMeter] = None, progress: bool = True):
        self.cfg, self.s, self.data = cfg, cfg.baselines, data
        self.device = device or torch.device("cpu")
        self.store = store or ArtifactStore()
        self.meter = meter or CostMeter(self.device)
        self.progress = progress
        self.space = SearchSpace(cfg.space)
        c = cfg.space
        self.input_shape = (c.in_channels, c.image_size, c.image_size)
        s, seed = self.s, cfg.seed
        # the one finetune recipe and test protocol of every final model (as notebook 04's)
        self.recipe = ft = cfg.finetune
        self.recal_images = ft.recal_images
        self.batches = {
            "calib": data.fixed_batches("train", s.calib_images, seed=seed),
            "recal": data.fixed_batches("train", self.recal_images, seed=seed),
            "reward": data.fixed_batches("val", s.reward_images, seed=seed),
            "final": test_batches(data, ft, seed),
            "train": self.train_batches,
        }
        self.rows: list[dict] = []
        self.correct: dict[str, np.ndarray] = {}     # row_id -> per-image correctness
        self.scratch_info: dict = {}
        self._tables: dict = {}
        self._hawq_cache: Optional[tuple] = None        # (model key, traces)

    # ------------------------------------------------------------------ helpers
    def train_batches(self, key: str, stream: str = "finetune"):
        """Endless finetune batches of one model (``key``), seeded from (seed, stream, key)
        only: a baseline's numbers do not depend on which baselines ran before it."""
        return cycle(finetune_batches(self.data, self.recipe, self.cfg.seed, key, stream))

    def table(self, model: nn.Module, key: str) -> LayerCostTable:
        if key not in self._tables:
            lo = min(2, self.s.haq_bits[0], self.s.haq_kmeans_bits[0])
            self._tables[key] = LayerCostTable(model, self.input_shape, ["bitfusion"],
                                               range(lo, 9))
        return self._tables[key]

    def evaluator(self, model, table, steps, eval_batches, weight_quantizer="linear",
                  recal: str = "recal"):
        """A :class:`PolicyEvaluator` with the suite's batches (``recal="calib"``: BN
        recalibration on the small calibration set, for HAQ's many reward evaluations)."""
        return PolicyEvaluator(model, table.names, self.batches["calib"],
                               self.train_batches, eval_batches, steps,
                               device=self.device, weight_quantizer=weight_quantizer,
                               recal_batches=self.batches[recal], recipe=self.recipe,
                               weight_kw=weight_calibration_kw(self.cfg.quant),
                               seed=self.cfg.seed)

    def final(self, ev: PolicyEvaluator, pol, steps: Optional[int] = None) -> list:
        """A policy's final model with the finetune recipe's ``seeds`` (the path and seeds of
        APQ's models): one :class:`~apq_lib.realize.Realized` per seed, on the
        whole test split."""
        return ev.realized_seeds(pol, self.recipe.seeds, steps, self.batches["final"])

    def add_row(self, method: str, variant: str, model: str, metric: Optional[str],
                target: Optional[float], acc: float, costs: dict, *, search_s: float = 0.0,
                met: Optional[bool] = None, policy: Optional[dict] = None,
                target_from: str = "", correct=None, row_id: Optional[str] = None) -> dict:
        """One row of the table. ``correct``: the per-image correctness, one array or one
        per finetune seed (stored as :func:`~apq_lib.realize.seed_id`); ``acc`` is
        seed 0's. ``row_id``: an existing model's id (a notebook-04 corner) instead of a
        new one."""
        constraint = "" if metric is None else f"{metric} <= {target:.4g} {UNITS[metric]}"
        if met is None and metric is not None:
            met = costs[_METRIC_COL[metric]] <= target * (1 + 1e-9)
        row = {"method": method, "variant": variant, "model": model,
               "constraint": constraint, "target": target, "target_from": target_from,
               "met": met,
               "test_acc": float(acc), "seeds": 1, **{k: costs.get(k) for k in
                                          ("latency_ms", "energy_mj", "bitops_g", "size_kb")},
               "search_s": float(search_s),
               "policy": json.dumps({k: list(v) for k, v in (policy or {}).items()})}
        row["row_id"] = rid = row_id or f"{method}|{variant}|{model}|{constraint}|{target_from}"
        if correct is not None:
            per_seed = correct if isinstance(correct, list) else [correct]
            row["seeds"] = len(per_seed)
            self.correct.update({seed_id(rid, k): np.asarray(c, bool)
                                 for k, c in enumerate(per_seed)})
        self.rows.append(row)
        return row

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=ROW_COLUMNS)

    def target_in_table_units(self, metric: str, target: float) -> float:
        return target * _SCALE[metric]

    def floor(self, model: nn.Module, key: str, metric: str) -> float:
        """The lowest ``metric`` (row units) a bit search can reach on ``model``: every
        searched layer at the lowest HAQ bit width (head and tail stay at 8 bits)."""
        table, lo = self.table(model, key), self.s.haq_bits[0]
        return float(table.summary(table.bits_of(uniform_policy(table.names, lo, lo)))[
            _METRIC_COL[metric]])

    def _shared_scratch(self, method: str) -> None:
        """Count the from-scratch training once for every method that uses the model."""
        i = self.scratch_info
        if not i.get("seconds"):
            return                     # inherited from the supernet: nothing extra to train
        if not any(r.method == method and r.stage.startswith("train MobileNetV2")
                   for r in self.meter.records):
            self.meter.add(method, "train MobileNetV2 from scratch", i["seconds"], "shared",
                           cpu_s=i.get("cpu_seconds"), device=i.get("device"),
                           source=i.get("source", "measured"))

    # ------------------------------------------------------------------ MobileNetV2
    def scratch_config(self) -> dict:
        """What the from-scratch model depends on (:data:`SCRATCH_KEY`)."""
        return SCRATCH_KEY.config(self.cfg)

    def scratch_model(self, force: bool = False, supernet=None) -> nn.Module:
        """The fixed network (:data:`MBV2`, ``space.mobilenetv2()``) as a float model:
        inherited from the final supernet (``baselines.scratch_source: inherit``, APQ's
        protocol: the same weights APQ's models start from, then the one finetune recipe) or
        trained here from scratch and cached as an artifact (``train``; its training seconds
        are counted as a shared cost)."""
        if self.s.scratch_source == "inherit":
            model = self.inherited(self.space.mobilenetv2().to_dict(), supernet)
            self.scratch_info = {
                "seconds": 0.0, "cpu_seconds": 0.0, "steps": 0,
                "val_acc": accuracy(model, self.batches["reward"], self.device),
                "device": self.meter.device,
                "source": "inherited from the final supernet (notebook 01)", "cached": True}
            return model
        model, self.scratch_info = self.standalone_model(force)
        return model

    def scratch_epochs(self) -> int:
        """``baselines.scratch_epochs``, or (None) the supernet's total epochs."""
        e = self.s.scratch_epochs
        return e if e is not None else sum(Phase.from_dict(p).epochs
                                           for p in self.cfg.supernet.phases)

    def standalone_model(self, force: bool = False) -> tuple[nn.Module, dict]:
        """The fixed network (``space.mobilenetv2()``) trained standalone from a fresh
        initialisation (the paper's protocol) for :meth:`scratch_epochs` on the training split
        (the supernet's images), cached as an artifact. Returns ``(model, info)``: its
        seconds, steps, validation top-1 and where it came from."""
        s, init_seed = self.s, stream_seed(self.cfg.seed, "scratch", "init")

        def build(work):
            model = build_fixed_model(self.space, init_seed).to(self.device)
            loader = self.data.loader("train", limit=s.scratch_images,
                                      seed=stream_seed(self.cfg.seed, "scratch", "batches"))
            steps = self.scratch_epochs() * len(loader)
            w0, c0 = time.perf_counter(), time.process_time()
            losses = train_steps(model, loader, steps, s.scratch_lr, weight_decay=4e-5,
                                 label_smoothing=0.1, device=self.device,
                                 desc="MobileNetV2 standalone", lr_key="baselines.scratch_lr",
                                 progress=self.progress)
            recalibrate_bn(model, self.batches["recal"], self.device)
            secs, cpu = time.perf_counter() - w0, time.process_time() - c0
            val = accuracy(model, self.batches["reward"], self.device)
            save_state(model.state_dict(), work / "model.safetensors")
            (work / "info.json").write_text(json.dumps(
                {"seconds": secs, "cpu_seconds": cpu, "steps": steps, "val_acc": val,
                 "final_loss": float(np.mean(losses[-10:])), "device": self.meter.device},
                indent=1))

        conf = self.scratch_config()
        cached = not force and self.store.get(SCRATCH_STAGE, config_key(conf)) is not None
        art = self.store.build(SCRATCH_STAGE, conf, build, force=force)
        model = build_fixed_model(self.space, init_seed)
        model.load_state_dict(load_state(art.file("model.safetensors"))[0])
        info = json.loads(art.file("info.json").read_text())
        info["artifact"] = f"{SCRATCH_STAGE}/{art.key}"
        info["source"] = f"artifact {info['artifact']} (earlier run)" if cached else "measured"
        info["cached"] = cached
        return model.to(self.device).eval(), info

    def inherited(self, arch: dict, supernet=None) -> nn.Module:
        """``arch`` exported FP32 from the final supernet (notebook 01), BN recalibrated."""
        if supernet is None:
            supernet = sn.require_supernet(self.cfg, self.store, self.device)[0]
        return self.export_fp32(supernet, arch).to(self.device).eval()

    # ------------------------------------------------------------------ fixed precision
    def fixed_precision(self, model: nn.Module, name: str, key: str,
                        qat: Optional[dict] = None, seeds: bool = False) -> list[dict]:
        """``name`` at every ``baselines.fixed_bits`` (head/tail at 8): PTQ and QAT. ``qat``:
        ``{bits: (model id, top-1, seeds)}`` of QAT models already realised on the one path
        (notebook 04's corners): their rows point at those models instead of finetuning
        the same network again. ``seeds``: the QAT models get the recipe's finetune seeds
        (:meth:`final`; else one)."""
        table, out = self.table(model, key), []
        ev = self.evaluator(model, table, self.recipe.steps, self.batches["final"])
        for b in self.s.fixed_bits:
            pol = uniform_policy(table.names, b, b)
            costs = table.summary(table.bits_of(pol))
            _, acc, cor = ev.quantized(pol, steps=0, return_correct=True)
            out.append(self.add_row(f"Fixed W{b}A{b}", "PTQ", name, None, None, acc, costs,
                                    policy=pol, correct=cor))
            if qat and b in qat:
                rid, acc, n = qat[b]
                out.append(self.add_row(f"Fixed W{b}A{b}", "QAT", name, None, None, acc, costs,
                                        policy=pol, row_id=rid))
                out[-1]["seeds"] = n
                continue
            rs = self.final(ev, pol) if seeds else [ev.realized(pol)]
            out.append(self.add_row(f"Fixed W{b}A{b}", "QAT", name, None, None, rs[0].test_acc,
                                    costs, policy=pol, correct=[r.correct for r in rs]))
        if name == MBV2:
            for b in self.s.fixed_bits:
                self._shared_scratch(f"Fixed W{b}A{b}")
        return out

    # ------------------------------------------------------------------ HAQ
    def haq(self, model: nn.Module, metric: str, target: float, key: str = MBV2,
            method: str = "HAQ", model_name: str = MBV2, target_from: str = "",
            settings=None, seeds: Optional[int] = None) -> dict:
        """HAQ's DDPG search under ``metric ≤ target`` (row units), then the final QAT with
        the recipe's seeds (``seeds`` overrides). ``settings``: the ``baselines:`` section
        to use (default the profile's; FBNet+HAQ passes its own episode counts)."""
        s = settings or self.s
        table = self.table(model, key)
        kmeans = metric == "size"
        ev = self.evaluator(model, table, s.haq_finetune_steps, self.batches["reward"],
                            "kmeans" if kmeans else "linear", recal="calib")
        acc_fp = accuracy(model, self.batches["reward"], self.device)
        with self.meter.stage(method, "DDPG episodes", search=f"{metric}<={target:.4g}") as t:
            res, layers = run_haq(table, ev, metric, self.target_in_table_units(metric, target),
                                  acc_fp, s, self.cfg.seed, kmeans, self.progress)
        if model_name == MBV2:
            self._shared_scratch(method)
        pol = res.policy(layers)
        ev.recal = self.batches["recal"]
        rs = ev.realized_seeds(pol, self.recipe.seeds if seeds is None else seeds,
                               self.recipe.steps, self.batches["final"])
        row = self.add_row(method, "k-means" if kmeans else "linear", model_name, metric,
                           target, rs[0].test_acc, table.summary(res.bits),
                           search_s=t["wall_s"], met=res.met, policy=pol,
                           target_from=target_from, correct=[r.correct for r in rs])
        row["history"] = res.history
        return row

    # ------------------------------------------------------------------ HAWQ-V2
    def hawq(self, model: nn.Module, metric: str, targets: list[float], key: str = MBV2,
             model_name: str = MBV2, target_from: str = "") -> list[dict]:
        """Hessian traces once (shared), a Pareto-frontier allocation per target, QAT."""
        s = self.s
        table = self.table(model, key)
        free = [i for i, n in enumerate(table.names) if not is_fixed(n)]
        names = [table.names[i] for i in free]
        if self._hawq_cache is None or self._hawq_cache[0] != key:
            data = self.data.fixed_batches("train", s.hawq_images, seed=self.cfg.seed,
                                           batch_size=min(128, s.hawq_images))
            with self.meter.stage("HAWQ-V2", "Hessian traces (Hutchinson)", "shared"):
                traces, se = hessian_traces(to_float(model).to(self.device), data, names,
                                            s.hawq_samples,
                                            stream_seed(self.cfg.seed, "hawq"), self.device,
                                            return_se=True)
            self._hawq_cache = (key, traces, se)
            if model_name == MBV2:
                self._shared_scratch("HAWQ-V2")
        traces, trace_se = self._hawq_cache[1], self._hawq_cache[2]
        mods = dict(model.named_modules())
        bits = list(range(s.haq_bits[0], s.haq_bits[1] + 1))
        pairs = [(b, b) for b in bits]
        omega = hawq_sensitivity(traces, {n: mods[n].weight for n in names}, bits)
        ev = self.evaluator(model, table, self.recipe.steps, self.batches["final"])
        base = [fixed_bits(n) if is_fixed(n) else (8, 8) for n in table.names]
        fixed_cost = float(table.per_layer(metric, base)[[i for i in range(len(base))
                                                          if i not in free]].sum())
        costs = table.choice_costs(metric, pairs)[free]
        out = []
        for tgt in targets:
            label = f"{metric}<={tgt:.4g}"
            with self.meter.stage("HAWQ-V2", "Pareto-frontier allocation", search=label) as t:
                try:
                    alloc = hawq_allocate(omega, costs, self.target_in_table_units(
                        metric, tgt) - fixed_cost)
                except ValueError:                       # unreachable: lowest bits
                    alloc = {"choices": [0] * len(free)}
            bl = list(base)
            for i, c in zip(free, alloc["choices"]):
                bl[i] = pairs[c]
            pol = dict(zip(table.names, bl))
            rs = self.final(ev, pol)
            row = self.add_row("HAWQ-V2", "Hessian trace", model_name, metric, tgt,
                               rs[0].test_acc, table.summary(bl), search_s=t["wall_s"],
                               policy=pol, target_from=target_from,
                               correct=[r.correct for r in rs])
            row["traces"], row["trace_se"] = traces, trace_se
            row["decisive_layers"] = [table.names[i] for i, c in zip(free, alloc["choices"])
                                      if pairs[c] != pairs[-1]]
            out.append(row)
        return out

    # ------------------------------------------------------------------ multi-stage
    def export_fp32(self, supernet, arch: dict) -> nn.Module:
        """An architecture exported FP32 from the supernet (inherited weights, BN
        recalibrated: :func:`apq_lib.realize.export_float`, as APQ's models)."""
        return export_float(supernet, arch, self.batches["recal"], self.device)

    def multistage(self, supernet, score_fn, arch_cost: dict, metric: str, target: float,
                   search_cfg=None, target_from: str = "") -> dict:
        export = lambda arch: self.export_fp32(supernet, arch)  # noqa: E731
        pipe = MultiStagePipeline(self.space, score_fn, arch_cost, export, self.batches,
                                  self.s, self.input_shape, search_cfg, self.device,
                                  self.meter, self.cfg.seed, self.progress, self.recipe,
                                  weight_calibration_kw(self.cfg.quant), self.recipe.seeds)
        r = pipe.run(metric, self.target_in_table_units(metric, target))
        row = self.add_row(METHOD, "FP32 NAS → channel pruning → HAQ", "searched + pruned",
                           metric, target, r.accuracy, r.costs,
                           search_s=sum(v for k, v in r.stage_seconds.items()
                                        if k != "finetune"),
                           met=r.met, policy=r.policy, target_from=target_from,
                           correct=r.correct)
        row.update(stage_seconds=r.stage_seconds, arch=r.arch,
                   widths_before=r.widths_before, widths_after=r.widths_after)
        return row
