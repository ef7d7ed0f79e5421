"""Integer-only inference, ONNX / QONNX export and MAC counters (apq_lib.deploy)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from apq_lib.config import SpaceConfig
from apq_lib.deploy import (
    FloatOpError,
    NoFloatMode,
    act_grid,
    count_qdq,
    export_qdq,
    export_qonnx,
    int_conv,
    macs_by_counter,
    ort_run,
    ort_session,
    parity,
    qonnx_run,
    quantize_multiplier,
    reference_macs,
    requantize,
    to_integer,
)
from apq_lib.quant import PACTQuantizer, QConv2d, QLinear, WeightQuantizer
from apq_lib.supernet.network import APQSupernet
from apq_lib.supernet.space import SearchSpace

MEAN, STD, PAD = (0.2860,), (0.3530,), 32


def _space() -> SearchSpace:
    return SearchSpace(SpaceConfig(stem_width=8, stem_stride=2, head_width=8,
                                   stage_widths=[8, 16, 16], stage_strides=[1, 2, 2],
                                   stage_max_depth=[2, 2, 1], depth_choices=[1, 2],
                                   kernel_choices=[3, 5], expand_min=2, expand_max=3,
                                   channel_step=8, bit_choices=[2, 4, 6, 8], tail_width=32,
                                   image_size=32, in_channels=1, num_classes=10))


class _Set:
    """A TensorImageSet stand-in: uint8 images, labels, the data module's prepare."""

    def __init__(self, n: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g)
        self.labels = torch.randint(0, 10, (n,), generator=g)
        self.mean, self.std, self.pad_to = MEAN, STD, PAD

    def __len__(self):
        return len(self.labels)

    def prepare(self, x):
        from apq_lib.data import TensorImageSet
        return TensorImageSet(x, self.labels[:len(x)], MEAN, STD, PAD).prepare(x)


def _randomize(sub: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights, BN statistics and PACT clips, so every layer does real work."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in sub.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.weight[::5] *= -1                       # negative γ: sign folded into codes
                m.bias.copy_(0.3 * torch.randn(c, generator=g))
                m.running_mean.copy_(0.2 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
            elif isinstance(m, (QConv2d, QLinear)):
                fan = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / fan ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
            elif isinstance(m, PACTQuantizer):
                m.alpha.fill_(float(1.5 + 4 * torch.rand((), generator=g)))
    return sub.eval()


def _subnet(bits: int, seed: int = 0):
    sp = _space()
    net = APQSupernet(sp)
    c = sp.with_bits(sp.sample(np.random.default_rng(seed)), bits, bits, bits, bits)
    return _randomize(net.export(c, quantized=True), seed)


# --------------------------------------------------------------------------- fixed point
def test_quantize_multiplier_and_requantize_match_exact_rounding():
    g = torch.Generator().manual_seed(0)
    for m in [0.5, 1e-4, 0.37, 3.0, 1 / 3, 2.0 ** -40]:
        m0, n = quantize_multiplier(m)
        assert 1 <= n <= 62 and m0 < 2 ** 31
        if n < 62:                                    # normalised M0 in [2^30, 2^31)
            assert 2 ** 30 <= m0 and abs(m0 * 2.0 ** -n - m) <= m * 2.0 ** -31
        else:                                         # tiny: low bits of M0 dropped
            assert abs(m0 * 2.0 ** -n - m) <= 2.0 ** -62
        acc = torch.randint(-2 ** 20, 2 ** 20, (200,), generator=g, dtype=torch.int32)
        got = requantize(acc, torch.tensor([m0]), torch.tensor([n]), axis=0)
        # round half up of acc·M0/2^n, written with Python integers
        want = [(a * m0 + (1 << (n - 1))) >> n for a in acc.tolist()]
        assert got.tolist() == want
    with pytest.raises(ValueError, match="multiplier"):
        quantize_multiplier(0.0)
    with pytest.raises(TypeError, match="integer accumulator"):
        requantize(torch.ones(3), torch.tensor([1]), torch.tensor([1]), axis=0)


def test_hand_computed_two_layer_example():
    """1×1 conv (1 → 2 channels, 8-bit) → ReLU6 → 1×1 conv (2 → 1, 4-bit), written out."""
    c1 = QConv2d(1, 2, 1, bias=True, w_bits=8, a_bits=8, w_quant=WeightQuantizer(8),
                 a_quant=PACTQuantizer(8, signed=True))
    c2 = QConv2d(2, 1, 1, bias=False, w_bits=4, a_bits=4, w_quant=WeightQuantizer(4),
                 a_quant=PACTQuantizer(4, signed=False))
    with torch.no_grad():
        c1.weight.copy_(torch.tensor([0.5, -0.25]).view(2, 1, 1, 1))
        c1.bias.copy_(torch.tensor([0.1, 0.3]))
        c1.a_quant.alpha.fill_(1.27)           # s1 = 1.27 / 127 = 0.01
        c2.weight.copy_(torch.tensor([0.7, -0.35]).view(1, 2, 1, 1))
        c2.a_quant.alpha.fill_(3.0)            # s2 = 3 / 15 = 0.2
    g1, g2 = act_grid(c1.a_quant), act_grid(c2.a_quant)
    out = act_grid(PACTQuantizer(8, signed=True, init_clip=2.54))  # s3 = 0.02
    l1, r1 = int_conv(c1, None, g1, g2, relu6=True, bias_correction=False)
    l2, r2 = int_conv(c2, None, g2, out, bias_correction=False)
    q = torch.tensor([100, -50, 7, 127], dtype=torch.int32).view(4, 1, 1, 1)   # x = 0.01 q
    got = r2(l2(r1(l1(q)))).view(-1).tolist()
    # written out: layer 1 weight codes round(w / (0.5/127)) = [127, -64] (half to even),
    # bias round(b / (s1 · s_w1)), M1 = s1 · s_w1 / s2; ReLU6 → codes [0, round(6/0.2)=30]
    # ∩ [0, 15]; layer 2 codes round(w / (0.7/7)) = [7, -4], M2 = s2 · s_w2 / s3
    sw1, sw2 = 0.5 / 127, 0.7 / 7
    w1, w2 = [127, -64], [7, -4]
    b1 = [round(0.1 / (0.01 * sw1)), round(0.3 / (0.01 * sw1))]
    m1, m2 = quantize_multiplier(0.01 * sw1 / 0.2), quantize_multiplier(0.2 * sw2 / 0.02)

    def rq(acc, m):
        return (acc * m[0] + (1 << (m[1] - 1))) >> m[1]

    want = []
    for x in [100, -50, 7, 127]:
        h = [min(max(rq(x * w1[c] + b1[c], m1), 0), 15) for c in range(2)]
        want.append(min(max(rq(h[0] * w2[0] + h[1] * w2[1], m2), -127), 127))
    assert got == want
    assert l1.weight.view(-1).tolist() == w1 and l2.weight.view(-1).tolist() == w2
    assert l1.bias.tolist() == b1


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("kind", ["conv", "dw", "linear"])
def test_random_layer_within_one_lsb_of_fake_quant(bits, kind):
    g = torch.Generator().manual_seed(bits)
    per_channel = kind == "conv"
    wq = WeightQuantizer(bits, per_channel=per_channel)
    if kind == "linear":
        layer = QLinear(24, 12, w_bits=bits, a_bits=bits, w_quant=wq,
                        a_quant=PACTQuantizer(bits, signed=False))
        bn, x = None, 3 * torch.rand(64, 24, generator=g)
    else:
        groups = 12 if kind == "dw" else 1
        layer = QConv2d(12, 12, 3, 1, 1, groups=groups, bias=False, w_bits=bits, a_bits=bits,
                        w_quant=wq, a_quant=PACTQuantizer(bits, signed=True))
        bn, x = nn.BatchNorm2d(12), 2 * torch.randn(8, 12, 9, 9, generator=g)
    _randomize(nn.ModuleList([layer] + ([bn] if bn is not None else [])), bits)
    nxt = PACTQuantizer(bits, signed=False, init_clip=4.0)
    with torch.no_grad():
        y = layer(x)
        y = F.relu6(bn(y)) if bn is not None else F.relu6(y)
        g_in, g_out = act_grid(layer.a_quant), act_grid(nxt)
        ref = torch.round(nxt(y) / g_out.scale)                      # fake-quant codes
        q_in = torch.round(layer.a_quant(x) / g_in.scale).to(torch.int32)
        lay, rq = int_conv(layer, bn, g_in, g_out, relu6=True)
        got = rq(lay(q_in if kind != "linear" else q_in))
    assert got.dtype == torch.int32
    assert (got.float() - ref).abs().max() <= 1
    assert (got.float() == ref).float().mean() > 0.99


# --------------------------------------------------------------------------- whole model
@pytest.fixture(scope="module")
def mixed():
    sub = _subnet(4, seed=1)
    sp = _space()
    c = sp.sample(np.random.default_rng(3))          # a mixed 2/4/6/8-bit policy
    net = APQSupernet(sp)
    return sub, _randomize(net.export(c, quantized=True), 3)


def test_integer_model_has_no_float_op(mixed):
    imodel = to_integer(mixed[1], (MEAN, STD, PAD))
    x = _Set(3).images
    with NoFloatMode() as guard:
        out = imodel(x)
    assert out.dtype == torch.int32 and "aten.convolution.default" in guard.ops
    with pytest.raises(FloatOpError, match="float32"):
        with NoFloatMode():
            imodel.blocks[0](torch.zeros(1, 8, 16, 16))      # a float tensor sneaks in
    with pytest.raises(TypeError, match="uint8"):
        imodel(x.float())


def test_integer_model_parity_mixed_policy(mixed):
    ds = _Set(96, seed=5)
    for model in mixed:
        p = parity(model, to_integer(model, ds), ds, batch_size=48)
        assert p["agreement"] >= 95.0, p
        assert p["mean_logit_lsb"] < 0.05 * p["max_logit_lsb"] + 50, p


def test_unquantized_layer_is_a_clear_error():
    sub = _subnet(8)
    sub.blocks[0].dw.a_quant.set_bits(32)
    with pytest.raises(ValueError, match="bits 32"):
        to_integer(sub, (MEAN, STD, PAD))


# --------------------------------------------------------------------------- export
@pytest.mark.parametrize("dynamo", [True, False])
def test_onnx_qdq_roundtrip_8bit(tmp_path, dynamo):
    sub = _subnet(8, seed=2)
    x = _Set(8).prepare(_Set(8).images)
    f = export_qdq(sub, tmp_path / "m.onnx", 32, 1, dynamo=dynamo, batch=8)
    n = count_qdq(f)
    assert n["QuantizeLinear"] > 0 and n["DequantizeLinear"] >= n["QuantizeLinear"]
    y = ort_run(ort_session(f), x)
    with torch.no_grad():
        ref = sub(x).numpy()
    assert (y.argmax(1) == ref.argmax(1)).all()
    assert np.abs(y - ref).max() <= 0.02 * np.abs(ref).max() + 1e-4


def test_onnx_qdq_refuses_sub8bit(tmp_path):
    with pytest.raises(ValueError, match="export_qonnx"):
        export_qdq(_subnet(4), tmp_path / "m.onnx", 32, 1)


def test_qonnx_roundtrip_4bit(tmp_path):
    sub = _subnet(4, seed=4)
    x = _Set(4).prepare(_Set(4).images)
    f = export_qonnx(sub, tmp_path / "m.qonnx.onnx", 32, 1, batch=4)
    assert count_qdq(f)["Quant"] == 2 * len([m for m in sub.modules()
                                              if isinstance(m, (QConv2d, QLinear))]) - 1
    y = qonnx_run(f, x)
    with torch.no_grad():
        ref = sub(x).numpy()
    assert (y.argmax(1) == ref.argmax(1)).all()
    assert np.abs(y - ref).max() <= 0.02 * np.abs(ref).max() + 1e-4


def test_counters_count_quantized_layers():
    sub = _subnet(6)
    x = torch.zeros(1, 1, 32, 32)
    ref = reference_macs(sub, x)
    got = macs_by_counter(sub, x)
    assert ref > 0
    assert got == {"thop": ref, "fvcore": ref, "flop_counter": ref}


def test_integer_model_parity_rgb_statistics():
    """Per-channel input statistics (ImageFolder / ImageNet): the same parity as one."""
    from dataclasses import replace

    from apq_lib.data import TensorImageSet
    sp = _space()
    sp = SearchSpace(replace(sp.cfg, in_channels=3))
    c = sp.with_bits(sp.sample(np.random.default_rng(1)), 8, 8, 8, 8)
    model = _randomize(APQSupernet(sp).export(c, quantized=True), 1)
    g = torch.Generator().manual_seed(2)
    ds = TensorImageSet(torch.randint(0, 256, (96, 3, 32, 32), dtype=torch.uint8, generator=g),
                        torch.randint(0, 10, (96,), generator=g), (0.485, 0.456, 0.406),
                        (0.229, 0.224, 0.225), 0)
    p = parity(model, to_integer(model, ds), ds, batch_size=48)
    assert p["agreement"] >= 95.0, p
    assert p["mean_logit_lsb"] < 0.05 * p["max_logit_lsb"] + 50, p
