"""Elastic operators of the once-for-all supernet (OFA §3.2, as used by APQ §3.1).

* :class:`ElasticPointConv` — 1×1 conv; input width follows the input tensor, output
  width is ``active_out`` (the first channels of the full weight).
* :class:`ElasticDepthwiseConv` — depthwise conv with elastic kernel: a smaller kernel is
  the centre crop of the next larger one passed through a learned ``k²×k²`` transform
  (25×25 for 7→5, 9×9 for 5→3), initialised to the identity.
* :class:`ElasticBatchNorm2d` — dynamic BN: affine parameters and running statistics
  sliced to the active channels (the slice is updated in place in training mode).

Every elastic conv carries its weight quantizer ``w_quant`` and the quantizer ``a_quant``
of its *input* activation, so a mixed-precision policy can be set on the supernet itself;
bits = 32 means off. ``to_static()`` returns the equivalent plain layer (same quantizers).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..quant import PACTQuantizer, QConv2d, WeightQuantizer
from .static import qconv

__all__ = ["ElasticPointConv", "ElasticDepthwiseConv", "ElasticBatchNorm2d"]


class ElasticPointConv(nn.Module):
    """1×1 conv with weight ``[max_out, max_in, 1, 1]``; uses ``weight[:active_out, :C_in]``."""

    def __init__(self, max_in: int, max_out: int, a_signed: bool = False):
        super().__init__()
        self.max_in, self.max_out = max_in, max_out
        self.weight = nn.Parameter(torch.empty(max_out, max_in, 1, 1))
        nn.init.kaiming_normal_(self.weight, mode="fan_out")
        self.active_out = max_out
        self.w_quant = WeightQuantizer(32)
        self.a_quant = PACTQuantizer(32, signed=a_signed)

    def active_weight(self, in_c: int) -> torch.Tensor:
        # contiguous: the conv then sees the same memory layout as the exported copy, so
        # supernet and exported subnet agree bit for bit (also through the quantizers)
        return self.weight[:self.active_out, :in_c].contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(self.a_quant(x), self.w_quant(self.active_weight(x.shape[1])))

    def to_static(self, in_c: int) -> QConv2d:
        m = qconv(in_c, self.active_out, 1)
        m.weight.data.copy_(self.active_weight(in_c).detach())
        m.w_quant, m.a_quant = copy.deepcopy(self.w_quant), copy.deepcopy(self.a_quant)
        return m

    def extra_repr(self) -> str:
        return f"max_in={self.max_in}, max_out={self.max_out}, active_out={self.active_out}"


class ElasticDepthwiseConv(nn.Module):
    """Depthwise conv over the first ``C_in`` channels with elastic kernel size."""

    def __init__(self, max_channels: int, kernel_choices, stride: int = 1):
        super().__init__()
        self.kernels = sorted(set(int(k) for k in kernel_choices))
        kmax = self.kernels[-1]
        self.max_channels, self.stride = max_channels, stride
        self.weight = nn.Parameter(torch.empty(max_channels, 1, kmax, kmax))
        nn.init.kaiming_normal_(self.weight, mode="fan_out")
        # transform matrices between consecutive kernel sizes, e.g. "7to5": [25, 25]
        self.transforms = nn.ParameterDict({
            f"{big}to{small}": nn.Parameter(torch.eye(small * small))
            for big, small in zip(self.kernels[1:], self.kernels[:-1])})
        self.active_kernel = kmax
        self.w_quant = WeightQuantizer(32)
        self.a_quant = PACTQuantizer(32, signed=False)

    def active_weight(self, channels: int, kernel: int | None = None) -> torch.Tensor:
        """``[channels, 1, k, k]``: centre crops of the max kernel through the transforms."""
        k = self.active_kernel if kernel is None else kernel
        w = self.weight[:channels]
        for big, small in zip(self.kernels[:0:-1], self.kernels[-2::-1]):
            if big == k:
                break
            s = (big - small) // 2
            w = w[:, :, s:s + small, s:s + small].reshape(channels, small * small)
            w = F.linear(w, self.transforms[f"{big}to{small}"]).reshape(channels, 1, small,
                                                                        small)
        return w.contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, k = x.shape[1], self.active_kernel
        w = self.w_quant(self.active_weight(c, k))
        return F.conv2d(self.a_quant(x), w, None, self.stride, k // 2, 1, c)

    def to_static(self, channels: int) -> QConv2d:
        k = self.active_kernel
        m = qconv(channels, channels, k, self.stride, groups=channels)
        m.weight.data.copy_(self.active_weight(channels, k).detach())
        m.w_quant, m.a_quant = copy.deepcopy(self.w_quant), copy.deepcopy(self.a_quant)
        return m

    def extra_repr(self) -> str:
        return (f"max_channels={self.max_channels}, kernels={self.kernels}, "
                f"stride={self.stride}, active_kernel={self.active_kernel}")


class ElasticBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm over the first ``C`` of ``num_features`` channels (C from the input)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        if c == self.num_features:
            return super().forward(x)
        self._check_input_dim(x)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                      else self.momentum)
        use_batch = self.training or self.running_mean is None
        rm = self.running_mean[:c] if self.running_mean is not None else None
        rv = self.running_var[:c] if self.running_var is not None else None
        # running stats are updated in place through the [:c] views in training mode
        return F.batch_norm(x, rm if (not self.training or self.track_running_stats) else None,
                            rv if (not self.training or self.track_running_stats) else None,
                            self.weight[:c] if self.affine else None,
                            self.bias[:c] if self.affine else None,
                            use_batch, factor, self.eps)

    def to_static(self, channels: int) -> nn.BatchNorm2d:
        m = nn.BatchNorm2d(channels, self.eps, self.momentum, self.affine,
                           self.track_running_stats)
        with torch.no_grad():
            if self.affine:
                m.weight.copy_(self.weight[:channels])
                m.bias.copy_(self.bias[:channels])
            if self.track_running_stats:
                m.running_mean.copy_(self.running_mean[:channels])
                m.running_var.copy_(self.running_var[:channels])
                m.num_batches_tracked.copy_(self.num_batches_tracked)
        return m
