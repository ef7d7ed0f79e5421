"""Atomic, strict file writes for every JSON / CSV / text output of the suite.

:func:`atomic_write` writes a temp file in the target's directory, fsyncs it and
``os.replace``-s it over the target, so a reader (or a rerun after a kill, a full disk, a
crash) sees the old file or the new one, never a torn one. JSON is strict: NaN / ±inf are
written as an explicit ``null`` (or raise), never as the non-standard ``NaN``.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["atomic_write", "write_json", "dumps_strict", "read_json_file",
           "CorruptResultError"]


class CorruptResultError(ValueError):
    """A results / JSON file cannot be parsed; the message names it and what to rerun."""


def _finite(obj: Any) -> Any:
    """``obj`` with NaN / ±inf floats replaced by ``None`` (explicit JSON null)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def dumps_strict(obj: Any, nonfinite: str = "null", **kw: Any) -> str:
    """JSON text that never contains ``NaN``/``Infinity``: with ``nonfinite="null"`` they
    become an explicit ``null``, with ``"error"`` they raise ``ValueError``. numpy scalars
    and other number-likes are written as floats."""
    if nonfinite not in ("null", "error"):
        raise ValueError(f"nonfinite={nonfinite!r}: use 'null' or 'error'")
    plain = json.loads(json.dumps(obj, default=float))      # numpy etc. -> Python numbers
    if nonfinite == "null":
        plain = _finite(plain)
    return json.dumps(plain, allow_nan=False, **kw)


def atomic_write(path: Path | str, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` atomically: a temp file in the same directory, fsync,
    then ``os.replace``. A reader sees the old file or the new one, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: Path | str, obj: Any, nonfinite: str = "null", indent: int = 1,
               sort_keys: bool = True) -> Path:
    """:func:`atomic_write` of :func:`dumps_strict` JSON."""
    try:
        text = dumps_strict(obj, nonfinite, indent=indent, sort_keys=sort_keys)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    return atomic_write(path, text)


def read_json_file(path: Path | str, rerun: str = "the stage that wrote it",
                   data: bytes | None = None) -> Any:
    """Parse a JSON file (or its ``data``, already read); a torn or corrupted one raises
    :class:`CorruptResultError` that names the file and what to rerun."""
    path = Path(path)
    try:
        return json.loads(path.read_bytes() if data is None else data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptResultError(f"{path} is corrupted or incomplete ({e}); rerun {rerun} "
                                 f"to rewrite it") from e
