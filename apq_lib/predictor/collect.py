"""APQ §3.2 predictor data: ⟨architecture, FP32 accuracy⟩ pairs from the supernet, and
⟨architecture + policy, quantized accuracy⟩ pairs from short quantization-aware finetunes.

Collection is resumable, shardable and mergeable. Sample ``i``'s configuration comes from
``(seed, i)`` alone (registered RNG streams, :mod:`apq_lib.predictor.policies`), so it
does not depend on order, shard or restarts.
Each finished sample is one line appended (and fsynced) to a JSONL shard file
``<kind>_shard<r>of<n>.jsonl`` in the work directory; a restarted run reads every shard
file there, skips finished indices and continues. One process writes a shard at a time:
it holds an ``flock`` on ``<shard>.lock`` while it appends (a second collector on the same
shard waits, then finds the work done). A torn or corrupt line anywhere in a shard (a kill
mid-write, a damaged file) is dropped with a warning naming file and line, cut out of the
file, and that sample is recomputed; :func:`merge_pairs` (publishing) stays strict and
raises :class:`CorruptSampleError` naming the line instead.

CLI (shards write into the artifact's ``.partial`` directory; the last to finish, or
``--shard 0/1``, publishes the artifact)::

    python -m apq_lib.predictor.collect --profile default --kind fp32 --shard 0/2
    torchrun --nproc-per-node 2 -m apq_lib.predictor.collect --profile default --kind quant

The store and the collecting loop live in :mod:`apq_lib.predictor.samples`, the merged
pairs in :mod:`apq_lib.predictor.pairs`; this module is the CLI (over
:func:`apq_lib.predictor.pipeline.collect_cli`) and re-exports both.
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Optional

import yaml

from ..workers import exit_with_parent
from .pairs import *  # noqa: F401,F403
from .pairs import __all__ as _pairs_all
from .pipeline import collect_cli
from .samples import *  # noqa: F401,F403
from .samples import PAIR_KINDS
from .samples import __all__ as _samples_all

__all__ = [*_samples_all, *_pairs_all, "parse_shard_arg", "main"]


def parse_shard_arg(text: Optional[str]) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)``; without it, torchrun's ``RANK``/``WORLD_SIZE`` or ``(0, 1)``."""
    if text:
        try:
            r, w = (int(v) for v in text.split("/"))
        except ValueError as e:
            raise SystemExit(f"--shard {text!r}: expected RANK/WORLD, e.g. 0/2") from e
        if not 0 <= r < w:
            raise SystemExit(f"--shard {text!r}: need 0 <= RANK < WORLD")
        return r, w
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m apq_lib.predictor.collect",
                                 description="Collect predictor pairs (one shard).")
    ap.add_argument("--profile", default="default")
    ap.add_argument("--kind", choices=PAIR_KINDS, required=True)
    ap.add_argument("--shard", default=None, help="RANK/WORLD, e.g. 0/2 (default: torchrun "
                    "env or 0/1)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="profile overrides, e.g. predictor.fp32_pairs=100 (YAML values)")
    ap.add_argument("--overrides-json", default="{}", help="profile overrides as JSON")
    ap.add_argument("--threads", type=int, default=None, help="torch threads")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--no-publish", action="store_true",
                    help="do not publish the artifact even when this shard completes it")
    a = ap.parse_args(argv)
    exit_with_parent()          # a worker of notebook 03 never outlives it (no-op from a shell)
    overrides = json.loads(a.overrides_json)
    overrides.update({k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in a.set)})
    collect_cli(a.profile, a.kind, parse_shard_arg(a.shard), overrides,
                progress=not a.no_progress, publish=not a.no_publish, threads=a.threads)


if __name__ == "__main__":
    main()
