"""Measuring one predictor pair (APQ §3.2): FP32 pairs evaluate a supernet subnet after BN
recalibration; quantized pairs first finetune the exported quantized subnet for a few
steps with the straight-through estimator (quantization-aware finetuning), then
recalibrate BN and evaluate. Accuracies are top-1 percent on the validation split."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..supernet.space import SubnetConfig

__all__ = ["FP32Evaluator", "QATEvaluator"]


class FP32Evaluator:
    """``(config, i) -> {"acc": top-1 %}``: BN recal on ``recal_batches``, eval on
    ``val_batches`` (fixed lists of ``(x, y)``, the same for every sample)."""

    def __init__(self, supernet, recal_batches: list, val_batches: list, device=None):
        self.net, self.recal, self.val = supernet, recal_batches, val_batches
        self.device = device

    def __call__(self, cfg: SubnetConfig, i: int) -> dict:
        from ..supernet.metrics import evaluate, recalibrate_bn
        sub = self.net.export(cfg)
        recalibrate_bn(sub, self.recal, self.device)
        return {"acc": evaluate(sub, self.val, self.device)}


class QATEvaluator:
    """``(config, i) -> {"acc", "loss_first", "loss_last"}``: export the quantized subnet
    from the supernet weights, ``steps`` steps of QAT (SGD Nesterov 0.9 or Adam at ``lr``,
    STE through the fake quantizers, PACT clips learnable), then BN recal + eval.

    The finetune batches of sample ``i`` come from a train loader seeded with ``(seed, i)``,
    so a pair's measurement does not depend on the order of collection."""

    def __init__(self, supernet, data, recal_batches: list, val_batches: list, steps: int,
                 lr: float, batch_size: int = 64, optimizer: str = "sgd", seed: int = 0,
                 device=None, label_smoothing: float = 0.0):
        self.net, self.data = supernet, data
        self.recal, self.val = recal_batches, val_batches
        self.steps, self.lr, self.batch_size = int(steps), float(lr), int(batch_size)
        if optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer={optimizer!r}: use sgd or adam")
        self.optimizer, self.seed, self.device = optimizer, int(seed), device
        self.label_smoothing = label_smoothing

    def finetune(self, sub, i: int) -> tuple[Optional[float], Optional[float]]:
        if self.steps <= 0:
            return None, None
        dev = self.device or next(sub.parameters()).device
        params = [p for p in sub.parameters() if p.requires_grad]
        opt = (torch.optim.SGD(params, lr=self.lr, momentum=0.9, nesterov=True)
               if self.optimizer == "sgd" else torch.optim.Adam(params, lr=self.lr))
        loader = self.data.loader("train", batch_size=self.batch_size, shuffle=True,
                                  seed=self.seed * 1_000_003 + i)
        sub.train()
        first = last = None
        step = 0
        while step < self.steps:
            for x, y in loader:
                loss = F.cross_entropy(sub(x.to(dev)), y.to(dev),
                                       label_smoothing=self.label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                last = float(loss.detach())
                first = last if first is None else first
                step += 1
                if step >= self.steps:
                    break
        sub.eval()
        return first, last

    def __call__(self, cfg: SubnetConfig, i: int) -> dict:
        from ..supernet.metrics import evaluate, recalibrate_bn
        sub = self.net.export(cfg, quantized=True)
        first, last = self.finetune(sub, i)
        recalibrate_bn(sub, self.recal, self.device)
        return {"acc": evaluate(sub, self.val, self.device), "loss_first": first,
                "loss_last": last}
