"""Scratch mode: a notebook run interactively (no APQ_RESULTS_DIR) writes build/lab/results,
seeded from the committed results/data, and never touches results/; the papermill chain
(`make reproduce`) hands results/ and text progress bars to its kernels explicitly."""
import json
import os

import pytest

from apq_lib import artifacts
from apq_lib.notebook import start


@pytest.fixture
def fake_repo(tmp_path, monkeypatch):
    """A repo root with committed results/data/01_summary.json and a manifest."""
    committed = tmp_path / "results"
    (committed / "data").mkdir(parents=True)
    (committed / "data" / "01_summary.json").write_text(json.dumps({"largest_top1": 91.5}))
    files = {"data/01_summary.json": artifacts.file_sha256(committed / "data" /
                                                           "01_summary.json")}
    (committed / "manifest.json").write_text(json.dumps({"profile": "default",
                                                         "notebooks": {"01_supernet": {}},
                                                         "files": files}))
    monkeypatch.setattr(artifacts, "REPO_ROOT", tmp_path)
    monkeypatch.delenv("APQ_RESULTS_DIR", raising=False)
    monkeypatch.setenv("APQ_ARTIFACTS", str(tmp_path / "artifacts"))
    return tmp_path


def _snapshot(d):
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_interactive_run_writes_scratch_not_results(fake_repo, capsys):
    before = _snapshot(fake_repo / "results")
    ctx = start("02_hardware", "smoke")
    scratch = fake_repo / "build" / "lab" / "results"
    assert ctx.results == scratch
    assert "scratch" in capsys.readouterr().out
    # inputs of earlier notebooks come from the committed copy
    assert ctx.read_json("01_summary.json", "01_supernet") == {"largest_top1": 91.5}
    assert ctx.write_json("02_summary.json", {"x": 1}) == scratch / "data" / "02_summary.json"
    m = ctx.finish()
    assert set(m["notebooks"]) == {"01_supernet", "02_hardware"}
    assert "02_hardware" in json.loads((scratch / "manifest.json").read_text())["notebooks"]
    assert _snapshot(fake_repo / "results") == before
    # a second notebook in the same scratch session sees the first one's output
    (fake_repo / "results" / "data" / "01_summary.json").unlink()
    ctx2 = start("03_predictor", "smoke")
    assert ctx2.read_json("02_summary.json", "02_hardware") == {"x": 1}
    assert ctx2.read_json("01_summary.json", "01_supernet") == {"largest_top1": 91.5}


def test_explicit_results_dir_wins(fake_repo, monkeypatch):
    monkeypatch.setenv("APQ_RESULTS_DIR", str(fake_repo / "results"))
    ctx = start("02_hardware", "smoke")
    ctx.write_json("02_summary.json", {"x": 2})
    assert json.loads((fake_repo / "results" / "data" / "02_summary.json").read_text()) == {"x": 2}
    assert not (fake_repo / "build").exists()


def test_reproduce_chain_hands_results_and_text_bars_to_kernels(tmp_path, monkeypatch):
    import papermill as pm

    from apq_lib import runner
    seen = []
    for var in ("APQ_RESULTS_DIR", "APQ_PROGRESS"):   # unset now and after (run_chain sets them)
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)
    monkeypatch.setenv("APQ_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.setattr(pm, "execute_notebook", lambda *a, **k: seen.append(
        (os.environ.get("APQ_RESULTS_DIR"), os.environ.get("APQ_PROGRESS"))))
    monkeypatch.setattr(runner, "record_chain", lambda info, d: seen.append(("chain", d)))
    runner.run_chain("smoke", tmp_path / "executed", only=["02"])
    assert seen == [(str(runner.REPO / "results"), "text"), ("chain", runner.REPO / "results")]
    # the kernels got them; this process's environment is as it was (a later JupyterLab
    # started from the same process must draw widget bars, not text)
    assert "APQ_PROGRESS" not in os.environ and "APQ_RESULTS_DIR" not in os.environ

