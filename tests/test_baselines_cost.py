"""Search-cost accounting: measured stages, shared vs per-search, amortisation, APQ's
stages read from the earlier notebooks' summaries."""
import json
import time

import pytest

from apq_lib.artifacts import MissingInputError
from apq_lib.baselines.cost import (
    MULTISTAGE_NAS,
    CostMeter,
    apq_cost_from_results,
    cost_curve,
    stages_from_results,
)


def test_meter_measures_and_amortises():
    m = CostMeter("cpu")
    with m.stage("HAQ", "episodes", search="lat<=1") as t:
        time.sleep(0.05)
    assert t["wall_s"] >= 0.04 and t["cpu_s"] >= 0.0
    m.add("HAQ", "episodes", 1.0, search="lat<=2")
    m.add("HAQ", "train model", 100.0, "shared")
    m.add("APQ", "supernet", 50.0, "shared")
    m.add("APQ", "search", 2.0)
    tab = m.table(n_searches=10).set_index("method")
    per = (t["wall_s"] + 1.0) / 2                      # averaged over the two searches run
    assert tab.loc["HAQ", "per_search_s"] == pytest.approx(per)
    assert tab.loc["HAQ", "searches_run"] == 2
    assert tab.loc["HAQ", "first_search_s"] == pytest.approx(100.0 + per)
    assert tab.loc["HAQ", "amortised_s_N10"] == pytest.approx(10.0 + per)
    assert tab.loc["APQ", "amortised_s_N10"] == pytest.approx(2.0 + 5.0)
    with pytest.raises(ValueError):
        m.add("X", "y", 1.0, kind="sometimes")


def _summaries(d, **over):
    s = {"01": {"largest_top1": 92.0, "smallest_top1": 87.0, "random_macs_spearman": 0.7,
                "train_seconds": 120.0},
         "03": {"fp32_pairs": 10, "quant_pairs": 5, "collection_seconds_fp32": 30.0,
                "collection_seconds_quant": 60.0, "train_seconds": 3.0,
                "predictor_artifact": "predictor/abc"},
         "04": {"n_searches": 4, "search_seconds_total": 12.0, "predicted_test_spearman": 0.5,
                "predicted_minus_test_mean": 0.1, "evolution_minus_random_test_mean": 0.2,
                "evolution_minus_random_test_ci": [-0.1, 0.5], "predicted_minus_test_raw": 0.1,
                "offset_source": "none", "baseline_budgets": {}, "containment": [],
                "cost_test_spearman": {"latency": 0.4}}}
    for k, v in over.items():
        s[k[1:]].update(v) if v is not None else s.pop(k[1:])
    for nb, v in s.items():
        (d / f"{nb}_summary.json").write_text(json.dumps(v))


def test_apq_cost_from_summaries(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    _summaries(d)
    m = CostMeter("cpu")
    got = {r.stage: (r.wall_s, r.kind) for r in apq_cost_from_results(m, tmp_path)}
    assert got["supernet training"] == (120.0, "shared")
    assert got["FP32 pairs"] == (30.0, "shared") and got["quantized pairs"] == (60.0, "shared")
    assert got["predictor training"] == (3.0, "shared")
    assert got["evolution search"] == (3.0, "per_search")      # per search: 12 s / 4
    assert m.table(1).set_index("method").loc["APQ", "first_search_s"] == pytest.approx(216.0)


def test_multistage_pays_its_nas_per_search(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    _summaries(d)
    m = CostMeter("cpu")
    stages_from_results(m, tmp_path, "Multi-stage", MULTISTAGE_NAS)
    m.add("Multi-stage", "3 HAQ", 10.0)
    tab = m.table(1).set_index("method")
    assert tab.loc["Multi-stage", "shared_s"] == 0.0
    assert tab.loc["Multi-stage", "per_search_s"] == pytest.approx(120.0 + 30.0 + 10.0)
    assert cost_curve(0.0, 160.0, [1, 10]) == [160.0, 1600.0]


def test_stale_or_missing_summary_names_the_notebook(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    _summaries(d, s04={"search_seconds_total": None})
    (d / "04_summary.json").write_text(json.dumps({"n_searches": 4}))
    with pytest.raises(MissingInputError, match="04_search"):
        apq_cost_from_results(CostMeter("cpu"), tmp_path)
    (d / "03_summary.json").unlink()
    with pytest.raises(MissingInputError, match="03_predictor"):
        apq_cost_from_results(CostMeter("cpu"), tmp_path)
    (d / "01_summary.json").write_text("{torn")
    with pytest.raises(MissingInputError, match="01_supernet"):
        apq_cost_from_results(CostMeter("cpu"), tmp_path)


def test_targets_spread_over_apq_budgets():
    from apq_lib.baselines import pick_targets, spread
    assert spread(5, 1) == [2] and spread(5, 2) == [0, 4] and spread(5, 3) == [0, 2, 4]
    assert spread(2, 5) == [0, 1] and spread(0, 2) == [] and spread(3, 0) == []
    assert pick_targets([3.0, 1.0, 2.0, 2.0, float("nan")], 2) == [1.0, 3.0]
    assert pick_targets([3.0, 1.0, 2.0], 1) == [2.0]


def test_front_points_give_each_reference_network_its_own_series():
    """On the fronts, ``Fixed W8A8`` is MobileNetV2 inherited alone; the largest corner and
    MobileNetV2 trained standalone are one series each; PTQ and missed budgets are left out."""
    import numpy as np
    import pandas as pd

    from apq_lib.baselines import LARGEST, MBV2, MBV2_STANDALONE
    from apq_lib.baselines.study import front_points

    res = pd.DataFrame([
        ("Fixed W8A8", "QAT", MBV2, np.nan), ("Fixed W4A4", "QAT", MBV2, np.nan),
        ("Fixed W8A8", "QAT", LARGEST, np.nan), ("Fixed W8A8", "QAT", MBV2_STANDALONE, np.nan),
        ("Fixed W4A4", "QAT", MBV2_STANDALONE, np.nan),
        ("Fixed W8A8", "PTQ", MBV2_STANDALONE, np.nan),
        ("Fixed W8A8", "QAT", "APQ arch (latency <= 0.3)", np.nan),
        ("HAQ", "linear", MBV2, True), ("HAQ", "linear", MBV2, False)],
        columns=["method", "variant", "model", "met"])
    pts = front_points(res)
    assert list(pts["method"]) == [
        "Fixed W8A8", "Fixed W4A4", f"{LARGEST} (fixed bits)", f"{MBV2_STANDALONE} (fixed bits)",
        f"{MBV2_STANDALONE} (fixed bits)", "Fixed W8A8 (APQ arch)", "HAQ"]
