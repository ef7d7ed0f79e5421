"""Fixed-architecture baselines and the per-layer cost model every baseline shares
(APQ §4 "MobileNetV2 + fixed precision / + HAQ"; HAQ §4).

* :func:`build_fixed_model`: the MobileNetV2 of the suite — the space's MobileNetV2 point
  (3×3 kernels, expand 6, largest depth), freshly initialised (trained by the caller).
* :func:`to_float` / :func:`quantize_with_policy`: a model with plain Conv2d / Linear, and a
  copy quantized with ``apq_lib.quant`` (PACT activations, linear or k-means weights) at a
  per-layer policy ``{name: (w_bits, a_bits)}``, calibrated.
* Fixed layers follow APQ's space: stem, head MBConv, tail conv and classifier stay at
  8 bits (the stem's input is never quantized); baselines choose bits for the rest.
* :class:`LayerCostTable`: latency / energy (hardware simulators), BitOps and size of a
  model under any per-layer bits list, precomputed per layer and bit pair, so that a
  policy's cost is a sum of lookups — the ``cost(bits)`` callables of HAQ and HAWQ.
"""
from __future__ import annotations

import copy
import json
from typing import Iterable, Optional, Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["FIXED_PREFIXES", "build_fixed_model", "to_float", "layer_names", "is_fixed",
           "fixed_bits", "uniform_policy", "quantize_with_policy", "LayerCostTable",
           "METRICS", "PolicyEvaluator"]

FIXED_PREFIXES = ("stem", "head.", "tail", "classifier")
METRICS = ("latency", "energy", "bitops", "size")


def is_fixed(name: str) -> bool:
    """Layers outside the searchable blocks (APQ keeps them at 8 bits)."""
    return any(name == p or name.startswith(p if p.endswith(".") else p + ".")
               or (p.endswith(".") and name.startswith(p)) for p in FIXED_PREFIXES)


def fixed_bits(name: str) -> tuple[int, int]:
    """(8, 32) for the stem (input never quantized), (8, 8) for the other fixed layers."""
    return (8, 32) if name == "stem" or name.startswith("stem.") else (8, 8)


def build_fixed_model(space, seed: int = 0) -> nn.Module:
    """The space's MobileNetV2 point (``space.mobilenetv2()``), freshly initialised, FP32,
    as a standalone module with plain Conv2d / Linear layers."""
    from ..supernet.network import APQSupernet
    torch.manual_seed(seed)
    net = APQSupernet(space)
    net.set_active_subnet(space.mobilenetv2())
    return to_float(net.get_active_subnet())


def _plain(m: nn.Module) -> nn.Module:
    if isinstance(m, nn.Conv2d) and type(m) is not nn.Conv2d:
        new = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding,
                        m.dilation, m.groups, m.bias is not None, m.padding_mode)
    elif isinstance(m, nn.Linear) and type(m) is not nn.Linear:
        new = nn.Linear(m.in_features, m.out_features, m.bias is not None)
    else:
        return m
    new.weight, new.bias = m.weight, m.bias
    return new.to(m.weight.device).train(m.training)


def to_float(model: nn.Module) -> nn.Module:
    """A deep copy with every quantized Conv2d / Linear subclass replaced by the plain
    layer (same weights; quantizers dropped)."""
    model = copy.deepcopy(model)

    def swap(parent: nn.Module) -> None:
        for name, child in list(parent.named_children()):
            new = _plain(child)
            if new is not child:
                setattr(parent, name, new)
            else:
                swap(child)
    swap(model)
    return model


def layer_names(model: nn.Module) -> list[str]:
    """Conv2d / Linear layers in module order (what policies are keyed by)."""
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def uniform_policy(names: Sequence[str], w_bits: int, a_bits: int) -> dict:
    """Every searchable layer at ``W{w}A{a}``, fixed layers at their 8-bit setting."""
    return {n: fixed_bits(n) if is_fixed(n) else (int(w_bits), int(a_bits)) for n in names}


def quantize_with_policy(model: nn.Module, policy: dict, calib_batches: Optional[Iterable]
                         = None, weight_quantizer: str = "linear",
                         device: Optional[torch.device] = None,
                         weight_kw: Optional[dict] = None) -> nn.Module:
    """A quantized copy of a float ``model`` (``apq_lib.quant``: PACT activations, linear or
    k-means weights) at ``policy``, calibrated on ``calib_batches`` when given. ``weight_kw``:
    the linear weight quantizers' calibration (:func:`apq_lib.quant.weight_calibration_kw`)."""
    from ..quant import apply_policy, calibrate, quantize_model
    w0 = 32 if weight_quantizer == "kmeans" else 8     # k-means fits once, at the policy
    q = quantize_model(to_float(model), w0, 8, weight_quantizer=weight_quantizer,
                       weight_kw=weight_kw if weight_quantizer == "linear" else None)
    apply_policy(q, policy)
    if device is not None:
        q.to(device)
    if calib_batches is not None:
        calibrate(q, calib_batches, device=device)
    return q


class LayerCostTable:
    """Per-layer costs of one model under every ``(w, a)`` in ``bits``.

    ``lat[sim]`` / ``en[sim]``: ``[n_layers, n_bits, n_bits]`` (ms, mJ) from the hardware
    simulators; ``macs``, ``params``: ``[n_layers]``. Activation bits 32 (the stem's FP
    input) are charged as 8 on the accelerators, as in APQ's lookup table.
    """

    def __init__(self, model: nn.Module, input_shape: Sequence[int],
                 simulators: Sequence[str] = ("bitfusion",), bits: Sequence[int] = range(2, 9)):
        from ..hardware import get_simulator, model_layer_specs
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
                 weight_kw: Optional[dict] = None):
        from ..config import FinetuneConfig
        self.weight_kw = weight_kw
        self.model = to_float(model).eval()
        self.recal = recal_batches
        self.names = list(names)
        self.calib, self.train, self.eval_batches = calib_batches, train_batches, eval_batches
        self.steps, self.device = steps, device or torch.device("cpu")
        self.recipe = recipe or FinetuneConfig(steps=steps, lr=lr,
                                               label_smoothing=label_smoothing)
        self.weight_quantizer = weight_quantizer
        self.n_calls = 0

    def policy(self, bits) -> dict:
        if isinstance(bits, dict):
            return dict(bits)
        if len(bits) != len(self.names):
            raise ValueError(f"{len(bits)} (w, a) pairs for {len(self.names)} layers")
        return {n: tuple(map(int, b)) for n, b in zip(self.names, bits)}

    def batches_for(self, pol: dict, steps: int):
        """The finetune batches of ``pol``: its own when ``train_batches`` is a function."""
        if not callable(self.train):
            return self.train
        key = json.dumps({"policy": sorted((k, list(v)) for k, v in pol.items()),
                          "steps": steps, "quantizer": self.weight_quantizer})
        return self.train(key)

    def quantized(self, bits, steps: Optional[int] = None, eval_batches=None,
                  return_correct: bool = False):
        """The calibrated (and, for ``steps`` > 0, finetuned) quantized model and its
        accuracy on ``eval_batches`` (default: the evaluator's); with ``return_correct``
        also the per-image correctness."""
        from ..loops import evaluate, finetune
        from ..supernet.metrics import recalibrate_bn
        steps = self.steps if steps is None else steps
        calib = self.calib
        if self.weight_quantizer == "kmeans":
            calib = None           # activations stay FP: nothing to calibrate
        pol = self.policy(bits)
        q = quantize_with_policy(self.model, pol, calib, self.weight_quantizer, self.device,
                                 self.weight_kw)
        if steps > 0:
            finetune(q, self.recipe, self.batches_for(pol, steps), steps=steps,
                     device=self.device)
            if self.recal is not None:          # as APQ / notebook 04: BN recal after QAT
                recalibrate_bn(q, self.recal, self.device)
        batches = self.eval_batches if eval_batches is None else eval_batches
        if batches is None:
            return (q, None, None) if return_correct else (q, None)
        acc, correct = evaluate(q, batches, self.device, return_correct=True)
        return (q, acc, correct) if return_correct else (q, acc)

    def __call__(self, bits) -> float:
        self.n_calls += 1
        return float(self.quantized(bits)[1])
