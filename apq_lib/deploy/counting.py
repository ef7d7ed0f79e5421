"""MAC counts of quantized models by common counters (the cost side of APQ §3.3 / BitOps):
thop and ptflops look layers up by exact type, so QConv2d / QLinear need their hooks
registered; fvcore and ``torch.utils.flop_counter.FlopCounterMode`` count the aten ops and
work once the quantizers' state is tensors only (TorchScript tracing).
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

from ..quant import QConv2d, QLinear

__all__ = ["thop_custom_ops", "macs_by_counter", "reference_macs"]


def thop_custom_ops(macs_only: bool = False) -> dict:
    """``custom_ops`` for ``thop.profile``: our layers counted as the torch layers they wrap;
    ``macs_only`` also zeroes BN (which thop counts as 2 ops per element)."""
    from thop.vision.basic_hooks import count_convNd, count_linear, zero_ops
    ops = {QConv2d: count_convNd, QLinear: count_linear}
    if macs_only:
        ops[nn.BatchNorm2d] = zero_ops
    return ops


def reference_macs(model: nn.Module, x: torch.Tensor) -> int:
    """MACs of every Conv2d / Linear from its output shape (``out · C_in/groups · k²``)."""
    total = []

    def hook(m, inp, out):
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1]
            total.append(out.numel() // out.shape[0] * (m.in_channels // m.groups) * k)
        else:
            total.append(out.numel() // out.shape[0] * m.in_features)

    hs = [m.register_forward_hook(hook) for m in model.modules()
          if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in hs:
            h.remove()
    return int(sum(total))


@torch.no_grad()
def macs_by_counter(model: nn.Module, x: torch.Tensor) -> dict:
    """Per-image MACs of ``model`` on ``x[:1]`` from thop, fvcore and FlopCounterMode (conv
    and matmul FLOPs / 2)."""
    import copy

    import thop
    from fvcore.nn import FlopCountAnalysis
    from torch.utils.flop_counter import FlopCounterMode
    model = copy.deepcopy(model).eval()
    x = x[:1]
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        macs, _ = thop.profile(copy.deepcopy(model), inputs=(x,), custom_ops=thop_custom_ops(True),
                               verbose=False)
        out["thop"] = int(macs)
        fa = FlopCountAnalysis(model, x)
        fa.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        by_op = fa.by_operator()
        out["fvcore"] = int(by_op.get("conv", 0) + by_op.get("linear", 0)
                            + by_op.get("addmm", 0) + by_op.get("matmul", 0))
    fc = FlopCounterMode(display=False)
    with fc:
        model(x)
    out["flop_counter"] = int(fc.get_total_flops() // 2)
    return out
