"""Per-layer quantization policies ``{layer name: (w_bits, a_bits)}`` and quantizing a float
model at one (APQ §3: a subnet's policy; HAQ / HAWQ-V2: a fixed network's).

* Fixed layers follow APQ's space: stem, head MBConv, tail conv and classifier stay at
  8 bits (the stem's input is never quantized); policies choose bits for the rest.
* :func:`layer_policy`: a subnet configuration's bits as a per-layer policy (an MBConv's
  expand and project convs share the block's point-wise bits, its depth-wise conv has its
  own), the one place this mapping is written.
* :func:`to_float` / :func:`quantize_with_policy`: a model with plain Conv2d / Linear, and a
  copy quantized with ``apq_lib.quant`` (PACT activations, linear or k-means weights) at a
  policy, calibrated.
"""
from __future__ import annotations

import copy
from typing import Iterable, Optional, Sequence

import torch
from torch import nn

from .modules import apply_policy, calibrate, quantize_model

__all__ = ["FIXED_PREFIXES", "is_fixed", "fixed_bits", "layer_names", "uniform_policy",
           "layer_policy", "to_float", "quantize_with_policy"]

FIXED_PREFIXES = ("stem", "head.", "tail", "classifier")


def is_fixed(name: str) -> bool:
    """Layers outside the searchable blocks (APQ keeps them at 8 bits)."""
    return any(name == p or name.startswith(p if p.endswith(".") else p + ".")
               or (p.endswith(".") and name.startswith(p)) for p in FIXED_PREFIXES)


def fixed_bits(name: str) -> tuple[int, int]:
    """(8, 32) for the stem (input never quantized), (8, 8) for the other fixed layers."""
    return (8, 32) if name == "stem" or name.startswith("stem.") else (8, 8)


def layer_names(model: nn.Module) -> list[str]:
    """Conv2d / Linear layers in module order (what policies are keyed by)."""
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def uniform_policy(names: Sequence[str], w_bits: int, a_bits: int) -> dict:
    """Every searchable layer at ``W{w}A{a}``, fixed layers at their 8-bit setting."""
    return {n: fixed_bits(n) if is_fixed(n) else (int(w_bits), int(a_bits)) for n in names}


def layer_policy(space, cfg, names: Optional[Sequence[str]] = None) -> dict:
    """The per-layer policy of subnet ``cfg`` of ``space`` (a :class:`SubnetConfig`): active
    block ``j``'s ``expand`` / ``project`` convs at its point-wise bits, its ``dw`` conv at
    its depth-wise bits. With ``names`` (the exported model's layers) the fixed layers are
    added at their 8-bit setting and only layers in ``names`` are kept."""
    pol = {}
    for j, i in enumerate(space.active_blocks(cfg)):
        pw, dw = (int(cfg.pw_w[i]), int(cfg.pw_a[i])), (int(cfg.dw_w[i]), int(cfg.dw_a[i]))
        pol.update({f"blocks.{j}.expand": pw, f"blocks.{j}.project": pw, f"blocks.{j}.dw": dw})
    if names is None:
        return pol
    missing = [n for n in names if not is_fixed(n) and n not in pol]
    if missing:
        raise KeyError(f"layers {missing[:3]} are neither fixed nor in the subnet's blocks")
    return {n: fixed_bits(n) if is_fixed(n) else pol[n] for n in names}


def _plain(m: nn.Module) -> nn.Module:
    if isinstance(m, nn.Conv2d) and type(m) is not nn.Conv2d:
        new = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding,
                        m.dilation, m.groups, m.bias is not None, m.padding_mode)
    elif isinstance(m, nn.Linear) and type(m) is not nn.Linear:
        new = nn.Linear(m.in_features, m.out_features, m.bias is not None)
    else:
        return m
    new.weight, new.bias = m.weight, m.bias
    return new.to(m.weight.device).train(m.training)


def to_float(model: nn.Module) -> nn.Module:
    """A deep copy with every quantized Conv2d / Linear subclass replaced by the plain
    layer (same weights; quantizers dropped)."""
    model = copy.deepcopy(model)

    def swap(parent: nn.Module) -> None:
        for name, child in list(parent.named_children()):
            new = _plain(child)
            if new is not child:
                setattr(parent, name, new)
            else:
                swap(child)
    swap(model)
    return model


def quantize_with_policy(model: nn.Module, policy: dict, calib_batches: Optional[Iterable]
                         = None, weight_quantizer: str = "linear",
                         device: Optional[torch.device] = None,
                         weight_kw: Optional[dict] = None) -> nn.Module:
    """A quantized copy of a float ``model`` (``apq_lib.quant``: PACT activations, linear or
    k-means weights) at ``policy``, calibrated on ``calib_batches`` when given. ``weight_kw``:
    the linear weight quantizers' calibration (:func:`apq_lib.quant.weight_calibration_kw`)."""
    w0 = 32 if weight_quantizer == "kmeans" else 8     # k-means fits once, at the policy
    q = quantize_model(to_float(model), w0, 8, weight_quantizer=weight_quantizer,
                       weight_kw=weight_kw if weight_quantizer == "linear" else None)
    apply_policy(q, policy)
    if device is not None:
        q.to(device)
    if calib_batches is not None:
        calibrate(q, calib_batches, device=device)
    return q
