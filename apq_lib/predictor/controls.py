"""APQ §4.3 (Table 4) controls for the quantization-aware predictor, scored by grouped
cross-validation over architectures: MACs only, the FP32 predictor ignoring the bits, a
linear model on the bits, vs predictor transfer and from-scratch training; plus the offset
between the labels' short-QAT protocol and the realised models' longer finetune (§4)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
from scipy import stats

from ..progress import tqdm
from ..runtime import stream_rng, stream_seed
from ..stats import bootstrap_p, holm_verdicts, verdict
from ..supernet.metrics import subnet_macs
from ..supernet.space import SearchSpace
from .metrics import _group_resamples, kendall_tau, rmse
from .model import AccuracyPredictor, predict_numpy
from .train import TrainSettings, fit_quant_predictor
from .transfer import PredictorTransfer

__all__ = ["METHODS", "index_macs", "bit_features", "fit_linear", "arch_keys",
           "crossval_controls", "controls_table", "label_offset"]

METHODS = ("transfer", "scratch", "fp32_predictor", "bits_linear", "macs_linear")


def index_macs(space: SearchSpace, idx: np.ndarray) -> np.ndarray:
    """Multiply-accumulates ``[N]`` of the architectures in index arrays ``[N, B, 6]``."""
    return np.array([subnet_macs(space, c) for c in space.from_index_array(idx)], float)


def bit_features(space: SearchSpace, idx: np.ndarray) -> np.ndarray:
    """Per-block bitwidths ``[N, 4 B]`` (pw_w, pw_a, dw_w, dw_a of every block; 0 where a
    block is off)."""
    idx = np.asarray(idx)
    bits = np.asarray(space.bit_choices, float)[np.clip(idx[:, :, 2:], 0, None)]
    return np.where(idx[:, :, 2:] >= 0, bits, 0.0).reshape(len(idx), -1)


def fit_linear(x_train: np.ndarray, y_train: np.ndarray, ridge: float = 1.0):
    """Least squares with intercept on standardised features (``ridge`` · I added to the
    normal equations, so more features than pairs stay well posed); returns ``predict``."""
    x_train = np.asarray(x_train, float)
    mu, sd = x_train.mean(0), x_train.std(0)
    sd = np.where(sd > 0, sd, 1.0)
    z = (x_train - mu) / sd
    y0 = float(np.mean(y_train))
    w = np.linalg.solve(z.T @ z + ridge * np.eye(z.shape[1]), z.T @ (np.asarray(y_train) - y0))
    return lambda x: y0 + ((np.asarray(x, float) - mu) / sd) @ w


def arch_keys(idx: np.ndarray) -> np.ndarray:
    """One hashable key per architecture (kernel + mid columns of the index array)."""
    a = np.ascontiguousarray(np.asarray(idx)[:, :, :2])
    return np.array([r.tobytes() for r in a])


SEEDED = ("transfer", "scratch")            # the methods trained with several seeds per fold


def crossval_controls(fp32: AccuracyPredictor, x: np.ndarray, y_pct: np.ndarray,
                      idx: np.ndarray, space: SearchSpace, folds: list, settings: TrainSettings,
                      hidden: int, n_layers: int, branch_init: str = "zeros",
                      progress: bool = True, seeds: int = 1,
                      groups=None, members: int = 1) -> pd.DataFrame:
    """Held-out predictions (percent) of every method in :data:`METHODS` for every pair,
    each from the fold in which its architecture was held out. ``x``: the pairs'
    encodings; ``y_pct``: their labels; ``folds``: from :func:`grouped_kfold`.

    ``transfer`` and ``scratch`` are trained ``seeds`` times per fold (training seed
    ``stream_seed(settings.seed, "predictor_fit", "cv", fold, k)``): columns
    ``pred_<m>_seed<k>`` hold each seed's predictions, ``pred_<m>`` their mean.
    ``fp32_predictor`` is the FP32 predictor on the architecture part, shifted by the
    mean gap to the fold's training labels; ``bits_linear`` is :func:`fit_linear` on
    :func:`bit_features` + MACs; ``macs_linear`` a linear fit on log MACs. ``groups``
    (architectures) makes the fits' early-stopping split grouped too. ``members`` > 1:
    each seed's ``transfer`` and ``scratch`` are ensembles of that many members (``fp32``
    then is an FP32 ensemble of as many: transfer member m starts from its member m), as the
    predictors notebook 03 stores."""
    if seeds < 1:
        raise ValueError(f"seeds={seeds}: need >= 1 training seed per fold")
    y = np.asarray(y_pct, float)
    arch_dims = fp32.arch_dims
    macs = np.log(index_macs(space, idx))
    lin_x = np.column_stack([bit_features(space, idx), macs])
    fp = 100 * predict_numpy(fp32, x[:, :arch_dims])
    out = {m: np.full(len(y), np.nan) for m in METHODS}
    per_seed = {f"{m}_seed{k}": np.full(len(y), np.nan) for m in SEEDED for k in range(seeds)}
    fold_of = np.full(len(y), -1)
    jobs = [(f, k) for f in range(len(folds)) for k in range(seeds)]
    for f, k in tqdm(jobs, desc="grouped CV", disable=not progress):
        tr, te = folds[f]
        st = replace(settings, seed=stream_seed(settings.seed, "predictor_fit", "cv", f, k))
        g = None if groups is None else np.asarray(groups)[tr]
        t = PredictorTransfer(fp32, x.shape[1] - arch_dims, branch_init).fit(
            x[tr], y[tr] / 100, st, groups=g)
        s = fit_quant_predictor(x[tr], y[tr] / 100, arch_dims, st, hidden, n_layers,
                                groups=g, members=members)
        per_seed[f"transfer_seed{k}"][te] = 100 * predict_numpy(t.model, x[te])
        per_seed[f"scratch_seed{k}"][te] = 100 * predict_numpy(s.model, x[te])
        if k == 0:
            out["fp32_predictor"][te] = fp[te] + np.mean(y[tr] - fp[tr])
            out["bits_linear"][te] = fit_linear(lin_x[tr], y[tr])(lin_x[te])
            out["macs_linear"][te] = fit_linear(macs[tr, None], y[tr], ridge=0.0)(
                macs[te, None])
            fold_of[te] = f
    for m in SEEDED:
        out[m] = np.mean([per_seed[f"{m}_seed{k}"] for k in range(seeds)], axis=0)
    return pd.DataFrame({"fold": fold_of, "label": y, "log_macs": macs,
                         **{f"pred_{m}": v for m, v in out.items()},
                         **{f"pred_{m}": v for m, v in per_seed.items()}})


def _seed_predictions(cv: pd.DataFrame) -> dict[str, np.ndarray]:
    """method -> ``[n_seeds, N]`` held-out predictions (one row for unseeded methods)."""
    cols = [c for c in cv.columns if c.startswith("pred_")]
    methods = [c[5:] for c in cols if "_seed" not in c]
    out = {}
    for m in methods:
        seeded = sorted((c for c in cols if c.startswith(f"pred_{m}_seed")),
                        key=lambda c: int(c.rsplit("seed", 1)[1]))
        out[m] = np.stack([cv[c].to_numpy(float) for c in (seeded or [f"pred_{m}"])])
    return out


def controls_table(cv: pd.DataFrame, groups, reference: str = "transfer",
                   n_resamples: int = 2000, seed: int = 0, level: float = 0.95
                   ) -> pd.DataFrame:
    """One row per method: Kendall τ and RMSE (accuracy points) on the pooled held-out
    predictions with 95 % bootstrap CIs, and τ(reference) − τ(method) with its paired CI,
    two-sided bootstrap p-value and verdict.

    A method trained with several seeds per fold (columns ``pred_<m>_seed<k>``) scores the
    mean over seeds of its per-seed τ / RMSE. Each bootstrap resample draws whole held-out
    architectures with replacement (the same for every method) *and* one training seed per
    seeded method, so the intervals cover both the architectures and the training seeds.
    ``verdict`` is Holm-corrected over the table's comparisons
    (:func:`apq_lib.stats.holm_verdicts`): "<reference> better" / "worse" /
    "inconclusive" / "not comparable"; ``verdict_unadjusted`` is the CI's own
    (:func:`apq_lib.stats.verdict`)."""
    P = _seed_predictions(cv)
    if reference not in P:
        raise KeyError(f"reference {reference!r} is not one of the methods {sorted(P)}")
    y = cv["label"].to_numpy(float)
    samples = _group_resamples(groups, n_resamples, seed)
    rng = stream_rng(seed, "bootstrap", "predictor seeds")
    draw = {m: rng.integers(0, len(p), n_resamples) for m, p in P.items()}
    point, boot = {}, {}
    for stat_name, stat in (("kendall_tau", kendall_tau), ("rmse", rmse)):
        point[stat_name] = {m: np.array([stat(y, p[k]) for k in range(len(p))])
                            for m, p in P.items()}
        boot[stat_name] = {m: np.array([stat(y[s], p[draw[m][b]][s])
                                        for b, s in enumerate(samples)])
                           for m, p in P.items()}
    lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    rows = []
    for m in P:
        tau_b, err_b = boot["kendall_tau"][m], boot["rmse"][m]
        d = boot["kendall_tau"][reference] - tau_b
        ref = m == reference
        dlo, dhi = (np.nan, np.nan) if ref else (float(np.nanpercentile(d, lo)),
                                                 float(np.nanpercentile(d, hi)))
        taus = point["kendall_tau"][m]
        rows.append({"method": m, "n_pairs": len(y),
                     "n_architectures": len(np.unique(groups)), "training_seeds": len(taus),
                     "kendall_tau": float(taus.mean()),
                     "tau_seed_sd": float(taus.std(ddof=1)) if len(taus) > 1 else 0.0,
                     "tau_ci_low": float(np.nanpercentile(tau_b, lo)),
                     "tau_ci_high": float(np.nanpercentile(tau_b, hi)),
                     "rmse": float(point["rmse"][m].mean()),
                     "rmse_ci_low": float(np.nanpercentile(err_b, lo)),
                     "rmse_ci_high": float(np.nanpercentile(err_b, hi)),
                     f"tau_{reference}_minus_method": np.nan if ref else float(
                         point["kendall_tau"][reference].mean() - taus.mean()),
                     "ci_low": dlo, "ci_high": dhi,
                     "p_value": np.nan if ref else bootstrap_p(d),
                     "verdict_unadjusted": "reference" if ref else verdict(dlo, dhi,
                                                                           who=reference)})
    out = pd.DataFrame(rows)
    comp = out["method"] != reference
    out["verdict"] = "reference"
    out.loc[comp, "verdict"] = holm_verdicts(
        out[comp], estimate=f"tau_{reference}_minus_method", p="p_value", who=reference,
        level=level)
    return out


def label_offset(labels, realised, level: float = 0.95) -> dict:
    """Offset realised − label (accuracy points) over realised pairs: ``mean`` with a
    Student-t CI (``ci``), ``sd``, ``n`` and Spearman(label, realised)."""
    a, b = np.asarray(labels, float), np.asarray(realised, float)
    d = b - a
    n = len(d)
    if n == 0:
        raise ValueError("label_offset: no realised pairs")
    mean = float(d.mean())
    sd = float(d.std(ddof=1)) if n > 1 else float("nan")
    half = float(stats.t.ppf((1 + level) / 2, n - 1) * sd / np.sqrt(n)) if n > 1 else np.nan
    rho: float | None = float(stats.spearmanr(a, b).statistic) if n > 2 else None
    return {"n": n, "mean": mean, "sd": sd, "ci": [mean - half, mean + half],
            "spearman": rho}
