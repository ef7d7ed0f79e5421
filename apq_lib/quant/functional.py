"""Functional fake quantization: affine STE (Jacob et al. 2018; Bengio et al. 2013), LSQ
learnable scale / zero point (Esser et al., ICLR 2020) and PACT clipping (Choi et al. 2018).

Every quantizer goes through ``fake_quantize`` (STE) or ``fake_quantize_learnable`` (LSQ).
Wherever the Triton path is off they call the aten ops
(``torch.fake_quantize_per_{tensor,channel}_affine`` and
``torch._fake_quantize_learnable_per_{tensor,channel}_affine``), except per-tensor STE fake
quant of a float32 CPU tensor: aten's CPU kernel for it is scalar code, ~8x slower than four
vectorised in-place passes that give the same bits (:func:`_fake_quantize_cpu`; the tests hold
it to aten, ties included). On CUDA they call the fused Triton kernels of
:mod:`apq_lib.quant.kernels`, which match the aten ops bit for bit in the forward pass and in
``grad_x``.
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch

from ..config import VALID_BITS
from . import kernels as _kernels

__all__ = ["fake_quantize", "fake_quantize_learnable", "pact_fake_quantize", "lsq_grad_factor",
           "qrange", "check_bits", "symmetric_scale", "affine_qparams", "MIN_SCALE", "FP_BITS",
           "VALID_BITS"]

FP_BITS = 32                     # "bits = 32" means quantization off
MIN_SCALE = 1e-8                 # scales are clamped here, so an all-zero tensor stays finite
_VALID = VALID_BITS
Number = Union[int, float]


def check_bits(bits: int, what: str = "bits") -> int:
    """Validate a bitwidth: 2..8, or 32 (= full precision). NumPy integers are accepted."""
    try:
        ok = not isinstance(bits, (bool, str)) and int(bits) == bits and int(bits) in _VALID
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{what}={bits!r} is not supported: use an integer in 2..8, "
                         f"or 32 to switch quantization off")
    return int(bits)


def qrange(bits: int, signed: bool) -> tuple[int, int]:
    """Integer range of a ``bits``-bit code: signed [-2^(b-1), 2^(b-1)-1], else [0, 2^b-1]."""
    bits = check_bits(bits)
    if bits == FP_BITS:
        raise ValueError("bits=32 means 'not quantized' and has no integer range")
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2 ** bits - 1


def symmetric_scale(max_abs: torch.Tensor, bits: int, signed: bool = True) -> torch.Tensor:
    """Scale mapping ``max_abs`` to the largest positive code (clamped to MIN_SCALE)."""
    qmax = qrange(bits, signed)[1]
    return (max_abs / qmax).clamp_min(MIN_SCALE)


def affine_qparams(lo: torch.Tensor, hi: torch.Tensor, qmin: int, qmax: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric (scale, integer zero point) covering ``[min(lo,0), max(hi,0)]``.

    The range is widened to include 0 so that 0 is exactly representable (Jacob et al. §2.1).
    Returns float32 ``scale`` and int32 ``zero_point`` of ``lo``'s shape.
    """
    lo = torch.minimum(lo.float(), torch.zeros_like(lo, dtype=torch.float32))
    hi = torch.maximum(hi.float(), torch.zeros_like(hi, dtype=torch.float32))
    scale = ((hi - lo) / float(qmax - qmin)).clamp_min(MIN_SCALE)
    zp = (qmin - torch.round(lo / scale)).clamp(qmin, qmax).to(torch.int32)
    return scale, zp


# --------------------------------------------------------------------------- validation
def _check_axis(x: torch.Tensor, axis: Optional[int]) -> Optional[int]:
    if axis is None:
        return None
    if isinstance(axis, bool) or not isinstance(axis, int) or not -x.dim() <= axis < x.dim():
        raise ValueError(f"axis={axis!r} is out of range for a tensor with {x.dim()} dims "
                         f"(shape {tuple(x.shape)})")
    return axis % x.dim()


def _validate(x, scale, zero_point, qmin, qmax, axis, check_scale: bool = True):
    """Cheap argument checks. The ``scale > 0`` check on a tensor costs a device sync on
    CUDA, so callers that compute the scale themselves (clamped to MIN_SCALE) skip it."""
    if not isinstance(qmin, int) or not isinstance(qmax, int) or qmin >= qmax:
        raise ValueError(f"qmin={qmin!r} must be an int < qmax={qmax!r}")
    axis = _check_axis(x, axis)
    if not isinstance(scale, torch.Tensor):
        if not float(scale) > 0:
            raise ValueError(f"scale must be > 0 (got {scale!r}); calibrate the quantizer "
                             f"or clamp the scale to apq_lib.quant.MIN_SCALE")
    else:
        if axis is not None and scale.numel() != x.shape[axis]:
            raise ValueError(f"per-channel scale has {scale.numel()} entries but x has "
                             f"{x.shape[axis]} channels along axis {axis}")
        if axis is None and scale.numel() != 1:
            raise ValueError(f"per-tensor scale must have one element, got shape "
                             f"{tuple(scale.shape)}; pass axis= for per-channel scales")
        if check_scale and not torch.compiler.is_compiling() and bool((scale <= 0).any()):
            raise ValueError("scale must be > 0 (got a value <= 0); calibrate the quantizer "
                             "or clamp the scale to apq_lib.quant.MIN_SCALE")
    return axis


# --------------------------------------------------------------------------- STE fake quant
def fake_quantize(x: torch.Tensor, scale: Union[torch.Tensor, float],
                  zero_point: Union[torch.Tensor, int], qmin: int, qmax: int,
                  axis: Optional[int] = None, validate: bool = True) -> torch.Tensor:
    """Quantize-dequantize ``x``: ``(clamp(round(x/s) + z, qmin, qmax) - z) * s``.

    Per-tensor when ``axis is None`` (scalar ``scale``/``zero_point``), per-channel along
    ``axis`` otherwise (``scale``/``zero_point`` of shape ``[x.shape[axis]]``). Forward equals
    the aten ops exactly; gradient to ``x`` is the STE masked to the clip range; ``scale`` and
    ``zero_point`` get no gradient (use :func:`fake_quantize_learnable` for that).
    ``validate=False`` skips the ``scale > 0`` check (a device sync on CUDA).
    """
    axis = _validate(x, scale, zero_point, qmin, qmax, axis, check_scale=validate)
    if _kernels.use_triton(x):
        return _kernels.fake_quantize_triton(x, scale, zero_point, qmin, qmax, axis)
    if (axis is None and x.device.type == "cpu" and x.dtype == torch.float32
            and x.numel() >= CPU_PATH_MIN_NUMEL[torch.is_grad_enabled() and x.requires_grad]
            and not torch.compiler.is_compiling()):
        return _fake_quantize_cpu(x, scale, zero_point, qmin, qmax)
    if axis is None:
        if isinstance(scale, torch.Tensor) or isinstance(zero_point, torch.Tensor):
            return torch.fake_quantize_per_tensor_affine(
                x, _as(scale, torch.float32, x, True), _as(zero_point, torch.int32, x, True),
                qmin, qmax)
        return torch.fake_quantize_per_tensor_affine(x, float(scale), int(zero_point), qmin, qmax)
    scale = _as(scale, torch.float32, x, False)
    if isinstance(zero_point, torch.Tensor):
        zp = _as(zero_point, torch.int32, x, False)
        zp = zp.expand(scale.numel()) if zp.numel() == 1 and scale.numel() != 1 else zp
    else:
        zp = torch.full(scale.shape, int(zero_point), dtype=torch.int32, device=scale.device)
    return torch.fake_quantize_per_channel_affine(x, scale, zp, axis, qmin, qmax)


# below these sizes aten's call is cheaper than the passes' overheads (measured, 2 threads):
# [without, with] a gradient to x
CPU_PATH_MIN_NUMEL = (2048, 8192)


def _fake_quantize_cpu(x: torch.Tensor, scale, zero_point, qmin: int, qmax: int
                       ) -> torch.Tensor:
    """aten's per-tensor fake quant of a float32 CPU tensor, bit for bit, as in-place passes:
    the scale taken as float32, its float32 reciprocal, ``round`` (half to even, as
    ``nearbyint``), ``+ z``, clamp, ``- z``, ``* s``. With a gradient to ``x``: aten's cached
    mask STE (``grad * (qmin <= round(x/s) + z <= qmax)``)."""
    s = (scale.detach() if isinstance(scale, torch.Tensor) else torch.tensor(scale)).to(
        torch.float32).reshape(())
    z = int(zero_point)
    if torch.is_grad_enabled() and x.requires_grad:
        return _FakeQuantSTE.apply(x, s, z, qmin, qmax)
    return _fq_codes(x, s, z, qmin, qmax)[0].mul_(s)


def _fq_codes(x, s, z, qmin, qmax, mask: bool = False):
    q = torch.mul(x, 1.0 / s).round_()
    if z:
        q.add_(z)
    c = q.clamp(qmin, qmax) if mask else q.clamp_(qmin, qmax)
    m = c.eq(q) if mask else None
    if z:
        c.sub_(z)
    return c, m


class _FakeQuantSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, s, z, qmin, qmax):
        c, m = _fq_codes(x, s, z, qmin, qmax, mask=True)
        ctx.save_for_backward(m)
        return c.mul_(s)

    @staticmethod
    def backward(ctx, g):
        (m,) = ctx.saved_tensors
        return g * m, None, None, None, None


def _as(v, dtype: torch.dtype, x: torch.Tensor, scalar: bool) -> torch.Tensor:
    """``v`` as a detached ``dtype`` tensor, 0-dim (``scalar``) or 1-D, without copies or
    dispatcher calls when it already is one (this path runs once per quantized layer)."""
    if not isinstance(v, torch.Tensor):
        return torch.tensor(v, dtype=dtype, device=x.device).reshape(() if scalar else (-1,))
    if v.requires_grad:
        v = v.detach()
    if v.dtype != dtype:
        v = v.to(dtype)
    if scalar and v.dim() != 0:
        v = v.reshape(())
    elif not scalar and v.dim() != 1:
        v = v.reshape(-1)
    return v


# --------------------------------------------------------------------------- LSQ
def lsq_grad_factor(x: torch.Tensor, qmax: int, axis: Optional[int] = None) -> float:
    """LSQ's gradient scale ``g = 1 / sqrt(N * Q_P)`` (Esser et al. §2.2); ``N`` = elements
    per scale (``numel`` per tensor, ``numel / C`` per channel), ``Q_P = qmax``."""
    n = x.numel() if axis is None else x.numel() // max(1, x.shape[axis])
    return 1.0 / math.sqrt(max(1, n) * max(1, qmax))


def fake_quantize_learnable(x: torch.Tensor, scale: torch.Tensor,
                            zero_point: Union[torch.Tensor, float], qmin: int, qmax: int,
                            axis: Optional[int] = None, grad_factor: float = 1.0,
                            validate: bool = True) -> torch.Tensor:
    """LSQ fake quantization with gradients to ``x``, ``scale`` and ``zero_point``.

    Same forward as :func:`fake_quantize` with the zero point rounded (half to even) and
    clamped; backward as ``torch._fake_quantize_learnable_per_{tensor,channel}_affine``:
    ``dy/ds = (x_fq - x)/s`` inside the range, ``qmin - z`` / ``qmax - z`` below / above;
    ``dy/dz = -s`` outside, 0 inside; both multiplied by ``grad_factor`` (LSQ's ``g``, see
    :func:`lsq_grad_factor`). ``scale``: 0-dim or ``[1]`` tensor (per tensor) or ``[C]``.

    Two aten details are kept so that CPU and GPU agree: the backward's clip test rounds
    ``fma(x, 1/s, z)`` (not ``round(x/s) + z``: they differ only at rounding ties),
    and the per-tensor backward uses the zero point ``int(clamp(z + 0.5))``, truncated
    toward zero (``z + 1`` for a negative integer ``z``; symmetric quantizers have z = 0).
    """
    if not isinstance(scale, torch.Tensor):
        scale = torch.tensor([float(scale)], device=x.device)
    axis = _validate(x, scale, zero_point, qmin, qmax, axis, check_scale=validate)
    if not qmin <= 0 <= qmax:
        raise ValueError(f"learnable fake quantization needs qmin <= 0 <= qmax, got "
                         f"[{qmin}, {qmax}]")
    if not isinstance(zero_point, torch.Tensor):
        zero_point = torch.full_like(scale, float(zero_point), dtype=torch.float32)
    if _kernels.use_triton(x):
        return _kernels.fake_quantize_learnable_triton(x, scale, zero_point, qmin, qmax, axis,
                                                       grad_factor)
    s = scale if scale.dtype == torch.float32 and scale.dim() == 1 else \
        scale.to(torch.float32).reshape(-1)
    zp = zero_point if zero_point.dtype == torch.float32 and zero_point.dim() == 1 else \
        zero_point.to(torch.float32).reshape(-1)
    if axis is None:
        return torch._fake_quantize_learnable_per_tensor_affine(x, s, zp, qmin, qmax,
                                                                grad_factor)
    return torch._fake_quantize_learnable_per_channel_affine(x, s, zp, axis, qmin, qmax,
                                                             grad_factor)


# --------------------------------------------------------------------------- PACT
def pact_fake_quantize(x: torch.Tensor, alpha: torch.Tensor, bits: int,
                       signed: bool = False) -> torch.Tensor:
    """PACT: ``y = clamp(x, 0 | -alpha, alpha)`` then ``bits``-bit uniform fake quant with
    scale ``alpha / qmax``. Gradients: STE to ``x`` inside the clip range; to ``alpha`` the
    sum of the output gradients of the clipped elements (PACT eq. 3; ``-`` for ``x < -alpha``).
    ``alpha`` is used as ``|alpha|`` clamped to >= 1e-3.
    """
    bits = check_bits(bits, "a_bits")
    if bits == FP_BITS:
        return x
    a = alpha.abs().clamp_min(1e-3).to(x.dtype)
    qmin, qmax = qrange(bits, signed)
    scale = (a / qmax).detach().to(torch.float32)
    if not signed and not (torch.is_grad_enabled() and (x.requires_grad or a.requires_grad)):
        # no gradient wanted: the unsigned clip to [0, alpha] is the fake quant's own clamp
        # to [0, qmax] (x * (qmax / alpha) is monotone in x and rounds to qmax at alpha)
        return fake_quantize(x, scale, 0, qmin, qmax, validate=False)
    lo = -a if signed else torch.zeros_like(a)
    y = torch.minimum(torch.maximum(x, lo), a)
    # the clip already gave alpha its gradient; fake_quantize's STE passes y's through
    return fake_quantize(y, scale, 0, qmin, qmax, validate=False)
