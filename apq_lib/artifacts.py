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
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import torch

from .atomic import CorruptResultError, atomic_write, dumps_strict, read_json_file, write_json
from .config import NOTEBOOKS

__all__ = [
    "ArtifactStore", "Artifact", "ArtifactError", "config_key", "file_sha256",
    "save_state", "load_state", "update_manifest", "REPO_ROOT", "RESULTS_DIR",
    "MissingInputError", "require_results", "StageKey", "STAGE_KEYS", "atomic_write",
    "write_json", "dumps_strict", "env_path", "read_json_file", "CorruptResultError",
    "ResultMismatchError", "verified_bytes", "result_owner",
]

REPO_ROOT = Path(__file__).resolve().parent.parent


def env_path(var: str, default: Path | str) -> Path:
    """``$var`` (or ``default``) as an absolute path, so that processes started in another
    working directory (collection workers, papermill kernels) see the same place."""
    return Path(os.environ.get(var) or default).expanduser().absolute()


RESULTS_DIR = env_path("APQ_RESULTS_DIR", REPO_ROOT / "results")


class ArtifactError(RuntimeError):
    """An artifact is corrupted or incomplete."""


class MissingInputError(FileNotFoundError):
    """A notebook's input from an earlier notebook is missing."""


class ResultMismatchError(CorruptResultError):
    """A results file differs from the sha256 its notebook recorded in the manifest (edited
    by hand, or rewritten by a run that did not finish); the message names the notebook."""


# --------------------------------------------------------------------------- keys
def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def config_key(config: Any, inputs: Iterable[str] = ()) -> str:
    """sha256 over the canonical JSON of ``config`` and the sorted input keys (16 hex)."""
    blob = json.dumps({"config": _jsonable(config), "inputs": sorted(inputs)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


STAGE_KEYS: dict[str, "StageKey"] = {}


@dataclasses.dataclass(frozen=True)
class StageKey:
    """What a stage's artifact depends on: ``reads`` names profile sections (``"space"``,
    every field) or fields (``"predictor.fp32_pairs"``, ``"seed"``); ``skip`` removes
    fields of a read section the stage does not use; ``version`` is the stage's code
    version (bump it when the stage's code changes its output). Fields declared
    ``cache=False`` are left out. Declaring a key registers it in :data:`STAGE_KEYS`."""
    stage: str
    version: int
    reads: tuple[str, ...]
    skip: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        STAGE_KEYS[self.stage] = self

    def fields(self, cfg: Any) -> list[str]:
        """Dotted names of every profile field in the key."""
        out = []
        for r in self.reads:
            v = _dotted_get(cfg, r)
            if dataclasses.is_dataclass(v) and not isinstance(v, type):
                out += [f"{r}.{f.name}" for f in dataclasses.fields(v)
                        if f.metadata.get("rules", {}).get("cache", True)]
            else:
                out.append(r)
        bad = [s for s in self.skip if s not in out]
        if bad:
            raise ValueError(f"StageKey {self.stage}: skip {bad} names no field it reads")
        return [f for f in out if f not in self.skip]

    def config(self, cfg: Any) -> dict:
        """``{"stage", "version", section: {field: value}}`` of the fields it reads (a field
        declared ``cache="changed"`` only when it differs from its default)."""
        d: dict = {"stage": self.stage, "version": self.version}
        for name in self.fields(cfg):
            v = _dotted_get(cfg, name)
            if _unchanged(cfg, name, v):
                continue
            v = [dataclasses.asdict(x) if dataclasses.is_dataclass(x) else x for x in v] \
                if isinstance(v, list) else v
            head, _, leaf = name.rpartition(".")
            (d.setdefault(head, {}) if head else d)[leaf] = v
        return d

    def key(self, cfg: Any, inputs: Iterable[str] = ()) -> str:
        return config_key(self.config(cfg), inputs)


def _unchanged(cfg: Any, dotted: str, value: Any) -> bool:
    """True for a field declared ``cache="changed"`` that holds its default value."""
    head, _, leaf = dotted.rpartition(".")
    owner = _dotted_get(cfg, head) if head else cfg
    if not dataclasses.is_dataclass(owner):
        return False
    f = {x.name: x for x in dataclasses.fields(owner)}.get(leaf)
    if f is None or f.metadata.get("rules", {}).get("cache") != "changed":
        return False
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING \
        else f.default
    return value == default


def _dotted_get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


_HEX64 = re.compile(r"[0-9a-f]{64}")


def _check_meta(meta: Any, stage: str, key: str) -> None:
    """meta.json's schema: a mapping with ``stage``, ``key`` (matching its place),
    ``inputs`` (list of keys) and ``files`` (relative path -> sha256 hex)."""
    where = f"{stage}/{key}: meta.json"
    if not isinstance(meta, dict):
        raise ArtifactError(f"{where} is a JSON {type(meta).__name__}, not an object")
    for k, tp in (("stage", str), ("key", str), ("inputs", list), ("files", dict)):
        if not isinstance(meta.get(k), tp):
            raise ArtifactError(f"{where}: {k!r} is missing or not a {tp.__name__}")
    if meta["stage"] != stage or meta["key"] != key:
        raise ArtifactError(f"{where} describes {meta['stage']}/{meta['key']} (moved or "
                            f"copied artifact)")
    for name, digest in meta["files"].items():
        if (not isinstance(digest, str) or not _HEX64.fullmatch(digest)
                or Path(name).is_absolute() or ".." in Path(name).parts):
            raise ArtifactError(f"{where}: entry {name!r}: {digest!r} is not a relative path "
                                f"with a sha256 digest")


class Artifact:
    """A completed, verified stage output directory."""

    def __init__(self, stage: str, key: str, path: Path, meta: dict):
        self.stage, self.key, self.path, self.meta = stage, key, path, meta

    def file(self, name: str) -> Path:
        p = self.path / name
        if not p.exists():
            raise ArtifactError(f"{self.stage}/{self.key} has no file {name!r}")
        return p

    def __repr__(self) -> str:
        return f"Artifact({self.stage}/{self.key})"


class ArtifactStore:
    """``store.build(stage, config, inputs, fn)``: load the verified artifact if present,
    else call ``fn(workdir)`` to write the files, then hash and publish them."""

    def __init__(self, root: Optional[Path | str] = None):
        self.root = (Path(root).expanduser().absolute() if root else
                     env_path("APQ_ARTIFACTS", REPO_ROOT / "artifacts"))

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def completed(self) -> list[str]:
        """``stage/key`` of every published artifact (``.partial`` work dirs excluded)."""
        return sorted(f"{d.parent.name}/{d.name}" for d in self.root.glob("*/*")
                      if d.is_dir() and (d / "meta.json").exists())

    def verify(self, stage: str, key: str) -> Artifact:
        """Return the artifact if complete and intact, else raise :class:`ArtifactError`."""
        d = self.path(stage, key)
        meta_p = d / "meta.json"
        if not meta_p.exists():
            raise ArtifactError(f"{stage}/{key}: no meta.json (missing or partial artifact)")
        try:
            meta = json.loads(meta_p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ArtifactError(f"{stage}/{key}: meta.json is corrupted ({e})") from e
        _check_meta(meta, stage, key)
        present = {str(p.relative_to(d)) for p in d.rglob("*")
                   if p.is_file() and p.name != "meta.json"}
        unlisted = sorted(present - set(meta["files"]))
        if unlisted:
            raise ArtifactError(f"{stage}/{key}: file(s) {unlisted} are not listed in "
                                f"meta.json (added or edited after publishing)")
        for name, digest in sorted(meta["files"].items()):
            f = d / name
            if not f.is_file():
                raise ArtifactError(f"{stage}/{key}: file {name} is missing")
            if file_sha256(f) != digest:
                raise ArtifactError(f"{stage}/{key}: file {name} does not match its hash "
                                    f"(corrupted or edited)")
        return Artifact(stage, key, d, meta)

    def get(self, stage: str, key: str) -> Optional[Artifact]:
        """The verified artifact, or ``None`` (with a warning when a broken one exists)."""
        try:
            return self.verify(stage, key)
        except ArtifactError as e:
            if self.path(stage, key).exists():
                warnings.warn(f"{e}; it will be rebuilt", stacklevel=2)
            return None

    def build(self, stage: str, config: Any, fn: Callable[[Path], Any],
              inputs: Iterable["Artifact | str"] = (), force: bool = False) -> Artifact:
        input_keys = [a.key if isinstance(a, Artifact) else str(a) for a in inputs]
        key = config_key(config, input_keys)
        if not force:
            art = self.get(stage, key)
            if art is not None:
                return art
        final = self.path(stage, key)
        work = final.with_name(final.name + ".partial")
        work.mkdir(parents=True, exist_ok=True)     # kept on failure: fn may resume from it
        fn(work)
        files = {str(p.relative_to(work)): file_sha256(p)
                 for p in sorted(work.rglob("*")) if p.is_file() and p.name != "meta.json"}
        meta = {"stage": stage, "key": key, "config": _jsonable(config), "inputs": input_keys,
                "files": files, "created": _dt.datetime.now().isoformat(timespec="seconds")}
        write_json(work / "meta.json", meta, nonfinite="error")
        if final.exists():
            shutil.rmtree(final)
        work.rename(final)
        return Artifact(stage, key, final, meta)


# --------------------------------------------------------------------------- checkpoints
def save_state(state: dict[str, torch.Tensor], path: Path | str,
               metadata: Optional[dict] = None) -> None:
    """Save tensors with safetensors, atomically (write to a temp file, then rename)."""
    from safetensors.torch import save_file
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    md = {k: json.dumps(v) for k, v in (metadata or {}).items()}
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp), md)
    os.replace(tmp, path)


def load_state(path: Path | str) -> tuple[dict[str, torch.Tensor], dict]:
    """Load a safetensors file; a corrupted file raises :class:`ArtifactError`."""
    from safetensors import safe_open
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            md = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
            return {k: f.get_tensor(k) for k in f.keys()}, md
    except Exception as e:
        raise ArtifactError(f"checkpoint {path} cannot be read ({type(e).__name__}: {e}); "
                            f"delete it to start that stage again") from e


# --------------------------------------------------------------------------- results
def require_results(*names: str, notebook: str) -> list[Path]:
    """Paths of ``results/...`` inputs; a missing one names the notebook to run first."""
    out = []
    for n in names:
        p = RESULTS_DIR / n
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
    from importlib import metadata
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


def record_chain(info: dict, results_dir: Path = RESULTS_DIR) -> dict:
    """Record a whole ``make reproduce`` chain (notebooks, start/end, seconds, artifacts that
    existed before it) under ``chain`` in ``results/manifest.json``."""
    manifest = _read_manifest(results_dir)
    manifest["chain"] = info
    return _write_manifest(manifest, results_dir)


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
                    results_dir: Path = RESULTS_DIR, extra: Optional[dict] = None) -> dict:
    """Record one notebook run in ``results/manifest.json`` and the sha256 of the results
    files it wrote (see :func:`_record_files`); other notebooks' recorded hashes are kept."""
    end = end or _dt.datetime.now()
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
