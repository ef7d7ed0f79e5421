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

from ..config import FinetuneConfig
from ..loops import finetune, finetune_batches
from ..supernet.metrics import recalibrate_bn
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
        sub = self.net.export(cfg)
        recalibrate_bn(sub, self.recal, self.device)
        return label_record(correct_mask(sub, self.val, self.device))


class QATEvaluator:
    """``(config, i) -> label_record + {"loss_first", "loss_last"}``: export the quantized subnet
    from the supernet weights, ``steps`` steps of the one finetune recipe every final model
    gets (``recipe``: the profile's ``finetune:`` section, only its step count overridden;
    :func:`apq_lib.loops.finetune`), then BN recal + eval.

    The finetune batches of sample ``i`` come from its own loader (RNG stream
    ``pair_finetune``, id ``i``), so a pair's measurement does not depend on the order of
    collection."""

    def __init__(self, supernet, data, recal_batches: list, val_batches: list, steps: int,
                 recipe=None, seed: int = 0, device=None):
        self.net, self.data = supernet, data
        self.recal, self.val = recal_batches, val_batches
        self.steps, self.recipe = int(steps), recipe or FinetuneConfig()
        self.seed, self.device = int(seed), device

    def finetune(self, sub, i: int) -> tuple[Optional[float], Optional[float]]:
        if self.steps <= 0:
            return None, None
        batches = finetune_batches(self.data, self.recipe, self.seed, i, stream="pair_finetune")
        losses = finetune(sub, self.recipe, batches, steps=self.steps, device=self.device,
                          desc="pair finetune")["losses"]
        return losses[0], losses[-1]

    def __call__(self, cfg: SubnetConfig, i: int) -> dict:
        sub = self.net.export(cfg, quantized=True)
        first, last = self.finetune(sub, i)
        recalibrate_bn(sub, self.recal, self.device)
        return {**label_record(correct_mask(sub, self.val, self.device)),
                "loss_first": first, "loss_last": last}
