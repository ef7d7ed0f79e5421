"""The one training and evaluation core of the suite: top-1 evaluation (optionally with the
per-image correctness that paired comparisons need), the optimizer rule, the step loop, and
the one finetune recipe every final model gets (APQ §4: QAT with STE, SGD Nesterov, cosine
learning rate; the profile's ``finetune:`` section).

Every finetune draws its batches from its own loader, seeded from ``(seed, stream, model
id)`` (:func:`apq_lib.runtime.stream_seed`), so a model's numbers never depend on which
models were finetuned before it.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Iterable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data import cycle
from .progress import tqdm
from .runtime import stream_seed

__all__ = ["evaluate", "predict", "make_optimizer", "train_steps", "finetune",
           "finetune_batches", "test_batches", "NonFiniteLossError"]


class NonFiniteLossError(FloatingPointError):
    """A training loss became NaN or inf; the message names the step and the config key."""


@torch.no_grad()
def predict(model: nn.Module, batches: Iterable, device=None,
            max_batches: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """``(predicted class, label)`` arrays over ``(x, y)`` batches, in eval mode (the model's
    mode is restored)."""
    device = device or next(model.parameters()).device
    was = model.training
    model.eval()
    preds, labels = [], []
    try:
        for i, (x, y) in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            preds.append(model(x.to(device)).argmax(1).cpu())
            labels.append(y.cpu())
    finally:
        model.train(was)
    if not labels:
        raise ValueError("evaluate: the batches yielded no images")
    return torch.cat(preds).numpy(), torch.cat(labels).numpy()


def evaluate(model: nn.Module, batches: Iterable, device=None, max_batches: Optional[int] = None,
             return_correct: bool = False):
    """Top-1 accuracy in percent; with ``return_correct`` also the per-image correctness
    (bool array in batch order), which paired bootstrap comparisons resample."""
    pred, y = predict(model, batches, device, max_batches)
    correct = pred == y
    acc = 100.0 * float(correct.mean())
    return (acc, correct) if return_correct else acc


def make_optimizer(model: nn.Module, lr: float, optimizer: str = "sgd", momentum: float = 0.9,
                   weight_decay: float = 4e-5) -> torch.optim.Optimizer:
    """SGD Nesterov (APQ's recipe) or Adam; no weight decay on 1-d parameters (biases, BN,
    quantizer scales and clips)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() > 1 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0)
    if optimizer == "adam":
        return torch.optim.Adam(groups, lr=lr)
    raise ValueError(f"optimizer {optimizer!r}: use 'sgd' or 'adam'")


def train_steps(model: nn.Module, batches: Iterable, steps: int, lr: float,
                optimizer: str = "sgd", momentum: float = 0.9, weight_decay: float = 4e-5,
                label_smoothing: float = 0.0, loss_fn: Optional[Callable] = None,
                device=None, cosine: bool = True,
                on_step: Optional[Callable[[int], Optional[bool]]] = None,
                progress: bool = False, desc: str = "finetune",
                lr_key: str = "finetune.lr") -> list[float]:
    """``steps`` optimizer steps on ``batches`` (an iterator, or a loader passed over again as
    often as needed); cosine learning rate from ``lr``; cross-entropy with label smoothing
    (or ``loss_fn(logits, y)``). ``on_step(t)`` runs before step ``t`` (and once after the
    last); when it returns True the optimizer is rebuilt (the parameters changed, e.g. after
    physical channel pruning). Returns the losses; a non-finite loss raises
    :class:`NonFiniteLossError` naming the step and ``lr_key``."""
    device = device or next(model.parameters()).device
    model.to(device).train()
    opt = make_optimizer(model, lr, optimizer, momentum, weight_decay)
    loss_fn = loss_fn or (lambda out, y: F.cross_entropy(out, y,
                                                         label_smoothing=label_smoothing))
    it = batches if hasattr(batches, "__next__") else cycle(batches)
    bar = None
    if progress:
        bar = tqdm(total=steps, desc=desc, leave=False)
    losses = []
    for t in range(steps):
        if on_step is not None and on_step(t):
            model.to(device).train()
            opt = make_optimizer(model, lr, optimizer, momentum, weight_decay)
        cur = lr * 0.5 * (1 + math.cos(math.pi * t / max(1, steps))) if cosine else lr
        for g in opt.param_groups:
            g["lr"] = cur
        x, y = next(it)
        loss = loss_fn(model(x.to(device)), y.to(device))
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"{desc}: the loss became {float(loss.detach())} at step "
                                     f"{t} of {steps}; lower {lr_key}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if bar is not None:
            bar.update()
    if on_step is not None:
        on_step(steps)
    if bar is not None:
        bar.close()
    model.eval()
    return losses


def finetune_batches(data, recipe, seed: int, model_id: str, stream: str = "finetune"):
    """The training batches of one model's finetune: its own shuffled, augmented loader,
    seeded from ``(seed, stream, model_id)``, so the batches a model sees do not depend on
    what was finetuned before it."""
    return data.loader("train", batch_size=recipe.batch_size,
                       seed=stream_seed(seed, stream, model_id))


def test_batches(data, recipe, seed: int = 0) -> list:
    """The test images every final model is measured on, in one fixed order: the whole test
    split (``recipe.test_images`` null) or a seeded subset; the same for notebooks 04, 05
    and 07, so their per-image correctness vectors pair up."""
    n = len(data.test) if recipe.test_images is None else min(recipe.test_images,
                                                              len(data.test))
    return data.fixed_batches("test", n, seed=seed)


def finetune(model: nn.Module, recipe, batches: Iterable, steps: Optional[int] = None,
             device=None, progress: bool = False, desc: str = "QAT finetune",
             on_step: Optional[Callable[[int], Optional[bool]]] = None) -> dict:
    """The one finetune recipe (``recipe``: the profile's :class:`~apq_lib.config.
    FinetuneConfig`) applied in place: ``{"steps", "losses", "seconds"}``. ``steps``
    overrides the recipe's step count (the quantized-pair collection's short finetunes)."""
    steps = recipe.steps if steps is None else int(steps)
    t0 = time.perf_counter()
    if steps <= 0:
        return {"steps": 0, "losses": [], "seconds": 0.0}
    losses = train_steps(model, batches, steps, recipe.lr, recipe.optimizer, recipe.momentum,
                         recipe.weight_decay, recipe.label_smoothing, device=device,
                         on_step=on_step, progress=progress, desc=desc)
    return {"steps": steps, "losses": losses, "seconds": time.perf_counter() - t0}
