"""Fused Triton fake-quant kernels (placeholder dispatch; filled in by the kernels work)."""
from __future__ import annotations

import torch

__all__ = ["use_triton", "fake_quantize_triton"]


def use_triton(x: torch.Tensor) -> bool:
    return False


def fake_quantize_triton(x, scale, zero_point, qmin, qmax, axis=None):
    raise NotImplementedError
