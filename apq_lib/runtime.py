"""Seeds and devices: the one seed setter and the one device rule of the suite."""
from __future__ import annotations

import os
import random

import numpy as np
import torch

__all__ = ["seed_everything", "get_device", "make_rng"]


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


def make_rng(seed: int, *stream: int) -> np.random.Generator:
    """An independent NumPy generator for (seed, stream...) — e.g. one per sample index."""
    return np.random.default_rng([seed, *stream])
