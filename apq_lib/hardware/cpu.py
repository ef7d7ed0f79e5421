"""Measured FP32 layer latency on this machine's CPU (``torch.utils.benchmark``): a real
target next to the simulated ones, in the spirit of APQ/OFA's measured latency tables.

Bits do not apply (FP32); energy is not measured and is reported as NaN.
"""
from __future__ import annotations

import logging
import math
import os
import platform

import numpy as np
import torch
import torch.nn.functional as F

from .layers import LayerSpec

__all__ = ["cpu_layer_latency", "cpu_info", "CpuSim"]

_BLOCK_S = 2e-4       # each timed block runs the layer for about 0.2 ms


def cpu_info(num_threads: int = 1) -> dict:
    """What a measured table depends on (part of its artifact key)."""
    return {"processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "num_threads": num_threads}


def _measure(spec: LayerSpec, repeats: int, num_threads: int, batch: int) -> float:
    # torch.utils.benchmark imports cpp_extension, which warns when CUDA is absent
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils.benchmark import Timer
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, spec.in_c, spec.in_size, spec.in_size, generator=g)
    w = torch.randn(spec.out_c, spec.ic_per_group, spec.kernel, spec.kernel, generator=g)
    timer = Timer(stmt="F.conv2d(x, w, None, s, p, 1, g)",
                  globals={"F": F, "x": x, "w": w, "s": spec.stride, "p": spec.padding,
                           "g": spec.groups},
                  num_threads=num_threads)
    with torch.inference_mode():
        t0 = timer.timeit(3).mean                         # warm-up (first-call set-up)
        inner = max(1, int(_BLOCK_S / max(t0, 1e-7)))     # runs per timed block
        times = [timer.timeit(inner).mean for _ in range(repeats)]
    return float(np.median(times)) * 1e3


def cpu_layer_latency(in_c: int, out_c: int, in_size: int, kernel: int, stride: int,
                      padding: int, groups: int, *, repeats: int = 20, num_threads: int = 1,
                      batch: int = 1) -> dict:
    """``{"latency": ms, "energy": nan}`` of one FP32 conv (FC = 1×1 conv on a 1×1 map):
    the median over ``repeats`` timed blocks (each ~0.2 ms of back-to-back runs) after a
    warm-up; single-threaded by default (on a shared machine one thread is steadier, and
    the median discards blocks another process interrupted)."""
    if repeats < 1:
        raise ValueError(f"cpu: repeats must be >= 1, got {repeats}")
    if num_threads < 1:
        raise ValueError(f"cpu: num_threads must be >= 1, got {num_threads}")
    spec = LayerSpec(in_c, out_c, in_size, kernel, stride, padding, groups)
    return {"latency": _measure(spec, repeats, num_threads, batch), "energy": math.nan}


class CpuSim:
    """Simulator-shaped wrapper: ``cost(spec, w, a)`` ignores the bits (FP32)."""

    name = "cpu"

    def __init__(self, repeats: int = 20, num_threads: int = 1):
        self.repeats, self.num_threads = repeats, num_threads

    def params(self) -> dict:
        return {"repeats": self.repeats, **cpu_info(self.num_threads)}

    def cost(self, spec: LayerSpec, w_bits: int = 32, a_bits: int = 32, batch: int = 1) -> dict:
        return cpu_layer_latency(*spec.fields(), repeats=self.repeats,
                                 num_threads=self.num_threads, batch=batch)
