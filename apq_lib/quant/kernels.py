"""Fused Triton fake-quant kernels as ``torch.library`` custom ops (affine scheme: Jacob et
al. 2018; LSQ backward: Esser et al., ICLR 2020).

Two kernels serve every case: ``_fq_fwd_kernel`` (one read of ``x``, one write of ``y``;
per-tensor or per-channel) and ``_fq_bwd_kernel`` (one read of ``x`` and ``dy``, one write
of ``dx``; with ``LEARNABLE`` it also reduces LSQ's ``d scale`` / ``d zero_point`` terms into
per-(channel, block) partial sums, which torch adds up: deterministic, no atomics). The ops
``apq::fake_quant`` (STE) and ``apq::fake_quant_learnable`` (LSQ) carry ``register_fake`` and
``register_autograd``, so they work under autograd and ``torch.compile`` (as opaque ops).
Their numerics follow the aten ops of the same device: ``1/s`` correctly rounded, round half
to even, and the same one of ``rint(x * (1/s)) + z`` / ``rint(fma(x, 1/s, z))`` that aten
uses for that op and device (see ``_rounding_form``), so forward and ``grad_x`` agree with
aten bit for bit, rounding ties included.

Dispatch: ``APQ_TRITON=never|auto|always`` (environment, read at import) or
:func:`set_triton_mode`. ``auto`` (the default) runs the aten ops everywhere: on an H200
(torch 2.11, Triton 3.6; ``results/bench/fake_quant_cuda-h200.csv``) these kernels, though
bit-identical, were slower than aten in 34 of 36 forward + backward cases (x0.11-0.86; a
host-side cost of ~0.5 ms per call that no tensor size amortised), faster only for
per-channel LSQ on activations (x1.26-1.28). ``always`` runs them on CUDA tensors, and on
CPU tensors with ``TRITON_INTERPRET=1`` set before Triton is imported (the interpreter; used
by the tests). :func:`fake_quantize_triton` and
:func:`fake_quantize_learnable_triton` can be called directly.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

try:  # Triton is optional: without it everything runs on the aten ops
    import triton
    import triton.language as tl
    HAS_TRITON = True
except Exception:  # pragma: no cover - depends on the environment
    triton = tl = None
    HAS_TRITON = False
try:
    from triton.language.extra import libdevice
    _HAS_LIBDEVICE = True
except Exception:  # pragma: no cover - older / other Triton builds
    libdevice = None
    _HAS_LIBDEVICE = False

__all__ = ["use_triton", "fake_quantize_triton", "fake_quantize_learnable_triton",
           "set_triton_mode", "get_triton_mode", "interpreter_enabled", "HAS_TRITON",
           "TRITON_MODES"]

TRITON_MODES = ("never", "auto", "always")
_TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_ENV_MODE = os.environ.get("APQ_TRITON", "auto").strip().lower()
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes",
                                                                          "on")
_mode_override: Optional[str] = None


def _check_mode(mode: str, where: str) -> str:
    if mode not in TRITON_MODES:
        raise ValueError(f"{where}={mode!r}: use one of {', '.join(TRITON_MODES)}")
    return mode


_check_mode(_ENV_MODE, "APQ_TRITON")


def set_triton_mode(mode: Optional[str]) -> None:
    """Override ``APQ_TRITON`` for this process (``None`` goes back to the environment)."""
    global _mode_override
    _mode_override = None if mode is None else _check_mode(str(mode).lower(), "triton mode")


def get_triton_mode() -> str:
    return _mode_override if _mode_override is not None else _ENV_MODE


def interpreter_enabled() -> bool:
    """True when Triton kernels were built for the CPU interpreter (TRITON_INTERPRET=1)."""
    return HAS_TRITON and _INTERPRET


def use_triton(x: torch.Tensor) -> bool:
    """Whether ``fake_quantize*`` should run the Triton kernels on ``x``."""
    mode = _mode_override if _mode_override is not None else _ENV_MODE
    if mode == "never" or x.dtype not in _TRITON_DTYPES:
        return False
    if mode == "auto":          # aten: faster than these kernels where measured (module doc)
        return False
    if not HAS_TRITON:
        raise RuntimeError("APQ_TRITON=always but triton cannot be imported; install triton "
                           "or use APQ_TRITON=auto")
    if x.is_cuda or (x.device.type == "cpu" and _INTERPRET):
        return True
    raise RuntimeError(f"APQ_TRITON=always with a {x.device.type} tensor needs the Triton "
                       f"interpreter: set TRITON_INTERPRET=1 before importing triton, or "
                       f"use APQ_TRITON=auto")


# --------------------------------------------------------------------------- kernels
if HAS_TRITON:
    @triton.jit
    def _rint_emulated(v):
        """Round half to even, exact for every finite fp32 (v - floor(v) is exact)."""
        f = tl.floor(v)
        d = v - f
        odd = (f - 2.0 * tl.floor(f * 0.5)) == 1.0
        return tl.where((d > 0.5) | ((d == 0.5) & odd), f + 1.0, f)

    @triton.jit
    def _rint(v, LIBDEVICE: tl.constexpr):
        # compiled: libdevice's rint (no fp contraction can reach into it); the interpreter
        # has no extern functions, so it runs the emulation
        if LIBDEVICE:
            r = libdevice.rint(v)
        else:
            r = _rint_emulated(v)
        return r

    @triton.jit
    def _code(x, inv, z, FMA: tl.constexpr, LIBDEVICE: tl.constexpr):
        """Unclamped integer code: ``rint(fma(x, 1/s, z))`` or ``rint(x * (1/s)) + z``, the
        two forms aten uses (they differ only at rounding ties); see ``_rounding_form``."""
        if FMA:
            q = _rint(tl.fma(x, inv, z), LIBDEVICE)
        else:
            q = _rint(x * inv, LIBDEVICE) + z
        return q

    @triton.jit
    def _zero_point(zf, qmin, qmax, ZP_TRUNC: tl.constexpr, LIBDEVICE: tl.constexpr):
        if ZP_TRUNC:  # aten per-tensor learnable backward: int(clamp(zp + 0.5))
            zc = tl.minimum(tl.maximum(zf + 0.5, qmin), qmax)
            z = tl.where(zc < 0, -tl.floor(-zc), tl.floor(zc))
        else:         # everywhere else: clamp(rint(zp))
            z = tl.minimum(tl.maximum(_rint(zf, LIBDEVICE), qmin), qmax)
        return z

    @triton.jit
    def _fq_fwd_kernel(x_ptr, y_ptr, s_ptr, z_ptr, n, inner, C, qmin, qmax,
                       PER_CHANNEL: tl.constexpr, FMA: tl.constexpr, LIBDEVICE: tl.constexpr,
                       BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        m = offs < n
        x = tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32)
        if PER_CHANNEL:
            ch = (offs // inner) % C
            s = tl.load(s_ptr + ch, mask=m, other=1.0)
            zf = tl.load(z_ptr + ch, mask=m, other=0.0)
        else:
            s = tl.load(s_ptr)
            zf = tl.load(z_ptr)
        z = _zero_point(zf, qmin, qmax, False, LIBDEVICE)
        inv = tl.math.div_rn(1.0, s)
        q = tl.minimum(tl.maximum(_code(x, inv, z, FMA, LIBDEVICE), qmin), qmax)
        tl.store(y_ptr + offs, ((q - z) * s).to(y_ptr.dtype.element_ty), mask=m)

    @triton.jit
    def _fq_bwd_kernel(dy_ptr, x_ptr, s_ptr, z_ptr, dx_ptr, ps_ptr, pz_ptr,
                       M, inner, C, n_split, qmin, qmax, grad_factor,
                       PER_CHANNEL: tl.constexpr, LEARNABLE: tl.constexpr,
                       ZP_TRUNC: tl.constexpr, FMA: tl.constexpr, LIBDEVICE: tl.constexpr,
                       BLOCK: tl.constexpr, ITERS: tl.constexpr):
        c = tl.program_id(0)
        split = tl.program_id(1)
        s = tl.load(s_ptr + c)
        z = _zero_point(tl.load(z_ptr + c), qmin, qmax, ZP_TRUNC, LIBDEVICE)
        inv = tl.math.div_rn(1.0, s)
        acc_s = tl.zeros([BLOCK], dtype=tl.float32)
        acc_z = tl.zeros([BLOCK], dtype=tl.float32)
        for it in range(ITERS):
            k = (split.to(tl.int64) * ITERS + it) * BLOCK + tl.arange(0, BLOCK)
            m = k < M
            if PER_CHANNEL:
                o = k // inner
                off = (o * C + c) * inner + (k - o * inner)
            else:
                off = k
            x = tl.load(x_ptr + off, mask=m, other=0.0).to(tl.float32)
            dy = tl.load(dy_ptr + off, mask=m, other=0.0).to(tl.float32)
            q = _code(x, inv, z, FMA, LIBDEVICE)
            inside = (q >= qmin) & (q <= qmax)
            tl.store(dx_ptr + off, tl.where(inside, dy, 0.0).to(dx_ptr.dtype.element_ty),
                     mask=m)
            if LEARNABLE:
                xfq = (tl.minimum(tl.maximum(q, qmin), qmax) - z) * s
                ds = tl.where(inside, dy * (xfq - x) * inv,
                              tl.where(q < qmin, dy * (qmin - z), dy * (qmax - z)))
                dz = tl.where(inside, 0.0, -dy * s)
                acc_s += tl.where(m, ds * grad_factor, 0.0)
                acc_z += tl.where(m, dz * grad_factor, 0.0)
        if LEARNABLE:
            tl.store(ps_ptr + c * n_split + split, tl.sum(acc_s, axis=0))
            tl.store(pz_ptr + c * n_split + split, tl.sum(acc_z, axis=0))


def _rounding_form(is_cuda: bool, learnable_backward: bool) -> bool:
    """True where aten rounds ``fma(x, 1/s, z)`` rather than ``rint(x * (1/s)) + z`` (they
    differ only at exact rounding ties, which random fp32 data does hit: a few per 10^5 at 8
    bits). CUDA (measured against aten on an H200, torch 2.11): every kernel rounds ``x *
    inv`` and adds ``z`` afterwards, the per-channel forward and its STE mask too (the
    source's ``nearbyint(x * inv + zp)`` with an integer ``zp`` gives, at ties, what the
    unfused form gives). CPU (measured against aten): the forwards add ``z`` after rounding,
    the LSQ backward kernels round the fused ``z + x * inv``."""
    return learnable_backward and not is_cuda


def _geometry(x: torch.Tensor, axis: int) -> tuple[int, int, int]:
    """(channels C, elements after the axis ``inner``, elements per channel M)."""
    n = x.numel()
    if axis < 0:
        return 1, max(n, 1), n
    C = x.shape[axis]
    inner = 1
    for d in x.shape[axis + 1:]:
        inner *= d
    return C, max(inner, 1), n // max(C, 1)


def _next_pow2(v: int) -> int:
    return 1 << max(0, (int(v) - 1).bit_length())


def _require_launchable(x: torch.Tensor) -> None:
    if not HAS_TRITON:
        raise RuntimeError("the Triton fake-quant kernels need triton; it cannot be imported")
    if not x.is_cuda and not _INTERPRET:
        raise RuntimeError("Triton kernels on CPU tensors need TRITON_INTERPRET=1 set before "
                           "triton is imported")
    if x.numel() >= 2 ** 62:
        raise ValueError("tensor too large for the fake-quant kernels")


def _launch_fwd(x, scale, zp, axis, qmin, qmax):
    xc = x.contiguous()
    y = torch.empty_like(xc)
    n = xc.numel()
    if n == 0:
        return y
    _require_launchable(xc)
    C, inner, _ = _geometry(xc, axis)
    BLOCK = 1024
    _fq_fwd_kernel[(triton.cdiv(n, BLOCK),)](
        xc, y, scale, zp, n, inner, C, float(qmin), float(qmax), PER_CHANNEL=axis >= 0,
        FMA=_rounding_form(xc.is_cuda, False),
        LIBDEVICE=xc.is_cuda and _HAS_LIBDEVICE, BLOCK=BLOCK)
    return y


def _launch_bwd(dy, x, scale, zp, axis, qmin, qmax, learnable, zp_trunc, grad_factor):
    xc, dyc = x.contiguous(), dy.contiguous().to(x.dtype)
    dx = torch.empty_like(xc)
    C, inner, M = _geometry(xc, axis)
    if xc.numel() == 0:
        z = torch.zeros(C, dtype=torch.float32, device=x.device)
        return dx, z, z.clone()
    _require_launchable(xc)
    BLOCK = min(1024, max(16, _next_pow2(M)))
    ITERS = 8 if M > 8 * BLOCK else 1
    while triton.cdiv(M, BLOCK * ITERS) > 65535:   # grid dim 1 limit
        ITERS *= 2
    n_split = triton.cdiv(M, BLOCK * ITERS)
    if learnable:
        ps = torch.empty((C, n_split), dtype=torch.float32, device=x.device)
        pz = torch.empty((C, n_split), dtype=torch.float32, device=x.device)
    else:
        ps = pz = dx  # never written
    _fq_bwd_kernel[(C, n_split)](
        dyc, xc, scale, zp, dx, ps, pz, M, inner, C, n_split, float(qmin), float(qmax),
        float(grad_factor), PER_CHANNEL=axis >= 0, LEARNABLE=bool(learnable),
        ZP_TRUNC=bool(zp_trunc), FMA=_rounding_form(xc.is_cuda, bool(learnable)),
        LIBDEVICE=xc.is_cuda and _HAS_LIBDEVICE, BLOCK=BLOCK, ITERS=ITERS)
    if learnable:
        return dx, ps.sum(1), pz.sum(1)
    z = torch.zeros(C, dtype=torch.float32, device=x.device)
    return dx, z, z.clone()


# --------------------------------------------------------------------------- custom ops
@torch.library.custom_op("apq::fake_quant", mutates_args=())
def _fake_quant_op(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, axis: int,
                   qmin: int, qmax: int) -> torch.Tensor:
    """STE fake quant; ``scale``/``zero_point``: float32 ``[C]`` (``C = 1``, ``axis = -1``
    per tensor)."""
    return _launch_fwd(x, scale, zero_point, axis, qmin, qmax)


@torch.library.custom_op("apq::fake_quant_learnable", mutates_args=())
def _fake_quant_learnable_op(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                             axis: int, qmin: int, qmax: int,
                             grad_factor: float) -> torch.Tensor:
    """LSQ fake quant: same forward as ``apq::fake_quant``; gradients to scale and zp."""
    return _launch_fwd(x, scale, zero_point, axis, qmin, qmax)


@torch.library.custom_op("apq::fake_quant_backward", mutates_args=())
def _fake_quant_backward_op(dy: torch.Tensor, x: torch.Tensor, scale: torch.Tensor,
                            zero_point: torch.Tensor, axis: int, qmin: int, qmax: int,
                            learnable: bool, zp_trunc: bool, grad_factor: float
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_x, grad_scale [C], grad_zero_point [C]); the last two are 0 unless learnable."""
    return _launch_bwd(dy, x, scale, zero_point, axis, qmin, qmax, learnable, zp_trunc,
                       grad_factor)


@_fake_quant_op.register_fake
def _(x, scale, zero_point, axis, qmin, qmax):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@_fake_quant_learnable_op.register_fake
def _(x, scale, zero_point, axis, qmin, qmax, grad_factor):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@_fake_quant_backward_op.register_fake
def _(dy, x, scale, zero_point, axis, qmin, qmax, learnable, zp_trunc, grad_factor):
    C = scale.shape[0]
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            scale.new_empty(C, dtype=torch.float32), scale.new_empty(C, dtype=torch.float32))


def _setup_context(ctx, inputs, output):
    x, scale, zero_point, axis, qmin, qmax = inputs[:6]
    ctx.save_for_backward(x, scale, zero_point)
    ctx.axis, ctx.qmin, ctx.qmax = axis, qmin, qmax
    ctx.grad_factor = inputs[6] if len(inputs) > 6 else 1.0


def _ste_backward(ctx, grad):
    x, scale, zero_point = ctx.saved_tensors
    dx, _, _ = _fake_quant_backward_op(grad, x, scale, zero_point, ctx.axis, ctx.qmin,
                                       ctx.qmax, False, False, 1.0)
    return dx.view_as(x), None, None, None, None, None


def _lsq_backward(ctx, grad):
    x, scale, zero_point = ctx.saved_tensors
    dx, ds, dz = _fake_quant_backward_op(grad, x, scale, zero_point, ctx.axis, ctx.qmin,
                                         ctx.qmax, True, ctx.axis < 0, ctx.grad_factor)
    return dx.view_as(x), ds, dz, None, None, None, None


_fake_quant_op.register_autograd(_ste_backward, setup_context=_setup_context)
_fake_quant_learnable_op.register_autograd(_lsq_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------- entry points
def _qparams(x, scale, zero_point, axis):
    C = 1 if axis is None else x.shape[axis]
    s = torch.as_tensor(scale, device=x.device)
    s = s.to(torch.float32).reshape(-1).contiguous()
    if s.numel() == 1 and C != 1:
        s = s.expand(C).contiguous()
    if torch.is_tensor(zero_point):
        z = zero_point.to(device=x.device, dtype=torch.float32).reshape(-1)
        z = (z.expand(C) if z.numel() == 1 and C != 1 else z).contiguous()
    else:
        z = torch.full((C,), float(zero_point), dtype=torch.float32, device=x.device)
    return s, z


def fake_quantize_triton(x: torch.Tensor, scale, zero_point, qmin: int, qmax: int,
                         axis: Optional[int] = None) -> torch.Tensor:
    """STE fake quant through ``apq::fake_quant`` (same contract as ``fake_quantize``)."""
    axis = None if axis is None else axis % x.dim()
    s, z = _qparams(x, scale, zero_point, axis)
    y = _fake_quant_op(x, s.detach(), z.detach(), -1 if axis is None else axis, int(qmin),
                       int(qmax))
    return y.view_as(x) if y.shape == x.shape else y.reshape(x.shape)


def fake_quantize_learnable_triton(x: torch.Tensor, scale: torch.Tensor, zero_point,
                                   qmin: int, qmax: int, axis: Optional[int] = None,
                                   grad_factor: float = 1.0) -> torch.Tensor:
    """LSQ fake quant through ``apq::fake_quant_learnable`` (as ``fake_quantize_learnable``)."""
    axis = None if axis is None else axis % x.dim()
    s, z = _qparams(x, scale, zero_point, axis)
    return _fake_quant_learnable_op(x, s, z, -1 if axis is None else axis, int(qmin),
                                    int(qmax), float(grad_factor))
