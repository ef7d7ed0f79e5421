"""Search-cost accounting: measured stages, shared vs per-search, amortisation, APQ's
stages read from the earlier notebooks' summaries."""
import json
import time

import pytest

from apq_lib.search.cost import CostMeter, apq_cost_from_results


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
    (d / "03_summary.json").write_text(json.dumps({"collection": {"data_seconds": 30.0}}))
    (d / "04_summary.json").write_text(json.dumps({"other": 1}))
    (tmp_path / "manifest.json").write_text(json.dumps(
        {"notebooks": {"04_search": {"seconds": 9.0}}}))
    m = CostMeter("cpu")
    recs = apq_cost_from_results(m, tmp_path)
    got = {r.stage: (r.wall_s, r.kind) for r in recs}
    assert got["supernet training"] == (120.0, "shared")
    assert got["predictor data"] == (30.0, "shared")
    assert got["search"] == (9.0, "per_search")              # manifest fallback
    assert "predictor training" not in got                   # 03 has no such field
    assert m.table(1).set_index("method").loc["APQ", "first_search_s"] == pytest.approx(159.0)
