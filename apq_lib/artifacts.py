"""Content-addressed stage outputs and the results manifest.

``artifacts/<stage>/<key>/`` holds one stage's files plus ``meta.json`` (config, input
keys, sha256 of every file). ``key`` is a hash of the stage's config and its inputs' keys,
so a change anywhere upstream gives a new key. A stage builds into
``artifacts/<stage>/<key>.partial/`` (which it may use for checkpoints, so a killed build
resumes there) and is renamed into place only when complete. Verification trusts nothing
in the directory: meta.json must follow its schema and list exactly the files present, each
with its sha256; otherwise the artifact is reported and rebuilt, never used.

Keys come from :class:`StageKey`: each stage declares the profile sections / fields it
reads and a code version, and its key is the hash of exactly those values (fields declared
``cache=False`` in :mod:`apq_lib.config`, such as thread counts, are never part of a key).
Every JSON / CSV / text file the suite writes goes through :func:`atomic_write` (temp file
in the same directory, fsync, ``os.replace``), so a kill mid-write never leaves a torn file.

The stage store and keys live in :mod:`apq_lib.artifact_store` (re-exported here); this
module adds the results directory and its manifest (what each notebook wrote, with hashes).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import subprocess
import sys
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

import torch

from .artifact_store import (
    REPO_ROOT,
    STAGE_KEYS,
    Artifact,
    ArtifactError,
    ArtifactStore,
    MissingInputError,
    StageKey,
    config_key,
    env_path,
    file_sha256,
    load_state,
    save_state,
)
from .atomic import CorruptResultError, atomic_write, dumps_strict, read_json_file, write_json
from .config import NOTEBOOKS

__all__ = [
    "record_file",
    "ArtifactStore", "Artifact", "ArtifactError", "config_key", "file_sha256",
    "save_state", "load_state", "update_manifest", "REPO_ROOT", "results_dir",
    "MissingInputError", "require_results", "StageKey", "STAGE_KEYS", "atomic_write",
    "write_json", "dumps_strict", "env_path", "read_json_file", "CorruptResultError",
    "ResultMismatchError", "verified_bytes", "result_owner",
]

def results_dir() -> Path:
    """Where results go: ``$APQ_RESULTS_DIR`` at the time of the call (``make reproduce``
    sets results/, ``make test`` build/), else the repository's ``results/``."""
    return env_path("APQ_RESULTS_DIR", REPO_ROOT / "results")


_results_dir = results_dir          # for the functions whose parameter has the same name


class ResultMismatchError(CorruptResultError):
    """A results file differs from the sha256 its notebook recorded in the manifest (edited
    by hand, or rewritten by a run that did not finish); the message names the notebook."""


# --------------------------------------------------------------------------- results
def require_results(*names: str, notebook: str) -> list[Path]:
    """Paths of ``results/...`` inputs; a missing one names the notebook to run first."""
    out = []
    for n in names:
        p = results_dir() / n
        if not p.exists():
            raise MissingInputError(f"{p.relative_to(REPO_ROOT)} is missing: run notebook "
                                    f"{notebook} first (make reproduce runs them in order)")
        out.append(p)
    return out


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except Exception:
        return ""


def _versions() -> dict:
    out = {"python": sys.version.split()[0]}
    for pkg in ("torch", "torchvision", "numpy", "pandas", "papermill", "triton", "seaborn"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def _device() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def record_chain(info: dict, results_dir: Optional[Path] = None) -> dict:
    """Record a whole ``make reproduce`` chain (notebooks, start/end, seconds, artifacts that
    existed before it) under ``chain`` in ``results/manifest.json``."""
    results_dir = _results_dir() if results_dir is None else Path(results_dir)
    manifest = _read_manifest(results_dir)
    manifest["chain"] = info
    return _write_manifest(manifest, results_dir)


def record_file(path: Path | str, results_dir: Optional[Path | str] = None) -> None:
    """Record the sha256 of a results file written outside the notebooks (``bench/*.csv``,
    by ``benchmarks/``) in the manifest, so that its writer, not a later reader, vouches for
    it. No-op without a manifest or for a path outside ``results_dir``."""
    root = _results_dir() if results_dir is None else Path(results_dir)
    path = Path(path)
    if not (root / "manifest.json").is_file():
        return
    try:
        rel = str(path.absolute().relative_to(root.absolute()))
    except ValueError:
        return
    manifest = _read_manifest(root)
    manifest.setdefault("files", {})[rel] = file_sha256(path)
    _write_manifest(manifest, root)


def _read_manifest(results_dir: Path) -> dict:
    """The manifest; a corrupted one is moved aside (``manifest.json.corrupt``) with a
    warning and a new one started, recording no file (each notebook records its own files
    when it runs again)."""
    mpath = results_dir / "manifest.json"
    if not mpath.exists():
        return {}
    try:
        m = json.loads(mpath.read_text())
        if not isinstance(m, dict):
            raise ValueError(f"a JSON {type(m).__name__}, not an object")
        return m
    except (ValueError, UnicodeDecodeError) as e:
        bad = mpath.with_name("manifest.json.corrupt")
        os.replace(mpath, bad)
        warnings.warn(f"{mpath} is corrupted ({e}); moved to {bad.name} and started anew: "
                      f"rerun the notebooks whose entries you need", stacklevel=3)
        return {"files": {}}        # no file vouched for: readers refuse until rerun


def _write_manifest(manifest: dict, results_dir: Path) -> dict:
    write_json(results_dir / "manifest.json", manifest)
    return manifest


def update_manifest(notebook: str, profile: Any, start: _dt.datetime,
                    end: Optional[_dt.datetime] = None, seeds: Optional[dict] = None,
                    results_dir: Optional[Path] = None, extra: Optional[dict] = None) -> dict:
    """Record one notebook run in ``results/manifest.json`` and the sha256 of the results
    files it wrote (see :func:`_record_files`); other notebooks' recorded hashes are kept."""
    end = end or _dt.datetime.now()
    results_dir = _results_dir() if results_dir is None else Path(results_dir)
    manifest = _read_manifest(results_dir)
    prof = profile.to_dict() if hasattr(profile, "to_dict") else dict(profile)
    status = _git("status", "--porcelain", "--", ".", ":!results")
    manifest.update({
        "git_commit": _git("rev-parse", "HEAD") or None,
        "git_dirty": bool(status),
        "versions": _versions(),
        "device": _device(),
        "profile": prof.get("name"),
        "params_hash": profile.params_hash() if hasattr(profile, "params_hash") else
        config_key(prof),
    })
    nbs = manifest.setdefault("notebooks", {})
    nbs[notebook] = {"start": start.isoformat(timespec="seconds"),
                     "end": end.isoformat(timespec="seconds"),
                     "seconds": round((end - start).total_seconds(), 1),
                     "seeds": seeds or {"seed": prof.get("seed")}, **(extra or {})}
    manifest["files"] = _record_files(notebook, manifest.get("files"), start, results_dir)
    return _write_manifest(manifest, results_dir)


# --------------------------------------------------------------------------- integrity
def result_owner(rel: str | Path) -> Optional[str]:
    """The number (``"04"``) of the notebook that writes a results file: every file is named
    after it (``data/04_search.csv``, ``figures/05_fronts.png``); ``None`` for others
    (``bench/*.csv``)."""
    name = Path(rel).name
    return name[:2] if name[:2].isdigit() and name[2:3] == "_" else None


def _notebook_named(num: Optional[str]) -> str:
    return next((n for n in NOTEBOOKS if n[:2] == num), f"{num}_*") if num else "that wrote it"


def _record_files(notebook: str, old: Any, start: _dt.datetime, results_dir: Path) -> dict:
    """``files`` of the manifest after ``notebook`` ran: its own files (named ``NN_...``)
    rehashed when written since ``start`` (or not recorded yet), every other recorded hash
    kept as it was (so a file edited by hand keeps the hash its writer recorded and is
    caught by :func:`verified_bytes`), a file with no notebook prefix recorded when new;
    another notebook's file that it never recorded stays unrecorded. A manifest that never
    recorded files (no ``files`` key: a new results dir) adopts every file present.
    ``executed/``, temp, lock and ``.corrupt`` files are not recorded."""
    adopt = old is None
    old = old if isinstance(old, dict) else {}
    mine, since = notebook[:2], start.timestamp() - 2.0
    files = {}
    for p in sorted(results_dir.rglob("*")):
        rel = p.relative_to(results_dir)
        if (not p.is_file() or p.name == "manifest.json" or "executed" in rel.parts
                or p.name.endswith((".tmp", ".corrupt", ".lock"))):
            continue
        key, owner = str(rel), result_owner(rel)
        if owner == mine and (key not in old or p.stat().st_mtime >= since):
            files[key] = file_sha256(p)
        elif key in old:
            files[key] = old[key]
        elif owner is None or adopt:
            files[key] = file_sha256(p)
    return files


def verified_bytes(path: Path | str, results_dir: Optional[Path | str] = None) -> bytes:
    """The bytes of a results file, checked against the sha256 its notebook recorded in
    ``<results_dir>/manifest.json`` (``results_dir`` defaults to the path's grandparent:
    ``results/data/04_search.csv`` -> ``results``). A file that differs, or that the
    manifest does not list, raises :class:`ResultMismatchError` naming the file and the
    notebook to rerun. Without a manifest, or one with no ``files`` record (unit tests
    writing into a tmp dir, a results dir no notebook finished in), nothing is checked.
    Reading the bytes once and hashing those leaves no window between check and use."""
    path = Path(path)
    root = Path(results_dir) if results_dir is not None else path.parent.parent
    data = path.read_bytes()
    mpath = root / "manifest.json"
    if not mpath.is_file():
        return data
    try:
        rel = str(path.absolute().relative_to(root.absolute()))
    except ValueError:
        return data                             # not a results file
    try:
        manifest = json.loads(mpath.read_text())
        if not isinstance(manifest, dict):
            raise ValueError(f"a JSON {type(manifest).__name__}, not an object")
        if "files" not in manifest:
            return data                         # it records no file (no notebook finished)
        recorded = manifest["files"]
        if not isinstance(recorded, dict):
            raise ValueError("'files' is not a mapping")
    except (ValueError, UnicodeDecodeError) as e:
        raise CorruptResultError(f"{mpath} is corrupted ({e}), so {path} cannot be "
                                 f"verified: rerun the notebooks (make reproduce)") from e
    num = result_owner(rel)
    nb = _notebook_named(num)
    rerun = (f"rerun notebook {nb} (python -m apq_lib.runner reproduce --only {num})"
             if num else "rerun the notebook that wrote it")
    if rel not in recorded:
        raise ResultMismatchError(f"{path} is not recorded in {mpath}: notebook {nb} did not "
                                  f"finish after writing it, or it was added by hand; {rerun}")
    if hashlib.sha256(data).hexdigest() != recorded[rel]:
        raise ResultMismatchError(f"{path} differs from what notebook {nb} recorded in {mpath} "
                                  f"(edited by hand, or rewritten by a run that did not "
                                  f"finish): {rerun} to rewrite it")
    return data
