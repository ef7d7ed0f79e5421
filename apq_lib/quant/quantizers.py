"""Weight and activation quantizers (APQ §3.3 / HAQ §3: linear quantization; PACT for
activations, Choi et al. 2018). Each quantizer is an ``nn.Module`` whose ``bits`` can be
changed at run time; ``bits = 32`` switches it off (identity).
"""
from __future__ import annotations

import torch
from torch import nn

from .functional import FP_BITS, check_bits, fake_quantize, qrange, symmetric_scale

__all__ = ["WeightQuantizer", "PACTQuantizer"]


class WeightQuantizer(nn.Module):
    """Symmetric linear weight quantizer; range recomputed from the weight each call
    (max|w|, per tensor or per output channel), so it works on sliced elastic weights."""

    def __init__(self, bits: int = 8, per_channel: bool = False, axis: int = 0):
        super().__init__()
        self.bits = check_bits(bits, "w_bits")
        self.per_channel, self.axis = per_channel, axis

    def set_bits(self, bits: int) -> None:
        self.bits = check_bits(bits, "w_bits")

    def scale(self, w: torch.Tensor) -> torch.Tensor:
        if self.per_channel:
            dims = [d for d in range(w.dim()) if d != self.axis % w.dim()]
            max_abs = w.detach().abs().amax(dim=dims)
        else:
            max_abs = w.detach().abs().max()
        return symmetric_scale(max_abs, self.bits, signed=True)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.bits == FP_BITS:
            return w
        qmin, qmax = qrange(self.bits, signed=True)
        return fake_quantize(w, self.scale(w), 0, qmin, qmax,
                             self.axis if self.per_channel else None)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, per_channel={self.per_channel}"


class PACTQuantizer(nn.Module):
    """PACT activation quantizer with a learnable clip ``alpha`` (init 6.0).

    Unsigned (after ReLU): ``y = clamp(x, 0, alpha)``; signed: ``clamp(x, -alpha, alpha)``;
    then ``bits``-bit uniform fake quantization with scale ``alpha / qmax``. Gradients: STE to
    ``x`` inside the clip range, and to ``alpha`` from the clipped elements (PACT eq. 3).
    """

    def __init__(self, bits: int = 8, signed: bool = False, init_clip: float = 6.0):
        super().__init__()
        self.bits = check_bits(bits, "a_bits")
        self.signed = signed
        self.alpha = nn.Parameter(torch.tensor(float(init_clip)))

    def set_bits(self, bits: int) -> None:
        self.bits = check_bits(bits, "a_bits")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bits == FP_BITS:
            return x
        a = self.alpha.abs().clamp_min(1e-3)
        lo = -a if self.signed else torch.zeros_like(a)
        y = torch.minimum(torch.maximum(x, lo), a)
        qmin, qmax = qrange(self.bits, self.signed)
        scale = (a / qmax).detach()
        # the clip already gave alpha its gradient; fake_quantize's STE passes y's through
        return fake_quantize(y, scale, 0, qmin, qmax)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, signed={self.signed}"
