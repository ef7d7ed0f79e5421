"""Predictor quality (APQ §4, Fig. 6): RMSE in accuracy percent, Kendall τ and pairwise
ranking accuracy on held-out pairs; the noise of the labels themselves; bootstrap CIs over
held-out architectures (paired across methods)."""
from __future__ import annotations

import numpy as np
from scipy import stats

from ..runtime import stream_rng
from ..stats import bootstrap_p, verdict

__all__ = ["rmse", "kendall_tau", "pairwise_accuracy", "predictor_metrics", "label_noise",
           "group_bootstrap_ci", "variance_shares"]


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
        sel = stream_rng(seed, "bootstrap", "pairwise subset").choice(len(t), max_n, replace=False)
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


# --------------------------------------------------------------------------- label noise
def label_noise(correct: np.ndarray, max_pairs: int = 2000, n_splits: int = 100,
                seed: int = 0) -> dict:
    """Noise of labels measured on shared images, from per-image correctness ``[N, n]``.

    ``se_binomial [N]``: sqrt(p (1 - p) / n) per label (percent). ``se_split_half``:
    sqrt(mean((a - b)²)) / 2 over the two halves' accuracies, pooled over labels and
    ``n_splits`` random halvings (its expectation is the SE of a full-set label; one fixed
    split alone is a single draw, since paired labels share their images). ``se_paired``:
    median over random label pairs of SE(label_i - label_j) / sqrt 2 from the discordant
    images (what ranking two labels on the same images suffers; below the binomial SE
    when the models agree on most images)."""
    c = np.asarray(correct, bool)
    N, n = c.shape
    p = c.mean(1)
    se_bin = 100 * np.sqrt(p * (1 - p) / n)
    rng = stream_rng(seed, "bootstrap", "split half")
    sq = []
    for _ in range(n_splits):
        h = rng.permutation(n) < n // 2
        sq.append(np.mean((100 * c[:, h].mean(1) - 100 * c[:, ~h].mean(1)) ** 2))
    out = {"n_labels": int(N), "n_images": int(n), "se_binomial": se_bin,
           "se_binomial_median": float(np.median(se_bin)),
           "se_split_half": float(np.sqrt(np.mean(sq)) / 2),
           "se_paired_median": float("nan")}
    if N >= 2:
        i = rng.integers(0, N, max_pairs)
        j = (i + rng.integers(1, N, max_pairs)) % N
        d = c[i].astype(np.int8) - c[j].astype(np.int8)            # [P, n] in {-1, 0, 1}
        se_d = 100 * d.std(1) / np.sqrt(n)
        out["se_paired_median"] = float(np.median(se_d) / np.sqrt(2))
    return out


# --------------------------------------------------------------------------- decomposition
def variance_shares(acc, groups, acc_half) -> dict:
    """Architecture / bits / noise decomposition of labels (percent) measured on shared
    images, with ``groups`` = architecture and ``acc_half [N, 2]`` the accuracies of the two
    halves (even / odd images) of each label's images.

    Method (one-way random-effects ANOVA with a measured noise term):

    * total variance ``s²(y)`` (ddof 1);
    * within-architecture mean square ``Σ (y - ȳ_group)² / (N - G)`` = bits + noise;
    * noise variance from the paired halves: ``s²(a - b) / 4`` across labels (ddof 1).
      ``a - b`` of one label has variance 4 × that of the label; taking the variance
      *across labels* removes what every label shares (the same images are hard for all),
      so this is the noise that moves labels relative to each other — the image-sampling
      noise only; the finetune's batch noise, if any, counts as bits;
    * bits = max(within − noise, 0); architecture = max(total − within, 0).

    Returns the three ``shares`` (normalised to sum to 1), the variances (points²),
    ``bit_to_noise_variance`` (bits / noise) and the counts."""
    y = np.asarray(acc, float)
    g = np.asarray(groups)
    h = np.asarray(acc_half, float)
    if y.ndim != 1 or len(g) != len(y) or h.shape != (len(y), 2):
        raise ValueError(f"variance_shares: acc {y.shape}, groups {g.shape} and acc_half "
                         f"{h.shape} must be [N], [N] and [N, 2]")
    uniq, inv = np.unique(g, return_inverse=True)
    n, k = len(y), len(uniq)
    if n - k < 1 or n < 3:
        raise ValueError(f"variance_shares: {n} labels in {k} architectures; need at least "
                         f"one architecture with two labels")
    means = np.bincount(inv, y) / np.bincount(inv)
    total = float(np.var(y, ddof=1))
    within = float(np.sum((y - means[inv]) ** 2) / (n - k))
    noise = float(np.var(h[:, 0] - h[:, 1], ddof=1) / 4)
    bits = max(within - noise, 0.0)
    arch = max(total - within, 0.0)
    s = arch + bits + noise
    return {"shares": {"architecture": arch / s, "bits": bits / s, "noise": noise / s},
            "variance": {"total": total, "within_architecture": within,
                         "architecture": arch, "bits": bits, "noise": noise},
            "bit_to_noise_variance": bits / noise if noise > 0 else float("inf"),
            "n_labels": n, "n_architectures": k,
            "method": "one-way random-effects ANOVA over architectures; noise = variance "
                      "across labels of the even-minus-odd image halves / 4; bits = "
                      "within-architecture mean square - noise; architecture = total "
                      "variance - within-architecture mean square; shares normalised"}


# --------------------------------------------------------------------------- bootstrap
def _group_resamples(groups, n_resamples: int, seed: int) -> list[np.ndarray]:
    """Index arrays of ``n_resamples`` resamples of whole groups (with replacement)."""
    groups = np.asarray(groups)
    uniq, inv = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inv == g) for g in range(len(uniq))]
    rng = stream_rng(seed, "bootstrap", "groups")
    return [np.concatenate([members[g] for g in rng.integers(0, len(uniq), len(uniq))])
            for _ in range(n_resamples)]


def group_bootstrap_ci(y_true, preds: dict, groups, stat=kendall_tau, reference=None,
                       n_resamples: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Percentile bootstrap over groups (architectures): resample whole groups with
    replacement (seeded), the same resamples for every method, so differences are paired.

    ``preds``: method -> predictions for ``y_true``. Returns method -> ``{"value",
    "ci_low", "ci_high"}``; with ``reference`` also ``delta`` = stat(reference) -
    stat(method) with ``delta_ci_low`` / ``delta_ci_high``, its two-sided bootstrap
    ``p_value`` and a ``verdict`` naming the winner (:func:`apq_lib.stats.verdict`:
    "<reference> better" / "<reference> worse" / "inconclusive")."""
    if n_resamples < 1:
        raise ValueError(f"n_resamples={n_resamples}: need >= 1")
    y = np.asarray(y_true, float)
    P = {k: np.asarray(v, float) for k, v in preds.items()}
    if reference is not None and reference not in P:
        raise KeyError(f"reference {reference!r} is not one of the methods {sorted(P)}")
    samples = _group_resamples(groups, n_resamples, seed)
    boot = {k: np.array([stat(y[s], p[s]) for s in samples]) for k, p in P.items()}
    lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    out = {}
    for k, p in P.items():
        r = {"value": float(stat(y, p)), "ci_low": float(np.nanpercentile(boot[k], lo)),
             "ci_high": float(np.nanpercentile(boot[k], hi))}
        if reference is not None:
            d = boot[reference] - boot[k]
            r["delta"] = float(stat(y, P[reference]) - r["value"])
            r["delta_ci_low"] = float(np.nanpercentile(d, lo))
            r["delta_ci_high"] = float(np.nanpercentile(d, hi))
            r["p_value"] = bootstrap_p(d)
            r["verdict"] = verdict(r["delta_ci_low"], r["delta_ci_high"], who=reference)
        out[k] = r
    return out

