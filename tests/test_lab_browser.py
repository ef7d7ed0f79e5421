"""JupyterLab as a user meets it, driven by a real browser (Debian's chromium + playwright).

Starts ``jupyter lab`` on 127.0.0.1 (free port, random token) on a smoke-prepared copy of
02_hardware, opens it, runs all cells, waits for the kernel to go idle and checks what the
user sees: the ``apq`` kernel, no news pop-up, no error output, no TqdmWarning, every figure
rendered. A screenshot goes to ``build/lab/``. Skipped (with the reason) without chromium.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from apq_lib.runner import prepare_chain

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("APQ_CHROMIUM", "/usr/bin/chromium")
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run"]
NOTEBOOK = "02_hardware"
RUN_TIMEOUT_S = 600


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> dict:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            pytest.fail(f"jupyter lab exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return json.loads(r.read())
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"jupyter lab did not answer {url} within {timeout}s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def lab_server(tmp_path):
    """JupyterLab on a prepared smoke copy of NOTEBOOK; yields (base url, token, nb path)."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"browser test skipped: {CHROMIUM} not found (install Debian's chromium: "
                    f"apt-get install -y chromium; .ci/run does this when root)")
    pytest.importorskip("playwright.sync_api", reason="browser test skipped: playwright is "
                        "not installed (pip install -r env/requirements.txt)")
    nbdir = tmp_path / "notebooks"
    (nb_path,) = prepare_chain("smoke", nbdir, only=[NOTEBOOK[:2]])
    # One more cell with a progress bar: the widget must render in Lab (ipywidgets' extension).
    nb = nbformat.read(nb_path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(
        "from apq_lib.progress import tqdm\nfor _ in tqdm(range(3), desc='widget check'):\n"
        "    pass"))
    nbformat.write(nb, nb_path)
    settings = tmp_path / "lab-user-settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    # Render every cell (no windowing) so the DOM holds all outputs for the checks below.
    (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    port, token = _free_port(), os.urandom(16).hex()
    t0 = time.time()
    env = {**os.environ, "APQ_RESULTS_DIR": str(tmp_path / "results"),
           "APQ_ARTIFACTS": str(tmp_path / "artifacts"),
           "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "lab-user-settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "lab-workspaces"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
           f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={nbdir}"]
    if os.getuid() == 0:
        cmd.append("--allow-root")
    log = tmp_path / "jupyter-lab.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        specs = _wait_http(f"{base}/api/kernelspecs?token={token}", proc, log)
        print(f"jupyter lab answered after {time.time() - t0:.1f}s")
        assert specs["default"] == "apq", f"default kernel is {specs['default']!r}, not apq"
        notif = _wait_http(f"{base}/lab/api/settings/@jupyterlab/apputils-extension:"
                           f"notification?token={token}", proc, log)
        # overrides.json replaces the schema's defaults; user settings (none here) come on top
        fetch = notif["settings"].get("fetchNews",
                                      notif["schema"]["properties"]["fetchNews"]["default"])
        assert fetch == "false", (f"Jupyter news not switched off (fetchNews={fetch!r}): "
                                  f"env/setup.sh writes share/jupyter/lab/settings/overrides.json")
        yield base, token, nb_path
    finally:
        # Stop the server by its pid (it shuts its kernels down), then its process group.
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        try:
            os.killpg(proc.pid, signal.SIGKILL)   # a kernel left behind, if any
        except ProcessLookupError:
            pass


def test_run_all_in_jupyterlab(lab_server):
    from playwright.sync_api import sync_playwright

    base, token, nb_path = lab_server
    nb = nbformat.read(nb_path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    n_figures = sum("plt.show()" in c.source for c in code)
    shot = ROOT / "build" / "lab" / f"browser_{NOTEBOOK}.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{base}/lab/tree/{nb_path.name}?token={token}")
            page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=120_000)
            kernel = page.locator(".jp-NotebookPanel-toolbar .jp-KernelName").first
            kernel.wait_for(timeout=60_000)
            page.wait_for_function("""() => {
                const e = document.querySelector('.jp-NotebookPanel-toolbar .jp-KernelName');
                return e && /apq/.test(e.textContent)}""", timeout=60_000)
            t_run = time.time()
            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
            page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
            # Idle = every code cell has an execution count and none shows [*].
            page.wait_for_function("""(n) => {
                const ps = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')];
                return ps.length === n && ps.every(p => /\\[\\d+\\]/.test(p.textContent));
            }""", arg=len(code), timeout=RUN_TIMEOUT_S * 1000, polling=1000)
            t_run = time.time() - t_run
            page.wait_for_timeout(1000)   # let the last outputs paint
            page.screenshot(path=str(shot))
            first_fig = page.locator(".jp-OutputArea-output img").first
            if first_fig.count():
                first_fig.scroll_into_view_if_needed()
                page.screenshot(path=str(shot.with_name(shot.stem + "_figure.png")))
            errors = page.locator('.jp-OutputArea-output[data-mime-type='
                                  '"application/vnd.jupyter.error"]').all_inner_texts()
            stderr = page.locator('.jp-OutputArea-output[data-mime-type='
                                  '"application/vnd.jupyter.stderr"]').all_inner_texts()
            images = page.eval_on_selector_all(
                ".jp-OutputArea-output img", "els => els.map(e => e.naturalWidth)")
            widgets = page.locator(".jp-OutputArea-output .widget-hprogress").count()
            news = page.get_by_text("get notified about official Jupyter news").count()
            kernel_name = kernel.inner_text()
        finally:
            browser.close()
    assert not errors, f"error outputs in {nb_path.name}:\n" + "\n---\n".join(errors)[:4000]
    assert not [s for s in stderr if "TqdmWarning" in s or "IProgress" in s], stderr
    assert len(images) == n_figures and all(w > 0 for w in images), \
        f"{len(images)} images rendered (widths {images}), expected {n_figures} figures"
    assert widgets >= 1, "tqdm drew no widget progress bar in JupyterLab"
    assert news == 0, "the Jupyter news pop-up is shown (lab settings override missing?)"
    assert "apq" in kernel_name
    assert shot.stat().st_size > 10_000
    print(f"Run All to idle: {t_run:.1f}s; screenshot: {shot}; {len(images)} figures, "
          f"{widgets} widget progress bars, "
          f"{len(stderr)} stderr outputs")
