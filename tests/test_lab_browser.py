"""JupyterLab as a user meets it, driven by a real browser (Debian's chromium + playwright).

Starts ``jupyter lab`` on 127.0.0.1 (free port, random token) on a smoke-prepared copy of
02_hardware, opens it, runs all cells, waits for the kernel to go idle and checks what the
user sees: the ``apq`` kernel, no news pop-up, no error output, no TqdmWarning, every figure
rendered. A screenshot goes to ``build/lab/``. Skipped (with the reason) without chromium.

Run All is pressed only once the kernel reports ``idle`` (over the REST API and in the
toolbar): on a cold machine the kernel's name shows long before it answers, and a Run All
sent then was lost, leaving every cell unrun and the kernel idle for the whole timeout. The
run is watched cell by cell: a cell that errors fails the test at once, and no progress for
``STALL_S`` seconds fails it with a screenshot, every cell's prompt and error, and the tail
of the Lab server log (all under ``build/lab/``).
"""
import json
import os
import re
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
STALL_S = float(os.environ.get("APQ_LAB_STALL_S", 60))   # no cell finished for this long
OUT = ROOT / "build" / "lab"
# a progress bar: the widget must render in Lab (ipywidgets' extension)
WIDGET_CELL = ("from apq_lib.progress import tqdm\nfor _ in tqdm(range(3), desc='widget check'):\n"
               "    pass")
# every code cell's prompt ("[3]:", "[*]:", "[ ]:") and its error output, if any. Lab 4
# renders a cell's error with the stderr MIME type, so an error is a stderr output holding a
# traceback (warnings and progress bars on stderr are not errors).
CELLS_JS = """() => [...document.querySelectorAll('.jp-NotebookPanel .jp-CodeCell')].map(c => {
    const p = c.querySelector('.jp-InputPrompt');
    const outs = [...c.querySelectorAll('.jp-OutputArea-output[data-mime-type='
        + '"application/vnd.jupyter.error"], .jp-OutputArea-output[data-mime-type='
        + '"application/vnd.jupyter.stderr"]')];
    const e = outs.find(o => o.dataset.mimeType === 'application/vnd.jupyter.error'
        || /Traceback \\(most recent call last\\)|^\\s*[\\w.]*(Error|Exception)\\b/m
           .test(o.innerText));
    return {prompt: p ? p.textContent.trim() : '', error: e ? e.innerText : null}; })"""


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


def _prepare_notebook(nbdir: Path, cells: dict) -> Path:
    """A smoke copy of NOTEBOOK with ``cells["append"]`` code cells appended, or only the
    code cells ``cells["only"]`` (a deliberately broken notebook)."""
    (nb_path,) = prepare_chain("smoke", nbdir, only=[NOTEBOOK[:2]])
    nb = nbformat.read(nb_path, as_version=4)
    if "only" in cells:
        nb.cells = []
    nb.cells += [nbformat.v4.new_code_cell(src) for src in
                 cells.get("only", cells.get("append", []))]
    nbformat.write(nb, nb_path)
    return nb_path


@pytest.fixture
def lab_server(tmp_path, request):
    """JupyterLab on a prepared smoke copy of NOTEBOOK (plus the extra cells a test passes
    as ``request.param``); yields (base url, token, nb path, server log)."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"browser test skipped: {CHROMIUM} not found (install Debian's chromium: "
                    f"apt-get install -y chromium; .ci/run does this when root)")
    pytest.importorskip("playwright.sync_api", reason="browser test skipped: playwright is "
                        "not installed (pip install -r env/requirements.txt)")
    nb_path = _prepare_notebook(tmp_path / "notebooks",
                                getattr(request, "param", {"append": [WIDGET_CELL]}))
    nbdir = nb_path.parent
    settings = tmp_path / "lab-user-settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    # Render every cell (no windowing) so the DOM holds all outputs for the checks below.
    (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    port, token = _free_port(), os.urandom(16).hex()
    t0 = time.time()
    # as a user opens Lab: widget progress bars (no APQ_PROGRESS=text from a chain or shell)
    env = {**{k: v for k, v in os.environ.items() if k != "APQ_PROGRESS"},
           "APQ_RESULTS_DIR": str(tmp_path / "results"),
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
    OUT.mkdir(parents=True, exist_ok=True)
    log = OUT / f"jupyter-lab-{request.node.name}.log"   # kept for the diagnostics
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
        yield base, token, nb_path, log
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




def _kernel_state(base: str, token: str, nb_name: str):
    """The execution state of the notebook's kernel over the REST API (None: no session)."""
    with urllib.request.urlopen(f"{base}/api/sessions?token={token}", timeout=5) as r:
        sessions = json.loads(r.read())
    for sess in sessions:
        if Path(sess.get("path", "")).name == nb_name:
            return (sess.get("kernel") or {}).get("execution_state")
    return None


def _fail(page, log: Path, why: str):
    """Fail with what a reader needs: a screenshot, every cell's prompt and error, and the
    tail of the Lab server log."""
    shot = OUT / "browser_failure.png"
    lines = []
    try:
        page.screenshot(path=str(shot))
        for i, c in enumerate(page.evaluate(CELLS_JS)):
            err = "" if c["error"] is None else "  ERROR: " + c["error"][-800:]
            lines.append(f"  cell {i}: {c['prompt'] or '(no prompt)'}{err}")
    except Exception as exc:                      # the page itself may be gone
        lines.append(f"  (page unreadable: {exc})")
    tail = log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"
    pytest.fail(f"{why}\nscreenshot: {shot}\ncells:\n" + "\n".join(lines)
                + f"\n--- tail of the Lab server log ({log}):\n{tail}", pytrace=False)


def run_all(page, base: str, token: str, nb_path: Path, log: Path, n_cells: int,
            stall_s: float = STALL_S, timeout_s: float = RUN_TIMEOUT_S) -> float:
    """Open ``nb_path``, wait until its kernel is idle, Run All, and watch the cells until
    all ``n_cells`` have run. Fails at once on a cell error, after ``stall_s`` without a
    cell finishing, or after ``timeout_s``. Returns the seconds from Run All to done."""
    page.goto(f"{base}/lab/tree/{nb_path.name}?token={token}")
    page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=120_000)
    t0 = time.time()
    while _kernel_state(base, token, nb_path.name) != "idle":      # cold start: can take long
        if time.time() - t0 > 180:
            _fail(page, log, f"the kernel of {nb_path.name} was not idle within 180 s "
                             f"(state {_kernel_state(base, token, nb_path.name)!r})")
        page.wait_for_timeout(500)
    try:
        page.wait_for_function("""() => {
            const e = document.querySelector('.jp-NotebookPanel-toolbar .jp-KernelName');
            return e && /apq/.test(e.textContent)}""", timeout=60_000)
    except Exception:
        _fail(page, log, "the toolbar never showed the apq kernel")
    t_run = time.time()
    for attempt in range(3):              # a click lost while Lab settles is sent again
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
        t_click = time.time()
        while time.time() - t_click < 15:
            if any(re.search(r"\[(\*|\d+)\]", c["prompt"]) for c in page.evaluate(CELLS_JS)):
                break
            page.wait_for_timeout(300)
        else:
            continue
        break
    else:
        _fail(page, log, "Run All Cells started no cell (3 attempts, 15 s each)")
    done_before, t_progress = -1, time.time()
    while True:
        cells = page.evaluate(CELLS_JS)
        bad = [(i, c) for i, c in enumerate(cells) if c["error"] is not None]
        if bad:
            _fail(page, log, f"cell {bad[0][0]} of {nb_path.name} raised an error")
        done = sum(bool(re.search(r"\[\d+\]", c["prompt"])) for c in cells)
        if len(cells) == n_cells and done == n_cells:
            return time.time() - t_run
        now = time.time()
        if done != done_before:
            done_before, t_progress = done, now
        elif now - t_progress > stall_s:
            _fail(page, log, f"no cell finished for {stall_s:.0f} s ({done} of {n_cells} "
                             f"cells done, {now - t_run:.0f} s after Run All)")
        if now - t_run > timeout_s:
            _fail(page, log, f"Run All did not finish within {timeout_s:.0f} s")
        page.wait_for_timeout(500)


def _browser(p):
    return p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS, headless=True)


def test_run_all_in_jupyterlab(lab_server):
    from playwright.sync_api import sync_playwright

    base, token, nb_path, log = lab_server
    nb = nbformat.read(nb_path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    n_figures = sum("plt.show()" in c.source for c in code)
    shot = OUT / f"browser_{NOTEBOOK}.png"
    with sync_playwright() as p:
        browser = _browser(p)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            t_run = run_all(page, base, token, nb_path, log, len(code))
            page.wait_for_timeout(1000)   # let the last outputs paint
            page.screenshot(path=str(shot))
            first_fig = page.locator(".jp-OutputArea-output img").first
            if first_fig.count():
                first_fig.scroll_into_view_if_needed()
                page.screenshot(path=str(shot.with_name(shot.stem + "_figure.png")))
            stderr = page.locator('.jp-OutputArea-output[data-mime-type='
                                  '"application/vnd.jupyter.stderr"]').all_inner_texts()
            images = page.eval_on_selector_all(
                ".jp-OutputArea-output img", "els => els.map(e => e.naturalWidth)")
            widgets = page.locator(".jp-OutputArea-output .widget-hprogress").count()
            news = page.get_by_text("get notified about official Jupyter news").count()
            kernel_name = page.locator(".jp-NotebookPanel-toolbar .jp-KernelName").first\
                .inner_text()
        finally:
            browser.close()
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


BROKEN = {"only": ["print('first cell')", "import time\ntime.sleep(3600)", "print('never')"]}
ERRORS = {"only": ["print('first cell')", "raise RuntimeError('deliberately broken cell')",
                   "import time\ntime.sleep(3600)"]}


@pytest.mark.parametrize("lab_server, expect", [(BROKEN, "no cell finished for 15 s"),
                                                (ERRORS, "cell 1 of")],
                         indirect=["lab_server"], ids=["stall", "error"])
def test_run_all_fails_fast_and_explains(lab_server, expect):
    """A stalled notebook fails after STALL_S (15 s here), an erroring cell at once; both
    with the screenshot, every cell's prompt and the server log's tail."""
    from playwright.sync_api import sync_playwright

    base, token, nb_path, log = lab_server
    with sync_playwright() as p:
        browser = _browser(p)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            t0 = time.time()
            with pytest.raises(pytest.fail.Exception) as exc:
                run_all(page, base, token, nb_path, log, 3, stall_s=15)
            took = time.time() - t0
        finally:
            browser.close()
    msg = str(exc.value)
    assert expect in msg, msg
    assert "cell 0: [1]" in msg and "screenshot:" in msg and "tail of the Lab server log" in msg
    if expect.startswith("cell"):
        assert "deliberately broken cell" in msg
    print(f"failed as expected after {took:.0f} s")
