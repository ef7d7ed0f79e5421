"""Notebook 06's Table 1: equal-accuracy cost ratios against hand-computed values."""
import numpy as np
import pandas as pd
import pytest

from apq_lib.paper_tables import DERIVED, Results, check_provenance, joint_vs_fixed_haq

PAPER = {"claims": {"joint_vs_fixed_haq": {"latency_ratio": 2.0, "energy_ratio": 1.3}}}
APQ = pd.DataFrame({"test_acc": [85.0, 87.0, 89.0], "latency_ms": [1.0, 2.0, 4.0],
                    "energy_mj": [10.0, 20.0, 40.0], "method": "APQ",
                    "model_id": ["a0", "a1", "a2"]})
N = 1000


def _hits(acc: float) -> np.ndarray:
    """Nested correctness (the first acc % of the images): a more accurate model is right on
    every image a less accurate one is, so every resample keeps the order."""
    c = np.zeros(N, bool)
    c[: int(round(acc * N / 100))] = True
    return c


def _results(haq_rows) -> Results:
    base = pd.DataFrame(haq_rows).assign(method="HAQ", variant="linear", model="MobileNetV2",
                                         met=True)
    base["row_id"] = [f"h{i}" for i in range(len(base))]
    correct = {**{i: _hits(a) for i, a in zip(APQ["model_id"], APQ["test_acc"])},
               **{i: _hits(a) for i, a in zip(base["row_id"], base["test_acc"])}}
    empty = pd.DataFrame()
    return Results({}, {}, {}, {}, {}, empty, APQ, base, empty, {}, PAPER, correct)


def test_table1_cheapest_apq_model_at_least_as_accurate():
    r = _results([
        {"constraint": "latency <= 3 ms", "test_acc": 86.0, "latency_ms": 3.0,
         "energy_mj": 33.0},
        {"constraint": "energy <= 50 mJ", "test_acc": 88.5, "latency_ms": 5.0,
         "energy_mj": 50.0},
        {"constraint": "latency <= 9 ms", "test_acc": 95.0, "latency_ms": 9.0,
         "energy_mj": 90.0}])
    t = joint_vs_fixed_haq(r)
    lat, en = t[t["matched"] == "latency"], t[t["matched"] == "energy"]
    # 86 % at 3 ms: the cheapest APQ model with >= 86 % is the 2 ms one -> 1.5x
    assert lat["ratio (baseline/APQ)"].iloc[0] == pytest.approx(1.5)
    assert lat["APQ top-1"].iloc[0] == 87.0
    # no APQ model reaches 95 %: no ratio rather than a wrong one
    assert np.isnan(lat["ratio (baseline/APQ)"].iloc[1])
    # energy: only the energy-constrained HAQ model, 50 mJ vs 40 mJ (89 %)
    assert len(en) == 1 and en["ratio (baseline/APQ)"].iloc[0] == pytest.approx(1.25)
    assert set(t["paper ratio"]) == {2.0, 1.3}
    check_provenance(t, r, derived=DERIVED)


def test_table1_compares_every_haq_model_when_a_cost_was_not_searched():
    r = _results([{"constraint": "latency <= 3 ms", "test_acc": 86.0, "latency_ms": 3.0,
                   "energy_mj": 33.0}])
    t = joint_vs_fixed_haq(r)
    en = t[t["matched"] == "energy"]
    assert len(en) == 1 and en["ratio (baseline/APQ)"].iloc[0] == pytest.approx(33.0 / 20.0)


def test_table1_interval_and_verdict_of_the_matched_ratio():
    r = _results([{"constraint": "latency <= 3 ms", "test_acc": 86.0, "latency_ms": 3.0,
                   "energy_mj": 33.0}])
    t = joint_vs_fixed_haq(r)
    lat = t[t["matched"] == "latency"].iloc[0]
    # nested correctness: the 87 % model beats the 86 % one on every resample -> [1.5, 1.5]
    assert lat["ci_low"] == pytest.approx(1.5) and lat["ci_high"] == pytest.approx(1.5)
    assert lat["verdict"] == "holds"
    assert lat["top-1 gain"] == pytest.approx(1.0)
    assert lat["gain ci_low"] > 0


def test_table1_within_noise_when_accuracies_are_indistinguishable():
    r = _results([{"constraint": "latency <= 3 ms", "test_acc": 86.0, "latency_ms": 3.0,
                   "energy_mj": 33.0}])
    rng = np.random.default_rng(0)          # the HAQ model: 86 % but on other images than APQ's
    r.correct["h0"] = rng.permutation(_hits(86.0))
    r.correct["a1"] = rng.permutation(_hits(86.1))
    t = joint_vs_fixed_haq(r)
    lat = t[t["matched"] == "latency"].iloc[0]
    assert lat["verdict"] == "within noise"
    assert lat["ci_low"] < 1.0 or np.isnan(lat["ci_low"])
