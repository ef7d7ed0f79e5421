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
from ..supernet.space import SearchSpace
from .metrics import group_bootstrap_ci, kendall_tau, rmse
from .model import AccuracyPredictor, predict_numpy
from .train import TrainSettings, fit_quant_predictor
from .transfer import PredictorTransfer

__all__ = ["METHODS", "index_macs", "bit_features", "fit_linear", "arch_keys",
           "crossval_controls", "controls_table", "label_offset"]

METHODS = ("transfer", "scratch", "fp32_predictor", "bits_linear", "macs_linear")


def index_macs(space: SearchSpace, idx: np.ndarray) -> np.ndarray:
    """Multiply-accumulates ``[N]`` of the architectures in index arrays ``[N, B, 6]``."""
    from ..supernet.metrics import subnet_macs
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


def crossval_controls(fp32: AccuracyPredictor, x: np.ndarray, y_pct: np.ndarray,
                      idx: np.ndarray, space: SearchSpace, folds: list, settings: TrainSettings,
                      hidden: int, n_layers: int, branch_init: str = "zeros",
                      progress: bool = True) -> pd.DataFrame:
    """Held-out predictions (percent) of every method in :data:`METHODS` for every pair,
    each from the fold in which its architecture was held out. ``x``: the pairs'
    encodings; ``y_pct``: their labels; ``folds``: from :func:`grouped_kfold`.

    ``fp32_predictor`` is the FP32 predictor on the architecture part, shifted by the
    mean gap to the fold's training labels; ``bits_linear`` is :func:`fit_linear` on
    :func:`bit_features` + MACs; ``macs_linear`` a linear fit on log MACs."""
    y = np.asarray(y_pct, float)
    arch_dims = fp32.arch_dims
    macs = np.log(index_macs(space, idx))
    lin_x = np.column_stack([bit_features(space, idx), macs])
    fp = 100 * predict_numpy(fp32, x[:, :arch_dims])
    out = {m: np.full(len(y), np.nan) for m in METHODS}
    fold_of = np.full(len(y), -1)
    for f, (tr, te) in enumerate(tqdm(folds, desc="grouped CV", disable=not progress)):
        st = replace(settings, seed=settings.seed + f)
        t = PredictorTransfer(fp32, x.shape[1] - arch_dims, branch_init).fit(
            x[tr], y[tr] / 100, st)
        s = fit_quant_predictor(x[tr], y[tr] / 100, arch_dims, st, hidden, n_layers)
        out["transfer"][te] = 100 * predict_numpy(t.model, x[te])
        out["scratch"][te] = 100 * predict_numpy(s.model, x[te])
        out["fp32_predictor"][te] = fp[te] + np.mean(y[tr] - fp[tr])
        out["bits_linear"][te] = fit_linear(lin_x[tr], y[tr])(lin_x[te])
        out["macs_linear"][te] = fit_linear(macs[tr, None], y[tr], ridge=0.0)(macs[te, None])
        fold_of[te] = f
    return pd.DataFrame({"fold": fold_of, "label": y, "log_macs": macs,
                         **{f"pred_{m}": v for m, v in out.items()}})


def controls_table(cv: pd.DataFrame, groups, reference: str = "transfer",
                   n_resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """One row per method: Kendall τ and RMSE (accuracy points) on the pooled held-out
    predictions, each with a 95 % bootstrap CI over held-out architectures, and the
    paired CI of τ(reference) − τ(method) with its verdict."""
    methods = [c[5:] for c in cv.columns if c.startswith("pred_")]
    preds = {m: cv[f"pred_{m}"].to_numpy() for m in methods}
    y = cv["label"].to_numpy()
    tau = group_bootstrap_ci(y, preds, groups, kendall_tau, reference, n_resamples, seed)
    err = group_bootstrap_ci(y, preds, groups, rmse, None, n_resamples, seed)
    rows = []
    for m in methods:
        t, e = tau[m], err[m]
        ref = m == reference
        rows.append({"method": m, "n_pairs": len(y),
                     "n_architectures": len(np.unique(groups)),
                     "kendall_tau": t["value"], "tau_ci_low": t["ci_low"],
                     "tau_ci_high": t["ci_high"], "rmse": e["value"],
                     "rmse_ci_low": e["ci_low"], "rmse_ci_high": e["ci_high"],
                     f"tau_{reference}_minus_method": np.nan if ref else t["delta"],
                     "ci_low": np.nan if ref else t["delta_ci_low"],
                     "ci_high": np.nan if ref else t["delta_ci_high"],
                     "p_value": np.nan if ref else t["p_value"],
                     "verdict": "reference" if ref else t["verdict"]})
    return pd.DataFrame(rows)


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
