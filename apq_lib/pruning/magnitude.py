"""Unstructured magnitude pruning (Han et al. 2015; Zhu & Gupta 2017 gradual schedule).

Masks come from ``torch.nn.utils.prune``: global scope ranks |w| over all prunable layers
together (``prune.global_unstructured``), layer-wise scope prunes every layer to the same
fraction (``prune.l1_unstructured``). Every update re-prunes to an *absolute* sparsity:
earlier masks are baked in first, so pruned weights (now zero) are pruned again first.
"""
from __future__ import annotations

from typing import Iterator, Optional, Sequence

import torch
from torch import nn
from torch.nn.utils import prune

from .schedule import GradualSchedule
from .train import sgd_finetune

__all__ = ["prunable_layers", "magnitude_prune", "remove_masks", "sparsity",
           "gradual_magnitude_prune", "sparse_size_bits", "SCOPES"]

SCOPES = ("global", "layer")


def prunable_layers(model: nn.Module, skip_first: bool = True, min_params: int = 0
                    ) -> list[tuple[str, nn.Module]]:
    """Conv2d / Linear layers to prune (the first conv is skipped by default, as usual)."""
    out = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    if skip_first and out:
        out = out[1:]
    return [(n, m) for n, m in out if m.weight.numel() >= min_params]


def remove_masks(model: nn.Module) -> nn.Module:
    """Bake every pruning mask into its weight (``prune.remove``)."""
    for m in model.modules():
        if prune.is_pruned(m) and hasattr(m, "weight_mask"):
            prune.remove(m, "weight")
    return model


def magnitude_prune(model: nn.Module, amount: float, scope: str = "global",
                    layers: Optional[Sequence[tuple[str, nn.Module]]] = None) -> nn.Module:
    """Prune ``amount`` (fraction, absolute) of the prunable weights by |w|."""
    if scope not in SCOPES:
        raise ValueError(f"scope={scope!r}; use one of {SCOPES}")
    if not 0.0 <= amount < 1.0:
        raise ValueError(f"amount={amount} must be in [0, 1)")
    layers = list(layers if layers is not None else prunable_layers(model))
    for _, m in layers:                         # bake in the previous masks
        if hasattr(m, "weight_mask"):
            prune.remove(m, "weight")
    if scope == "global":
        total = sum(m.weight.numel() for _, m in layers)
        prune.global_unstructured([(m, "weight") for _, m in layers],
                                  pruning_method=prune.L1Unstructured,
                                  amount=int(round(amount * total)))
    else:
        for _, m in layers:
            prune.l1_unstructured(m, "weight", amount=int(round(amount * m.weight.numel())))
    return model


def sparsity(model: nn.Module, layers: Optional[Sequence[tuple[str, nn.Module]]] = None
             ) -> dict:
    """``{"total": fraction of zero weights, "layers": {name: fraction}}``."""
    layers = list(layers if layers is not None else prunable_layers(model))
    per, zeros, total = {}, 0, 0
    for n, m in layers:
        w = m.weight.detach()
        z = int((w == 0).sum())
        per[n] = z / w.numel()
        zeros += z
        total += w.numel()
    return {"total": zeros / max(1, total), "layers": per, "nonzero": total - zeros,
            "params": total}


def sparse_size_bits(model: nn.Module, w_bits: int = 32, index_bits: int = 0) -> int:
    """Storage of conv / linear weights keeping only non-zeros (``w_bits`` each, plus
    ``index_bits`` per non-zero for a sparse format)."""
    total = 0
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nz = int((m.weight.detach() != 0).sum())
            total += nz * (w_bits + index_bits)
    return total


def gradual_magnitude_prune(model: nn.Module, batches: Iterator, steps: int, final: float,
                            scope: str = "global", lr: float = 0.01,
                            device: torch.device | str = "cpu", n_updates: int = 10,
                            schedule: Optional[GradualSchedule] = None,
                            layers: Optional[Sequence] = None) -> dict:
    """Finetune ``steps`` steps while pruning to ``final`` on a Zhu & Gupta schedule
    (by default over the first 75 % of the steps); the masks are baked in at the end.
    Returns ``{"schedule": [(step, target, measured)], "sparsity": final measured}``."""
    sched = schedule or GradualSchedule.over(steps, final, n_updates)
    layers = list(layers if layers is not None else prunable_layers(model))
    log = []

    def on_step(t: int):
        if sched.is_update(t):
            target = sched(t)
            magnitude_prune(model, target, scope, layers)
            log.append((t, target, sparsity(model, layers)["total"]))
        return False

    if steps == 0:
        magnitude_prune(model, final, scope, layers)
        log.append((0, final, sparsity(model, layers)["total"]))
    else:
        sgd_finetune(model, batches, steps, lr, device, on_step=on_step)
        if sched.end > steps:                 # schedule longer than the finetune
            magnitude_prune(model, final, scope, layers)
    remove_masks(model)
    return {"schedule": log, "sparsity": sparsity(model, layers)["total"]}
