"""Paired bootstrap confidence intervals and verdicts for the suite's claims (Efron &
Tibshirani 1993, percentile intervals).

Every final model is evaluated on the same test images and keeps its per-image correctness
(a bool vector). A comparison resamples *images* with replacement, the same resample for all
models, and recomputes the statistic (an accuracy, a difference of accuracies, a cost ratio
at matched accuracy) on each resample; the 95 % interval is the 2.5 / 97.5 percentiles.

Verdicts name the winner: ``APQ better`` / ``APQ worse`` when the interval excludes the null
value (0 for a difference, 1 for a ratio) on that side, ``inconclusive`` when it covers it,
``not comparable`` when there is nothing to compare (no match, NaN, a degenerate interval of
a ratio censored by the budget grid). Within a table, :func:`holm_verdicts` corrects for the
number of comparisons (Holm 1979) with the bootstrap's two-sided p-values.
"""
from __future__ import annotations

from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from .runtime import stream_rng

__all__ = ["cheapest_at_least", "N_RESAMPLES", "LEVEL", "resample_counts", "resampled_accuracy",
           "accuracy_ci",
           "paired_difference", "mean_paired_difference", "matched_cost_ratio", "verdict",
           "percentile_ci", "bootstrap_groups", "CI", "VERDICTS", "INCONCLUSIVE",
           "NOT_COMPARABLE", "bootstrap_p", "seed_sd", "holm", "holm_verdicts",
           "hierarchical_difference"]

N_RESAMPLES = 2000
LEVEL = 0.95
INCONCLUSIVE, NOT_COMPARABLE = "inconclusive", "not comparable"
VERDICTS = ("APQ better", "APQ worse", INCONCLUSIVE, NOT_COMPARABLE)


class CI(dict):
    """``{"estimate", "ci_low", "ci_high", "verdict"}`` (a dict, so it drops into a table row)."""


def verdict(lo: float, hi: float, null: float = 0.0, who: str = "APQ",
            higher_is_better: bool = True) -> str:
    """``"{who} better"`` / ``"{who} worse"`` when ``[lo, hi]`` lies above / below ``null``
    (reversed with ``higher_is_better=False``), ``inconclusive`` when it covers ``null``,
    ``not comparable`` for NaN or a zero-width interval (a statistic that no resample moves:
    censored, not measured)."""
    if not (np.isfinite(lo) and np.isfinite(hi)) or hi <= lo:
        return NOT_COMPARABLE
    if lo > null or hi < null:
        up = lo > null
        return f"{who} better" if up == higher_is_better else f"{who} worse"
    return INCONCLUSIVE


def seed_sd(per_seed: np.ndarray) -> float:
    """Standard deviation of top-1 (points) over a model's finetune seeds (rows of a
    ``[seeds, n_images]`` correctness array; NaN for one seed)."""
    acc = 100 * np.asarray(per_seed, dtype=float).mean(axis=1)
    return float(acc.std(ddof=1)) if len(acc) > 1 else float("nan")


def bootstrap_p(samples: np.ndarray, null: float = 0.0) -> float:
    """Two-sided bootstrap p-value of ``null``: twice the smaller tail share of the resampled
    statistic at or beyond ``null`` ((k + 1) / (n + 1), so never 0); NaN with > 5 % NaN."""
    s = np.asarray(samples, dtype=float)
    ok = s[np.isfinite(s)]
    if ok.size < 0.95 * s.size or ok.size == 0 or np.ptp(ok) == 0:
        return float("nan")
    tail = min((ok <= null).sum(), (ok >= null).sum())
    return float(min(1.0, 2 * (tail + 1) / (ok.size + 1)))


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN stays NaN and does not count)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    order = idx[np.argsort(p[idx], kind="stable")]
    m, running = len(order), 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (m - k) * p[i]))
        out[i] = running
    return out


def holm_verdicts(rows, estimate: str = "estimate", p: str = "p_value", null: float = 0.0,
                  who: str = "APQ", higher_is_better: bool = True,
                  level: float = LEVEL) -> list[str]:
    """Verdicts of the comparisons of one table, Holm-corrected: a side wins when its
    adjusted p-value is below ``1 - level`` (the direction from the estimate); NaN p-values
    (no match, censored) are ``not comparable``. ``rows``: a DataFrame or list of dicts."""
    recs = rows.to_dict("records") if hasattr(rows, "to_dict") else list(rows)
    adj = holm([r.get(p, np.nan) for r in recs])
    out = []
    for r, a in zip(recs, adj):
        est = r.get(estimate, np.nan)
        if not np.isfinite(a) or est is None or not np.isfinite(est):
            out.append(NOT_COMPARABLE)
        elif a >= 1 - level:
            out.append(INCONCLUSIVE)
        else:
            up = est > null
            out.append(f"{who} better" if up == higher_is_better else f"{who} worse")
    return out


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
    return CI(estimate=100.0 * float(c.mean()), ci_low=lo, ci_high=hi, verdict="")


def paired_difference(correct_a, correct_b, n_resamples: int = N_RESAMPLES, seed: int = 0,
                      level: float = LEVEL) -> CI:
    """Accuracy of A minus accuracy of B (points) on the same images, with the paired
    interval (both models on the same resample)."""
    a, b = np.asarray(correct_a), np.asarray(correct_b)
    if a.shape != b.shape:
        raise ValueError(f"paired comparison needs the same images: {a.shape} vs {b.shape}")
    acc = resampled_accuracy(np.stack([a, b]), n_resamples, seed)
    d = acc[:, 0] - acc[:, 1]
    lo, hi = percentile_ci(d, level)
    est = 100.0 * float(a.mean() - b.mean())
    return CI(estimate=est, ci_low=lo, ci_high=hi, verdict=verdict(lo, hi),
              p_value=bootstrap_p(d))


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
    return CI(estimate=est, ci_low=lo, ci_high=hi, verdict=verdict(lo, hi),
              p_value=bootstrap_p(diff))


def cheapest_at_least(acc_cand: np.ndarray, cost_cand: np.ndarray, acc_ref: np.ndarray
                       ) -> np.ndarray:
    """Per row: the lowest candidate cost whose accuracy ≥ the reference's (NaN if none):
    the paper's "same accuracy, N× lower cost" matching, one implementation for the point
    estimates (notebook 05) and every bootstrap resample (notebook 06)."""
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
    NaN when no candidate is as accurate on the full test set. ``censored``: the cheapest
    candidate is already as accurate, so the ratio is set by the candidates' cost grid and
    is a lower bound (the saving could be larger), not a measurement."""
    cand = np.atleast_2d(np.asarray(correct_cands))
    cost_c = np.asarray(cost_cands, dtype=float)
    if cand.shape[0] != cost_c.size:
        raise ValueError(f"{cand.shape[0]} candidate models but {cost_c.size} costs")
    allc = np.concatenate([np.asarray(correct_ref)[None], cand])
    acc = resampled_accuracy(allc, n_resamples, seed)
    ratio = cost_ref / cheapest_at_least(acc[:, 1:], cost_c, acc[:, 0])
    full = 100.0 * allc.mean(axis=1)
    est = cost_ref / cheapest_at_least(full[None, 1:], cost_c, full[:1])[0]
    lo, hi = percentile_ci(ratio, level)
    if not np.isfinite(est):
        lo = hi = float("nan")
    censored = bool(np.isfinite(est) and est >= cost_ref / cost_c.min() * (1 - 1e-9))
    return CI(estimate=float(est), ci_low=lo, ci_high=hi, verdict=verdict(lo, hi, null=1.0),
              p_value=bootstrap_p(ratio, 1.0) if np.isfinite(est) else float("nan"),
              censored=censored)


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
              verdict=verdict(lo, hi, null) if null is not None else "",
              p_value=bootstrap_p(samples, null) if null is not None else float("nan"))


def hierarchical_difference(correct_a, correct_b, n_resamples: int = N_RESAMPLES,
                            seed: int = 0, level: float = LEVEL, searches_a: int = 1,
                            searches_b: int = 1) -> CI:
    """Accuracy of A minus accuracy of B (points) when each arm was finetuned with several
    seeds: ``correct_a`` ``[S_a, n_images]`` and ``correct_b`` ``[S_b, n_images]`` on the
    same images. Two-level bootstrap: each resample draws seeds with replacement in each
    arm, then one image resample shared by both arms (paired), so the interval covers the
    seed-to-seed spread and the test images together. One seed per arm reduces to
    :func:`paired_difference`.

    ``searches_a`` / ``searches_b`` > 1: the arm's rows are that many searches' winners,
    search-major in equal blocks (search ``j``'s seeds are rows ``j * m … j * m + m - 1``,
    as :func:`apq_lib.search.study.realize_all` stores them). A third level then resamples
    the searches with replacement before the seeds within each, so the interval also covers
    the search-to-search spread."""
    a, b = np.atleast_2d(correct_a), np.atleast_2d(correct_b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"paired comparison needs the same images: {a.shape} vs {b.shape}")
    rng = stream_rng(seed, "bootstrap", "seeds", a.shape[0], b.shape[0], n_resamples)
    sa = _draw_rows(rng, a.shape[0], searches_a, n_resamples, "searches_a")
    sb = _draw_rows(rng, b.shape[0], searches_b, n_resamples, "searches_b")
    allc = np.concatenate([a, b])
    acc = resampled_accuracy(allc, n_resamples, seed)          # [R, S_a + S_b]
    r = np.arange(n_resamples)[:, None]
    d = acc[r, sa].mean(axis=1) - acc[r, a.shape[0] + sb].mean(axis=1)
    lo, hi = percentile_ci(d, level)
    est = 100.0 * float(a.mean() - b.mean())
    return CI(estimate=est, ci_low=lo, ci_high=hi, verdict=verdict(lo, hi),
              p_value=bootstrap_p(d))


def _draw_rows(rng, n_rows: int, searches: int, n_resamples: int, name: str) -> np.ndarray:
    """``[n_resamples, n_rows]`` row indices: rows with replacement (one search), or
    searches with replacement and then rows within each drawn search."""
    searches = int(searches)
    if searches < 1 or n_rows % searches:
        raise ValueError(f"{name}={searches}: the {n_rows} rows must split into that many "
                         f"equal blocks of seeds")
    if searches == 1:
        return rng.integers(0, n_rows, size=(n_resamples, n_rows))
    m = n_rows // searches
    picked = rng.integers(0, searches, size=(n_resamples, searches, 1))
    within = rng.integers(0, m, size=(n_resamples, searches, m))
    return (picked * m + within).reshape(n_resamples, n_rows)
