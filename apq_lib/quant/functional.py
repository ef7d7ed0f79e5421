"""Functional fake quantization (Jacob et al. 2018 affine scheme; STE of Bengio et al. 2013).

``fake_quantize`` is the single entry point every quantizer uses. On CPU (and whenever the
Triton path is unavailable) it calls the aten ops ``torch.fake_quantize_per_tensor_affine``
and ``torch.fake_quantize_per_channel_affine``, whose backward is the straight-through
estimator masked to the clip range.
"""
from __future__ import annotations

from typing import Optional, Union

import torch

__all__ = ["fake_quantize", "qrange", "check_bits", "symmetric_scale", "MIN_SCALE", "FP_BITS"]

FP_BITS = 32                     # "bits = 32" means quantization off
MIN_SCALE = 1e-8                 # scales are clamped here, so an all-zero tensor stays finite
_VALID = (2, 3, 4, 5, 6, 7, 8, FP_BITS)


def check_bits(bits: int, what: str = "bits") -> int:
    """Validate a bitwidth: 2..8, or 32 (= full precision)."""
    if isinstance(bits, bool) or int(bits) != bits or int(bits) not in _VALID:
        raise ValueError(f"{what}={bits!r} is not supported: use an integer in 2..8, "
                         f"or 32 to switch quantization off")
    return int(bits)


def qrange(bits: int, signed: bool) -> tuple[int, int]:
    """Integer range of a ``bits``-bit code: signed [-2^(b-1), 2^(b-1)-1], else [0, 2^b-1]."""
    bits = check_bits(bits)
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2 ** bits - 1


def symmetric_scale(max_abs: torch.Tensor, bits: int, signed: bool = True) -> torch.Tensor:
    """Scale mapping ``max_abs`` to the largest positive code (clamped to MIN_SCALE)."""
    qmax = qrange(bits, signed)[1]
    return (max_abs / qmax).clamp_min(MIN_SCALE)


def _validate(x, scale, zero_point, qmin, qmax, axis):
    if qmin >= qmax:
        raise ValueError(f"qmin={qmin} must be < qmax={qmax}")
    if axis is not None and not -x.dim() <= axis < x.dim():
        raise ValueError(f"axis={axis} is out of range for a tensor with {x.dim()} dims")
    s = scale if torch.is_tensor(scale) else torch.tensor(float(scale))
    if not torch.compiler.is_compiling() and bool((s <= 0).any()):
        raise ValueError("scale must be > 0 (got a value <= 0); calibrate the quantizer "
                         "or clamp the scale to apq_lib.quant.MIN_SCALE")


def fake_quantize(x: torch.Tensor, scale: Union[torch.Tensor, float],
                  zero_point: Union[torch.Tensor, int], qmin: int, qmax: int,
                  axis: Optional[int] = None) -> torch.Tensor:
    """Quantize-dequantize ``x``: ``(clamp(round(x/s) + z, qmin, qmax) - z) * s``.

    Per-tensor when ``axis is None`` (scalar ``scale``/``zero_point``), per-channel along
    ``axis`` otherwise (``scale``/``zero_point`` of shape ``[x.shape[axis]]``). Forward equals
    the aten ops exactly; gradient to ``x`` is the STE masked to the clip range.
    """
    _validate(x, scale, zero_point, qmin, qmax, axis)
    from . import kernels  # late import: optional Triton path
    if kernels.use_triton(x):
        return kernels.fake_quantize_triton(x, scale, zero_point, qmin, qmax, axis)
    if axis is None:
        if torch.is_tensor(scale):
            scale = scale.detach().reshape(()).to(torch.float32)
            zp = (zero_point if torch.is_tensor(zero_point) else torch.tensor(zero_point))
            return torch.fake_quantize_per_tensor_affine(
                x, scale, zp.detach().reshape(()).to(torch.int32), qmin, qmax)
        return torch.fake_quantize_per_tensor_affine(x, float(scale), int(zero_point), qmin, qmax)
    axis = axis % x.dim()
    scale = scale.detach().to(torch.float32).reshape(-1)
    zp = zero_point if torch.is_tensor(zero_point) else torch.full_like(scale, zero_point)
    return torch.fake_quantize_per_channel_affine(
        x, scale, zp.detach().reshape(-1).to(torch.int32), axis, qmin, qmax)
