"""Child processes that never outlive the run that started them (the collection workers of
APQ §3.2's pair data, notebook 03), and one-writer locks for the files they append to.

:class:`WorkerGroup` starts each worker in its own session / process group and stops the
whole group on every way out of the parent: normal return, an exception, ``SIGTERM`` (the
handler stops the workers, then hands the signal to the previous handler) and interpreter
exit (``atexit``). For the one it cannot see, ``SIGKILL`` of the parent, each worker calls
:func:`exit_with_parent` at start: Linux's ``PR_SET_PDEATHSIG`` plus a thread that polls the
parent's pid, so an orphan exits on its own within about a second.

:func:`exclusive` is an ``fcntl.flock`` on a lock file: held for as long as the process
writes, released by the kernel when the process dies (no stale lock files to clean up).
"""
from __future__ import annotations

import atexit
import contextlib
import ctypes
import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Iterator, Optional, Sequence

__all__ = ["WorkerGroup", "exit_with_parent", "exclusive", "LockBusy", "PARENT_ENV"]

PARENT_ENV = "APQ_PARENT_PID"
_PR_SET_PDEATHSIG = 1


class LockBusy(RuntimeError):
    """Another live process holds the lock (``exclusive(..., wait=False)``)."""


def exit_with_parent(parent: Optional[int] = None, poll_s: float = 0.5) -> None:
    """Make this process exit (SIGTERM) when ``parent`` (default ``$APQ_PARENT_PID``, else
    the current parent) dies, even by ``SIGKILL``. No-op when there is no parent to watch."""
    env = os.environ.get(PARENT_ENV)
    parent = parent or (int(env) if env else None)
    if not parent:
        return
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError):
            pass                                # the liveness thread below still works
    if os.getppid() != parent:                  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent:          # re-parented: the parent is gone
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
                os._exit(143)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


class WorkerGroup:
    """``with WorkerGroup(cmds, logs=...) as g: g.wait(poll)``: start one process per
    command; on leaving the block (any way) every one still running is stopped."""

    def __init__(self, cmds: Sequence[Sequence[str]], logs: Sequence[Path | str] = (),
                 cwd: Optional[Path | str] = None, env: Optional[dict] = None,
                 grace_s: float = 5.0):
        self.cmds, self.logs, self.cwd = [list(c) for c in cmds], list(logs), cwd
        self.env = {**(env if env is not None else os.environ), PARENT_ENV: str(os.getpid())}
        self.grace_s, self.procs = grace_s, []
        self._files: list[IO] = []
        self._old_term = None

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "WorkerGroup":
        atexit.register(self.stop)
        if threading.current_thread() is threading.main_thread():
            self._old_term = signal.signal(signal.SIGTERM, self._on_sigterm)
        try:
            for i, cmd in enumerate(self.cmds):
                out = subprocess.DEVNULL
                if i < len(self.logs):
                    out = open(self.logs[i], "w")
                    self._files.append(out)
                self.procs.append(subprocess.Popen(
                    cmd, stdout=out, stderr=subprocess.STDOUT, cwd=self.cwd, env=self.env,
                    start_new_session=True))
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
        atexit.unregister(self.stop)
        if self._old_term is not None:
            signal.signal(signal.SIGTERM, self._old_term)
            self._old_term = None
        for f in self._files:
            f.close()
        self._files = []

    def _on_sigterm(self, signum, frame) -> None:
        self.stop()
        old = self._old_term
        signal.signal(signal.SIGTERM, old if old is not None else signal.SIG_DFL)
        self._old_term = None
        if callable(old):
            old(signum, frame)
        else:                                   # default action: die by the same signal
            os.kill(os.getpid(), signal.SIGTERM)

    def stop(self) -> None:
        """SIGTERM to each running worker's process group, SIGKILL after ``grace_s``."""
        live = [p for p in self.procs if p.poll() is None]
        for p in live:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        for p in live:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()

    # ------------------------------------------------------------------ waiting
    def running(self) -> bool:
        return any(p.poll() is None for p in self.procs)

    def wait(self, poll=None, every_s: float = 2.0) -> dict[int, int]:
        """Wait for every worker (calling ``poll()`` every ``every_s``); return
        ``{index: returncode}`` of the ones that failed."""
        while self.running():
            time.sleep(every_s)
            if poll is not None:
                poll()
        return {i: p.returncode for i, p in enumerate(self.procs) if p.returncode != 0}


@contextlib.contextmanager
def exclusive(lock_path: Path | str, wait: bool = True,
              on_wait: Optional[callable] = None) -> Iterator[Path]:
    """Hold an exclusive ``flock`` on ``lock_path`` (created if needed) for the block.
    ``wait=False`` raises :class:`LockBusy` if another process holds it; otherwise
    ``on_wait()`` is called once and the call blocks until the holder releases it (or dies)."""
    lock_path = Path(lock_path)
    fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise LockBusy(f"{lock_path} is held by another process") from None
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield lock_path
    finally:
        os.close(fd)                            # closing the fd releases the flock
