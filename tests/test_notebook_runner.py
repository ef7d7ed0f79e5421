"""Notebook context (naming, missing inputs, manifest) and the papermill runner."""
import json

import nbformat
import pytest

from apq_lib.artifacts import MissingInputError
from apq_lib.notebook import start
from apq_lib.runner import NOTEBOOKS, notebook_parameters, prepare_chain


def test_results_named_after_notebook(tmp_results):
    ctx = start("02_hardware", "smoke")
    p = ctx.write_json("02_summary.json", {"x": 1})
    assert p == tmp_results / "data" / "02_summary.json"
    with pytest.raises(ValueError, match="start with 02_"):
        ctx.write_json("summary.json", {})


def test_missing_input_names_notebook(tmp_results):
    ctx = start("04_search", "smoke")
    with pytest.raises(MissingInputError, match="run notebook 03_predictor first"):
        ctx.read_json("03_summary.json", "03_predictor")


def test_unknown_override_stops_notebook(tmp_results):
    from apq_lib.config import ConfigError
    with pytest.raises(ConfigError, match="search.populaton"):
        start("04_search", "smoke", {"search.populaton": 3})


def test_finish_writes_manifest(tmp_results):
    ctx = start("01_supernet", "smoke")
    ctx.write_json("01_summary.json", {"a": 1})
    m = ctx.finish()
    assert "01_supernet" in m["notebooks"] and "data/01_summary.json" in m["files"]
    assert json.loads((tmp_results / "manifest.json").read_text())["profile"] == "smoke"


def test_seed_makes_runs_identical(tmp_results):
    import torch
    start("01_supernet", "smoke")
    a = torch.randn(5)
    start("01_supernet", "smoke")
    assert torch.equal(a, torch.randn(5))


def test_prepare_injects_profile(tmp_path):
    paths = prepare_chain("smoke", tmp_path, only=["01", "06"])
    assert [p.stem for p in paths] == ["01_supernet", "06_paper_tables"]
    nb = nbformat.read(paths[0], as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and 'profile = "smoke"' in injected[0].source
    assert notebook_parameters("smoke", NOTEBOOKS[0])["profile"] == "smoke"


def test_unknown_notebook_selection(tmp_path):
    with pytest.raises(SystemExit, match="unknown notebook"):
        prepare_chain("smoke", tmp_path, only=["09"])
