"""APQ §3.2 predictor transfer: the quantization-aware predictor starts from the trained
FP32 predictor (every FP32 weight loaded; only the new ``quant_branch`` starts fresh) and is
trained on the few, expensive quantized pairs."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ..runtime import stream_seed
from .model import AccuracyPredictor, PredictorEnsemble, QuantAwarePredictor, predict_numpy
from .train import TrainResult, TrainSettings, fit_members, train_predictor

__all__ = ["transfer_from_fp32", "PredictorTransfer", "TransferError"]


class TransferError(RuntimeError):
    """The FP32 predictor's weights do not fit the quantization-aware predictor."""


def transfer_from_fp32(fp32: AccuracyPredictor, quant_dims: int,
                       branch_init: str = "zeros") -> QuantAwarePredictor:
    """A :class:`QuantAwarePredictor` holding a copy of every FP32 weight.

    ``branch_init``: ``"zeros"`` (the new branch adds nothing at first, so the transferred
    predictor starts as exactly the FP32 one) or ``"default"`` (PyTorch's Linear init)."""
    q = QuantAwarePredictor(fp32.arch_dims, quant_dims, fp32.hidden, fp32.n_layers)
    q.to(next(fp32.parameters()).device)
    missing, unexpected = q.load_state_dict(fp32.state_dict(), strict=False)
    if unexpected or set(missing) != {"quant_branch.weight", "quant_branch.bias"}:
        raise TransferError(f"FP32 -> quant transfer: missing {missing}, unexpected "
                            f"{unexpected}; only quant_branch.* may be missing")
    if branch_init == "zeros":
        with torch.no_grad():
            q.quant_branch.weight.zero_()
            q.quant_branch.bias.zero_()
    elif branch_init != "default":
        raise ValueError(f"branch_init={branch_init!r}: use 'zeros' or 'default'")
    return q


class PredictorTransfer:
    """Transfer the FP32 predictor to quantized pairs.

    ``fit(x, y)`` builds the transferred model, optionally shifts the output bias by the
    mean gap between the quantized training accuracies and the FP32 prediction (quantized
    accuracies sit below FP32 ones; ``recenter=True``), then trains all weights."""

    def __init__(self, fp32: AccuracyPredictor, quant_dims: int, branch_init: str = "zeros",
                 recenter: bool = True):
        self.fp32, self.quant_dims = fp32, quant_dims
        self.branch_init, self.recenter = branch_init, recenter

    def build(self) -> QuantAwarePredictor:
        return transfer_from_fp32(self.fp32, self.quant_dims, self.branch_init)

    def fit(self, x: np.ndarray, y: np.ndarray, settings: Optional[TrainSettings] = None,
            device="cpu", groups=None) -> TrainResult:
        """``groups``: the pairs' architectures, for a grouped early-stopping split. From an
        FP32 :class:`PredictorEnsemble`, member ``m`` is transferred from FP32 member ``m``
        with member ``m``'s seed (an ensemble of as many members)."""
        settings = settings or TrainSettings()
        if isinstance(self.fp32, PredictorEnsemble):
            return fit_members(lambda st, m: PredictorTransfer(
                self.fp32.members[m], self.quant_dims, self.branch_init, self.recenter).fit(
                    x, y, st, device, groups), settings, len(self.fp32.members))
        torch.manual_seed(stream_seed(settings.seed, "predictor_fit", "init"))
        model = self.build()
        if self.recenter and len(y):
            gap = float(np.mean(y) - np.mean(predict_numpy(model, x)))
            with torch.no_grad():
                model.head.bias.add_(gap)
        return train_predictor(model, x, y, settings, init_bias=False, device=device,
                               groups=groups)
