"""Batch-norm folding for evaluation / deployment (Jacob et al. 2018 §3.2; Krishnamoorthi
2018 §2.5): ``conv -> BN`` becomes one conv with ``w' = w * g / sqrt(v + eps)`` and
``b' = (b - m) * g / sqrt(v + eps) + beta``, using the BN running statistics (eval mode).
"""
from __future__ import annotations

import copy

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

__all__ = ["fold_bn", "find_conv_bn_pairs"]


class _LeafTracer(fx.Tracer):
    """Keeps every Conv2d (QConv2d too) and BatchNorm2d a leaf, so pairs show up as nodes."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (nn.Conv2d, nn.BatchNorm2d)) or super().is_leaf_module(m, qualname)


def _pairs_fx(model: nn.Module) -> list[tuple[str, str]]:
    graph = _LeafTracer().trace(model)
    mods = dict(model.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(mods.get(node.target), nn.BatchNorm2d):
            continue
        src = node.args[0] if node.args else None
        if (isinstance(src, fx.Node) and src.op == "call_module"
                and isinstance(mods.get(src.target), nn.Conv2d) and len(src.users) == 1):
            pairs.append((src.target, node.target))
    return pairs


def _pairs_sequential(model: nn.Module) -> list[tuple[str, str]]:
    pairs = []
    for pname, parent in model.named_modules():
        if not isinstance(parent, nn.Sequential):
            continue
        kids = list(parent.named_children())
        for (n1, m1), (n2, m2) in zip(kids, kids[1:]):
            if isinstance(m1, nn.Conv2d) and isinstance(m2, nn.BatchNorm2d):
                pre = f"{pname}." if pname else ""
                pairs.append((pre + n1, pre + n2))
    return pairs


def find_conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """``(conv name, bn name)`` for each BN fed only by a conv: found with torch.fx, or, when
    the model cannot be traced, from adjacent children of ``nn.Sequential`` containers."""
    try:
        pairs = _pairs_fx(model)
    except Exception:
        pairs = _pairs_sequential(model)
    mods = dict(model.named_modules())
    # a conv reused by several BNs, or a BN reused after several convs, cannot be folded
    convs = [c for c, _ in pairs]
    bns = [b for _, b in pairs]
    return [(c, b) for c, b in pairs
            if convs.count(c) == 1 and bns.count(b) == 1
            and not isinstance(mods[c], nn.ConvTranspose2d)
            and mods[b].track_running_stats and mods[b].running_mean is not None
            and mods[c].out_channels == mods[b].num_features]


def _set(model: nn.Module, name: str, value: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, value)


@torch.no_grad()
def fold_bn(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Fold every ``Conv2d -> BatchNorm2d`` pair; the BN becomes ``nn.Identity``. Returns the
    model in eval mode (a deep copy unless ``inplace``); its eval-mode output equals the
    original's up to float rounding. Quantized convs keep their quantizers (which then see
    the folded weight, as an integer deployment would)."""
    model = model if inplace else copy.deepcopy(model)
    model.eval()
    for cname, bname in find_conv_bn_pairs(model):
        conv, bn = model.get_submodule(cname), model.get_submodule(bname)
        w, b = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var,
                                    bn.eps, bn.weight, bn.bias)
        conv.weight, conv.bias = w, b
        _set(model, bname, nn.Identity())
    return model
