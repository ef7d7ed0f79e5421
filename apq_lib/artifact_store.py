"""Content-addressed stage outputs: ``artifacts/<stage>/<key>/`` (see :mod:`apq_lib.artifacts`
for the layout and the rules), the :class:`StageKey` each stage declares, and the safetensors
weights files. The results manifest is in :mod:`apq_lib.artifacts`, which re-exports all of
this."""
from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .atomic import write_json

__all__ = ["REPO_ROOT", "env_path", "ArtifactError", "MissingInputError", "config_key",
           "STAGE_KEYS", "StageKey", "file_sha256", "Artifact", "ArtifactStore", "save_state",
           "load_state"]

REPO_ROOT = Path(__file__).resolve().parent.parent


def env_path(var: str, default: Path | str) -> Path:
    """``$var`` (or ``default``) as an absolute path, so that processes started in another
    working directory (collection workers, papermill kernels) see the same place."""
    return Path(os.environ.get(var) or default).expanduser().absolute()


class ArtifactError(RuntimeError):
    """An artifact is corrupted or incomplete."""


class MissingInputError(FileNotFoundError):
    """A notebook's input from an earlier notebook is missing."""


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
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    md = {k: json.dumps(v) for k, v in (metadata or {}).items()}
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp), md)
    os.replace(tmp, path)


def load_state(path: Path | str) -> tuple[dict[str, torch.Tensor], dict]:
    """Load a safetensors file; a corrupted file raises :class:`ArtifactError`."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            md = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
            return {k: f.get_tensor(k) for k in f.keys()}, md
    except Exception as e:
        raise ArtifactError(f"checkpoint {path} cannot be read ({type(e).__name__}: {e}); "
                            f"delete it to start that stage again") from e
