"""A fresh clone opens notebook 06 and sees the paper tables recomputed from the committed
``results/data`` alone: no artifacts, no earlier notebook. Runs 06 under papermill on a copy
of results/ in a temp dir and compares its tables with the committed ones.

``APQ_COMMITTED_RESULTS`` points the test at another results tree (e.g. a smoke chain's).
"""
import os
import shutil
from pathlib import Path

import nbformat
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCE = Path(os.environ.get("APQ_COMMITTED_RESULTS", ROOT / "results"))


def test_notebook06_runs_from_committed_data(tmp_path, monkeypatch):
    import papermill as pm

    from apq_lib.paper_tables import load_results
    from apq_lib.runner import NB_DIR

    if not (SOURCE / "data").is_dir() or not any((SOURCE / "data").iterdir()):
        pytest.fail(f"{SOURCE / 'data'} is missing or empty: notebook 06 cannot run from the "
                    f"committed results. Commit results/data/ (written by `make reproduce`) "
                    f"or set APQ_COMMITTED_RESULTS to a results tree that has it.")
    res = tmp_path / "results"
    shutil.copytree(SOURCE, res, ignore=shutil.ignore_patterns("executed"))
    for t in (res / "tables").glob("06_*"):
        t.unlink()   # 06 must write them again
    profile = load_results(res).manifest.get("profile", "default")
    monkeypatch.setenv("APQ_RESULTS_DIR", str(res))
    monkeypatch.setenv("APQ_ARTIFACTS", str(tmp_path / "no-artifacts"))
    monkeypatch.setenv("APQ_PROGRESS", "text")
    out = tmp_path / "06_executed.ipynb"
    try:
        pm.execute_notebook(str(NB_DIR / "06_paper_tables.ipynb"), str(out),
                            parameters={"profile": profile}, kernel_name="apq",
                            cwd=str(NB_DIR), progress_bar=False)
    except pm.PapermillExecutionError as e:
        pytest.fail(f"notebook 06 failed on the committed results ({SOURCE}): "
                    f"{e.ename}: {e.evalue}")
    nb = nbformat.read(out, as_version=4)
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    assert not (tmp_path / "no-artifacts").exists() or not any(
        (tmp_path / "no-artifacts").rglob("*.safetensors")), "06 wrote artifacts"
    written = sorted(p.name for p in (res / "tables").glob("06_*.csv"))
    committed = sorted(p.name for p in (SOURCE / "tables").glob("06_*.csv"))
    assert written and written == committed, (written, committed)
    for name in written:
        new, old = pd.read_csv(res / "tables" / name), pd.read_csv(SOURCE / "tables" / name)
        if name.startswith("06_table5"):   # the run summary names this run's own timings
            assert list(new.columns) == list(old.columns)
            continue
        pd.testing.assert_frame_equal(new, old, check_exact=False, rtol=1e-9, obj=name)
