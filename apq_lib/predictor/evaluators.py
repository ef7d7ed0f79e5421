"""Measuring one predictor pair (APQ §3.2): FP32 pairs evaluate a supernet subnet after BN
recalibration; quantized pairs first finetune the exported quantized subnet for a few
steps with the straight-through estimator (quantization-aware finetuning), then
recalibrate BN and evaluate. Accuracies are top-1 percent on the validation split.

Labels are paired: every pair is evaluated on the same fixed validation images, and each
record keeps the per-image correctness (packed bits, hex), the number of images and correct
ones, and the accuracies of the even / odd halves of the images, so the noise of a label
(binomial, split-half or bootstrap SE) and of a difference of labels can be recomputed."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..supernet.space import SubnetConfig

__all__ = ["FP32Evaluator", "QATEvaluator", "correct_mask", "label_record", "unpack_correct"]


@torch.no_grad()
def correct_mask(model, batches, device=None) -> np.ndarray:
    """Per-image top-1 correctness ``[n_images]`` (bool) of ``model`` in eval mode."""
    device = device or next(model.parameters()).device
    was = model.training
    model.eval()
    out = [(model(x.to(device)).argmax(1).cpu() == y).numpy() for x, y in batches]
    model.train(was)
    if not out or sum(len(o) for o in out) == 0:
        raise ValueError("correct_mask: the validation batches hold no images")
    return np.concatenate(out).astype(bool)


def label_record(correct: np.ndarray) -> dict:
    """A label from per-image correctness: ``acc`` (%), ``n_images``, ``n_correct``,
    ``acc_half`` (even / odd images, %) and ``correct`` (np.packbits as hex)."""
    c = np.asarray(correct, bool)
    n = len(c)
    return {"acc": 100.0 * float(c.mean()), "n_images": int(n), "n_correct": int(c.sum()),
            "acc_half": [100.0 * float(c[0::2].mean()),
                         100.0 * float(c[1::2].mean()) if n > 1 else float("nan")],
            "correct": np.packbits(c).tobytes().hex()}


def unpack_correct(hex_bits: str, n_images: int) -> np.ndarray:
    """Inverse of the ``correct`` field of :func:`label_record`: ``[n_images]`` bool."""
    return np.unpackbits(np.frombuffer(bytes.fromhex(hex_bits), np.uint8))[:n_images] \
        .astype(bool)


class FP32Evaluator:
    """``(config, i) -> label_record``: BN recal on ``recal_batches``, eval on
    ``val_batches`` (fixed lists of ``(x, y)``, the same for every sample)."""

    def __init__(self, supernet, recal_batches: list, val_batches: list, device=None):
        self.net, self.recal, self.val = supernet, recal_batches, val_batches
        self.device = device

    def __call__(self, cfg: SubnetConfig, i: int) -> dict:
        from ..supernet.metrics import recalibrate_bn
        sub = self.net.export(cfg)
        recalibrate_bn(sub, self.recal, self.device)
        return label_record(correct_mask(sub, self.val, self.device))


class QATEvaluator:
    """``(config, i) -> label_record + {"loss_first", "loss_last"}``: export the quantized subnet
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
        from ..supernet.metrics import recalibrate_bn
        sub = self.net.export(cfg, quantized=True)
        first, last = self.finetune(sub, i)
        recalibrate_bn(sub, self.recal, self.device)
        return {**label_record(correct_mask(sub, self.val, self.device)),
                "loss_first": first, "loss_last": last}
