"""HAWQ-V2 (Dong et al., NeurIPS 2020): Hessian-aware mixed precision.

* Per-layer Hessian trace by Hutchinson's method: ``Tr(H_i) ≈ mean_k v_iᵀ (H v)_i`` with
  Rademacher ``v``; the Hessian-vector product is ``torch.func.jvp`` of ``torch.func.grad``
  (forward-over-reverse; double backward as a fallback). One HVP per sample serves all
  layers (the off-diagonal blocks average out).
* Sensitivity of layer ``i`` at ``b`` bits: ``Ω_i(b) = Tr(H_i)/n_i · ||Q_b(W_i) − W_i||²``.
* Bit allocation: the Pareto frontier of (total cost, total Ω) built layer by layer
  (dynamic programming with dominated points dropped), then the least-Ω point whose cost
  meets the budget. Costs are additive per layer (latency, energy, BitOps, size).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["hutchinson_trace", "hessian_traces", "weight_quant_error", "hawq_sensitivity",
           "pareto_frontier", "hawq_allocate", "HVP_MODES"]

HVP_MODES = ("jvp", "double_backward")


def _hvp_fn(f: Callable, params: dict, mode: str):
    if mode == "jvp":
        g = torch.func.grad(f)
        return lambda v: torch.func.jvp(g, (params,), (v,))[1]
    if mode == "double_backward":
        leaves = {k: p.detach().requires_grad_(True) for k, p in params.items()}
        loss = f(leaves)
        grads = torch.autograd.grad(loss, list(leaves.values()), create_graph=True)
        keys = list(leaves)

        def hvp(v):
            hv = torch.autograd.grad(grads, list(leaves.values()), [v[k] for k in keys],
                                     retain_graph=True)
            return dict(zip(keys, hv))
        return hvp
    raise ValueError(f"mode={mode!r}; use one of {HVP_MODES}")


def hutchinson_trace(f: Callable[[dict], torch.Tensor], params: dict, n_samples: int = 50,
                     seed: int = 0, mode: str = "jvp", tol: Optional[float] = None,
                     return_se: bool = False):
    """Estimate the trace of each diagonal Hessian block of ``f(params)`` (a scalar) with
    ``n_samples`` Rademacher probes. Returns ``{name: trace}`` (floats); with ``tol`` it
    stops early once every running mean changes by less than ``tol`` (relative). With
    ``return_se`` also ``{name: standard error}`` (sample SD of the probes / sqrt(n))."""
    params = {k: p.detach() for k, p in params.items()}
    hvp = _hvp_fn(f, params, mode)
    g = torch.Generator(device="cpu").manual_seed(seed)
    sums = {k: 0.0 for k in params}
    squares = {k: 0.0 for k in params}
    prev, n = None, 0

    def result():
        mean = {k: v / max(1, n) for k, v in sums.items()}
        if not return_se:
            return mean
        se = {k: float(np.sqrt(max(0.0, squares[k] / n - mean[k] ** 2) * n / (n - 1) / n))
              if n > 1 else float("nan") for k in params}
        return mean, se

    for i in range(n_samples):
        v = {k: (torch.randint(0, 2, p.shape, generator=g) * 2 - 1).to(p) for k, p in
             params.items()}
        try:
            hv = hvp(v)
        except (RuntimeError, NotImplementedError):
            if mode != "jvp":
                raise
            hvp, mode = _hvp_fn(f, params, "double_backward"), "double_backward"
            hv = hvp(v)
        for k in params:
            est = float((v[k] * hv[k]).sum())
            sums[k] += est
            squares[k] += est * est
        n = i + 1
        mean = {k: s / n for k, s in sums.items()}
        if tol is not None and prev is not None and all(
                abs(mean[k] - prev[k]) <= tol * (abs(prev[k]) + 1e-12) for k in mean):
            return result()
        prev = mean
    return result()


def hessian_traces(model: nn.Module, batches: Sequence, layers: Sequence[str],
                   n_samples: int = 20, seed: int = 0, device=None, mode: str = "jvp",
                   loss_fn: Optional[Callable] = None, return_se: bool = False):
    """``{layer name: Tr(H)}`` of the loss on ``batches`` (a list of ``(x, y)``) w.r.t.
    each layer's ``weight``, with the model in eval mode (BN uses running statistics);
    with ``return_se`` also ``{layer name: standard error of the estimate}``."""
    device = device or next(model.parameters()).device
    loss_fn = loss_fn or nn.functional.cross_entropy
    was = model.training
    model.eval()
    named = dict(model.named_parameters())
    keys = [f"{n}.weight" for n in layers]
    missing = [k for k in keys if k not in named]
    if missing:
        raise ValueError(f"layers without a weight parameter: {missing[:5]}")
    fixed = {k: v.detach() for k, v in named.items() if k not in keys}
    fixed.update(dict(model.named_buffers()))
    data = [(x.to(device), y.to(device)) for x, y in batches]
    n_img = sum(len(y) for _, y in data)

    def f(p):
        total = 0.0
        for x, y in data:
            out = torch.func.functional_call(model, {**fixed, **p}, (x,))
            total = total + loss_fn(out, y, reduction="sum")
        return total / n_img

    try:
        tr = hutchinson_trace(f, {k: named[k] for k in keys}, n_samples, seed, mode,
                              return_se=return_se)
    finally:
        model.train(was)
    if return_se:
        tr, se = tr
        return {n: tr[f"{n}.weight"] for n in layers}, {n: se[f"{n}.weight"] for n in layers}
    return {n: tr[f"{n}.weight"] for n in layers}


def weight_quant_error(w: torch.Tensor, bits: int) -> float:
    """``||Q_b(W) − W||²`` for symmetric per-tensor linear quantization (range max|w|),
    the weight quantizer the suite uses everywhere."""
    w = w.detach().float()
    qmax = 2 ** (bits - 1) - 1
    s = w.abs().max().clamp_min(1e-8) / qmax
    q = torch.clamp(torch.round(w / s), -qmax - 1, qmax) * s
    return float(((q - w) ** 2).sum())


def hawq_sensitivity(traces: dict, weights: dict, w_bits: Sequence[int]) -> np.ndarray:
    """``[n_layers, n_bits]`` Ω = Tr(H_i)/n_i · ||Q_b(W_i) − W_i||² (layers in the order
    of ``traces``)."""
    out = np.zeros((len(traces), len(w_bits)))
    for i, (name, tr) in enumerate(traces.items()):
        w = weights[name]
        for j, b in enumerate(w_bits):
            out[i, j] = max(float(tr), 0.0) / w.numel() * weight_quant_error(w, b)
    return out


def pareto_frontier(omega: np.ndarray, costs: np.ndarray, max_points: int = 4000
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frontier of (Σ cost, Σ Ω) over one choice per layer.

    ``omega``, ``costs``: ``[n_layers, n_choices]``. Returns ``(cost [P], omega [P],
    choices [P, n_layers])`` sorted by cost, each point non-dominated. When the frontier
    grows past ``max_points`` it is thinned to the best Ω per cost bucket (exact for
    small problems)."""
    omega, costs = np.asarray(omega, float), np.asarray(costs, float)
    if omega.shape != costs.shape or omega.ndim != 2:
        raise ValueError(f"omega {omega.shape} and costs {costs.shape} must be the same "
                         f"[n_layers, n_choices] shape")
    fc, fo = np.zeros(1), np.zeros(1)
    fch = np.zeros((1, 0), dtype=np.int16)
    for i in range(omega.shape[0]):
        nc = omega.shape[1]
        c = (fc[:, None] + costs[i][None]).reshape(-1)
        o = (fo[:, None] + omega[i][None]).reshape(-1)
        ch = np.concatenate([np.repeat(fch, nc, axis=0),
                             np.tile(np.arange(nc, dtype=np.int16), len(fc))[:, None]], axis=1)
        order = np.lexsort((o, c))
        c, o, ch = c[order], o[order], ch[order]
        keep = o < np.minimum.accumulate(np.concatenate([[np.inf], o[:-1]]))
        c, o, ch = c[keep], o[keep], ch[keep]
        if len(c) > max_points:
            edges = np.linspace(c[0], c[-1], max_points + 1)
            bucket = np.clip(np.searchsorted(edges, c, side="right") - 1, 0, max_points - 1)
            # the frontier is sorted by cost with falling Ω: the last point of each
            # bucket is its least-Ω point
            last = np.r_[bucket[1:] != bucket[:-1], True]
            c, o, ch = c[last], o[last], ch[last]
        fc, fo, fch = c, o, ch
    return fc, fo, fch


def hawq_allocate(omega: np.ndarray, costs: np.ndarray, budget: float,
                  max_points: int = 4000) -> dict:
    """The least-Ω choice per layer with ``Σ cost ≤ budget``; ``choices`` are indices
    into the columns. Raises ValueError when even the cheapest choices exceed it."""
    fc, fo, fch = pareto_frontier(omega, costs, max_points)
    ok = np.flatnonzero(fc <= budget + 1e-12 * abs(budget))
    if not len(ok):
        raise ValueError(f"HAWQ: budget {budget:.4g} is below the cheapest policy's cost "
                         f"{fc[0]:.4g}")
    k = ok[np.argmin(fo[ok])]
    return {"choices": fch[k].astype(int).tolist(), "cost": float(fc[k]),
            "omega": float(fo[k]), "frontier_cost": fc, "frontier_omega": fo}
