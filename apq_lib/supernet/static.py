"""Static (non-elastic) layers and the standalone subnet exported from the supernet
(OFA §3.2 "get_active_subnet"; APQ §3.1 mixed-precision MBConv blocks).

Fixed layers are :class:`apq_lib.quant.QConv2d` / ``QLinear`` (weight quantizer ``w_quant``,
input-activation quantizer ``a_quant``; bits 32 = off), so exported subnets work with the
quantization tools (``quant_layers``, ``apply_policy``, ``calibrate``, QAT).
:class:`StaticMBConv` is one MBConv block (optional expand 1×1, depthwise k×k, project 1×1,
each followed by BN; ReLU6 after the first two). :class:`StaticSubnet` is the whole network
with only the chosen channels,
kernels and blocks; it is what the supernet's ``get_active_subnet()`` returns.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..quant import PACTQuantizer, QConv2d, QLinear, WeightQuantizer

__all__ = ["qconv", "StaticMBConv", "MobileNetBody", "StaticSubnet", "tensor_state",
           "load_tensor_state"]


def qconv(in_c: int, out_c: int, kernel: int, stride: int = 1, groups: int = 1,
          a_signed: bool = False) -> QConv2d:
    """A bias-free :class:`~apq_lib.quant.QConv2d` (padding k//2), quantizers off (bits 32):
    symmetric per-tensor linear weights (APQ), PACT input (signed for the residual stream)."""
    return QConv2d(in_c, out_c, kernel, stride, kernel // 2, groups=groups, bias=False,
                   w_bits=32, a_bits=32, w_quant=WeightQuantizer(32),
                   a_quant=PACTQuantizer(32, signed=a_signed))


class StaticMBConv(nn.Module):
    """MBConv: [expand 1×1 → BN → ReLU6] → dw k×k → BN → ReLU6 → project 1×1 → BN (+x).

    The expand conv reads the residual stream (signed PACT); dw and project read ReLU6
    outputs (unsigned). ``expand=False`` gives the expand-ratio-1 block of the fixed head.
    """

    def __init__(self, in_c: int, mid: int, out_c: int, kernel: int, stride: int,
                 expand: bool = True):
        super().__init__()
        if not expand and mid != in_c:
            raise ValueError(f"an MBConv without expand conv needs mid == in_c ({mid} != {in_c})")
        self.in_c, self.mid, self.out_c = in_c, mid, out_c
        self.kernel, self.stride = kernel, stride
        self.expand = qconv(in_c, mid, 1, a_signed=True) if expand else None
        self.expand_bn = nn.BatchNorm2d(mid) if expand else None
        self.dw = qconv(mid, mid, kernel, stride, groups=mid)
        self.dw_bn = nn.BatchNorm2d(mid)
        self.project = qconv(mid, out_c, 1)
        self.project_bn = nn.BatchNorm2d(out_c)
        self.residual = stride == 1 and in_c == out_c

    def set_bits(self, pw_w: int, pw_a: int, dw_w: int, dw_a: int) -> None:
        if self.expand is not None:
            self.expand.set_bits(pw_w, pw_a)
        self.dw.set_bits(dw_w, dw_a)
        self.project.set_bits(pw_w, pw_a)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self.expand is not None:
            h = F.relu6(self.expand_bn(self.expand(h)))
        h = F.relu6(self.dw_bn(self.dw(h)))
        h = self.project_bn(self.project(h))
        return x + h if self.residual else h

    def extra_repr(self) -> str:
        return (f"in={self.in_c}, mid={self.mid}, out={self.out_c}, k={self.kernel}, "
                f"stride={self.stride}, residual={self.residual}")


class MobileNetBody(nn.Module):
    """Fixed head + blocks + fixed tail, shared by the supernet and exported subnets.

    stem 3×3 conv (input never quantized) → BN → ReLU6 → head MBConv (expand 1) →
    searchable blocks → tail 1×1 conv → BN → ReLU6 → global average pool → classifier.
    """

    def _build_head(self, c) -> None:
        self.stem = qconv(c.in_channels, c.stem_width, 3, c.stem_stride)
        self.stem_bn = nn.BatchNorm2d(c.stem_width)
        self.head = StaticMBConv(c.stem_width, c.stem_width, c.head_width, 3, 1, expand=False)

    @staticmethod
    def _make_tail(c) -> dict:
        return {"tail": qconv(c.stage_widths[-1], c.tail_width, 1, a_signed=True),
                "tail_bn": nn.BatchNorm2d(c.tail_width),
                "classifier": QLinear(c.tail_width, c.num_classes, w_bits=32, a_bits=32,
                                      w_quant=WeightQuantizer(32),
                                      a_quant=PACTQuantizer(32, signed=False))}

    def set_bn_params(self, eps: float, momentum: float) -> None:
        """``eps`` and ``momentum`` of every BatchNorm (the space's ``bn_eps`` /
        ``bn_momentum``; exported subnets copy them)."""
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eps, m.momentum = float(eps), float(momentum)

    def set_fixed_bits(self, bits: int) -> None:
        """Head and tail at ``bits`` (8 when quantized, 32 for FP32); stem input stays FP."""
        self.stem.set_bits(bits, 32)
        self.head.set_bits(bits, bits, bits, bits)
        self.tail.set_bits(bits, bits)
        self.classifier.set_bits(bits, bits)

    def run_blocks(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, C_in, H, W]`` → logits ``[B, num_classes]``. Activations are kept
        channels-last (3-5× faster depthwise and 1×1 convs on CPU)."""
        # (after the stem: with one input channel NCHW and NHWC strides coincide)
        x = self.stem(x).contiguous(memory_format=torch.channels_last)
        x = F.relu6(self.stem_bn(x))
        x = self.run_blocks(self.head(x))
        x = F.relu6(self.tail_bn(self.tail(x)))
        return self.classifier(x.mean((2, 3)))


class StaticSubnet(MobileNetBody):
    """A standalone subnet: the fixed layers plus a ``Sequential`` of :class:`StaticMBConv`.

    ``config`` is the :class:`~apq_lib.supernet.space.SubnetConfig` it was exported with;
    ``quantized`` says whether its quantizers are on (bits from ``config``, 8 for fixed).
    """

    FIXED = ("stem", "stem_bn", "head", "tail", "tail_bn", "classifier")

    def __init__(self, fixed: dict, blocks: list[StaticMBConv], config=None,
                 quantized: bool = False):
        super().__init__()
        for name in self.FIXED[:3]:          # registered in forward order
            setattr(self, name, fixed[name])
        self.blocks = nn.Sequential(*blocks)
        for name in self.FIXED[3:]:
            setattr(self, name, fixed[name])
        self.config: Optional[object] = config
        self.quantized = quantized

    def run_blocks(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


def tensor_state(model: nn.Module) -> dict:
    """``state_dict`` without non-tensor entries (quantizers' ``_extra_state``), for
    safetensors."""
    return {k: v for k, v in model.state_dict().items() if torch.is_tensor(v)}


def load_tensor_state(model: nn.Module, state: dict) -> None:
    """Load a :func:`tensor_state` dict; only ``_extra_state`` entries may be missing."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("_extra_state")]
    if missing or unexpected:
        raise KeyError(f"state does not match the model: missing {missing[:5]}, "
                       f"unexpected {unexpected[:5]}")
