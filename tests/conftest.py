import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


@pytest.fixture
def tmp_results(tmp_path, monkeypatch):
    """Redirect results/ and artifacts/ into a temp dir for the test."""
    res = tmp_path / "results"
    monkeypatch.setenv("APQ_RESULTS_DIR", str(res))
    monkeypatch.setenv("APQ_ARTIFACTS", str(tmp_path / "artifacts"))
    return res
