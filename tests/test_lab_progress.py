"""Progress bars in a real kernel: with ipywidgets installed, tqdm draws widget bars when
run interactively, and plain text bars with no TqdmWarning when APQ_PROGRESS=text (how
`make reproduce` and `make test` execute notebooks)."""
import nbformat
from nbclient import NotebookClient

WIDGET = "application/vnd.jupyter.widget-view+json"


def _run(env_line: str):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        f"import os\n{env_line}\nfrom apq_lib.progress import tqdm\n"
        "for _ in tqdm(range(7), desc='steps'):\n    pass")]
    NotebookClient(nb, kernel_name="apq", timeout=120).execute()
    return nb.cells[0].outputs


def _stderr(outputs):
    return "".join(o.get("text", "") for o in outputs if o.get("name") == "stderr")


def test_ipywidgets_installed():
    # pinned in env/requirements.txt: JupyterLab draws the progress bars as widgets with it
    import ipywidgets
    from ipywidgets import FloatProgress
    assert ipywidgets.__version__ and FloatProgress(value=1, max=2).max == 2


def test_text_bars_when_executed_headless():
    out = _run("os.environ['APQ_PROGRESS'] = 'text'")
    err = _stderr(out)
    assert "steps: 100%" in err and "7/7" in err
    assert "TqdmWarning" not in err and "IProgress" not in err
    assert not [o for o in out if WIDGET in o.get("data", {})]


def test_widget_bars_interactively():
    out = _run("os.environ.pop('APQ_PROGRESS', None)")
    assert [o for o in out if WIDGET in o.get("data", {})], out
    assert "TqdmWarning" not in _stderr(out) and "IProgress" not in _stderr(out)
