"""Instability analysis (Frankle, Dziugaite, Roy & Carbin 2020, "Linear Mode Connectivity
and the Lottery Ticket Hypothesis", §2-3).

Two copies of a network are trained from the same weights at iteration ``k`` with
different SGD noise (data order). The error is measured along the linear path
``(1 − t)·W_a + t·W_b`` at ``points`` evenly spaced ``t`` (≥ 11, endpoints included);
the *error barrier* (instability) is the path's maximum error minus the mean of the two
endpoints' errors. A network is *stable* at ``k`` when the barrier is ≈ 0 (the paper
uses 2 % error as its threshold).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from .imp import copy_model

__all__ = ["interpolate_state", "interpolation_curve", "error_barrier", "instability",
           "LMCResult"]


def interpolate_state(a: dict, b: dict, t: float) -> dict:
    """``(1 − t)·a + t·b`` for floating tensors (exact at t = 0 and 1); other entries
    (integer buffers, equal masks) must be equal in ``a`` and ``b`` and are copied."""
    if a.keys() != b.keys():
        raise KeyError(f"interpolate_state: the state dicts differ in "
                       f"{sorted(set(a) ^ set(b))}")
    out = {}
    for k, va in a.items():
        vb = b[k]
        if va.is_floating_point() and not torch.equal(va, vb):
            out[k] = (1.0 - t) * va + t * vb
        else:
            if not torch.equal(va, vb):
                raise ValueError(f"interpolate_state: non-float entry {k!r} differs")
            out[k] = va.clone()
    return out


def interpolation_curve(model: nn.Module, a: dict, b: dict,
                        error_fn: Callable[[nn.Module], float], points: int = 11
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Error (``error_fn(model)``, percent) at ``points`` evenly spaced t in [0, 1]
    along the linear path from state ``a`` to state ``b``; returns ``(t, error)``."""
    if points < 11:
        raise ValueError(f"points={points}: use at least 11 interpolation points")
    net = copy_model(model)
    ts = np.linspace(0.0, 1.0, points)
    errs = []
    for t in ts:
        net.load_state_dict(interpolate_state(a, b, float(t)))
        errs.append(float(error_fn(net)))
    return ts, np.asarray(errs)


def error_barrier(errors) -> float:
    """max error on the path − mean of the two endpoints' errors."""
    e = np.asarray(errors, dtype=float)
    if e.size < 2:
        raise ValueError("error_barrier needs the errors at >= 2 points")
    return float(e.max() - 0.5 * (e[0] + e[-1]))


@dataclass
class LMCResult:
    k: int
    t: np.ndarray
    errors: np.ndarray
    barrier: float
    end_errors: tuple


def instability(model: nn.Module, state_k: dict,
                train: Callable[[nn.Module, int], None],
                error_fn: Callable[[nn.Module], float], k: int = 0,
                data_seeds: tuple[int, int] = (1, 2), points: int = 11) -> LMCResult:
    """Train two copies of ``model`` loaded with ``state_k`` via ``train(copy, data_seed)``
    (different data orders), then measure the error along their linear interpolation."""
    if data_seeds[0] == data_seeds[1]:
        raise ValueError("instability: the two copies need different data seeds")
    ends = []
    for s in data_seeds:
        net = copy_model(model)
        net.load_state_dict(state_k)
        train(net, s)
        ends.append({k_: v.detach().clone() for k_, v in net.state_dict().items()})
    t, e = interpolation_curve(model, ends[0], ends[1], error_fn, points)
    return LMCResult(k, t, e, error_barrier(e), (float(e[0]), float(e[-1])))
