"""Elastic MBConv block (OFA §3.2; APQ §3.1: fine-grained middle channels, per-block
mixed precision). Elastic kernel (dw), elastic width (middle channels), four bitwidths:
``pw_w``/``pw_a`` for both 1×1 convs, ``dw_w``/``dw_a`` for the depthwise conv.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .elastic import ElasticBatchNorm2d, ElasticDepthwiseConv, ElasticPointConv
from .space import BlockSlot
from .static import StaticMBConv

__all__ = ["ElasticMBConv"]


class ElasticMBConv(nn.Module):
    """expand 1×1 (signed input) → BN → ReLU6 → dw k×k → BN → ReLU6 → project 1×1 → BN,
    plus the identity shortcut when stride 1 and in_c == out_c. Widths from ``slot``."""

    def __init__(self, slot: BlockSlot, kernel_choices):
        super().__init__()
        self.slot = slot
        self.max_mid = max(slot.mid_choices)
        self.expand = ElasticPointConv(slot.in_c, self.max_mid, a_signed=True)
        self.expand_bn = ElasticBatchNorm2d(self.max_mid)
        self.dw = ElasticDepthwiseConv(self.max_mid, kernel_choices, slot.stride)
        self.dw_bn = ElasticBatchNorm2d(self.max_mid)
        self.project = ElasticPointConv(self.max_mid, slot.out_c)
        self.project_bn = nn.BatchNorm2d(slot.out_c)
        self.residual = slot.stride == 1 and slot.in_c == slot.out_c

    # ---------------------------------------------------------------- choices
    @property
    def active_mid(self) -> int:
        return self.expand.active_out

    @property
    def active_kernel(self) -> int:
        return self.dw.active_kernel

    def set_active(self, kernel: int, mid: int) -> None:
        self.expand.active_out = int(mid)
        self.dw.active_kernel = int(kernel)

    def set_bits(self, pw_w: int, pw_a: int, dw_w: int, dw_a: int) -> None:
        for conv in (self.expand, self.project):
            conv.w_quant.set_bits(pw_w)
            conv.a_quant.set_bits(pw_a)
        self.dw.w_quant.set_bits(dw_w)
        self.dw.a_quant.set_bits(dw_a)

    # ---------------------------------------------------------------- compute
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self.expand_bn(self.expand(x)))
        h = F.relu6(self.dw_bn(self.dw(h)))
        h = self.project_bn(self.project(h))
        return x + h if self.residual else h

    @torch.no_grad()
    def sort_channels(self) -> torch.Tensor:
        """Re-order middle channels by importance (L1 norm of the project conv's input-
        channel weights, descending); the expand conv, its BN, the dw conv and its BN
        follow. The block's output is unchanged. Returns the permutation used."""
        importance = self.project.weight.abs().sum(dim=(0, 2, 3))
        idx = torch.sort(importance, descending=True, stable=True).indices
        self.project.weight.copy_(self.project.weight[:, idx])
        self.expand.weight.copy_(self.expand.weight[idx])
        self.dw.weight.copy_(self.dw.weight[idx])
        for bn in (self.expand_bn, self.dw_bn):
            bn.weight.copy_(bn.weight[idx])
            bn.bias.copy_(bn.bias[idx])
            bn.running_mean.copy_(bn.running_mean[idx])
            bn.running_var.copy_(bn.running_var[idx])
        return idx

    def to_static(self) -> StaticMBConv:
        """The active block as a :class:`StaticMBConv` (copied weights and quantizers)."""
        s, mid, k = self.slot, self.active_mid, self.active_kernel
        out = StaticMBConv(s.in_c, mid, s.out_c, k, s.stride, expand=True)
        out.expand = self.expand.to_static(s.in_c)
        out.expand_bn = self.expand_bn.to_static(mid)
        out.dw = self.dw.to_static(mid)
        out.dw_bn = self.dw_bn.to_static(mid)
        out.project = self.project.to_static(mid)
        out.project_bn.load_state_dict(self.project_bn.state_dict())
        out.project_bn.momentum, out.project_bn.eps = self.project_bn.momentum, \
            self.project_bn.eps
        return out

    def extra_repr(self) -> str:
        return (f"{self.slot.name}: in={self.slot.in_c}, mid<={self.max_mid}, "
                f"out={self.slot.out_c}, stride={self.slot.stride}, residual={self.residual}")
