"""Small training / evaluation loops shared by the pruning and baseline stages."""
from __future__ import annotations

import math
from typing import Callable, Iterable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..data import cycle

__all__ = ["cycle", "finetune", "accuracy", "make_optimizer"]


def make_optimizer(model: nn.Module, lr: float, weight_decay: float = 4e-5,
                   momentum: float = 0.9) -> torch.optim.Optimizer:
    """SGD Nesterov (APQ's finetune recipe); no weight decay on BN / biases / clips."""
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.dim() <= 1 else decay).append(p)
    return torch.optim.SGD([{"params": decay, "weight_decay": weight_decay},
                            {"params": no_decay, "weight_decay": 0.0}], lr=lr,
                           momentum=momentum, nesterov=True)


def finetune(model: nn.Module, batches: Iterator, steps: int, lr: float,
             device: torch.device | str = "cpu", label_smoothing: float = 0.1,
             on_step: Optional[Callable[[int], Optional[bool]]] = None,
             cosine: bool = True, weight_decay: float = 4e-5) -> list[float]:
    """``steps`` SGD steps on batches from an (endless) iterator; returns the losses.

    ``on_step(t)`` runs before step ``t``; when it returns True the optimizer is rebuilt
    (the model's parameters changed, e.g. after physical channel pruning).
    """
    model.to(device).train()
    opt = make_optimizer(model, lr, weight_decay)
    losses = []
    for t in range(steps):
        if on_step is not None and on_step(t):
            model.to(device).train()
            opt = make_optimizer(model, lr, weight_decay)
        cur = lr * 0.5 * (1 + math.cos(math.pi * t / max(1, steps))) if cosine else lr
        for g in opt.param_groups:
            g["lr"] = cur
        x, y = next(batches)
        x, y = x.to(device), y.to(device)
        loss = F.cross_entropy(model(x), y, label_smoothing=label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    if on_step is not None:
        on_step(steps)
    model.eval()
    return losses


@torch.no_grad()
def accuracy(model: nn.Module, batches: Iterable, device: torch.device | str = "cpu") -> float:
    """Top-1 accuracy (percent) over ``batches``."""
    model.to(device).eval()
    correct = total = 0
    for x, y in batches:
        out = model(x.to(device))
        correct += int((out.argmax(1).cpu() == y).sum())
        total += len(y)
    return 100.0 * correct / max(1, total)
