"""Iterative magnitude pruning with rewinding (Frankle & Carbin 2019, "The Lottery Ticket
Hypothesis"; Frankle, Dziugaite, Roy & Carbin 2020, "Linear Mode Connectivity and the
Lottery Ticket Hypothesis", §4).

IMP: train to completion, remove ``rate`` (20 %) of the *remaining* weights with the
smallest |w| (globally or per layer; the output layer at its own rate), rewind the
surviving weights to their values at iteration ``k`` and train again from there; repeat.
Masks are ``torch.nn.utils.prune`` masks, so every round's mask is nested in the last.
Controls: random pruning (same per-layer sparsity, random positions) and random
re-initialisation (same mask, fresh weights).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
from torch import nn
from torch.nn.utils import prune

__all__ = ["copy_model", "snapshot", "current_masks", "apply_masks", "imp_prune_round", "rewind",
           "random_masks", "reinit_like", "run_imp", "IMPRound"]

Layers = Sequence[tuple[str, nn.Module]]


def copy_model(model: nn.Module) -> nn.Module:
    """``copy.deepcopy`` that also works on pruned modules (their masked ``weight`` is a
    computed tensor; it is detached first and recomputed by the pruning hook)."""
    for m in model.modules():
        if hasattr(m, "weight_mask") and hasattr(m, "weight_orig"):
            m.weight = m.weight.detach()
    return copy.deepcopy(model)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of the state dict with unpruned names (``weight`` for a pruned
    layer is ``weight_orig``, so a snapshot taken before pruning rewinds a pruned model)."""
    out = {}
    for k, v in model.state_dict().items():
        if k.endswith("_mask"):
            continue
        out[k[:-len("_orig")] if k.endswith("_orig") else k] = v.detach().clone()
    return out


def current_masks(layers: Layers) -> dict[str, torch.Tensor]:
    """``{layer name: bool mask}`` (all-true for layers not pruned yet)."""
    return {n: (m.weight_mask.bool() if hasattr(m, "weight_mask")
                else torch.ones_like(m.weight, dtype=torch.bool)).clone() for n, m in layers}


def apply_masks(layers: Layers, masks: dict[str, torch.Tensor]) -> None:
    """Install ``masks`` on ``layers`` (replacing any earlier pruning mask)."""
    for n, m in layers:
        if n not in masks:
            raise KeyError(f"apply_masks: no mask for layer {n!r}")
        if prune.is_pruned(m) and hasattr(m, "weight_mask"):
            prune.remove(m, "weight")
        prune.custom_from_mask(m, "weight", masks[n].to(m.weight.device))


def imp_prune_round(layers: Layers, rate: float = 0.2, scope: str = "layer",
                    output_rate: Optional[float] = None) -> dict[str, torch.Tensor]:
    """Prune ``rate`` of the remaining weights by |w| (``layer``: in every layer, the last
    layer at ``output_rate`` when given; ``global``: ranked over all layers together).
    The new mask multiplies the old one (``prune`` containers), so masks are nested."""
    if not 0.0 < rate < 1.0:
        raise ValueError(f"IMP rate={rate} must be in (0, 1)")
    layers = list(layers)
    if scope == "global":
        remaining = sum(int(current_masks([(n, m)])[n].sum()) for n, m in layers)
        prune.global_unstructured([(m, "weight") for _, m in layers],
                                  pruning_method=prune.L1Unstructured,
                                  amount=int(round(rate * remaining)))
    elif scope == "layer":
        for i, (n, m) in enumerate(layers):
            r = output_rate if (output_rate is not None and i == len(layers) - 1) else rate
            prune.l1_unstructured(m, "weight", amount=float(r))
    else:
        raise ValueError(f"IMP scope={scope!r}; use 'global' or 'layer'")
    return current_masks(layers)


@torch.no_grad()
def rewind(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Load a :func:`snapshot` into ``model`` keeping its masks (pruned entries stay 0)."""
    own = model.state_dict()
    for k, v in state.items():
        key = k + "_orig" if k + "_orig" in own else k
        if key not in own:
            raise KeyError(f"rewind: the model has no entry {k!r}")
        own[key].copy_(v)
    for m in model.modules():                 # refresh the masked weight attributes
        if hasattr(m, "weight_mask") and hasattr(m, "weight_orig"):
            m.weight = m.weight_orig * m.weight_mask
    return model


def random_masks(masks: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Random-pruning control: per layer as many kept weights as ``masks``, at random."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for n, mk in masks.items():
        keep = int(mk.sum())
        flat = torch.zeros(mk.numel(), dtype=torch.bool)
        flat[torch.randperm(mk.numel(), generator=g)[:keep]] = True
        out[n] = flat.view_as(mk)
    return out


def reinit_like(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Random-reinit control: a snapshot of fresh default initialisations (``seed``)."""
    fresh = copy_model(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in fresh.modules():
            if hasattr(m, "reset_parameters") and not list(m.children()):
                if hasattr(m, "weight_orig"):            # pruned: init the real weight
                    m.weight = torch.empty_like(m.weight_orig)
                    m.reset_parameters()
                    with torch.no_grad():
                        m.weight_orig.copy_(m.weight)
                else:
                    m.reset_parameters()
    return snapshot(fresh)


@dataclass
class IMPRound:
    round: int
    sparsity: float
    masks: dict = field(repr=False)
    result: object = None


def run_imp(model: nn.Module, layers: Layers, rounds: int, rewind_state: dict,
        retrain: Callable[[nn.Module, int], object], rate: float = 0.2,
        scope: str = "layer", output_rate: Optional[float] = None) -> list[IMPRound]:
    """Run ``rounds`` IMP rounds on an already trained ``model``: prune, rewind to
    ``rewind_state`` (the iteration-k :func:`snapshot`), ``retrain(model, round)``.
    Returns one :class:`IMPRound` per round (mask, sparsity, what ``retrain`` returned).
    For the controls, build a model with :func:`apply_masks` and :func:`random_masks` /
    :func:`reinit_like` from a round's masks and train it the same way."""
    if rounds < 0:
        raise ValueError(f"IMP rounds={rounds} must be >= 0")
    out = []
    for r in range(1, rounds + 1):
        masks = imp_prune_round(layers, rate, scope, output_rate)
        total = sum(v.numel() for v in masks.values())
        sp = 1.0 - sum(int(v.sum()) for v in masks.values()) / total
        rewind(model, rewind_state)
        out.append(IMPRound(r, sp, masks, retrain(model, r)))
    return out
