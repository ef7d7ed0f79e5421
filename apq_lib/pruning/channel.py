"""Structured L1-norm channel pruning of MBConv middle channels (AMC / Li et al. 2017
analogue for the multi-stage baseline; APQ §4 "ProxylessNAS + AMC + HAQ").

An MBConv block is found structurally, in module registration order:
``Conv2d 1×1 (C→m) → BN(m) → [act] → Conv2d k×k groups=m (m→m) → BN(m) → [act] →
Conv2d 1×1 (m→C')``. Pruning keeps the middle channels with the largest
importance (L1 norm of the second 1×1's input weights, OFA's channel ranking, or of the
first 1×1's filters) and *rebuilds* the five layers with fewer channels, so the pruned
model is physically smaller and its cost is measured on its real layers.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
from torch import nn

from .schedule import GradualSchedule
from .train import sgd_finetune

__all__ = ["MBConvSite", "find_mbconv_sites", "channel_importance", "prune_site",
           "prune_channels", "gradual_channel_prune", "middle_channels"]


@dataclass
class MBConvSite:
    """Names (as in ``named_modules``) of one block's five prunable layers."""
    pw1: str
    bn1: str
    dw: str
    bn2: str
    pw2: str

    def modules(self, model: nn.Module) -> tuple:
        mods = dict(model.named_modules())
        return tuple(mods[n] for n in (self.pw1, self.bn1, self.dw, self.bn2, self.pw2))


def _is_pw(m) -> bool:
    return isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1


def find_mbconv_sites(model: nn.Module) -> list[MBConvSite]:
    """Every (1×1, BN, depthwise, BN, 1×1) chain with a shared middle width."""
    leaves = [(n, m) for n, m in model.named_modules()
              if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear))]
    sites = []
    for i in range(len(leaves) - 4):
        (n1, c1), (nb1, b1), (nd, d), (nb2, b2), (n2, c2) = leaves[i:i + 5]
        if not (_is_pw(c1) and isinstance(b1, nn.BatchNorm2d) and isinstance(d, nn.Conv2d)
                and isinstance(b2, nn.BatchNorm2d) and _is_pw(c2)):
            continue
        m = c1.out_channels
        if (b1.num_features == m and d.groups == m == d.in_channels == d.out_channels
                and b2.num_features == m and c2.in_channels == m):
            sites.append(MBConvSite(n1, nb1, nd, nb2, n2))
    return sites


def middle_channels(model: nn.Module) -> list[int]:
    """Middle width of every MBConv block found."""
    mods = dict(model.named_modules())
    return [mods[s.pw1].out_channels for s in find_mbconv_sites(model)]


def channel_importance(model: nn.Module, site: MBConvSite, criterion: str = "next"
                       ) -> torch.Tensor:
    """``[m]`` importance: L1 of the second 1×1's input slice (``next``) or of the
    first 1×1's filters (``own``)."""
    pw1, _, _, _, pw2 = site.modules(model)
    if criterion == "next":
        return pw2.weight.detach().abs().sum(dim=(0, 2, 3))
    if criterion == "own":
        return pw1.weight.detach().abs().sum(dim=(1, 2, 3))
    raise ValueError(f"criterion={criterion!r}; use 'next' or 'own'")


def _set(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)


def _conv_like(c: nn.Conv2d, weight: torch.Tensor, bias, in_c: int, out_c: int,
               groups: int) -> nn.Conv2d:
    """A copy of ``c`` (same class, so quantized convs keep their quantizers) with a
    smaller weight."""
    new = copy.deepcopy(c)
    new.weight = nn.Parameter(weight.clone())
    if bias is not None:
        new.bias = nn.Parameter(bias.clone())
    new.in_channels, new.out_channels, new.groups = in_c, out_c, groups
    return new


def _bn_like(b: nn.BatchNorm2d, keep: torch.Tensor) -> nn.BatchNorm2d:
    nb = copy.deepcopy(b)
    nb.num_features = len(keep)
    if b.affine:
        nb.weight = nn.Parameter(b.weight.detach()[keep].clone())
        nb.bias = nn.Parameter(b.bias.detach()[keep].clone())
    if b.track_running_stats:
        nb.running_mean = b.running_mean[keep].clone()
        nb.running_var = b.running_var[keep].clone()
    return nb


@torch.no_grad()
def prune_site(model: nn.Module, site: MBConvSite, keep_n: int,
               criterion: str = "next") -> int:
    """Keep the ``keep_n`` most important middle channels of one block (in their original
    order); returns the new width."""
    pw1, bn1, dw, bn2, pw2 = site.modules(model)
    m = pw1.out_channels
    keep_n = int(max(1, min(m, keep_n)))
    if keep_n == m:
        return m
    imp = channel_importance(model, site, criterion)
    keep = imp.argsort(descending=True)[:keep_n].sort().values
    sel = lambda b: None if b is None else b.detach()[keep]
    n1 = _conv_like(pw1, pw1.weight.detach()[keep], sel(pw1.bias), pw1.in_channels, keep_n, 1)
    nd = _conv_like(dw, dw.weight.detach()[keep], sel(dw.bias), keep_n, keep_n, keep_n)
    n2 = _conv_like(pw2, pw2.weight.detach()[:, keep], None if pw2.bias is None else
                    pw2.bias.detach(), keep_n, pw2.out_channels, 1)
    for name, new in ((site.pw1, n1), (site.bn1, _bn_like(bn1, keep)), (site.dw, nd),
                      (site.bn2, _bn_like(bn2, keep)), (site.pw2, n2)):
        _set(model, name, new)
    parent = site.pw1.rpartition(".")[0]
    block = model.get_submodule(parent) if parent else model
    if isinstance(getattr(block, "mid", None), int):     # StaticMBConv records its width
        block.mid = keep_n
    return keep_n


def _round_keep(m: int, ratio: float, step: int) -> int:
    """Channels kept when pruning ``ratio`` of ``m``, rounded to a multiple of ``step``."""
    k = m * (1.0 - ratio)
    k = int(round(k / step)) * step if step > 1 else int(round(k))
    return max(min(step, m), min(m, k))


def prune_channels(model: nn.Module, ratio: float, step: int = 1, criterion: str = "next",
                   base: Optional[list[int]] = None) -> list[int]:
    """Prune ``ratio`` of every block's middle channels (of ``base`` widths if given, e.g.
    the widths before a gradual schedule began); returns the new widths."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio={ratio} must be in [0, 1)")
    sites = find_mbconv_sites(model)
    if base is None:
        base = middle_channels(model)
    if len(base) != len(sites):
        raise ValueError(f"{len(base)} base widths for {len(sites)} MBConv blocks")
    return [prune_site(model, s, _round_keep(b, ratio, step), criterion)
            for s, b in zip(sites, base)]


def gradual_channel_prune(model: nn.Module, batches: Iterator, steps: int, ratio: float,
                          lr: float = 0.01, device: torch.device | str = "cpu",
                          n_updates: int = 4, step: int = 1, criterion: str = "next",
                          schedule: Optional[GradualSchedule] = None) -> dict:
    """Finetune ``steps`` steps while removing ``ratio`` of the middle channels on a
    Zhu & Gupta schedule; every update rebuilds the blocks (and the optimizer).
    Returns ``{"widths_before", "widths_after", "schedule": [(step, ratio, widths)]}``."""
    base = middle_channels(model)
    sched = schedule or GradualSchedule.over(steps, ratio, n_updates)
    log = []

    def on_step(t: int) -> bool:
        if sched.is_update(t) and sched(t) > 0:
            w = prune_channels(model, sched(t), step, criterion, base)
            log.append((t, sched(t), w))
            return True
        return False

    if steps == 0:
        log.append((0, ratio, prune_channels(model, ratio, step, criterion, base)))
    else:
        sgd_finetune(model, batches, steps, lr, device, on_step=on_step)
        if sched.end > steps:
            log.append((steps, ratio, prune_channels(model, ratio, step, criterion, base)))
    return {"widths_before": base, "widths_after": middle_channels(model), "schedule": log}
