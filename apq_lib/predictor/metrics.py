"""Predictor quality (APQ §4, Fig. 6): RMSE in accuracy percent, Kendall τ and pairwise
ranking accuracy on held-out pairs."""
from __future__ import annotations

import numpy as np
from scipy import stats

__all__ = ["rmse", "kendall_tau", "pairwise_accuracy", "predictor_metrics"]


def rmse(y_true, y_pred) -> float:
    """Root mean squared error, in the units of the inputs (use accuracy percent)."""
    y_true, y_pred = np.asarray(y_true, float), np.asarray(y_pred, float)
    return float(np.sqrt(np.mean((y_true - y_pred) ** 2)))


def kendall_tau(y_true, y_pred) -> float:
    """Kendall τ-b (scipy); ``nan`` when either side is constant."""
    return float(stats.kendalltau(np.asarray(y_true, float), np.asarray(y_pred, float)).statistic)


def pairwise_accuracy(y_true, y_pred, max_n: int = 4000, seed: int = 0) -> float:
    """Fraction of pairs (i < j, ``y_true[i] != y_true[j]``) whose order the prediction
    gets right; a tie in the prediction counts one half. Above ``max_n`` points a fixed
    random subset of ``max_n`` is used (O(n²) memory)."""
    t, p = np.asarray(y_true, float), np.asarray(y_pred, float)
    if len(t) > max_n:
        sel = np.random.default_rng(seed).choice(len(t), max_n, replace=False)
        t, p = t[sel], p[sel]
    iu = np.triu_indices(len(t), k=1)
    dt = np.sign(t[:, None] - t[None, :])[iu]
    dp = np.sign(p[:, None] - p[None, :])[iu]
    keep = dt != 0
    if not keep.any():
        return float("nan")
    dt, dp = dt[keep], dp[keep]
    return float(np.mean(np.where(dp == 0, 0.5, (dt == dp).astype(float))))


def predictor_metrics(y_true_pct, y_pred_pct) -> dict:
    """``rmse`` / ``mae`` (accuracy percent), ``kendall_tau``, ``pairwise_acc``, ``n``."""
    t, p = np.asarray(y_true_pct, float), np.asarray(y_pred_pct, float)
    return {"n": int(len(t)), "rmse": rmse(t, p), "mae": float(np.mean(np.abs(t - p))),
            "kendall_tau": kendall_tau(t, p), "pairwise_acc": pairwise_accuracy(t, p)}
