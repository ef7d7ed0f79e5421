"""Fitness and constraint functions over index arrays for the search (APQ §3.4): the
quantization-aware predictor as ``score_fn``, and LUT latency / energy, BitOps and model
size as vectorised ``cost_fn``s — each one call per batch ``[N, n_blocks, 6]``.
"""
from __future__ import annotations

import contextlib
from typing import Optional

import numpy as np
import torch

from ..hardware.layers import LayerSpec, mbconv_layers
from ..hardware.lut import SpaceCostTable
from ..predictor.encoder import APQEncoder
from ..predictor.model import FastPredictor, is_quant_aware

__all__ = ["PredictorScore", "BitOpsTable", "lut_cost_fns", "torch_threads"]


@contextlib.contextmanager
def torch_threads(n: Optional[int]):
    """Temporarily run torch with ``n`` intra-op threads (``None``: unchanged)."""
    old = torch.get_num_threads()
    if n is not None and n != old:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n is not None and n != old:
            torch.set_num_threads(old)


class PredictorScore:
    """``score_fn`` for the search: index arrays → predicted top-1 (percent by default).

    ``model`` is a predictor from :mod:`apq_lib.predictor` (``QuantAwarePredictor`` reads
    arch + quant encodings, the FP32 ``AccuracyPredictor`` only the arch part). A batch of
    one generation (~100 rows) is too small for intra-op parallelism, so scoring runs on
    ``threads`` (default 1) torch threads; on a busy 2-core box 2 threads is several times
    slower.
    """

    def __init__(self, model: torch.nn.Module, space, threads: Optional[int] = 1,
                 percent: bool = True, batch_size: int = 32768, fast: bool = True):
        self.model = model.eval().cpu()
        self.encoder = APQEncoder(space)
        self.quant = is_quant_aware(model)
        self.threads, self.scale, self.batch_size = threads, 100.0 if percent else 1.0, batch_size
        self.n_calls = self.n_scored = 0
        self.fast = None
        if fast:                  # first layer as row gathers from the index arrays (fp32)
            try:
                self.fast = FastPredictor(self.model, self.encoder)
            except (ImportError, AttributeError):
                self.fast = None

    @torch.inference_mode()
    def __call__(self, idx: np.ndarray) -> np.ndarray:
        self.n_calls += 1
        self.n_scored += len(idx)
        with torch_threads(self.threads):
            if self.fast is not None:
                out = [torch.from_numpy(np.asarray(self.fast(idx[i:i + self.batch_size])))
                       for i in range(0, len(idx), self.batch_size)]
            else:
                x = self.encoder.encode_index(idx, self.quant)
                out = [self.model(torch.from_numpy(x[i:i + self.batch_size]))
                       for i in range(0, len(x), self.batch_size)]
        return (torch.cat(out).double().numpy() * self.scale if out
                else np.zeros(0, np.float64))


def lut_cost_fns(table, prefix: str = "") -> dict:
    """``{prefix+"latency": fn, prefix+"energy": fn}`` (ms, mJ) from a
    :class:`~apq_lib.hardware.lut.SpaceCostTable`."""
    return {f"{prefix}latency": lambda idx: table.lookup(idx)[0],
            f"{prefix}energy": lambda idx: table.lookup(idx)[1]}


class BitOpsTable:
    """Vectorised BitOps (Σ MACs × w_bits × a_bits, in G = 1e9) and weight storage (Σ
    weights × w_bits, in kB = 1000 bytes) over index arrays, using the same per-slot
    gather as the hardware LUT. Layers: the space's fixed head/tail at their fixed bits
    (``space.fixed_layers()``) plus, per active block, first 1×1 and second 1×1 at
    ``pw_w × pw_a`` and the depthwise at ``dw_w × dw_a``; BN (folded) and biases are not
    counted."""

    def __init__(self, space):
        bits = np.array(space.bit_choices, dtype=np.float64)
        nk, nb = len(space.kernel_choices), len(bits)
        mm = max(len(b.mid_choices) for b in space.blocks)
        t = np.zeros((space.n_blocks, nk, mm, nb, nb, nb, nb, 2))
        ww = bits[:, None] * bits[None, :]                                  # [w, a]
        for s, b in enumerate(space.blocks):
            for ki, k in enumerate(space.kernel_choices):
                for mi, mid in enumerate(b.mid_choices):
                    pw1, dw, pw2 = mbconv_layers(b.in_c, mid, b.out_c, b.in_size, k, b.stride)
                    pw_macs, dw_macs = pw1.macs + pw2.macs, dw.macs
                    pw_w8 = pw1.n_weights + pw2.n_weights
                    t[s, ki, mi, ..., 0] = (pw_macs * ww[:, :, None, None]
                                            + dw_macs * ww[None, None, :, :])
                    t[s, ki, mi, ..., 1] = (pw_w8 * bits[:, None, None, None]
                                            + dw.n_weights * bits[None, None, :, None])
        fixed = np.zeros(2)
        for f in space.fixed_layers():
            spec = LayerSpec(f.in_c, f.out_c, f.in_size, f.kernel, f.stride, f.padding,
                             f.groups)
            fixed += [spec.macs * f.w_bits * f.a_bits, spec.n_weights * f.w_bits]
        t[..., 0] /= 1e9                                                    # G BitOps
        t[..., 1] /= 8e3                                                    # kB
        self.table = SpaceCostTable(space, t, fixed / [1e9, 8e3], "bitops_size")

    def bitops(self, idx: np.ndarray) -> np.ndarray:
        """G BitOps ``[N]``."""
        return self.table.lookup(idx)[0]

    def size_kb(self, idx: np.ndarray) -> np.ndarray:
        """Weight storage in kB ``[N]``."""
        return self.table.lookup(idx)[1]
