from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent   # apq_lib comes from the editable install


@pytest.fixture
def tmp_results(tmp_path, monkeypatch):
    """Redirect results/ and artifacts/ into a temp dir for the test."""
    res = tmp_path / "results"
    monkeypatch.setenv("APQ_RESULTS_DIR", str(res))
    monkeypatch.setenv("APQ_ARTIFACTS", str(tmp_path / "artifacts"))
    return res


@pytest.fixture
def one_thread():
    """Tiny tensors: one torch thread avoids thread contention on a shared 2-core box."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
