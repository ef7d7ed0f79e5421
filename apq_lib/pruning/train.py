"""The pruning stages' step loop: :func:`apq_lib.loops.train_steps` with the pruning
recipe's defaults (SGD Nesterov, cosine, label smoothing 0.1), and a per-step hook that
applies the pruning schedule."""
from __future__ import annotations

from typing import Callable, Iterator, Optional

import torch
from torch import nn

from ..data import cycle
from ..loops import evaluate as accuracy
from ..loops import make_optimizer, train_steps

__all__ = ["cycle", "sgd_finetune", "accuracy", "make_optimizer"]


def sgd_finetune(model: nn.Module, batches: Iterator, steps: int, lr: float,
             device: torch.device | str = "cpu", label_smoothing: float = 0.1,
             on_step: Optional[Callable[[int], Optional[bool]]] = None,
             cosine: bool = True, weight_decay: float = 4e-5) -> list[float]:
    """``steps`` SGD steps on batches from an (endless) iterator; returns the losses.
    ``on_step(t)`` runs before step ``t``; when it returns True the optimizer is rebuilt
    (the model's parameters changed, e.g. after physical channel pruning)."""
    return train_steps(model, batches, steps, lr, weight_decay=weight_decay,
                       label_smoothing=label_smoothing, device=device, cosine=cosine,
                       on_step=on_step, desc="pruning finetune",
                       lr_key="baselines.prune_lr")
