"""Realise a searched ⟨arch, policy⟩ (APQ §3.4 → §4): export it from the supernet as a
standalone quantized model, finetune it with quantization-aware training, recalibrate BN and
measure top-1 on the test split.

Finetune recipe (APQ's final finetune, shortened by the profile): SGD Nesterov 0.9, weight
decay 4e-5, cosine lr from ``search.finetune_lr``, label smoothing 0.1, straight-through
estimator through the fake quantizers (PACT clips learnable), ``search.finetune_epochs``
passes (fractions allowed) over the training split.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Iterable, Optional

import numpy as np
import torch
from torch import nn

__all__ = ["qat_finetune", "realize", "Realized"]


def _n_batches(batches) -> Optional[int]:
    try:
        return len(batches)
    except TypeError:
        return None


def qat_finetune(model: nn.Module, train_batches: Iterable, epochs: float = 1.0,
                 lr: float = 1e-3, steps: Optional[int] = None, momentum: float = 0.9,
                 weight_decay: float = 4e-5, label_smoothing: float = 0.1,
                 device=None, progress: bool = False) -> dict:
    """Quantization-aware finetune in place; ``{"steps", "losses", "seconds"}``.

    :func:`apq_lib.quant.train_steps` (the loop under :func:`apq_lib.quant.qat`): the
    supernet's exported layers carry their own quantizers, trained through by STE with the
    same recipe. ``steps`` defaults to ``ceil(epochs × batches per epoch)``."""
    from ..quant.training import train_steps
    t0 = time.perf_counter()
    if steps is None:
        per_epoch = _n_batches(train_batches)
        if per_epoch is None:
            raise ValueError("train_batches has no len(); pass steps=")
        steps = int(math.ceil(epochs * per_epoch))
    if steps <= 0:
        return {"steps": 0, "losses": [], "seconds": 0.0}
    losses = train_steps(model, train_batches, steps, lr, "sgd", momentum, weight_decay,
                         label_smoothing, device=device, progress=progress,
                         desc="QAT finetune")
    return {"steps": steps, "losses": losses, "seconds": time.perf_counter() - t0}


@dataclass
class Realized:
    """One realised model: predicted vs measured accuracy (top-1 %), its costs."""
    config: dict
    predicted_acc: float
    test_acc: float
    test_acc_before_finetune: Optional[float]
    costs: dict
    finetune_steps: int
    finetune_seconds: float
    eval_seconds: float
    losses: list = field(default_factory=list)
    model: Optional[nn.Module] = None

    def row(self) -> dict:
        return {"predicted_acc": self.predicted_acc, "test_acc": self.test_acc,
                "test_acc_before_finetune": self.test_acc_before_finetune,
                "finetune_steps": self.finetune_steps,
                "finetune_seconds": self.finetune_seconds, "eval_seconds": self.eval_seconds,
                **self.costs}


def realize(supernet, cfg, train_batches: Iterable, recal_batches: list, test_batches,
            epochs: float = 1.0, lr: float = 1e-3, steps: Optional[int] = None,
            predicted_acc: float = float("nan"), costs: Optional[dict] = None,
            eval_before: bool = False, device=None, seed: int = 0,
            progress: bool = False) -> Realized:
    """Export ``cfg`` quantized from ``supernet``, QAT-finetune (``epochs`` over
    ``train_batches`` or ``steps``), recalibrate BN on ``recal_batches`` and measure top-1
    on ``test_batches``. ``cfg`` is a :class:`SubnetConfig` (or its dict)."""
    from ..supernet.metrics import evaluate, recalibrate_bn
    from ..supernet.space import SubnetConfig
    if isinstance(cfg, dict):
        cfg = SubnetConfig.from_dict(cfg)
    torch.manual_seed(seed)
    sub = supernet.export(cfg, quantized=True)
    if device is not None:
        sub.to(device)
    before = None
    if eval_before:                 # QAT trains BN on batch statistics: no recal needed first
        recalibrate_bn(sub, recal_batches, device)
        before = evaluate(sub, test_batches, device)
    ft = qat_finetune(sub, train_batches, epochs=epochs, lr=lr, steps=steps, device=device,
                      progress=progress)
    t0 = time.perf_counter()
    recalibrate_bn(sub, recal_batches, device)
    acc = evaluate(sub, test_batches, device)
    sub.eval()
    return Realized(config=cfg.to_dict(), predicted_acc=float(predicted_acc), test_acc=acc,
                    test_acc_before_finetune=before, costs=dict(costs or {}),
                    finetune_steps=ft["steps"], finetune_seconds=ft["seconds"],
                    eval_seconds=time.perf_counter() - t0,
                    losses=[float(v) for v in np.asarray(ft["losses"])[:: max(1, len(
                        ft["losses"]) // 200)]] if ft["losses"] else [], model=sub)
