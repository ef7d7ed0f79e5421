"""Parity of the integer-only model with the fake-quant model it came from (Jacob et al.
2018 §3: the integer model must reproduce the simulated-quantization model), and a guard that
no floating-point tensor is produced while the integer model runs.
"""
from __future__ import annotations

import time
from typing import Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .fixedpoint import INT_DTYPES

__all__ = ["NoFloatMode", "FloatOpError", "parity"]


class FloatOpError(RuntimeError):
    """A floating-point tensor appeared inside the integer-only path."""


class NoFloatMode(TorchDispatchMode):
    """Dispatch mode that checks every aten op's inputs and outputs: any floating-point
    tensor raises :class:`FloatOpError` naming the op. ``ops`` collects the ops seen."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.ops.append(str(func))
        for t in tree_flatten((args, kwargs, out))[0]:
            if isinstance(t, torch.Tensor) and t.dtype not in INT_DTYPES:
                raise FloatOpError(f"{func} touched a {t.dtype} tensor inside the integer path")
        return out


@torch.no_grad()
def parity(fq_model, int_model, dataset, batch_size: int = 500,
           n_images: Optional[int] = None) -> dict:
    """Run both models on ``dataset`` (a TensorImageSet: uint8 ``images``, ``labels``,
    ``prepare``): top-1 of each, top-1 agreement (%), max / mean |logit difference| in units
    of the integer logits' scale (LSB), images and seconds."""
    fq_model.eval()
    n = len(dataset) if n_images is None else min(n_images, len(dataset))
    agree = ok_fq = ok_int = 0
    max_d, sum_d, t_fq, t_int = 0.0, 0.0, 0.0, 0.0
    scale = int_model.logit_scale.reshape(1, -1)
    for i in range(0, n, batch_size):
        imgs, y = dataset.images[i:i + batch_size], dataset.labels[i:i + batch_size]
        t0 = time.perf_counter()
        fq = fq_model(dataset.prepare(imgs))
        t1 = time.perf_counter()
        li = int_model(imgs)
        t_int += time.perf_counter() - t1
        t_fq += t1 - t0
        p_fq, p_int = fq.argmax(1), li.argmax(1)
        agree += int((p_fq == p_int).sum())
        ok_fq += int((p_fq == y).sum())
        ok_int += int((p_int == y).sum())
        d = (fq / scale - li.float()).abs()
        max_d, sum_d = max(max_d, float(d.max())), sum_d + float(d.mean(1).sum())
    return {"images": n, "fq_top1": 100.0 * ok_fq / n, "int_top1": 100.0 * ok_int / n,
            "agreement": 100.0 * agree / n, "acc_diff": 100.0 * abs(ok_fq - ok_int) / n,
            "max_logit_lsb": max_d, "mean_logit_lsb": sum_d / n,
            "fq_seconds": t_fq, "int_seconds": t_int}
