"""GPU checks of the compiled Triton fake-quant kernels (skipped without CUDA): agreement
with the aten CUDA ops at realistic sizes, dtypes, no host syncs in the quantizers, and
torch.compile (inductor) of a quantized model, forward and backward."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from apq_lib.quant import (
    LSQQuantizer,
    PACTQuantizer,
    WeightQuantizer,
    calibrate,
    fake_quantize,
    fake_quantize_learnable,
    kernels,
    lsq_grad_factor,
    qrange,
    quantize_model,
)

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
              pytest.mark.skipif(not kernels.HAS_TRITON, reason="needs triton")]
DEV = "cuda"


@pytest.fixture(autouse=True)
def triton_always():
    """The kernels under test: ``auto`` runs aten on CUDA too (kernels module doc)."""
    kernels.set_triton_mode("always")
    yield
    kernels.set_triton_mode(None)


def qparams(C, bits, signed, gen, frac=False):
    qmin, qmax = qrange(bits, signed)
    s = (torch.rand(C, generator=gen) * 0.05 + 0.002).to(DEV)
    z = torch.randint(qmin, qmax + 1, (C,), generator=gen).float()
    if frac:
        z = z + torch.rand(C, generator=gen) - 0.5
    return s, z.to(DEV), qmin, qmax


SHAPES = [((256, 128, 3, 3), 0), ((32, 64, 28, 28), 1), ((96, 1, 5, 5), 0), ((1000, 1280), 0),
          ((7, 13, 3), 2)]


@pytest.mark.parametrize("shape,axis", SHAPES)
@pytest.mark.parametrize("per_channel", [False, True])
def test_ste_forward_backward_equal_aten(shape, axis, per_channel):
    assert kernels.use_triton(torch.empty(1, device=DEV))
    gen = torch.Generator().manual_seed(0)
    for bits in (2, 4, 8):
        for signed in (True, False):
            C = shape[axis] if per_channel else 1
            s, z, qmin, qmax = qparams(C, bits, signed, gen)
            x = (torch.randn(shape, generator=gen) * float(s.mean()) * (qmax - qmin) * 0.4
                 ).to(DEV)              # inside and beyond the clip range
            g = torch.randn_like(x)
            xa, xt = x.clone().requires_grad_(), x.clone().requires_grad_()
            if per_channel:
                ya = torch.fake_quantize_per_channel_affine(xa, s, z.int(), axis, qmin, qmax)
                yt = fake_quantize(xt, s, z.int(), qmin, qmax, axis)
            else:
                ya = torch.fake_quantize_per_tensor_affine(xa, s[0], z[0].int(), qmin, qmax)
                yt = fake_quantize(xt, s[0], z[0].int(), qmin, qmax)
            assert torch.equal(yt, ya)
            ya.backward(g), yt.backward(g)
            assert torch.equal(xt.grad, xa.grad)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_forward_equal_aten(dtype):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(64, 32, 14, 14, generator=gen).to(DEV, dtype)
    s, z, qmin, qmax = qparams(32, 4, True, gen)
    assert torch.equal(fake_quantize(x, s, z.int(), qmin, qmax, 1),
                       torch.fake_quantize_per_channel_affine(x, s, z.int(), 1, qmin, qmax))
    assert torch.equal(fake_quantize(x, s[0], z[0].int(), qmin, qmax),
                       torch.fake_quantize_per_tensor_affine(x, s[0], z[0].int(), qmin, qmax))


@pytest.mark.parametrize("shape,axis", SHAPES)
@pytest.mark.parametrize("per_channel", [False, True])
def test_lsq_equal_aten(shape, axis, per_channel):
    gen = torch.Generator().manual_seed(2)
    for bits, signed, frac in ((2, True, False), (4, False, True), (8, True, True)):
        C = shape[axis] if per_channel else 1
        s, z, qmin, qmax = qparams(C, bits, signed, gen, frac)
        x = (torch.randn(shape, generator=gen) * 0.05).to(DEV)
        ax = axis if per_channel else None
        gf = lsq_grad_factor(x, qmax, ax)
        g = torch.randn_like(x)
        res = []
        for impl in ("aten", "ours"):
            xx, ss, zz = (t.clone().requires_grad_() for t in (x, s, z))
            if impl == "ours":
                y = fake_quantize_learnable(xx, ss, zz, qmin, qmax, ax, gf)
            elif per_channel:
                y = torch._fake_quantize_learnable_per_channel_affine(xx, ss, zz, ax, qmin, qmax,
                                                                     gf)
            else:
                y = torch._fake_quantize_learnable_per_tensor_affine(xx, ss, zz, qmin, qmax, gf)
            y.backward(g)
            res.append((y.detach(), xx.grad, ss.grad, zz.grad))
        (ya, dxa, dsa, dza), (yt, dxt, dst, dzt) = res
        assert torch.equal(yt, ya) and torch.equal(dxt, dxa)
        torch.testing.assert_close(dst, dsa, rtol=1e-3, atol=1e-3)   # summation order
        torch.testing.assert_close(dzt, dza, rtol=1e-3, atol=1e-3)


def test_quantizers_do_not_sync():
    w = torch.randn(64, 32, 3, 3, device=DEV, requires_grad=True)
    x = torch.randn(8, 32, 16, 16, device=DEV, requires_grad=True)
    qs = [(WeightQuantizer(4), w), (WeightQuantizer(4, per_channel=True), w),
          (PACTQuantizer(4, signed=False).to(DEV), x),
          (LSQQuantizer(4, signed=True, per_channel=True, axis=1, channels=32).to(DEV), x)]
    for q, inp in qs:                       # first call may initialise (LSQ init syncs)
        q(inp)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for q, inp in qs:
            q(inp).sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def small_net():
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU(),
                         nn.Conv2d(16, 32, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(32, 10))


@pytest.mark.parametrize("act", ["pact", "lsq"])
def test_torch_compile_inductor_matches_eager(act):
    torch.manual_seed(0)
    model = quantize_model(small_net(), 4, 4, act_quantizer=act,
                           weight_kw=dict(per_channel=True)).to(DEV)
    x = torch.randn(8, 3, 16, 16, device=DEV)
    calibrate(model, [x])
    model.train()
    compiled = torch.compile(model)
    out = []
    for m in (model, compiled):
        m.zero_grad()
        y = m(x)
        y.square().mean().backward()
        out.append((y.detach(), [p.grad.clone() for p in model.parameters()
                                 if p.grad is not None]))
    torch.testing.assert_close(out[1][0], out[0][0], rtol=1e-4, atol=1e-4)
    for a, b in zip(out[0][1], out[1][1]):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-4)
