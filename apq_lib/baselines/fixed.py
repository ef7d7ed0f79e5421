"""Fixed-architecture baselines and the per-layer cost model every baseline shares
(APQ §4 "MobileNetV2 + fixed precision / + HAQ"; HAQ §4).

* :func:`build_fixed_model`: the MobileNetV2 of the suite — the space's MobileNetV2 point
  (3×3 kernels, expand 6, largest depth), freshly initialised (trained by the caller).
* Policies, fixed layers and quantizing a float model at a policy:
  :mod:`apq_lib.quant.policy` (re-exported here).
* :class:`LayerCostTable`: latency / energy (hardware simulators), BitOps and size of a
  model under any per-layer bits list, precomputed per layer and bit pair, so that a
  policy's cost is a sum of lookups — the ``cost(bits)`` callables of HAQ and HAWQ.
"""
from __future__ import annotations

import json
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from ..config import FinetuneConfig
from ..hardware import get_simulator, model_layer_specs
from ..quant.policy import (
    FIXED_PREFIXES,
    fixed_bits,
    is_fixed,
    layer_names,
    quantize_with_policy,
    to_float,
    uniform_policy,
)
from ..realize import realize_policy, seed_id
from ..runtime import stream_seed
from ..supernet.network import APQSupernet

__all__ = ["FIXED_PREFIXES", "build_fixed_model", "to_float", "layer_names", "is_fixed",
           "fixed_bits", "uniform_policy", "quantize_with_policy", "LayerCostTable",
           "PolicyEvaluator"]

def build_fixed_model(space, seed: int = 0) -> nn.Module:
    """The space's MobileNetV2 point (``space.mobilenetv2()``), freshly initialised, FP32,
    as a standalone module with plain Conv2d / Linear layers."""
    torch.manual_seed(seed)
    net = APQSupernet(space)
    net.set_active_subnet(space.mobilenetv2())
    return to_float(net.get_active_subnet())


class LayerCostTable:
    """Per-layer costs of one model under every ``(w, a)`` in ``bits``.

    ``lat[sim]`` / ``en[sim]``: ``[n_layers, n_bits, n_bits]`` (ms, mJ) from the hardware
    simulators; ``macs``, ``params``: ``[n_layers]``. Activation bits 32 (the stem's FP
    input) are charged as 8 on the accelerators, as in APQ's lookup table.
    """

    def __init__(self, model: nn.Module, input_shape: Sequence[int],
                 simulators: Sequence[str] = ("bitfusion",), bits: Sequence[int] = range(2, 9)):
        specs = model_layer_specs(model, input_shape)
        self.names = [n for n, *_ in specs]
        self.specs = [s for _, s, *_ in specs]
        self.bits = [int(b) for b in bits]
        self._bidx = {b: i for i, b in enumerate(self.bits)}
        self.macs = np.array([s.macs for s in self.specs], dtype=np.float64)
        self.params = np.array([s.n_weights for s in self.specs], dtype=np.float64)
        self.simulators = list(simulators)
        self.lat, self.en = {}, {}
        nb = len(self.bits)
        for sname in self.simulators:
            sim = get_simulator(sname)
            lat = np.zeros((len(self.specs), nb, nb))
            en = np.zeros_like(lat)
            for i, s in enumerate(self.specs):
                for wi, w in enumerate(self.bits):
                    for ai, a in enumerate(self.bits):
                        c = sim.cost(s, w, a)
                        lat[i, wi, ai], en[i, wi, ai] = c["latency"], c["energy"]
            self.lat[sname], self.en[sname] = lat, en

    def _idx(self, bits) -> tuple[np.ndarray, np.ndarray]:
        if len(bits) != len(self.names):
            raise ValueError(f"{len(bits)} (w, a) pairs for {len(self.names)} layers")
        try:
            w = np.array([self._bidx[int(b[0])] for b in bits])
            a = np.array([self._bidx[8 if int(b[1]) == 32 else int(b[1])] for b in bits])
        except KeyError as e:
            raise ValueError(f"bits {e} outside the table's range {self.bits}") from None
        return w, a

    def per_layer(self, metric: str, bits) -> np.ndarray:
        """``[n_layers]`` cost of each layer under ``bits`` (one (w, a) per layer)."""
        if metric in ("bitops", "size"):
            w = np.array([int(b[0]) for b in bits], float)
            a = np.array([8 if int(b[1]) == 32 else int(b[1]) for b in bits], float)
            return self.macs * w * a if metric == "bitops" else self.params * w
        sim, kind = self._metric(metric)
        wi, ai = self._idx(bits)
        table = self.lat[sim] if kind == "latency" else self.en[sim]
        return table[np.arange(len(wi)), wi, ai]

    def _metric(self, metric: str) -> tuple[str, str]:
        kind, _, sim = metric.partition(":")
        sim = sim or self.simulators[0]
        if kind not in ("latency", "energy") or sim not in self.lat:
            raise ValueError(f"metric {metric!r}: use latency[:sim], energy[:sim], bitops or "
                             f"size with sim in {self.simulators}")
        return sim, kind

    def cost(self, metric: str, bits) -> float:
        """Whole-model ``metric`` (``latency``/``energy`` [``:simulator``] in ms / mJ,
        ``bitops``, ``size`` in bits) under ``bits``."""
        return float(self.per_layer(metric, bits).sum())

    def fn(self, metric: str):
        """``cost(bits) -> float`` for HAQ's action wall."""
        return lambda bits: self.cost(metric, bits)

    def choice_costs(self, metric: str, pairs: Sequence[tuple]) -> np.ndarray:
        """``[n_layers, n_pairs]``: each layer's cost at each uniform ``(w, a)`` pair (for
        HAWQ's frontier)."""
        return np.stack([self.per_layer(metric, [p] * len(self.names)) for p in pairs], 1)

    def summary(self, bits) -> dict:
        """Latency (ms), energy (mJ) per simulator, G BitOps, weight size (kB) of a policy."""
        out = {}
        for s in self.simulators:
            suffix = "" if s == self.simulators[0] else f"_{s}"
            out[f"latency_ms{suffix}"] = self.cost(f"latency:{s}", bits)
            out[f"energy_mj{suffix}"] = self.cost(f"energy:{s}", bits)
        out["bitops_g"] = self.cost("bitops", bits) / 1e9
        out["size_kb"] = self.cost("size", bits) / 8e3             # kB = 1000 bytes
        return out

    def bits_of(self, policy: dict) -> list[tuple[int, int]]:
        """A ``{name: (w, a)}`` policy as the table's per-layer list."""
        missing = [n for n in self.names if n not in policy]
        if missing:
            raise ValueError(f"policy misses layers {missing[:5]}")
        return [tuple(map(int, policy[n])) for n in self.names]


class PolicyEvaluator:
    """``evaluator(bits) -> accuracy (percent)``: quantize a copy of the float model at a
    per-layer policy (``bits`` in ``names`` order, or a ``{name: (w, a)}`` dict),
    calibrate, finetune ``steps`` steps with the one recipe (:func:`apq_lib.loops.finetune`;
    ``recipe`` or, without one, SGD at ``lr``), recalibrate BN on ``recal_batches`` (when
    given and ``steps`` > 0), evaluate on ``eval_batches``.

    ``train_batches`` is either batches (an iterator or a loader) or a function ``key ->
    batches``; with a function every policy is finetuned on its own batches (``key`` is
    the policy), so its accuracy does not depend on what was evaluated before it.

    HAQ's reward and HAWQ's / the fixed-precision baselines' final finetunes all go
    through here, so every method gets the same quantizers and the same recipe."""

    def __init__(self, model: nn.Module, names: Sequence[str], calib_batches: list,
                 train_batches, eval_batches: list, steps: int, lr: float = 1e-3,
                 device=None, weight_quantizer: str = "linear", label_smoothing: float = 0.1,
                 recal_batches: Optional[list] = None, recipe=None,
                 weight_kw: Optional[dict] = None, seed: int = 0):
        self.weight_kw = weight_kw
        self.model = to_float(model).eval()
        self.recal = recal_batches
        self.names = list(names)
        self.calib, self.train, self.eval_batches = calib_batches, train_batches, eval_batches
        self.steps, self.device = steps, device or torch.device("cpu")
        self.recipe = recipe or FinetuneConfig(steps=steps, lr=lr,
                                               label_smoothing=label_smoothing)
        self.weight_quantizer = weight_quantizer
        self.seed = seed
        self.n_calls = 0

    def policy(self, bits) -> dict:
        if isinstance(bits, dict):
            return dict(bits)
        if len(bits) != len(self.names):
            raise ValueError(f"{len(bits)} (w, a) pairs for {len(self.names)} layers")
        return {n: tuple(map(int, b)) for n, b in zip(self.names, bits)}

    def batches_for(self, pol: dict, steps: int, k: int = 0):
        """The finetune batches of ``pol`` (finetune seed ``k``): its own when
        ``train_batches`` is a function."""
        if not callable(self.train):
            return self.train
        return self.train(seed_id(self.key(pol, steps), k))

    def key(self, pol: dict, steps: int) -> str:
        """What a policy's finetune batches and torch seed are drawn from."""
        return json.dumps({"policy": sorted((k, list(v)) for k, v in pol.items()),
                           "steps": steps, "quantizer": self.weight_quantizer})

    def realized(self, bits, steps: Optional[int] = None, eval_batches=None, k: int = 0):
        """The policy through the one final-model path (:func:`apq_lib.realize.
        realize_policy`) with finetune seed ``k`` (its own batches and torch seed)."""
        steps = self.steps if steps is None else steps
        pol = self.policy(bits)
        return realize_policy(
            self.model, pol, self.recipe, self.batches_for(pol, steps, k), self.recal,
            self.eval_batches if eval_batches is None else eval_batches,
            calib_batches=self.calib, steps=steps, device=self.device,
            seed=stream_seed(self.seed, "finetune", seed_id(self.key(pol, steps), k)),
            weight_quantizer=self.weight_quantizer, weight_kw=self.weight_kw)

    def realized_seeds(self, bits, n: int, steps: Optional[int] = None, eval_batches=None):
        """:meth:`realized` with finetune seeds ``0 … n-1`` (as APQ's models,
        :func:`apq_lib.realize.realize_seeds`)."""
        return [self.realized(bits, steps, eval_batches, k) for k in range(max(1, n))]

    def quantized(self, bits, steps: Optional[int] = None, eval_batches=None,
                  return_correct: bool = False):
        """The calibrated (and, for ``steps`` > 0, finetuned and BN-recalibrated) quantized
        model and its accuracy on ``eval_batches`` (default: the evaluator's); with
        ``return_correct`` also the per-image correctness."""
        r = self.realized(bits, steps, eval_batches)
        acc = None if r.correct is None else r.test_acc
        return (r.model, acc, r.correct) if return_correct else (r.model, acc)

    def __call__(self, bits) -> float:
        self.n_calls += 1
        return float(self.quantized(bits)[1])
