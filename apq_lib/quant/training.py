"""Post-training quantization and quantization-aware finetuning (APQ §3.3: quantize, then
finetune with STE; Jacob et al. 2018 QAT; LSQ, Esser et al. 2020 for learned step sizes).

``ptq``: quantize a copy of an FP32 model, calibrate it, evaluate it. ``qat``: finetune a
quantized model for a number of steps / epochs (STE through the quantizers; with
``mode="lsq"`` the quantizers are first replaced by LSQ quantizers initialised from their
current ranges).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

import torch
from torch import nn

from ..loops import evaluate, train_steps
from .folding import fold_bn
from .functional import FP_BITS, qrange
from .modules import apply_policy, calibrate, get_policy, quant_layers, quantize_model
from .quantizers import ActQuantizer, LSQQuantizer, PACTQuantizer, WeightQuantizer

__all__ = ["evaluate", "ptq", "qat", "train_steps", "convert_to_lsq", "PTQResult", "QATResult"]


@dataclass
class PTQResult:
    model: nn.Module
    accuracy: Optional[float]
    policy: dict = field(default_factory=dict)


def ptq(model: nn.Module, calib_batches: Iterable, eval_batches: Optional[Iterable] = None,
        w_bits: int = 8, a_bits: int = 8, policy: Optional[dict] = None, fold: bool = True,
        **quantize_kw) -> PTQResult:
    """Fold BN (``fold``), quantize a copy of ``model`` at ``w_bits``/``a_bits`` (then
    ``policy``, if given), calibrate on ``calib_batches``, evaluate on ``eval_batches``."""
    base = fold_bn(model) if fold else model
    q = quantize_model(base, w_bits, a_bits, inplace=fold, **quantize_kw)
    if policy:
        apply_policy(q, policy)
    calibrate(q, calib_batches)
    acc = evaluate(q, eval_batches) if eval_batches is not None else None
    return PTQResult(q, acc, dict(get_policy(q)))


@torch.no_grad()
def convert_to_lsq(model: nn.Module) -> nn.Module:
    """Replace each layer's linear / PACT / static quantizer by an LSQ quantizer whose scale
    starts at the current one (weights per tensor or per channel as before)."""
    for m in quant_layers(model).values():
        wq = m.w_quant
        if isinstance(wq, WeightQuantizer):
            new = LSQQuantizer(wq.bits, signed=True, symmetric=wq.symmetric,
                               per_channel=wq.per_channel, axis=wq.axis,
                               channels=m.weight.shape[wq.axis] if wq.per_channel else 1)
            if wq.bits != FP_BITS:
                s, z, _, _ = wq.qparams(m.weight)
                new.scale.copy_(s.float().reshape(-1).expand_as(new.scale))
                new.zero_point.copy_(z.float().reshape(-1).expand_as(new.zero_point))
                new._initialized = True
            m.w_quant = new.to(m.weight.device)
        aq = m.a_quant
        if isinstance(aq, (PACTQuantizer, ActQuantizer)):
            symmetric = isinstance(aq, PACTQuantizer) or aq.symmetric
            per_ch = getattr(aq, "per_channel", False)
            chans = aq.lo.numel() if per_ch and isinstance(aq, ActQuantizer) else 1
            new = LSQQuantizer(aq.bits, signed=aq.signed, symmetric=symmetric,
                               per_channel=per_ch, axis=aq.axis, channels=chans)
            if aq.bits != FP_BITS and aq.signed is not None:
                if isinstance(aq, PACTQuantizer):
                    new.scale.fill_(float(aq.alpha.abs()) / qrange(aq.bits, aq.signed)[1])
                    new._initialized = True
                elif aq.calibrated:
                    s, z, _, _ = aq.qparams()
                    new.scale.copy_(s.float().reshape(-1).expand_as(new.scale))
                    new.zero_point.copy_(z.float().reshape(-1).expand_as(new.zero_point))
                    new._initialized = True
            m.a_quant = new.to(m.weight.device)
    return model


@dataclass
class QATResult:
    model: nn.Module
    losses: list
    accuracy: Optional[float] = None


def qat(model: nn.Module, train_batches: Iterable, epochs: float = 1.0,
        steps: Optional[int] = None, lr: float = 1e-3, mode: str = "ste",
        optimizer: str = "sgd", momentum: float = 0.9, weight_decay: float = 4e-5,
        label_smoothing: float = 0.0, eval_batches: Optional[Iterable] = None,
        loss_fn: Optional[Callable] = None, device: Optional[torch.device] = None,
        progress: bool = False) -> QATResult:
    """Finetune a quantized ``model`` in place (cosine lr; SGD Nesterov as APQ, or Adam).

    ``steps`` caps the number of optimizer steps; otherwise ``epochs`` passes over
    ``train_batches`` (a fractional epoch stops part-way; ``train_batches`` must be
    re-iterable for more than one epoch). ``mode``: ``ste`` keeps the quantizers (STE,
    PACT's learnable clip), ``lsq`` converts them first (:func:`convert_to_lsq`).
    """
    if mode not in ("ste", "lsq"):
        raise ValueError(f"qat mode {mode!r}: use 'ste' or 'lsq'")
    if not quant_layers(model):
        raise ValueError("qat() needs a quantized model: call quantize_model first")
    if mode == "lsq":
        convert_to_lsq(model)
    device = device or next(model.parameters()).device
    try:
        per_epoch = len(train_batches)  # type: ignore[arg-type]
    except TypeError:
        per_epoch = None
    if steps is None:
        if per_epoch is None:
            raise ValueError("train_batches has no len(); pass steps=")
        steps = max(1, int(math.ceil(epochs * per_epoch)))
    losses = train_steps(model, train_batches, steps, lr, optimizer, momentum, weight_decay,
                         label_smoothing, loss_fn=loss_fn, device=device, progress=progress,
                         desc=f"QAT ({mode})", lr_key="the qat() lr")
    acc = evaluate(model, eval_batches) if eval_batches is not None else None
    return QATResult(model, losses, acc)
