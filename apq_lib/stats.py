"""Paired bootstrap confidence intervals and verdicts for the suite's claims (Efron &
Tibshirani 1993, percentile intervals).

Every final model is evaluated on the same test images and keeps its per-image correctness
(a bool vector). A comparison resamples *images* with replacement, the same resample for all
models, and recomputes the statistic (an accuracy, a difference of accuracies, a cost ratio
at matched accuracy) on each resample; the 95 % interval is the 2.5 / 97.5 percentiles. A
claim ``holds`` when its interval excludes the null value (0 for a difference, 1 for a
ratio), else it is ``within noise``.
"""
from __future__ import annotations

from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from .runtime import stream_rng

__all__ = ["N_RESAMPLES", "LEVEL", "resample_counts", "resampled_accuracy", "accuracy_ci",
           "paired_difference", "mean_paired_difference", "matched_cost_ratio", "verdict",
           "percentile_ci", "bootstrap_groups", "CI"]

N_RESAMPLES = 2000
LEVEL = 0.95
HOLDS, NOISE = "holds", "within noise"


class CI(dict):
    """``{"estimate", "ci_low", "ci_high", "verdict"}`` (a dict, so it drops into a table row)."""


def verdict(lo: float, hi: float, null: float = 0.0) -> str:
    """``holds`` when ``[lo, hi]`` excludes ``null``, else ``within noise`` (also for NaN)."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return NOISE
    return HOLDS if lo > null or hi < null else NOISE


def percentile_ci(samples: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval of bootstrap ``samples`` (NaN samples ignored; NaN if > 5 % NaN)."""
    s = np.asarray(samples, dtype=float)
    ok = s[np.isfinite(s)]
    if ok.size < 0.95 * s.size or ok.size == 0:
        return float("nan"), float("nan")
    a = (1 - level) / 2
    lo, hi = np.quantile(ok, [a, 1 - a])
    return float(lo), float(hi)


def resample_counts(n: int, n_resamples: int = N_RESAMPLES, seed: int = 0,
                    chunk: int = 250) -> Iterator[np.ndarray]:
    """Chunks ``[b, n]`` of bootstrap multiplicities (each row sums to ``n``): resampling
    ``n`` images with replacement, seeded from the ``bootstrap`` RNG stream."""
    rng = stream_rng(seed, "bootstrap", n, n_resamples)
    done = 0
    while done < n_resamples:
        b = min(chunk, n_resamples - done)
        yield rng.multinomial(n, np.full(n, 1.0 / n), size=b).astype(np.float32)
        done += b


def _as_matrix(correct) -> np.ndarray:
    c = np.asarray(correct)
    if c.ndim == 1:
        c = c[None]
    if c.dtype != bool:
        raise TypeError("per-image correctness must be a bool array")
    return c.astype(np.float32)


def resampled_accuracy(correct, n_resamples: int = N_RESAMPLES, seed: int = 0) -> np.ndarray:
    """Top-1 (percent) of each model on each resample: ``[n_resamples, n_models]``.
    ``correct``: ``[n_models, n_images]`` (or one model's ``[n_images]``), all on the same
    images in the same order."""
    c = _as_matrix(correct)
    n = c.shape[1]
    out = [counts @ c.T for counts in resample_counts(n, n_resamples, seed)]
    return 100.0 * np.concatenate(out) / n


def accuracy_ci(correct, n_resamples: int = N_RESAMPLES, seed: int = 0,
                level: float = LEVEL) -> CI:
    """Top-1 of one model with its bootstrap interval (verdict: vs 0, i.e. always holds)."""
    c = np.asarray(correct)
    lo, hi = percentile_ci(resampled_accuracy(c, n_resamples, seed)[:, 0], level)
    return CI(estimate=100.0 * float(c.mean()), ci_low=lo, ci_high=hi, verdict=verdict(lo, hi))


def paired_difference(correct_a, correct_b, n_resamples: int = N_RESAMPLES, seed: int = 0,
                      level: float = LEVEL) -> CI:
    """Accuracy of A minus accuracy of B (points) on the same images, with the paired
    interval (both models on the same resample)."""
    a, b = np.asarray(correct_a), np.asarray(correct_b)
    if a.shape != b.shape:
        raise ValueError(f"paired comparison needs the same images: {a.shape} vs {b.shape}")
    acc = resampled_accuracy(np.stack([a, b]), n_resamples, seed)
    lo, hi = percentile_ci(acc[:, 0] - acc[:, 1], level)
    est = 100.0 * float(a.mean() - b.mean())
    return CI(estimate=est, ci_low=lo, ci_high=hi, verdict=verdict(lo, hi))


def mean_paired_difference(correct_a, correct_b, n_resamples: int = N_RESAMPLES, seed: int = 0,
                           level: float = LEVEL) -> CI:
    """Mean over K pairs of (accuracy of A_k − accuracy of B_k), points; ``correct_a`` and
    ``correct_b`` are ``[K, n_images]`` on the same images; one image resample for all."""
    a, b = np.atleast_2d(correct_a), np.atleast_2d(correct_b)
    if a.shape != b.shape:
        raise ValueError(f"paired comparison needs the same images: {a.shape} vs {b.shape}")
    k = a.shape[0]
    acc = resampled_accuracy(np.concatenate([a, b]), n_resamples, seed)
    diff = (acc[:, :k] - acc[:, k:]).mean(axis=1)
    lo, hi = percentile_ci(diff, level)
    est = 100.0 * float((a.mean(axis=1) - b.mean(axis=1)).mean())
    return CI(estimate=est, ci_low=lo, ci_high=hi, verdict=verdict(lo, hi))


def _cheapest_at_least(acc_cand: np.ndarray, cost_cand: np.ndarray, acc_ref: np.ndarray
                       ) -> np.ndarray:
    """Per row: the lowest candidate cost whose accuracy ≥ the reference's (NaN if none)."""
    ok = acc_cand >= acc_ref[:, None] - 1e-9
    costs = np.where(ok, cost_cand[None, :], np.inf)
    best = costs.min(axis=1)
    return np.where(np.isfinite(best), best, np.nan)


def matched_cost_ratio(correct_ref, cost_ref: float, correct_cands, cost_cands: Sequence[float],
                       n_resamples: int = N_RESAMPLES, seed: int = 0,
                       level: float = LEVEL) -> CI:
    """Cost ratio ``reference cost / cost of the cheapest candidate at least as accurate``
    (e.g. HAQ's latency over APQ's at equal or better accuracy), with the interval of the
    whole matching redone on every resample. Verdict against 1 (no saving). The estimate is
    NaN when no candidate is as accurate on the full test set."""
    cand = np.atleast_2d(np.asarray(correct_cands))
    cost_c = np.asarray(cost_cands, dtype=float)
    if cand.shape[0] != cost_c.size:
        raise ValueError(f"{cand.shape[0]} candidate models but {cost_c.size} costs")
    allc = np.concatenate([np.asarray(correct_ref)[None], cand])
    acc = resampled_accuracy(allc, n_resamples, seed)
    ratio = cost_ref / _cheapest_at_least(acc[:, 1:], cost_c, acc[:, 0])
    full = 100.0 * allc.mean(axis=1)
    est = cost_ref / _cheapest_at_least(full[None, 1:], cost_c, full[:1])[0]
    lo, hi = percentile_ci(ratio, level)
    return CI(estimate=float(est), ci_low=lo, ci_high=hi, verdict=verdict(lo, hi, null=1.0))


def bootstrap_groups(groups: np.ndarray, stat: Callable[[np.ndarray], float],
                     n_resamples: int = N_RESAMPLES, seed: int = 0, level: float = LEVEL,
                     null: Optional[float] = 0.0) -> CI:
    """Bootstrap over groups (e.g. architectures): resample the distinct group ids with
    replacement and call ``stat(row_indices)`` on the rows of the drawn groups."""
    groups = np.asarray(groups)
    ids = np.unique(groups)
    rows = {g: np.flatnonzero(groups == g) for g in ids}
    rng = stream_rng(seed, "bootstrap", "groups", len(ids), n_resamples)
    samples = np.empty(n_resamples)
    for r in range(n_resamples):
        pick = rng.choice(ids, size=len(ids), replace=True)
        samples[r] = stat(np.concatenate([rows[g] for g in pick]))
    lo, hi = percentile_ci(samples, level)
    est = float(stat(np.arange(len(groups))))
    return CI(estimate=est, ci_low=lo, ci_high=hi,
              verdict=verdict(lo, hi, null) if null is not None else "")
