"""Triton fake-quant kernels (apq_lib.quant.kernels) on CPU, under the Triton interpreter.

``TRITON_INTERPRET=1`` must be set before triton is imported, so the outer pytest run (where
apq_lib.quant is already imported) runs this file again in a subprocess with it set; the
kernel tests themselves only run inside that subprocess. Shapes are small: the interpreter
executes every program instance in numpy.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from apq_lib.quant import kernels

INTERP = os.environ.get("TRITON_INTERPRET", "0") == "1"
inner = pytest.mark.skipif(not (INTERP and kernels.interpreter_enabled()),
                           reason="runs in the TRITON_INTERPRET=1 subprocess")


def test_kernels_under_triton_interpreter():
    if INTERP:
        pytest.skip("this is the interpreter run")
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", APQ_TRITON="auto")
    root = Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, "-m", "pytest", str(Path(__file__)), "-q", "-x",
                        "-p", "no:cacheprovider"], env=env, cwd=root, capture_output=True,
                       text=True, timeout=600)
    tail = (r.stdout[-6000:] + "\n" + r.stderr[-3000:])
    assert r.returncode == 0, tail
    assert " passed" in r.stdout and "skipped" in r.stdout, tail


def test_triton_mode_switch():
    x = torch.zeros(3)
    try:
        kernels.set_triton_mode("never")
        assert not kernels.use_triton(x)
        kernels.set_triton_mode("auto")
        assert kernels.use_triton(x) is False                # CPU tensor
        assert not kernels.use_triton(x.double())
        kernels.set_triton_mode("always")
        if kernels.interpreter_enabled():
            assert kernels.use_triton(x)
        elif kernels.HAS_TRITON:
            with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
                kernels.use_triton(x)
        with pytest.raises(ValueError, match="never, auto, always"):
            kernels.set_triton_mode("sometimes")
    finally:
        kernels.set_triton_mode(None)


# --------------------------------------------------------------------------- helpers
def qr(bits, signed):
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)


def case(gen, bits, signed, per_channel, frac_zp=False, numel_max=5, nd=None):
    nd = nd or int(torch.randint(1, 5, (1,), generator=gen))
    shape = [int(v) for v in torch.randint(1, numel_max + 1, (nd,), generator=gen)]
    axis = int(torch.randint(0, nd, (1,), generator=gen)) if per_channel else None
    qmin, qmax = qr(bits, signed)
    C = 1 if axis is None else shape[axis]
    s = torch.rand(C, generator=gen) * 0.3 + 0.01
    if bool(torch.rand(1, generator=gen) < 0.2):
        s[0] = 1e-6 if bool(torch.rand(1, generator=gen) < 0.5) else 1e-8   # near zero
    z = torch.randint(qmin, qmax + 1, (C,), generator=gen).float()
    if frac_zp:
        z = (z + torch.rand(C, generator=gen) - 0.5).clamp(qmin - 0.4, qmax + 0.4)
        z[0] = float(qmin) + 0.5 if qmin < 0 else 1.5                   # an exact tie
    x = torch.randn(shape, generator=gen) * (qmax - qmin) * 0.4 * float(s.mean())
    flat, s0, z0 = x.view(-1), float(s[0]), float(torch.round(z[0]))
    special = torch.tensor([(qmax - z0) * s0, (qmin - z0) * s0, (qmax - z0 + 2) * s0,
                            (qmin - z0 - 2) * s0, 0.5 * s0, 1.5 * s0, -2.5 * s0, 1e3, -1e3])
    k = min(flat.numel(), special.numel())
    flat[:k] = special[:k]
    return x, s, z, qmin, qmax, axis


def aten_fq(x, s, z, qmin, qmax, axis):
    if axis is None:
        return torch.fake_quantize_per_tensor_affine(x, s.reshape(()), z.reshape(()).int(),
                                                     qmin, qmax)
    return torch.fake_quantize_per_channel_affine(x, s, z.int(), axis, qmin, qmax)


def aten_lsq(x, s, z, qmin, qmax, axis, gf):
    if axis is None:
        return torch._fake_quantize_learnable_per_tensor_affine(x, s, z, qmin, qmax, gf)
    return torch._fake_quantize_learnable_per_channel_affine(x, s, z, axis, qmin, qmax, gf)


# --------------------------------------------------------------------------- kernels
@inner
@pytest.mark.parametrize("per_channel", [False, True])
def test_forward_and_ste_backward_equal_aten(per_channel):
    gen = torch.Generator().manual_seed(10 + per_channel)
    for bits in range(2, 9):
        for signed in (True, False):
            for _ in range(3):
                x, s, z, qmin, qmax, axis = case(gen, bits, signed, per_channel)
                g = torch.randn(x.shape, generator=gen)
                xa, xt = x.clone().requires_grad_(), x.clone().requires_grad_()
                ya = aten_fq(xa, s, z, qmin, qmax, axis)
                yt = kernels.fake_quantize_triton(xt, s if per_channel else s.reshape(()),
                                                  z, qmin, qmax, axis)
                assert torch.equal(yt, ya), (bits, signed, axis, x.shape)
                ya.backward(g), yt.backward(g)
                assert torch.equal(xt.grad, xa.grad)


@inner
@pytest.mark.parametrize("per_channel", [False, True])
def test_lsq_forward_backward_equal_aten(per_channel):
    gen = torch.Generator().manual_seed(20 + per_channel)
    for bits in (2, 3, 4, 6, 8):
        for signed in (True, False):
            for frac in (False, True):
                x, s, z, qmin, qmax, axis = case(gen, bits, signed, per_channel, frac,
                                                 nd=None if not per_channel else 3)
                gf = float(torch.rand(1, generator=gen)) + 0.1
                g = torch.randn(x.shape, generator=gen)
                res = []
                for impl in ("aten", "triton"):
                    xx, ss, zz = (t.clone().requires_grad_() for t in (x, s, z))
                    f = aten_lsq if impl == "aten" else kernels.fake_quantize_learnable_triton
                    y = f(xx, ss, zz, qmin, qmax, axis, gf)
                    y.backward(g)
                    res.append((y.detach(), xx.grad, ss.grad, zz.grad))
                (ya, dxa, dsa, dza), (yt, dxt, dst, dzt) = res
                assert torch.equal(yt, ya) and torch.equal(dxt, dxa), (bits, signed, frac)
                torch.testing.assert_close(dst, dsa, rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(dzt, dza, rtol=1e-5, atol=1e-5)


@inner
def test_multi_block_reduction_and_layouts():
    gen = torch.Generator().manual_seed(3)
    # per tensor, > 8 blocks of 1024: several programs' partial sums are added
    x = torch.randn(20000, generator=gen)
    s, z = torch.tensor([0.05]), torch.tensor([3.0])
    for f in (aten_lsq, kernels.fake_quantize_learnable_triton):
        xx, ss, zz = (t.clone().requires_grad_() for t in (x, s, z))
        f(xx, ss, zz, -8, 7, None, 0.01).pow(2).sum().backward()
        if f is aten_lsq:
            ref = (xx.grad, ss.grad, zz.grad)
    assert torch.equal(xx.grad, ref[0])
    torch.testing.assert_close(ss.grad, ref[1], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(zz.grad, ref[2], rtol=1e-4, atol=1e-4)
    # activation layout, per channel along axis 1 of NCHW, non-contiguous input, fp16
    a = torch.randn(3, 6, 4, 5, generator=gen).transpose(2, 3)
    sc, zc = torch.rand(6, generator=gen) * 0.1 + 0.01, torch.zeros(6)
    assert torch.equal(kernels.fake_quantize_triton(a, sc, zc, 0, 15, 1),
                       aten_fq(a, sc, zc, 0, 15, 1))
    h = a.half()
    assert torch.equal(kernels.fake_quantize_triton(h, sc, zc, -8, 7, 1),
                       aten_fq(h, sc, zc, -8, 7, 1))
    e = torch.zeros(0, 3)
    assert kernels.fake_quantize_triton(e, 0.1, 0, -8, 7).shape == (0, 3)


@inner
def test_fake_quantize_dispatches_to_triton(monkeypatch):
    from apq_lib.quant import (
        LSQQuantizer,
        PACTQuantizer,
        WeightQuantizer,
        fake_quantize,
        set_triton_mode,
    )
    calls = []
    real = kernels._launch_fwd
    monkeypatch.setattr(kernels, "_launch_fwd", lambda *a: calls.append(1) or real(*a))
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(6, 3, 3, 3, generator=gen)
    x = torch.randn(4, 6, generator=gen) * 3
    quantizers = [(WeightQuantizer(4, per_channel=True), w),
                  (WeightQuantizer(3, symmetric=False), w),
                  (PACTQuantizer(4, signed=True, init_clip=2.0), x),
                  (LSQQuantizer(4, signed=True, per_channel=True, axis=1, channels=6), x)]
    for q, inp in quantizers:
        outs = []
        for mode in ("never", "always"):
            set_triton_mode(mode)
            try:
                q.zero_grad()
                xi = inp.clone().requires_grad_()
                y = q(xi)
                y.pow(2).sum().backward()
                outs.append((y.detach(), xi.grad, [p.grad.clone() for p in q.parameters()
                                                   if p.grad is not None]))
            finally:
                set_triton_mode(None)
        (y0, g0, p0), (y1, g1, p1) = outs
        assert torch.equal(y0, y1) and torch.equal(g0, g1), q
        for a, b in zip(p0, p1):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert len(calls) == len(quantizers)
    with pytest.raises(ValueError, match="scale must be > 0"):
        set_triton_mode("always")
        try:
            fake_quantize(x, -1.0, 0, -8, 7)
        finally:
            set_triton_mode(None)


@inner
def test_custom_ops_pass_opcheck():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, generator=gen)
    s, z = torch.rand(4, generator=gen) + 0.05, torch.tensor([0.0, 1.0, -2.0, 3.0])
    torch.library.opcheck(kernels._fake_quant_op, (x, s, z, 1, -8, 7))
    torch.library.opcheck(kernels._fake_quant_learnable_op,
                          (x.requires_grad_(), s.requires_grad_(), z.requires_grad_(), 1, -8, 7,
                           0.5))
    dy, xd = torch.randn(3, 4, generator=gen), x.detach()
    torch.library.opcheck(kernels._fake_quant_backward_op,
                          (dy, xd, s.detach()[:1], z.detach()[:1], -1, -8, 7, True, True, 1.0))
    torch.library.opcheck(kernels._fake_quant_backward_op,
                          (dy, xd, s.detach(), z.detach(), 1, -8, 7, True, False, 0.5))


@inner
def test_torch_compile_fullgraph_matches_eager():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 5, generator=gen) * 2
    s0, z0 = torch.rand(5, generator=gen) * 0.2 + 0.05, torch.zeros(5)

    def f(x, s, z):
        y = kernels.fake_quantize_learnable_triton(x, s, z, -8, 7, 1, 0.3)
        return (kernels.fake_quantize_triton(y * 1.5, 0.2, 0, -8, 7) ** 2).sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    grads = []
    for fn in (f, compiled):
        xx, ss, zz = (t.clone().requires_grad_() for t in (x, s0, z0))
        loss = fn(xx, ss, zz)
        loss.backward()
        grads.append((loss.detach(), xx.grad, ss.grad, zz.grad))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
