"""Paired bootstrap CIs and verdicts (apq_lib.stats) against closed forms and hand cases."""
import numpy as np
import pytest

from apq_lib.stats import (
    accuracy_ci,
    bootstrap_groups,
    matched_cost_ratio,
    mean_paired_difference,
    paired_difference,
    percentile_ci,
    resampled_accuracy,
    verdict,
)


def _bern(p, n, seed):
    return np.random.default_rng(seed).random(n) < p


def test_accuracy_ci_matches_binomial_normal_interval():
    c = _bern(0.85, 4000, 0)
    ci = accuracy_ci(c, n_resamples=2000, seed=1)
    p = c.mean()
    half = 1.96 * np.sqrt(p * (1 - p) / c.size) * 100
    assert ci["estimate"] == pytest.approx(100 * p)
    assert (ci["ci_high"] - ci["ci_low"]) / 2 == pytest.approx(half, rel=0.12)
    assert ci["ci_low"] < ci["estimate"] < ci["ci_high"]


def test_resamples_are_seeded_and_rows_sum_to_n():
    c = np.stack([_bern(0.7, 500, 2), _bern(0.6, 500, 3)])
    a = resampled_accuracy(c, 300, seed=5)
    assert a.shape == (300, 2)
    np.testing.assert_array_equal(a, resampled_accuracy(c, 300, seed=5))
    assert not np.array_equal(a, resampled_accuracy(c, 300, seed=6))
    assert abs(a[:, 0].mean() - 70.0) < 2.5          # centred on the full-sample accuracy


def test_paired_difference_of_a_model_with_itself_is_exactly_zero():
    c = _bern(0.8, 1000, 4)
    d = paired_difference(c, c, n_resamples=500)
    assert d["estimate"] == 0 and d["ci_low"] == 0 and d["ci_high"] == 0
    assert d["verdict"] == "not comparable" and np.isnan(d["p_value"])   # nothing varies


def test_paired_interval_is_narrower_than_independent_and_detects_small_effect():
    rng = np.random.default_rng(7)
    n = 5000
    b = rng.random(n) < 0.85
    a = b.copy()                       # A fixes 1.5 % of the images B gets wrong, no regressions
    wrong = np.flatnonzero(~b)
    a[rng.choice(wrong, int(0.015 * n), replace=False)] = True
    d = paired_difference(a, b, n_resamples=1000, seed=0)
    assert d["estimate"] == pytest.approx(1.5)
    assert d["verdict"] == "APQ better" and d["ci_low"] > 0 and d["p_value"] < 0.01
    flipped = paired_difference(b, a, n_resamples=1000, seed=0)
    assert flipped["verdict"] == "APQ worse" and flipped["ci_high"] < 0
    # an unpaired interval of the same difference is several times wider
    unpaired = 1.96 * np.sqrt(2 * 0.85 * 0.15 / n) * 100
    assert (d["ci_high"] - d["ci_low"]) / 2 < unpaired / 2


def test_paired_difference_needs_same_images():
    with pytest.raises(ValueError, match="same images"):
        paired_difference(np.ones(10, bool), np.ones(11, bool))
    with pytest.raises(TypeError, match="bool"):
        paired_difference(np.ones(10), np.ones(10))


def test_matched_cost_ratio_hand_case():
    n = 2000
    ref, hi, lo = (np.arange(n) < int(f * n) for f in (0.80, 0.90, 0.60))  # 90 %: cost 2
    r = matched_cost_ratio(ref, 4.0, np.stack([hi, lo]), [2.0, 1.0], n_resamples=500)
    assert r["estimate"] == pytest.approx(2.0)         # only the 90 % model matches: 4 / 2
    assert r["ci_low"] == pytest.approx(2.0) and r["ci_high"] == pytest.approx(2.0)
    # no resample moves the match: a ratio censored by the candidates' grid, not measured
    assert r["verdict"] == "not comparable"
    assert not r["censored"]            # the cheaper 60 % model is not as accurate
    # a candidate exactly as accurate as the reference matches on the full set, and the
    # resamples split between it and the costlier one: the interval shows that
    same = ref.copy()
    r2 = matched_cost_ratio(ref, 4.0, np.stack([hi, same]), [2.0, 1.0], n_resamples=500)
    assert r2["estimate"] == pytest.approx(4.0)
    # the cheapest candidate already matches: the ratio is a lower bound set by the grid
    assert r2["censored"]
    # no candidate as accurate: NaN, not comparable
    r3 = matched_cost_ratio(hi, 4.0, lo[None], [1.0], n_resamples=200)
    assert np.isnan(r3["estimate"]) and r3["verdict"] == "not comparable"
    assert not r3["censored"]


def test_verdict_and_percentiles():
    assert verdict(0.1, 0.5) == "APQ better" and verdict(-0.5, -0.1) == "APQ worse"
    assert verdict(-0.1, 0.5) == "inconclusive"
    assert verdict(1.2, 1.5, null=1.0) == "APQ better"
    assert verdict(0.9, 1.5, null=1.0) == "inconclusive"
    assert verdict(0.1, 0.5, higher_is_better=False, who="HAQ") == "HAQ worse"
    assert verdict(float("nan"), 1.0) == "not comparable"
    assert verdict(0.5, 0.5) == "not comparable"                  # zero width: censored
    lo, hi = percentile_ci(np.arange(1001.0))
    assert lo == pytest.approx(25.0) and hi == pytest.approx(975.0)
    assert np.isnan(percentile_ci(np.array([np.nan] * 10 + [1.0]))[0])


def test_bootstrap_groups_resamples_whole_groups():
    groups = np.repeat(np.arange(20), 5)
    vals = np.repeat(np.arange(20, dtype=float), 5)     # constant within each group
    ci = bootstrap_groups(groups, lambda rows: vals[rows].mean(), n_resamples=400, seed=0)
    assert ci["estimate"] == pytest.approx(9.5)
    sd_groups = np.arange(20).std(ddof=0) / np.sqrt(20)
    assert (ci["ci_high"] - ci["ci_low"]) / 2 == pytest.approx(1.96 * sd_groups, rel=0.2)


def test_mean_paired_difference_equals_mean_of_pairs():
    a = np.stack([_bern(0.8, 800, 10), _bern(0.7, 800, 11)])
    b = np.stack([_bern(0.75, 800, 12), _bern(0.7, 800, 13)])
    m = mean_paired_difference(a, b, n_resamples=300)
    single = [paired_difference(a[k], b[k], n_resamples=300)["estimate"] for k in range(2)]
    assert m["estimate"] == pytest.approx(np.mean(single))
    assert m["ci_low"] < m["estimate"] < m["ci_high"]


def test_bootstrap_p_and_holm_against_hand_values():
    from apq_lib.stats import bootstrap_p, holm, holm_verdicts
    samples = np.concatenate([np.full(10, -1.0), np.full(90, 1.0)])
    assert bootstrap_p(samples) == pytest.approx(2 * 11 / 101)
    assert bootstrap_p(np.ones(50)) != bootstrap_p(np.ones(50))   # degenerate: NaN
    # Holm (1979) by hand: p sorted 0.01, 0.02, 0.04 -> 0.03, 0.04, 0.04; NaN left out
    adj = holm([0.04, 0.01, np.nan, 0.02])
    np.testing.assert_allclose(adj, [0.04, 0.03, np.nan, 0.04])
    assert holm([0.5, 0.6]).tolist() == [1.0, 1.0]                # capped at 1
    rows = [{"estimate": 1.2, "p_value": 0.01}, {"estimate": -0.8, "p_value": 0.012},
            {"estimate": 0.3, "p_value": 0.03}, {"estimate": np.nan, "p_value": np.nan}]
    # adjusted: 0.03, 0.024 (→ 0.03 by monotonicity), 0.03 -> all below 0.05
    assert holm_verdicts(rows) == ["APQ better", "APQ worse", "APQ better", "not comparable"]
    # each below 0.05 alone, but with 3 tests only the smallest survives: 0.03, 0.06, 0.06
    rows = [{"estimate": 1.0, "p_value": 0.01}, {"estimate": -1.0, "p_value": 0.03},
            {"estimate": 1.0, "p_value": 0.04}]
    assert holm_verdicts(rows) == ["APQ better", "inconclusive", "inconclusive"]
    assert holm_verdicts(rows, who="transfer", higher_is_better=False)[0] == "transfer worse"


def test_hierarchical_difference_covers_seed_spread():
    from apq_lib.stats import hierarchical_difference
    rng = np.random.default_rng(3)
    n = 4000
    base = rng.random(n) < 0.85
    # three finetune seeds of A that differ a lot from each other, B one seed
    seeds = []
    for k, shift in enumerate((0.0, 0.02, -0.02)):
        a = base.copy()
        flip = rng.choice(n, int(abs(shift) * n), replace=False)
        a[flip] = shift > 0
        seeds.append(a)
    one = hierarchical_difference(seeds[0], base, n_resamples=500)
    d1 = paired_difference(seeds[0], base, n_resamples=500)
    assert one["estimate"] == pytest.approx(d1["estimate"])
    multi = hierarchical_difference(np.stack(seeds), base[None], n_resamples=500)
    img_only = mean_paired_difference(np.stack(seeds), np.stack([base] * 3), n_resamples=500)
    assert multi["estimate"] == pytest.approx(img_only["estimate"])
    # the seed level widens the interval beyond the images-only one
    assert multi["ci_high"] - multi["ci_low"] > 1.5 * (img_only["ci_high"] - img_only["ci_low"])


def test_hierarchical_difference_search_level():
    """Two searches whose winners differ by ~4 points, 3 seeds each (search-major rows):
    resampling the searches widens the interval beyond seeds × images, leaves the estimate,
    and a single search's rows give the two-level interval bit for bit."""
    from apq_lib.stats import hierarchical_difference
    rng = np.random.default_rng(5)
    n = 3000
    base = rng.random(n) < 0.80
    rows = []
    for level in (0.84, 0.80):                       # search 0 better than search 1
        for _ in range(3):
            rows.append(rng.random(n) < level)
    a = np.stack(rows)
    two = hierarchical_difference(a, base[None], n_resamples=800)
    three = hierarchical_difference(a, base[None], n_resamples=800, searches_a=2)
    assert three["estimate"] == pytest.approx(two["estimate"])
    assert (three["ci_high"] - three["ci_low"]) > 1.25 * (two["ci_high"] - two["ci_low"])
    # the search level reaches both searches' own differences (≈ +4 and ≈ 0 points)
    assert three["ci_low"] < 1.0 < 3.0 < three["ci_high"]
    same = hierarchical_difference(a, base[None], n_resamples=800, searches_a=1)
    assert same == two
    with pytest.raises(ValueError, match="searches_a=4"):
        hierarchical_difference(a, base[None], searches_a=4)
