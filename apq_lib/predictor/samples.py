"""APQ §3.2 predictor samples: the configuration of sample ``i`` and the resumable,
shardable JSONL store the collectors append to (see :mod:`apq_lib.predictor.collect` for the
file layout, locking and repair rules, and its CLI)."""
from __future__ import annotations

import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Callable, Optional

from ..artifacts import atomic_write, write_json
from ..fields import key_dict
from ..progress import tqdm
from ..supernet.space import SearchSpace, SubnetConfig
from ..workers import LockBusy, exclusive
from .policies import pair_config

__all__ = ["PAIR_KINDS", "CollectionError", "CorruptSampleError", "sample_config", "SampleStore",
           "collect_samples", "parse_shard"]

PAIR_KINDS = ("fp32", "quant")
_REQUIRED = ("i", "kind", "sampler", "group", "config", "acc", "seconds")


class CollectionError(RuntimeError):
    """The collection cannot go on (spec mismatch, incomplete merge)."""


class CorruptSampleError(CollectionError):
    """A stored sample is corrupted; the message names file and line."""


# --------------------------------------------------------------------------- sampling
def sample_config(space: SearchSpace, kind: str, seed: int, i: int,
                  policies_per_arch: int = 6, large_fraction: float = 0.25,
                  bit_spread: float = 0.75) -> tuple[SubnetConfig, str, int]:
    """Configuration of sample ``i``: ``(config, sampler, group)``; see
    :func:`apq_lib.predictor.policies.pair_config` (corners, a share of large
    architectures; per quantized architecture the uniform lowest / middle / highest-bit
    policies, then mixed policies around a per-architecture bit level). ``group``
    identifies the architecture (equal for samples sharing one), for grouped splits."""
    if kind not in PAIR_KINDS:
        raise ValueError(f"kind={kind!r}: use one of {PAIR_KINDS}")
    return pair_config(space, kind, seed, i, policies_per_arch, large_fraction, bit_spread)


# --------------------------------------------------------------------------- storage
class SampleStore:
    """The JSONL shard files of one collection in ``workdir`` (see module docstring)."""

    def __init__(self, workdir: Path | str, kind: str, n: int, seed: int, space: SearchSpace,
                 policies_per_arch: int = 6, spec: Optional[dict] = None,
                 large_fraction: float = 0.25, bit_spread: float = 0.75):
        self.dir = Path(workdir)
        self.kind, self.n, self.seed, self.space = kind, int(n), int(seed), space
        self.ppa = int(policies_per_arch)
        self.large_fraction, self.bit_spread = float(large_fraction), float(bit_spread)
        self.spec = {"kind": kind, "n": self.n, "seed": self.seed, "space": key_dict(space.cfg),
                     "large_fraction": self.large_fraction,
                     **({"policies_per_arch": self.ppa, "bit_spread": self.bit_spread}
                        if kind == "quant" else {}),
                     **(spec or {})}             # fp32 samples do not depend on the policies

    def config(self, i: int) -> tuple[SubnetConfig, str, int]:
        """``(config, sampler, group)`` of sample ``i`` (:func:`sample_config`)."""
        return sample_config(self.space, self.kind, self.seed, i, self.ppa,
                             self.large_fraction, self.bit_spread)

    def shard_path(self, rank: int, world: int) -> Path:
        return self.dir / f"{self.kind}_shard{rank:03d}of{world:03d}.jsonl"

    @staticmethod
    def lock_path(shard: Path) -> Path:
        """The lock a writer of ``shard`` holds (see :func:`apq_lib.workers.exclusive`)."""
        return shard.with_name(shard.name + ".lock")

    def files(self) -> list[Path]:
        return sorted(self.dir.glob(f"{self.kind}_shard*.jsonl"))

    def check_spec(self) -> None:
        """Write ``<kind>_spec.json`` on first use; a different stored spec is an error."""
        self.dir.mkdir(parents=True, exist_ok=True)
        p = self.dir / f"{self.kind}_spec.json"
        spec = json.loads(json.dumps(self.spec, sort_keys=True))
        if p.exists():
            try:
                old = json.loads(p.read_text())
            except json.JSONDecodeError as e:
                raise CorruptSampleError(f"{p}: not valid JSON ({e})") from e
            if old != spec:
                diff = sorted(k for k in set(old) | set(spec) if old.get(k) != spec.get(k))
                raise CollectionError(f"{p}: the samples there were collected with a different "
                                      f"spec (differs in {diff}); use another work directory")
        else:
            write_json(p, spec, nonfinite="error")

    def load(self, repair: bool = False, held: tuple[Path, ...] = ()) -> dict[int, dict]:
        """Every finished sample, ``{i: record}``; see :func:`parse_shard`. Without
        ``repair`` a corrupt line raises; with it, every torn or corrupt line is dropped
        (warning) and cut out of its file, if this process holds the file's lock
        (``held``) or can take it; a file another live writer holds is only read."""
        out: dict[int, dict] = {}
        where: dict[int, str] = {}
        for p in self.files():
            bad: list[int] = []
            for lineno, rec in parse_shard(p, self, repair=repair, dropped=bad):
                i = rec["i"]
                if i in out:
                    if rec["config"] != out[i]["config"] or rec["acc"] != out[i]["acc"]:
                        raise CorruptSampleError(f"{p}:{lineno}: sample {i} is also at "
                                                 f"{where[i]} with a different result")
                    warnings.warn(f"{p}:{lineno}: sample {i} duplicates {where[i]}; the "
                                  f"first is kept", stacklevel=2)
                    continue
                out[i], where[i] = rec, f"{p.name}:{lineno}"
            if repair and bad:
                self._cut_lines(p, bad, held)
        return out

    def _cut_lines(self, path: Path, linenos: list[int], held: tuple[Path, ...]) -> None:
        def cut() -> None:
            lines = path.read_bytes().split(b"\n")
            drop = set(linenos)
            keep = [ln for k, ln in enumerate(lines, 1) if k not in drop and ln.strip()]
            atomic_write(path, b"".join(ln + b"\n" for ln in keep))
        if path in held:
            return cut()
        try:
            with exclusive(self.lock_path(path), wait=False):
                cut()
        except LockBusy:
            pass                                # its writer repairs it when it reloads


def parse_shard(path: Path, store: SampleStore, repair: bool = False,
                dropped: Optional[list] = None):
    """Yield ``(line number, record)`` for each sample line of ``path``, validated against
    the index's expected configuration. A torn last line (no newline: a kill during the
    write) is always dropped with a warning. Any other bad line raises
    :class:`CorruptSampleError` naming it, or with ``repair`` is dropped with a warning;
    dropped line numbers are appended to ``dropped``."""
    lines = path.read_bytes().split(b"\n")
    torn = lines[-1] != b""
    for k, line in enumerate(lines[:-1] + ([lines[-1]] if torn else [])):
        lineno = k + 1
        if torn and k == len(lines) - 1:
            msg = (f"{path}:{lineno}: last line is incomplete (a run was killed while "
                   f"writing it); dropped, that sample will be recomputed")
            warnings.warn(msg, stacklevel=3)
            if dropped is not None:
                dropped.append(lineno)
            return
        try:
            if not line.strip():
                raise CorruptSampleError(f"{path}:{lineno}: empty line in a sample file")
            try:
                rec = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise CorruptSampleError(f"{path}:{lineno}: not valid JSON ({e})") from e
            rec = _validate_record(rec, path, lineno, store)
        except CorruptSampleError as e:
            if not repair:
                raise
            warnings.warn(f"{e}; dropped, that sample will be recomputed", stacklevel=3)
            if dropped is not None:
                dropped.append(lineno)
            continue
        yield lineno, rec


def _validate_record(rec, path, lineno, store: SampleStore) -> dict:
    loc = f"{path}:{lineno}"
    if not isinstance(rec, dict) or any(k not in rec for k in _REQUIRED):
        missing = [k for k in _REQUIRED if not isinstance(rec, dict) or k not in rec]
        raise CorruptSampleError(f"{loc}: sample record lacks {missing}")
    i = rec["i"]
    if not isinstance(i, int) or not 0 <= i < store.n:
        raise CorruptSampleError(f"{loc}: sample index {i!r} is outside 0..{store.n - 1}")
    if rec["kind"] != store.kind:
        raise CorruptSampleError(f"{loc}: sample kind {rec['kind']!r} != {store.kind!r}")
    acc = rec["acc"]
    if not isinstance(acc, (int, float)) or not math.isfinite(acc) or not 0 <= acc <= 100:
        raise CorruptSampleError(f"{loc}: accuracy {acc!r} is not a percentage in [0, 100]")
    if not isinstance(rec["seconds"], (int, float)) or rec["seconds"] < 0:
        raise CorruptSampleError(f"{loc}: seconds {rec['seconds']!r} is not >= 0")
    cfg, sampler, group = store.config(i)
    if rec["config"] != cfg.to_dict() or rec["sampler"] != sampler or rec["group"] != group:
        raise CorruptSampleError(f"{loc}: sample {i}'s configuration is not the one its index "
                                 f"gives (edited file or different seed/space)")
    return rec


# --------------------------------------------------------------------------- collecting
def collect_samples(evaluate_fn: Callable[[SubnetConfig, int], float | dict], store: SampleStore,
            shard: tuple[int, int] = (0, 1), progress: bool = True,
            desc: Optional[str] = None) -> dict[int, dict]:
    """Evaluate every unfinished index ``i`` with ``i % world == rank``.

    ``evaluate_fn(config, i)`` returns the accuracy in percent, or a dict with ``acc`` and
    extra fields to store. Each record keeps ``seconds`` (wall) and ``cpu_seconds`` (this
    process's CPU time: the wall time a quiet core would take at one thread). Returns every
    finished sample in the directory (all shards)."""
    rank, world = shard
    if not 0 <= rank < world:
        raise ValueError(f"shard {rank}/{world}: need 0 <= rank < world")
    store.check_spec()
    path = store.shard_path(rank, world)

    def waiting() -> None:
        warnings.warn(f"{path} is being written by another collector (one writer per "
                      f"shard); waiting for it to finish", stacklevel=4)

    with exclusive(store.lock_path(path), on_wait=waiting):
        _collect_locked(evaluate_fn, store, path, rank, world, progress, desc)
    return store.load(repair=True)


def _collect_locked(evaluate_fn, store: SampleStore, path: Path, rank: int, world: int,
                    progress: bool, desc: Optional[str]) -> None:
    done = store.load(repair=True, held=(path,))
    mine = [i for i in range(store.n) if i % world == rank]
    todo = [i for i in mine if i not in done]
    bar = tqdm(total=len(mine), initial=len(mine) - len(todo), disable=not progress,
               desc=desc or f"{store.kind} pairs [{rank}/{world}]", dynamic_ncols=True)
    with open(path, "a", encoding="utf-8") as f:
        for i in todo:
            cfg, sampler, group = store.config(i)
            t0, c0 = time.perf_counter(), time.process_time()
            res = evaluate_fn(cfg, i)
            dt, cpu = time.perf_counter() - t0, time.process_time() - c0
            extra = dict(res) if isinstance(res, dict) else {"acc": float(res)}
            rec = {"i": i, "kind": store.kind, "sampler": sampler, "group": group,
                   "config": cfg.to_dict(), "seconds": round(dt, 4),
                   "cpu_seconds": round(cpu, 4), "shard": f"{rank}/{world}",
                   **extra}
            rec["acc"] = float(rec["acc"])
            f.write(json.dumps(rec, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
            bar.update(1)
            bar.set_postfix(acc=f"{rec['acc']:.1f}", s=f"{dt:.2f}")
    bar.close()
