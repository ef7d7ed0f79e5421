"""BitOps and model size under a mixed-precision policy (APQ §4, HAQ §4: BitOps = Σ over
conv/FC layers of MACs × w_bits × a_bits; size = Σ weights × w_bits).

A *policy* maps layer names, as in ``model.named_modules()``, to ``(w_bits, a_bits)``;
layers it does not name get ``default_bits``. MACs come from each layer's output shape,
recorded with forward hooks, and are cross-checked against ``FlopCounterMode``.
"""
from __future__ import annotations

import numbers
from typing import Mapping, Optional, Sequence

import torch
import torch.nn as nn

from .layers import LayerSpec

__all__ = ["layer_table", "count_macs", "count_bitops", "model_size_bits",
           "flop_counter_macs", "model_layer_specs", "COUNTED_LAYERS", "Policy"]

COUNTED_LAYERS = (nn.Conv2d, nn.Linear)
Policy = Mapping[str, tuple]


def _bits_pair(bits, where: str) -> tuple[int, int]:
    if isinstance(bits, numbers.Integral) and not isinstance(bits, bool):
        bits = (bits, bits)
    try:
        w, a = bits
    except (TypeError, ValueError):
        raise ValueError(f"{where}: bits must be an int or a (w_bits, a_bits) pair, "
                         f"got {bits!r}") from None
    for name, b in (("w_bits", w), ("a_bits", a)):
        if not isinstance(b, numbers.Integral) or isinstance(b, bool) or b < 1:
            raise ValueError(f"{where}: {name} must be a positive integer, got {b!r}")
    return int(w), int(a)


def _resolve_policy(model: nn.Module, policy: Optional[Policy], default_bits) -> dict:
    """``{layer name: (w, a)}`` for every conv/linear layer; unknown names are an error."""
    layers = [n for n, m in model.named_modules() if isinstance(m, COUNTED_LAYERS)]
    policy = dict(policy or {})
    unknown = sorted(set(policy) - set(layers))
    if unknown:
        raise ValueError(f"policy names layers the model does not have (or that are not "
                         f"Conv2d/Linear): {unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
    default = _bits_pair(default_bits, "default_bits")
    return {n: _bits_pair(policy[n], f"policy[{n!r}]") if n in policy else default
            for n in layers}


def _input(model: nn.Module, input_shape: Sequence[int]) -> torch.Tensor:
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 3:                      # (C, H, W) -> batch 1
        shape = (1, *shape)
    p = next(model.parameters(), None)
    return torch.zeros(shape, dtype=p.dtype if p is not None else torch.float32,
                       device=p.device if p is not None else "cpu")


def _record_shapes(model: nn.Module, input_shape: Sequence[int]) -> dict[str, list]:
    """Run one forward pass; ``{name: [(input shape, output shape), ...]}`` per call."""
    seen: dict[str, list] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, COUNTED_LAYERS):
            def hook(mod, inp, out, name=name):
                seen.setdefault(name, []).append((tuple(inp[0].shape), tuple(out.shape)))
            hooks.append(m.register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(_input(model, input_shape))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return seen


def layer_table(model: nn.Module, input_shape: Sequence[int], policy: Optional[Policy] = None,
                default_bits=(8, 8)):
    """Per-layer MACs / BitOps as a pandas DataFrame, one row per Conv2d/Linear call.

    ``input_shape`` is ``(C, H, W)`` (batch 1) or ``(N, C, H, W)``; MACs cover the whole
    batch. Columns: name, type, in_c, out_c, in_h, in_w, out_h, out_w, kernel, stride,
    padding, groups, params, macs, w_bits, a_bits, bitops, key (APQ's table key).
    """
    import pandas as pd
    bits = _resolve_policy(model, policy, default_bits)
    shapes = _record_shapes(model, input_shape)
    modules = dict(model.named_modules())
    rows = []
    for name, calls in shapes.items():
        m = modules[name]
        w, a = bits[name]
        for ishape, oshape in calls:
            if isinstance(m, nn.Conv2d):
                kh, kw = m.kernel_size
                macs = _numel(oshape) * (m.in_channels // m.groups) * kh * kw
                row = dict(type="Conv2d", in_c=m.in_channels, out_c=m.out_channels,
                           in_h=ishape[-2], in_w=ishape[-1], out_h=oshape[-2],
                           out_w=oshape[-1], kernel=kh, stride=m.stride[0],
                           padding=m.padding[0] if isinstance(m.padding, tuple) else None,
                           groups=m.groups)
            else:
                macs = _numel(oshape) * m.in_features
                row = dict(type="Linear", in_c=m.in_features, out_c=m.out_features, in_h=1,
                           in_w=1, out_h=1, out_w=1, kernel=1, stride=1, padding=0, groups=1)
            params = m.weight.numel()
            key = None
            if row["in_h"] == row["in_w"] and (row["type"] == "Linear" or (
                    m.kernel_size[0] == m.kernel_size[1] and m.stride[0] == m.stride[1]
                    and row["padding"] is not None and len(set(m.padding)) == 1)):
                key = LayerSpec(row["in_c"], row["out_c"], row["in_h"], row["kernel"],
                                row["stride"], row["padding"], row["groups"]).key(w, a)
            rows.append(dict(name=name, **row, params=params, macs=int(macs), w_bits=w,
                             a_bits=a, bitops=int(macs) * w * a, key=key))
    return pd.DataFrame(rows)


def _numel(shape: tuple) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Total conv + linear MACs for one forward pass at ``input_shape``."""
    return int(layer_table(model, input_shape)["macs"].sum())


def count_bitops(model: nn.Module, input_shape: Sequence[int], policy: Optional[Policy] = None,
                 default_bits=(8, 8)) -> int:
    """Σ over Conv2d/Linear layers of MACs × w_bits × a_bits (HAQ/APQ BitOps)."""
    return int(layer_table(model, input_shape, policy, default_bits)["bitops"].sum())


def model_size_bits(model: nn.Module, policy: Optional[Policy] = None, default_bits=(8, 8),
                    bias_bits: int = 32) -> int:
    """Storage of the conv/linear weights at their w_bits (biases at ``bias_bits``).
    BatchNorm is assumed folded into the preceding conv and is not counted."""
    bits = _resolve_policy(model, policy, default_bits)
    modules = dict(model.named_modules())
    total = 0
    for name, (w, _a) in bits.items():
        m = modules[name]
        total += m.weight.numel() * w
        if m.bias is not None:
            total += m.bias.numel() * bias_bits
    return int(total)


def flop_counter_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """MACs according to ``torch.utils.flop_counter.FlopCounterMode`` (FLOPs / 2)."""
    from torch.utils.flop_counter import FlopCounterMode
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            model(_input(model, input_shape))
    finally:
        model.train(was_training)
    return int(fc.get_total_flops()) // 2


def model_layer_specs(model: nn.Module, input_shape: Sequence[int],
                      policy: Optional[Policy] = None, default_bits=(8, 8)
                      ) -> list[tuple[str, LayerSpec, int, int]]:
    """``[(name, LayerSpec, w_bits, a_bits)]`` for every Conv2d/Linear call at batch 1
    (what the simulators take). Non-square maps or kernels raise ValueError."""
    df = layer_table(model, input_shape, policy, default_bits)
    out = []
    for r in df.itertuples(index=False):
        if r.key is None:
            raise ValueError(f"layer {r.name}: non-square input or kernel; the simulators "
                             f"take APQ's square layer records only")
        spec = LayerSpec(r.in_c, r.out_c, r.in_h, r.kernel, r.stride, r.padding, r.groups)
        out.append((r.name, spec, int(r.w_bits), int(r.a_bits)))
    return out
