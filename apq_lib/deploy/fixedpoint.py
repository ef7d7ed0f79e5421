"""Fixed-point requantization (Jacob et al., CVPR 2018, §2.2): a real multiplier
``M = s_in · s_w / s_out`` is stored as an int32 ``M0`` in ``[2^30, 2^31)`` and a right shift
``n`` (``M ≈ M0 · 2^-n``); ``round(acc · M)`` is then ``(acc · M0 + 2^(n-1)) >> n`` in int64,
round to nearest with ties toward +inf. Everything at inference time is integer.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

__all__ = ["quantize_multiplier", "multipliers", "requantize", "rounding_shift", "div_round",
           "INT_DTYPES"]

INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.bool)
_MAX_SHIFT = 62


def quantize_multiplier(m: float) -> tuple[int, int]:
    """``(M0, n)`` with ``M0 · 2^-n`` the nearest such value to ``m`` (> 0), ``M0`` in
    ``[2^30, 2^31)``. Relative error ≤ 2^-31. Conversion time only (uses floats)."""
    if not (m > 0 and math.isfinite(m)):
        raise ValueError(f"requantization multiplier must be finite and > 0, got {m!r}")
    f, e = math.frexp(m)                     # m = f · 2^e, f in [0.5, 1)
    m0 = int(round(f * (1 << 31)))
    if m0 == 1 << 31:                        # f rounded up to 1.0
        m0, e = m0 // 2, e + 1
    n = 31 - e
    if n < 1:
        raise ValueError(f"requantization multiplier {m:g} ≥ 2^30 is out of range")
    if n > _MAX_SHIFT:                       # tiny multiplier: give up low bits of M0
        m0, n = m0 >> (n - _MAX_SHIFT), _MAX_SHIFT
    return m0, n


def multipliers(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel :func:`quantize_multiplier`: int64 tensors ``(M0, n)`` of ``m``'s shape."""
    pairs = [quantize_multiplier(float(v)) for v in m.reshape(-1).tolist()]
    m0 = torch.tensor([p[0] for p in pairs], dtype=torch.int64).reshape(m.shape)
    n = torch.tensor([p[1] for p in pairs], dtype=torch.int64).reshape(m.shape)
    return m0, n


def requantize(acc: torch.Tensor, m0: torch.Tensor, n: torch.Tensor, axis: int = 1,
               offset: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``round((acc · M0 + offset) · 2^-n)`` per channel along ``axis`` (int64 result).
    ``acc`` must be an integer tensor with ``|acc| < 2^31`` so the int64 product cannot
    overflow; ``offset`` (int64, per channel) is added in the product's units."""
    if acc.dtype not in INT_DTYPES:
        raise TypeError(f"requantize expects an integer accumulator, got {acc.dtype}")
    shape = [1] * acc.dim()
    shape[axis] = -1
    m0, n = m0.reshape(shape), n.reshape(shape)
    prod = acc.to(torch.int64) * m0
    if offset is not None:
        prod = prod + offset.reshape(shape)
    half = torch.bitwise_left_shift(torch.ones_like(n), n - 1)
    return torch.bitwise_right_shift(prod + half, n)


def rounding_shift(x: torch.Tensor, k: int) -> torch.Tensor:
    """``round(x / 2^k)`` (ties toward +inf) for an integer tensor; ``k = 0`` is identity."""
    if k == 0:
        return x
    return torch.bitwise_right_shift(x + (1 << (k - 1)), k)


def div_round(x: torch.Tensor, d: int) -> torch.Tensor:
    """``round(x / d)`` (ties toward +inf) for an integer tensor and a positive int ``d``."""
    return torch.div(x + d // 2, d, rounding_mode="floor")
