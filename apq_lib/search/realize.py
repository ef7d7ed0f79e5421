"""Realise a searched ⟨arch, policy⟩ (APQ §3.4 → §4): export it from the supernet as a
standalone quantized model, finetune it with the one QAT recipe every final model gets
(:func:`apq_lib.loops.finetune`, the profile's ``finetune:`` section), recalibrate BN and
measure top-1 on the test split, keeping the per-image correctness for paired comparisons.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterable, Optional

import numpy as np
import torch
from torch import nn

from ..loops import evaluate, finetune, finetune_batches
from ..runtime import stream_seed
from ..supernet.metrics import recalibrate_bn
from ..supernet.space import SubnetConfig

__all__ = ["realize", "Realized", "realize_seeds", "seed_id"]


@dataclass
class Realized:
    """One realised model: predicted vs measured accuracy (top-1 %), its costs, and the
    per-image correctness on the test images (``correct``, bool, in test-batch order)."""
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
    correct: Optional[np.ndarray] = None

    def row(self) -> dict:
        return {"predicted_acc": self.predicted_acc, "test_acc": self.test_acc,
                "test_acc_before_finetune": self.test_acc_before_finetune,
                "finetune_steps": self.finetune_steps,
                "finetune_seconds": self.finetune_seconds, "eval_seconds": self.eval_seconds,
                **self.costs}


def realize(supernet, cfg, recipe, train_batches: Iterable, recal_batches: list, test_batches,
            steps: Optional[int] = None, predicted_acc: float = float("nan"),
            costs: Optional[dict] = None, eval_before: bool = False, device=None, seed: int = 0,
            progress: bool = False, calib_batches: Optional[list] = None) -> Realized:
    """Export ``cfg`` quantized from ``supernet``, calibrate its activation clips on
    ``calib_batches`` (as every baseline's quantizers are, :func:`apq_lib.quant.calibrate`),
    finetune with ``recipe`` on ``train_batches`` (``steps`` overrides the recipe's count),
    recalibrate BN on ``recal_batches`` and measure top-1 on ``test_batches``. ``cfg`` is a
    :class:`SubnetConfig` (or its dict); the supernet itself is left unchanged."""
    from ..quant import calibrate
    if isinstance(cfg, dict):
        cfg = SubnetConfig.from_dict(cfg)
    torch.manual_seed(seed)
    sub = supernet.export(cfg, quantized=True)
    if device is not None:
        sub.to(device)
    if calib_batches is not None:
        calibrate(sub, calib_batches, device=device)
    before = None
    if eval_before:                 # QAT trains BN on batch statistics: no recal needed first
        recalibrate_bn(sub, recal_batches, device)
        before = evaluate(sub, test_batches, device)
    ft = finetune(sub, recipe, train_batches, steps=steps, device=device, progress=progress)
    t0 = time.perf_counter()
    recalibrate_bn(sub, recal_batches, device)
    acc, correct = evaluate(sub, test_batches, device, return_correct=True)
    sub.eval()
    losses = ft["losses"]
    return Realized(config=cfg.to_dict(), predicted_acc=float(predicted_acc), test_acc=acc,
                    test_acc_before_finetune=before, costs=dict(costs or {}),
                    finetune_steps=ft["steps"], finetune_seconds=ft["seconds"],
                    eval_seconds=time.perf_counter() - t0,
                    losses=[float(v) for v in losses[:: max(1, len(losses) // 200)]],
                    model=sub, correct=correct)


def seed_id(model_id: str, k: int) -> str:
    """The id of finetune seed ``k`` of a model (seed 0 keeps the model's own id)."""
    return model_id if k == 0 else f"{model_id}#seed{k}"


def realize_seeds(supernet, cfg, recipe, data, model_id: str, n_seeds: int, seed: int,
                  **kw) -> list[Realized]:
    """:func:`realize` with ``n_seeds`` finetune seeds: seed ``k`` has its own batch order
    (:func:`apq_lib.loops.finetune_batches` of :func:`seed_id`) and torch seed (the
    ``finetune`` stream); seed 0 is the single-seed realisation of ``model_id``."""
    out = []
    for k in range(n_seeds):
        sid = seed_id(model_id, k)
        out.append(realize(supernet, cfg, recipe, finetune_batches(data, recipe, seed, sid),
                           seed=seed if k == 0 else stream_seed(seed, "finetune", sid), **kw))
    return out
