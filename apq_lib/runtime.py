"""Seeds and devices: the one seed setter and the one device rule of the suite."""
from __future__ import annotations

import hashlib
import os
import random
import re

import numpy as np
import torch

__all__ = ["seed_everything", "get_device", "device_tag", "STREAMS", "stream_seed", "stream_rng",
           "stream_generator"]


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA); make CPU kernels deterministic."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    if deterministic:
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def get_device(pref: str = "auto") -> torch.device:
    """``auto``: CUDA when available, else CPU. ``cuda`` without a GPU is an error."""
    if pref == "cpu":
        return torch.device("cpu")
    if pref == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda was requested but no CUDA GPU is visible; "
                           "use device: auto or cpu")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_tag(dev: torch.device) -> str:
    """A short name for file names: ``cpu``, ``cuda-h100``, ``cuda-h200``, ..."""
    if dev.type != "cuda":
        return dev.type
    name = torch.cuda.get_device_name(dev).lower()
    m = re.search(r"(h100|h200|h800|a100|a800|a10g|a10|l40s|l40|l4|v100|t4|b200|gh200)", name)
    return "cuda-" + (m.group(1) if m else re.sub(r"[^a-z0-9]+", "", name)[:16])


# The registry of named RNG streams: every seeded draw outside the global seed names its
# stream here, so two parts of the suite never share (or collide on) a sequence.
STREAMS = {
    "data": "the train / val split and the fixed image subsets (capped splits, calibration)",
    "batches": "a loader's shuffle order and augmentation in each epoch (from its own seed)",
    "finetune": "batches and torch seed of a final model's QAT finetune (one per model)",
    "pair_finetune": "batches of a quantized predictor pair's short finetune",
    "predictor_split": "train / held-out split of the predictor's pairs",
    "predictor_folds": "group order of the predictor's grouped k-fold cross-validation",
    "predictor_fit": "initialisation, train / validation split and batch order of one fit",
    "study_subset": "training subsets of the sample-efficiency study",
    "bootstrap": "resamples of every bootstrap CI and random subset of a statistic",
    "scratch": "initialisation and batches of the MobileNetV2 trained standalone",
    "prune": "batches of the pruning baselines' finetunes",
    "fbnet": "FBNet's supernet initialisation, training subset and weight / theta batches",
    "hawq": "HAWQ-V2's Hutchinson probe vectors",
    "sparsity": "notebook 08's initialisations, batches, controls and random masks",
    "random_subnets": "the random subnets notebook 01 evaluates",
    "pair_arch": "architectures (and their bit level) of the predictor's FP32 / quantized pairs",
    "pair_policy": "per-layer bits of the predictor's mixed-precision quantized pairs",
    "search": "APQ's evolution, random search and the sweep's random sample of costs",
    "haq": "HAQ's DDPG initialisation, exploration noise and replay sampling",
    "timing": "the random configurations the predictor's inference timing runs on",
    "space_sample": "the random configurations notebook 02 plots the space's costs over",
    "supernet": "the subnets sampled at each supernet training step",
}


def stream_seed(seed: int, stream: str, *ids) -> int:
    """A 31-bit seed for ``(seed, stream, *ids)`` (small enough for every seeding API the
    suite passes it to, loaders multiply it); ``stream`` must be in :data:`STREAMS`.
    ``ids`` may be ints or strings (e.g. a model name), hashed stably (not Python's
    randomised ``hash``)."""
    if stream not in STREAMS:
        raise KeyError(f"unknown RNG stream {stream!r}; register it in apq_lib.runtime.STREAMS")
    text = "\x1f".join([str(int(seed)), stream, *map(str, ids)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little") >> 1


def stream_rng(seed: int, stream: str, *ids) -> np.random.Generator:
    """A NumPy generator for ``(seed, stream, *ids)`` (see :func:`stream_seed`)."""
    return np.random.default_rng(stream_seed(seed, stream, *ids))


def stream_generator(seed: int, stream: str, *ids) -> torch.Generator:
    """A CPU ``torch.Generator`` for ``(seed, stream, *ids)`` (see :func:`stream_seed`)."""
    return torch.Generator().manual_seed(stream_seed(seed, stream, *ids))
