"""Run the notebook chain with papermill (``make reproduce``) or prepare smoke copies for
nbval (``make test``). ``python -m apq_lib.runner {reproduce,prepare} --profile NAME``.

Parameters are checked against each notebook's ``parameters`` cell
(``papermill.inspect_notebook``) before it runs: an unknown name or a value of another type
than the cell's default (e.g. the string ``'false'`` for ``force``) is an error, where
plain papermill only warns and runs.

One chain per results dir: a second one is refused, naming the first's pid (an ``flock`` on
``<results>/.chain.lock``, released by the kernel when the chain ends or dies), so two chains
never overwrite each other's results or ``executed/`` copies. Ctrl-C stops the chain with one
line saying what was kept and how to resume (exit code 130)."""
from __future__ import annotations

import argparse
import ast
import contextlib
import fcntl
import os
import sys
import time
from pathlib import Path
from typing import Iterator, Optional

from .artifacts import ArtifactStore, record_chain, results_dir
from .config import NOTEBOOKS, ConfigError, load_profile

__all__ = ["NOTEBOOKS", "notebook_parameters", "run_chain", "prepare_chain", "main",
           "check_parameters"]

REPO = Path(__file__).resolve().parent.parent
NB_DIR = REPO / "notebooks"


def check_parameters(notebook: str, params: dict, path: Optional[Path] = None) -> dict:
    """Raise :class:`ConfigError` for a parameter the notebook's ``parameters`` cell does not
    define, or whose value's type differs from the cell's default (ints pass as floats)."""
    import papermill as pm
    path = path or NB_DIR / f"{notebook}.ipynb"
    declared = pm.inspect_notebook(str(path))
    for name, value in params.items():
        if name not in declared:
            raise ConfigError(f"notebooks.{notebook}.{name}: {notebook} has no parameter "
                              f"{name!r}; its parameters are {sorted(declared)}")
        try:
            default = ast.literal_eval(declared[name]["default"])
        except (ValueError, SyntaxError):
            continue
        want = type(default)
        ok = isinstance(value, want) and not (want is int and isinstance(value, bool))
        if want is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok:
            raise ConfigError(f"notebooks.{notebook}.{name}: expected {want.__name__} like the "
                              f"notebook's default {declared[name]['default']}, got "
                              f"{type(value).__name__} {value!r}")
    return params


def notebook_parameters(profile: str, notebook: str) -> dict:
    """papermill parameters for one notebook: the profile name plus the profile's
    ``notebooks.<name>`` section, checked against the notebook (:func:`check_parameters`)."""
    cfg = load_profile(profile)
    return check_parameters(notebook, {"profile": profile, **cfg.notebooks.get(notebook, {})})


def _select(only: Optional[list[str]]) -> list[str]:
    if not only:
        return list(NOTEBOOKS)
    bad = [o for o in only if not any(n.startswith(o) for n in NOTEBOOKS)]
    if bad:
        raise SystemExit(f"unknown notebook(s) {bad}; choose from {NOTEBOOKS}")
    return [n for n in NOTEBOOKS if any(n.startswith(o) for o in only)]


@contextlib.contextmanager
def chain_lock(results: Path) -> Iterator[None]:
    """Hold ``<results>/.chain.lock`` (an ``flock`` holding this pid) for the chain; another
    chain on the same results dir is refused, naming its pid."""
    results.mkdir(parents=True, exist_ok=True)
    fd = os.open(results / ".chain.lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise SystemExit(f"[reproduce] another chain (process {pid}) is running on "
                             f"{results}: wait for it to finish or end it (kill {pid}); two "
                             f"chains on one results dir would overwrite each other's results "
                             f"and executed/ copies") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)                    # releases the flock


def _interrupted(nb: str, done: list[str], profile: str, only: Optional[list[str]],
                 store_root: Path) -> SystemExit:
    """The one line Ctrl-C prints (what was kept, how to resume); exit code 130."""
    cmd = f"python -m apq_lib.runner reproduce --profile {profile}" + (
        f" --only {' '.join(only)}" if only else "")
    kept = (f"{', '.join(done)} finished (results and manifest written)" if done else
            "no notebook had finished")
    print(f"[reproduce] interrupted in {nb}; kept: {kept}, every completed stage cached in "
          f"{store_root} (reused, not recomputed); resume with the same command: {cmd}",
          file=sys.stderr, flush=True)
    return SystemExit(130)


@contextlib.contextmanager
def scoped_env(set_: Optional[dict] = None, default: Optional[dict] = None) -> Iterator[None]:
    """Environment variables for the block only: ``set_`` overrides, ``default`` fills in
    what is unset; every variable is restored (or removed) afterwards, so a chain run from
    Python (tests, the dry run) leaves its process's environment as it found it."""
    new = {**{k: v for k, v in (default or {}).items() if k not in os.environ},
           **(set_ or {})}
    old = {k: os.environ.get(k) for k in new}
    os.environ.update({k: str(v) for k, v in new.items()})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_chain(profile: str, out_dir: Path, only: Optional[list[str]] = None,
              kernel: str = "apq") -> None:
    """Execute notebooks in order; stop at the first failure, naming it; Ctrl-C stops with
    one line (what was kept, how to resume) and exit code 130."""
    out_dir.mkdir(parents=True, exist_ok=True)
    # The kernels inherit these: the chain writes the committed results/ (notebooks opened
    # interactively write a scratch dir instead) and draws text progress bars.
    with scoped_env(default={"APQ_RESULTS_DIR": str(results_dir()), "APQ_PROGRESS": "text"}):
        _run_chain(profile, out_dir, only, kernel)


def _run_chain(profile: str, out_dir: Path, only: Optional[list[str]], kernel: str) -> None:
    import datetime as dt

    import papermill as pm

    store = ArtifactStore()
    reused = store.completed()
    start, t_chain, done = dt.datetime.now(), time.time(), []
    nb = "the chain's set-up"
    try:
        try:                    # every notebook's parameters, before the first one runs
            all_params = {n: notebook_parameters(profile, n) for n in _select(only)}
        except ConfigError as e:
            raise SystemExit(f"[reproduce] {e}") from e
        with chain_lock(results_dir()):
            for nb, params in all_params.items():
                _run_one(pm, nb, params, out_dir, kernel)
                done.append(nb)
            seconds = time.time() - t_chain
            record_chain({"profile": profile, "notebooks": done,
                          "start": start.isoformat(timespec="seconds"),
                          "end": dt.datetime.now().isoformat(timespec="seconds"),
                          "seconds": round(seconds, 1),
                          "artifacts_before": reused, "from_scratch": not reused},
                         results_dir())
    except KeyboardInterrupt:
        raise _interrupted(nb, done, profile, only, store.root) from None
    print(f"[reproduce] {len(done)} notebooks in {seconds:.0f}s"
          f"{' (from scratch: no artifacts before)' if not reused else ''}", flush=True)


def _run_one(pm, nb: str, params: dict, out_dir: Path, kernel: str) -> None:
    """Execute one notebook; a failure prints its last line and where the traceback is
    and exits 1; Ctrl-C (in this process or the kernel) raises ``KeyboardInterrupt``."""
    t0 = time.time()
    print(f"[reproduce] {nb} (profile {params.get('profile')}) ...", flush=True)
    try:
        pm.execute_notebook(str(NB_DIR / f"{nb}.ipynb"), str(out_dir / f"{nb}.ipynb"),
                            parameters=params, kernel_name=kernel, cwd=str(NB_DIR),
                            progress_bar=False, log_output=bool(os.environ.get("APQ_LOG")))
    except Exception as e:
        if getattr(e, "ename", None) == "KeyboardInterrupt":    # the kernel got the Ctrl-C
            raise KeyboardInterrupt from None
        print(f"[reproduce] FAILED in notebook {nb}: {type(e).__name__}: "
              f"{str(e).strip().splitlines()[-1] if str(e).strip() else ''}\n"
              f"[reproduce] executed copy with the traceback: {out_dir / (nb + '.ipynb')}",
              file=sys.stderr, flush=True)
        raise SystemExit(1)
    print(f"[reproduce] {nb} done in {time.time() - t0:.0f}s", flush=True)


def prepare_chain(profile: str, out_dir: Path, only: Optional[list[str]] = None) -> list[Path]:
    """Copies of the notebooks with the profile's parameters injected (not executed)."""
    import papermill as pm
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for nb in _select(only):
        dst = out_dir / f"{nb}.ipynb"
        pm.execute_notebook(str(NB_DIR / f"{nb}.ipynb"), str(dst),
                            parameters=notebook_parameters(profile, nb), prepare_only=True,
                            kernel_name="apq", progress_bar=False)
        paths.append(dst)
    return paths


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("action", choices=["reproduce", "prepare"])
    ap.add_argument("--profile", default="default")
    ap.add_argument("--out", default=None)
    ap.add_argument("--only", nargs="*", help="notebook prefixes, e.g. 01 02")
    a = ap.parse_args(argv)
    if a.action == "reproduce":
        out = Path(a.out) if a.out else results_dir() / "executed"
        run_chain(a.profile, out, a.only)
    else:
        prepare_chain(a.profile, Path(a.out or REPO / "build" / "nbval"), a.only)


if __name__ == "__main__":
    main()
