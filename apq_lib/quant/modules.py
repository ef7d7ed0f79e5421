"""Quantized layers and mixed-precision policies (APQ §3.3 / HAQ §3: per-layer weight and
activation bitwidths, set at run time).

``QConv2d`` / ``QLinear`` subclass ``nn.Conv2d`` / ``nn.Linear``: ``forward(x) =
layer(a_quant(x), w_quant(weight))``. :func:`quantize_model` swaps a model's Conv2d / Linear
for them (sharing the weights), :func:`apply_policy` sets ``{name: (w_bits, a_bits)}``,
:func:`calibrate` runs the activation quantizers' observers over a few batches.
"""
from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Iterable, Mapping, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from .functional import check_bits
from .kmeans import KMeansQuantizer
from .quantizers import ActQuantizer, LSQQuantizer, PACTQuantizer, WeightQuantizer

__all__ = ["QConv2d", "QLinear", "QUANT_LAYERS", "quantize_model", "apply_policy", "get_policy",
           "quant_layers", "act_quantizers", "calibrate", "make_weight_quantizer",
           "make_act_quantizer", "WEIGHT_QUANTIZERS", "ACT_QUANTIZERS"]

WEIGHT_QUANTIZERS = ("linear", "lsq", "kmeans")
ACT_QUANTIZERS = ("pact", "static", "lsq")
Policy = Mapping[str, tuple[int, int]]


def make_weight_quantizer(kind: str = "linear", bits: int = 8, channels: int = 1,
                          **kw) -> nn.Module:
    """``linear`` (:class:`WeightQuantizer`; kw: per_channel, symmetric, method,
    kl_below_bits, percentile), ``lsq`` (:class:`LSQQuantizer`, kw: per_channel) or
    ``kmeans`` (:class:`KMeansQuantizer`)."""
    if kind == "linear":
        return WeightQuantizer(bits, **kw)
    if kind == "lsq":
        return LSQQuantizer(bits, signed=True, symmetric=True, axis=0, channels=channels,
                            per_channel=kw.get("per_channel", False))
    if kind == "kmeans":
        return KMeansQuantizer(bits)
    raise ValueError(f"weight quantizer {kind!r} unknown; use one of {WEIGHT_QUANTIZERS}")


def make_act_quantizer(kind: str = "pact", bits: int = 8, **kw) -> nn.Module:
    """``pact`` (:class:`PACTQuantizer`), ``static`` (:class:`ActQuantizer`) or ``lsq``
    (:class:`LSQQuantizer`, asymmetric by default); ``signed=None`` decides from the data."""
    kw.setdefault("signed", None)
    if kind == "pact":
        return PACTQuantizer(bits, **kw)
    if kind == "static":
        return ActQuantizer(bits, **kw)
    if kind == "lsq":
        kw.setdefault("symmetric", False)
        return LSQQuantizer(bits, **kw)
    raise ValueError(f"activation quantizer {kind!r} unknown; use one of {ACT_QUANTIZERS}")


class _QMixin:
    """Run-time ``w_bits`` / ``a_bits`` for QConv2d and QLinear."""

    w_quant: nn.Module
    a_quant: nn.Module

    @property
    def w_bits(self) -> int:
        return self.w_quant.bits

    @w_bits.setter
    def w_bits(self, bits: int) -> None:
        self.w_quant.set_bits(check_bits(bits, "w_bits"))

    @property
    def a_bits(self) -> int:
        return self.a_quant.bits

    @a_bits.setter
    def a_bits(self, bits: int) -> None:
        self.a_quant.set_bits(check_bits(bits, "a_bits"))

    def set_bits(self, w_bits: int, a_bits: int) -> None:
        check_bits(w_bits, "w_bits"), check_bits(a_bits, "a_bits")
        self.w_bits, self.a_bits = w_bits, a_bits

    def quantized_weight(self) -> torch.Tensor:
        return self.w_quant(self.weight)

    def _init_quant(self, w_bits, a_bits, w_quant, a_quant, weight_quantizer, act_quantizer,
                    weight_kw, act_kw):
        self.w_quant = w_quant if w_quant is not None else make_weight_quantizer(
            weight_quantizer, w_bits, channels=self.weight.shape[0], **(weight_kw or {}))
        self.a_quant = a_quant if a_quant is not None else make_act_quantizer(
            act_quantizer, a_bits, **(act_kw or {}))
        self.w_bits, self.a_bits = w_bits, a_bits


class QConv2d(_QMixin, nn.Conv2d):
    """``nn.Conv2d`` with weight quantizer ``w_quant`` and input quantizer ``a_quant``."""

    def __init__(self, *args, w_bits: int = 8, a_bits: int = 8,
                 w_quant: Optional[nn.Module] = None, a_quant: Optional[nn.Module] = None,
                 weight_quantizer: str = "linear", act_quantizer: str = "pact",
                 weight_kw: Optional[dict] = None, act_kw: Optional[dict] = None, **kwargs):
        nn.Conv2d.__init__(self, *args, **kwargs)
        self._init_quant(w_bits, a_bits, w_quant, a_quant, weight_quantizer, act_quantizer,
                         weight_kw, act_kw)

    @classmethod
    def from_float(cls, conv: nn.Conv2d, **qkw) -> "QConv2d":
        """A QConv2d sharing ``conv``'s weight and bias Parameters."""
        q = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                bias=conv.bias is not None, padding_mode=conv.padding_mode,
                device=conv.weight.device, dtype=conv.weight.dtype, **qkw)
        q.weight, q.bias = conv.weight, conv.bias
        q.train(conv.training)
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.a_quant(x), self.w_quant(self.weight), self.bias)


class QLinear(_QMixin, nn.Linear):
    """``nn.Linear`` with weight quantizer ``w_quant`` and input quantizer ``a_quant``."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 w_bits: int = 8, a_bits: int = 8, w_quant: Optional[nn.Module] = None,
                 a_quant: Optional[nn.Module] = None, weight_quantizer: str = "linear",
                 act_quantizer: str = "pact", weight_kw: Optional[dict] = None,
                 act_kw: Optional[dict] = None, device=None, dtype=None):
        nn.Linear.__init__(self, in_features, out_features, bias, device=device, dtype=dtype)
        self._init_quant(w_bits, a_bits, w_quant, a_quant, weight_quantizer, act_quantizer,
                         weight_kw, act_kw)

    @classmethod
    def from_float(cls, lin: nn.Linear, **qkw) -> "QLinear":
        q = cls(lin.in_features, lin.out_features, lin.bias is not None,
                device=lin.weight.device, dtype=lin.weight.dtype, **qkw)
        q.weight, q.bias = lin.weight, lin.bias
        q.train(lin.training)
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.a_quant(x), self.w_quant(self.weight), self.bias)


QUANT_LAYERS = (QConv2d, QLinear)


def quant_layers(model: nn.Module) -> "OrderedDict[str, nn.Module]":
    """Every QConv2d / QLinear of ``model`` by qualified name, in module order."""
    return OrderedDict((n, m) for n, m in model.named_modules() if isinstance(m, QUANT_LAYERS))


def quantize_model(model: nn.Module, w_bits: int = 8, a_bits: int = 8,
                   weight_quantizer: str = "linear", act_quantizer: str = "pact",
                   weight_kw: Optional[dict] = None, act_kw: Optional[dict] = None,
                   exclude: Iterable[str] = (), inplace: bool = False) -> nn.Module:
    """Swap every ``nn.Conv2d`` / ``nn.Linear`` (not already quantized, not in ``exclude``)
    for QConv2d / QLinear with the same weights. Returns the model (a deep copy unless
    ``inplace``). Transposed convs are left alone. A ``kmeans`` weight quantizer is fitted
    here, so its centroids exist before an optimizer is built."""
    check_bits(w_bits, "w_bits"), check_bits(a_bits, "a_bits")
    model = model if inplace else copy.deepcopy(model)
    exclude = set(exclude)
    qkw = dict(w_bits=w_bits, a_bits=a_bits, weight_quantizer=weight_quantizer,
               act_quantizer=act_quantizer, weight_kw=weight_kw, act_kw=act_kw)

    def swap(parent: nn.Module, prefix: str) -> None:
        for name, child in list(parent.named_children()):
            full = f"{prefix}.{name}" if prefix else name
            if full in exclude or isinstance(child, QUANT_LAYERS):
                continue
            if type(child) is nn.Conv2d or (isinstance(child, nn.Conv2d)
                                           and not isinstance(child, nn.ConvTranspose2d)
                                           and type(child).forward is nn.Conv2d.forward):
                setattr(parent, name, QConv2d.from_float(child, **qkw))
            elif type(child) is nn.Linear or (isinstance(child, nn.Linear)
                                             and type(child).forward is nn.Linear.forward):
                setattr(parent, name, QLinear.from_float(child, **qkw))
            else:
                swap(child, full)

    if isinstance(model, (nn.Conv2d, nn.Linear)) and not isinstance(model, QUANT_LAYERS):
        holder = nn.Sequential(model)          # a bare layer: swap it through a holder
        swap(holder, "")
        model = holder[0]
    else:
        swap(model, "")
    for m in quant_layers(model).values():
        if isinstance(m.w_quant, KMeansQuantizer):
            m.w_quant.fit(m.weight)
    return model


def get_policy(model: nn.Module) -> "OrderedDict[str, tuple[int, int]]":
    """The current ``{layer name: (w_bits, a_bits)}`` of every quantized layer."""
    return OrderedDict((n, (m.w_bits, m.a_bits)) for n, m in quant_layers(model).items())


def apply_policy(model: nn.Module, policy: Policy, strict: bool = False) -> nn.Module:
    """Set ``(w_bits, a_bits)`` per layer name. Unknown names and invalid bits raise before
    anything is changed; ``strict=True`` also requires every quantized layer to be named."""
    layers = quant_layers(model)
    unknown = [n for n in policy if n not in layers]
    if unknown:
        raise KeyError(f"policy names unknown layers {unknown}; the quantized layers are: "
                       f"{list(layers)}")
    if strict and set(policy) != set(layers):
        raise KeyError(f"strict policy misses layers {[n for n in layers if n not in policy]}")
    checked = {}
    for name, bits in policy.items():
        try:
            w, a = bits
        except (TypeError, ValueError):
            raise ValueError(f"policy[{name!r}]={bits!r}: expected a pair (w_bits, a_bits)")
        checked[name] = (check_bits(w, f"policy[{name!r}] w_bits"),
                         check_bits(a, f"policy[{name!r}] a_bits"))
    for name, (w, a) in checked.items():
        layers[name].set_bits(w, a)
    return model


def _iter_inputs(batches) -> Iterable[torch.Tensor]:
    for b in batches:
        yield b[0] if isinstance(b, (tuple, list)) else b


def act_quantizers(model: nn.Module) -> list:
    """Every activation quantizer (PACT / static / LSQ on activations) in ``model``: the
    ``a_quant`` of QConv2d / QLinear, and any other PACT / static quantizer (e.g. the
    supernet's own layers)."""
    w_ids = {id(m.w_quant) for m in quant_layers(model).values()}
    return [q for q in model.modules() if isinstance(q, (PACTQuantizer, ActQuantizer,
                                                         LSQQuantizer)) and id(q) not in w_ids]


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[Union[torch.Tensor, tuple]],
              max_batches: Optional[int] = None, device: Optional[torch.device] = None
              ) -> nn.Module:
    """Observer calibration: run ``batches`` (tensors or ``(x, y)`` pairs) through ``model``
    in eval mode with every activation quantizer observing its (full-precision) input, then
    set their ranges; weight quantizers of QConv2d / QLinear with percentile / KL / MSE
    ranges are recalibrated on the current weights. NaN / inf in a batch raises
    ``ValueError`` (and leaves the quantizers as they were)."""
    aqs = act_quantizers(model)
    if not aqs and not quant_layers(model):
        raise ValueError("model has no quantizers: call quantize_model first")
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    for q in aqs:
        q.begin_calibration()
    seen = 0
    try:
        for i, x in enumerate(_iter_inputs(batches)):
            if max_batches is not None and i >= max_batches:
                break
            model(x.to(device))
            seen += 1
    except BaseException:
        for q in aqs:                      # discard partial statistics
            q._observer = None
        raise
    finally:
        model.train(was_training)
    if not seen:
        for q in aqs:
            q._observer = None
        raise ValueError("calibrate() got no batches")
    for q in aqs:
        q.end_calibration()
    for m in quant_layers(model).values():
        if isinstance(m.w_quant, WeightQuantizer):
            m.w_quant.calibrate(m.weight)
    return model
