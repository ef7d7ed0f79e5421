"""Search-cost accounting: measured stages, shared vs per-search, amortisation, APQ's
stages read from the earlier notebooks' summaries."""
import json
import time

import pytest

from apq_lib.baselines.cost import CostMeter, apq_cost_from_results


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


def test_apq_cost_from_summaries(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    (d / "01_summary.json").write_text(json.dumps({"train_seconds": 120.0}))
    (d / "03_summary.json").write_text(json.dumps({"collection_seconds_fp32": 30.0,
                                                   "collection_seconds_quant": 60.0}))
    (d / "04_summary.json").write_text(json.dumps({"search_seconds_total": 12.0,
                                                   "n_searches": 4}))
    m = CostMeter("cpu")
    got = {r.stage: (r.wall_s, r.kind) for r in apq_cost_from_results(m, tmp_path)}
    assert got["supernet training"] == (120.0, "shared")
    assert got["FP32 pairs"] == (30.0, "shared") and got["quantized pairs"] == (60.0, "shared")
    assert got["evolution search"] == (3.0, "per_search")      # per search: 12 s / 4
    assert "predictor training" not in got                     # 03 has no such field
    assert m.table(1).set_index("method").loc["APQ", "first_search_s"] == pytest.approx(213.0)
    # a summary without the field: the notebook's run time from the manifest, once
    (d / "04_summary.json").write_text(json.dumps({"other": 1}))
    (tmp_path / "manifest.json").write_text(json.dumps(
        {"notebooks": {"04_search": {"seconds": 9.0}}}))
    m2 = CostMeter("cpu")
    got2 = {r.stage: (r.wall_s, r.source) for r in apq_cost_from_results(m2, tmp_path)}
    assert got2["evolution search"] == (9.0, "manifest (notebook run time)")


def test_targets_spread_over_apq_budgets():
    from apq_lib.baselines import pick_targets, spread
    assert spread(5, 1) == [2] and spread(5, 2) == [0, 4] and spread(5, 3) == [0, 2, 4]
    assert spread(2, 5) == [0, 1] and spread(0, 2) == [] and spread(3, 0) == []
    assert pick_targets([3.0, 1.0, 2.0, 2.0, float("nan")], 2) == [1.0, 3.0]
    assert pick_targets([3.0, 1.0, 2.0], 1) == [2.0]
