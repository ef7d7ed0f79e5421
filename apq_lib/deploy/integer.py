"""Integer-arithmetic-only inference of an exported quantized subnet (Jacob et al., CVPR 2018,
§2–3): BN folded into per-channel weight scales, int32 weights / biases (bias at scale
``s_in · s_w``), int32 accumulation, requantization by fixed-point multipliers ``M0 · 2^-n``
with round to nearest, zero points, ReLU6 and the PACT clip folded into the requantization
range. Every layer keeps the bit widths of its policy (2–8).

The fake-quant model keeps the residual stream, the global average pool and the network
input in float; here they are int32 "wide" codes with ``extra_bits`` more fractional bits
than the consumer's grid (one more rounding: the only systematic difference, ≤ 2^-extra_bits
LSB before the consumer rounds). The input is the raw uint8 image (normalisation folded into
the stem's input zero point).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..quant import ActQuantizer, PACTQuantizer, WeightQuantizer
from ..quant.functional import FP_BITS, qrange
from .fixedpoint import div_round, multipliers, requantize, rounding_shift

__all__ = ["ActGrid", "act_grid", "IntConv", "Requant", "int_conv", "IntBlock",
           "IntegerSubnet", "to_integer"]

INT32_MAX = 2 ** 31 - 1
INPUT_BITS = 12           # most fractional bits of the integer input (pixel · 2^b - Z)


@dataclass(frozen=True)
class ActGrid:
    """An activation quantizer's integer grid: ``x ≈ scale · (q - zero_point)``, codes in
    ``[lo, hi]``."""
    scale: float
    zero_point: int
    lo: int
    hi: int

    def codes_of(self, value: float) -> int:
        """Code of a real value, rounded as the fake quantizer does (``x · (1/s)``)."""
        inv = torch.tensor(1.0, dtype=torch.float32) / torch.tensor(self.scale)
        return int(torch.round(torch.tensor(value, dtype=torch.float32) * inv)) + self.zero_point


def act_grid(q: nn.Module) -> ActGrid:
    """The grid of a PACT or per-tensor static activation quantizer at its current bits."""
    if getattr(q, "bits", FP_BITS) == FP_BITS:
        raise ValueError(f"{type(q).__name__} is off (bits 32): integer inference needs every "
                         f"quantized layer's input quantized; apply a 2–8 bit policy first")
    if isinstance(q, PACTQuantizer):
        signed = bool(q.signed)
        qmin, qmax = qrange(q.bits, signed)
        a = q.alpha.detach().abs().clamp_min(1e-3).float()
        scale = float((a / qmax).to(torch.float32))
        return ActGrid(scale, 0, -qmax if signed else 0, qmax)   # PACT clips at ±alpha
    if isinstance(q, ActQuantizer) and not q.per_channel:
        scale, zp, qmin, qmax = q.qparams()
        return ActGrid(float(scale.reshape(())), int(zp.reshape(())), qmin, qmax)
    raise TypeError(f"integer inference supports PACT and per-tensor static activation "
                    f"quantizers, not {type(q).__name__}")


def _weight_codes(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """int32 weight codes and the per-output-channel float scale ``[O]`` of a QConv2d /
    QLinear's symmetric linear weight quantizer."""
    wq, w = layer.w_quant, layer.weight.detach().float()
    if not isinstance(wq, WeightQuantizer) or wq.bits == FP_BITS:
        raise ValueError(f"{type(layer).__name__}: integer inference needs a linear weight "
                         f"quantizer at 2–8 bits (got {type(wq).__name__}, bits "
                         f"{getattr(wq, 'bits', '?')})")
    scale, zp, qmin, qmax = wq.qparams(w)
    if bool((zp != 0).any()):
        raise ValueError("asymmetric weight quantization is not supported for integer "
                         "inference: use symmetric=True")
    s = scale.float().reshape(-1).expand(w.shape[0]) if scale.numel() == 1 else \
        scale.float().reshape(-1)
    shape = (-1,) + (1,) * (w.dim() - 1)
    codes = torch.clamp(torch.round(w * (1.0 / s).reshape(shape)), qmin, qmax)
    return codes.to(torch.int32), s.clone()


class IntConv(nn.Module):
    """``acc = conv(q - z_in, W) + b`` with int32 codes, weights and bias (a linear layer is a
    1×1 conv on ``[B, C, 1, 1]``). ``out_scale`` (per channel, float) says what ``acc`` is."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, in_zero_point: int = 0,
                 stride=1, padding=0, groups: int = 1, linear: bool = False):
        super().__init__()
        self.register_buffer("weight", weight.to(torch.int32))
        self.register_buffer("bias", bias.to(torch.int32))
        self.in_zero_point, self.stride, self.padding = int(in_zero_point), stride, padding
        self.groups, self.linear = groups, linear

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        x = q.to(torch.int32)
        if self.in_zero_point:
            x = x - self.in_zero_point
        if self.linear:
            return torch.matmul(x, self.weight.t()) + self.bias
        acc = F.conv2d(x, self.weight, None, self.stride, self.padding, 1, self.groups)
        return acc + self.bias.view(1, -1, 1, 1)


class Requant(nn.Module):
    """``q = clamp(round((acc · M0 + offset) · 2^-n) + z, lo, hi)``: per-channel fixed-point
    multiplier ``M_c ≈ M0 · 2^-n``. ``offset`` (int64, optional) is the sub-LSB part of the
    bias in the product's units (``frac(b / s_acc) · M0``), which the int32 bias cannot hold."""

    def __init__(self, multiplier: torch.Tensor, zero_point: int = 0, lo: int = -INT32_MAX,
                 hi: int = INT32_MAX, bias_fraction: Optional[torch.Tensor] = None):
        super().__init__()
        m0, n = multipliers(multiplier.double().reshape(-1))
        self.register_buffer("m0", m0)
        self.register_buffer("shift", n)
        off = None
        if bias_fraction is not None:
            off = torch.round(bias_fraction.double().reshape(-1) * m0.double()).to(torch.int64)
        self.register_buffer("offset", off)
        self.zero_point, self.lo, self.hi = int(zero_point), int(lo), int(hi)

    def forward(self, acc: torch.Tensor) -> torch.Tensor:
        y = requantize(acc, self.m0, self.shift, axis=1 if acc.dim() > 1 else 0,
                       offset=self.offset)
        if self.zero_point:
            y = y + self.zero_point
        return torch.clamp(y, self.lo, self.hi).to(torch.int32)


def _fold(layer: nn.Module, bn: Optional[nn.BatchNorm2d]):
    """Codes with the BN sign folded in, positive per-channel weight scale ``s_w·|γ/σ|`` and
    real bias, in float64 (conversion time)."""
    codes, s_w = _weight_codes(layer)
    b0 = layer.bias.detach().double() if layer.bias is not None else \
        torch.zeros(codes.shape[0], dtype=torch.float64)
    if bn is None:
        g, b = torch.ones_like(b0), b0
    else:
        g = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
        b = bn.bias.detach().double() + (b0 - bn.running_mean.double()) * g
    sign = torch.where(g < 0, -1, 1).to(torch.int32)
    codes = codes * sign.view((-1,) + (1,) * (codes.dim() - 1))
    scale = (s_w.double() * g.abs()).clamp_min(1e-30)
    return codes, scale, b


def int_conv(layer: nn.Module, bn: Optional[nn.BatchNorm2d], in_grid: ActGrid,
             out_grid: ActGrid, relu6: bool = False, extra_bits: int = 0,
             bias_correction: bool = True) -> tuple[IntConv, Requant]:
    """Convert QConv2d/QLinear (+ BN) whose input is on ``in_grid`` and whose (ReLU6'd)
    output feeds ``out_grid`` (``extra_bits`` finer: a wide code, no clip at the grid's
    range). ``bias_correction=False`` is Jacob et al.'s scheme exactly (bias rounded to the
    accumulator's LSB); ``True`` also adds the bias's fraction in the requantizer.
    Returns the integer layer and its requantizer."""
    codes, s_wc, b = _fold(layer, bn)
    acc_scale = in_grid.scale * s_wc                                  # [O], scale of acc
    bias = torch.round(b / acc_scale)
    frac = b / acc_scale - bias if bias_correction else None
    if bool((bias.abs() > INT32_MAX).any()):
        raise OverflowError("int32 bias overflow: the activation scale is too small")
    linear = isinstance(layer, nn.Linear)
    conv = IntConv(codes, bias, in_grid.zero_point,
                   None if linear else layer.stride, None if linear else layer.padding,
                   1 if linear else layer.groups, linear)
    conv.acc_scale = acc_scale.float()
    out_scale = out_grid.scale / 2 ** extra_bits
    lo, hi = (out_grid.lo, out_grid.hi) if extra_bits == 0 else (-INT32_MAX, INT32_MAX)
    z = out_grid.zero_point * 2 ** extra_bits
    if relu6:
        six = ActGrid(out_scale, z, lo, hi).codes_of(6.0)
        lo, hi = max(lo, z), min(hi, six)
    return conv, Requant(acc_scale / out_scale, z, lo, hi, frac)


def _first_conv(block) -> nn.Module:
    return block.expand if block.expand is not None else block.dw


class IntBlock(nn.Module):
    """Integer MBConv: wide int32 input ``r`` (``extra_bits`` finer than the first conv's
    grid) → [expand] → dw → project → wide output at the next consumer's grid (+ the rescaled
    input when residual)."""

    def __init__(self, block, in_grid: ActGrid, out_grid: ActGrid, extra_bits: int,
                 bias_correction: bool = True):
        super().__init__()
        bc = bias_correction
        self.k, self.in_grid = extra_bits, in_grid
        g_dw, g_pr = act_grid(block.dw.a_quant), act_grid(block.project.a_quant)
        self.expand = None
        if block.expand is not None:
            self.expand, self.expand_rq = int_conv(block.expand, block.expand_bn, in_grid,
                                                   g_dw, relu6=True, bias_correction=bc)
        self.dw, self.dw_rq = int_conv(block.dw, block.dw_bn, g_dw, g_pr, relu6=True,
                                           bias_correction=bc)
        self.project, self.project_rq = int_conv(block.project, block.project_bn, g_pr,
                                                 out_grid, extra_bits=extra_bits,
                                                 bias_correction=bc)
        self.residual = None
        if block.residual:
            self.residual = Requant(torch.tensor([in_grid.scale / out_grid.scale]))

    def forward(self, r: torch.Tensor, q: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``q``: the first conv's input codes when the producer rounded them directly
        (one rounding instead of two); else they are rounded from ``r``."""
        g = self.in_grid
        if q is None:
            q = torch.clamp(rounding_shift(r, self.k) + g.zero_point, g.lo, g.hi)
        if self.expand is not None:
            q = self.expand_rq(self.expand(q))
        q = self.dw_rq(self.dw(q))
        out = self.project_rq(self.project(q))
        if self.residual is not None:
            out = out + self.residual(r)
        return out


class IntegerSubnet(nn.Module):
    """A :class:`~apq_lib.supernet.static.StaticSubnet` as integer-only layers. Input: uint8
    images ``[B, C, H, W]`` (padded to ``pad_to`` with 0); output: int32 logits at scale
    ``logit_scale`` (per class)."""

    def __init__(self, sub, mean, std, pad_to: int = 0, extra_bits: int = 16,
                 bias_correction: bool = True):
        super().__init__()
        sub = sub.eval()
        if getattr(sub.stem.a_quant, "bits", FP_BITS) != FP_BITS:
            raise ValueError("the stem's input quantizer must be off (the integer model "
                             "reads uint8 pixels)")
        self.k, self.pad_to = int(extra_bits), int(pad_to)
        std = torch.tensor(std, dtype=torch.float64).reshape(-1)
        mean = torch.tensor(mean, dtype=torch.float64).reshape(-1)
        # x_c = (p/255 - mean_c)/std_c = s_in · (p·M_c - Z_c), s_in = 1/(255·max(std)·2^b),
        # M_c = round(2^b·max(std)/std_c) (= 2^b for one channel statistic, e.g. Fashion-MNIST)
        # and Z_c rounded (≤ 2^-b-1 pixel), b as large as the stem's int32 accumulator allows
        ratio = std.max() / std
        fan = int(_weight_codes(sub.stem)[0].abs().sum(dim=(1, 2, 3)).max())
        self.input_bits = next((b for b in range(INPUT_BITS, -1, -1)
                                if 256 * 2 ** b * float(ratio.max()) * max(fan, 1) < INT32_MAX),
                               0)
        scale = 2 ** self.input_bits * ratio
        self.register_buffer("input_mult", torch.round(scale).to(torch.int32).view(1, -1, 1, 1))
        self.register_buffer("input_zero", torch.round(mean * 255 * scale).to(torch.int32)
                             .view(1, -1, 1, 1))
        in_grid = ActGrid(float(1.0 / (255 * float(std.max()) * 2 ** self.input_bits)), 0,
                          -INT32_MAX, INT32_MAX)
        chain = [sub.head, *sub.blocks]
        grids = [act_grid(_first_conv(b).a_quant) for b in chain] + \
            [act_grid(sub.tail.a_quant)]
        bc = bias_correction
        self.stem, self.stem_rq = int_conv(sub.stem, sub.stem_bn, in_grid, grids[0],
                                           relu6=True, extra_bits=self.k, bias_correction=bc)
        self.stem_q_rq = int_conv(sub.stem, sub.stem_bn, in_grid, grids[0], relu6=True,
                                  bias_correction=bc)[1]
        self.blocks = nn.ModuleList(IntBlock(b, grids[i], grids[i + 1], self.k, bc)
                                    for i, b in enumerate(chain))
        self.tail_grid, self.cls_grid = grids[-1], act_grid(sub.classifier.a_quant)
        self.tail, self.tail_rq = int_conv(sub.tail, sub.tail_bn, grids[-1], self.cls_grid,
                                           relu6=True, extra_bits=self.k, bias_correction=bc)
        self.classifier = int_conv(sub.classifier, None, self.cls_grid, self.cls_grid)[0]
        self.logit_scale = self.classifier.acc_scale

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.dtype != torch.uint8:
            raise TypeError(f"IntegerSubnet reads uint8 images, got {pixels.dtype}")
        x = pixels.to(torch.int32)
        h = x.shape[-1]
        if self.pad_to > h:
            p = (self.pad_to - h) // 2
            x = F.pad(x, (p, self.pad_to - h - p, p, self.pad_to - h - p))
        x = x * self.input_mult - self.input_zero
        acc = self.stem(x)
        r = self.stem_rq(acc)
        r = self.blocks[0](r, self.stem_q_rq(acc))        # the head reads the stem directly
        for b in self.blocks[1:]:
            r = b(r)
        g = self.tail_grid
        q = torch.clamp(rounding_shift(r, self.k) + g.zero_point, g.lo, g.hi)
        t = self.tail_rq(self.tail(q))                           # wide, ReLU6'd
        hw = t.shape[2] * t.shape[3]
        c = self.cls_grid
        pooled = div_round(t.sum((2, 3), dtype=torch.int64), hw << self.k) + c.zero_point
        return self.classifier(torch.clamp(pooled, c.lo, c.hi))


def to_integer(sub, data_or_stats, extra_bits: int = 16, bias_correction: bool = True
               ) -> IntegerSubnet:
    """:class:`IntegerSubnet` of ``sub``; ``data_or_stats``: a dataset with ``mean``,
    ``std``, ``pad_to`` (e.g. ``load_data(...).test``) or a ``(mean, std, pad_to)`` tuple."""
    if isinstance(data_or_stats, tuple):
        mean, std, pad = data_or_stats
    else:
        mean, std, pad = data_or_stats.mean, data_or_stats.std, data_or_stats.pad_to
    return IntegerSubnet(sub, mean, std, pad, extra_bits, bias_correction)
