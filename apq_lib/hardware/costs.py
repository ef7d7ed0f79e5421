"""One interface over the cost targets (HAQ §4 / APQ §4: latency and energy per layer on a
hardware model): simulators by name, whole-model costs, bit sweeps and roofline points.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Optional, Sequence

import torch.nn as nn

from .bismo import BISMO_PLATFORMS, BismoSim
from .bitfusion import BitFusionSim
from .bitops import Policy, model_layer_specs
from .cpu import CpuSim
from .layers import LayerSpec

__all__ = ["SIMULATORS", "get_simulator", "model_cost", "network_cost", "bits_sweep"]

SIMULATORS = ("bitfusion", *(f"bismo_{p}" for p in BISMO_PLATFORMS), "cpu")


_BITFUSION: dict = {}


def get_simulator(name: str, *, cpu_repeats: int = 20, cpu_threads: int = 1,
                  bitfusion: Optional[Mapping] = None):
    """``bitfusion``, ``bismo_edge``, ``bismo_cloud`` or ``cpu`` (measured FP32).
    ``bitfusion``: options of :class:`BitFusionConfig` (``depthwise``, ``pad_tiles``,
    ``static_power``); one memoised simulator is shared per option set."""
    if name == "bitfusion":
        key = tuple(sorted((bitfusion or {}).items()))
        if key not in _BITFUSION:
            try:
                _BITFUSION[key] = BitFusionSim(**dict(key))
            except TypeError as e:
                raise ValueError(f"bitfusion: unknown option in {dict(key)}; allowed "
                                 "depthwise, pad_tiles, static_power") from e
        return _BITFUSION[key]
    if name.startswith("bismo_") and name[6:] in BISMO_PLATFORMS:
        return BismoSim(name[6:])
    if name == "cpu":
        return CpuSim(cpu_repeats, cpu_threads)
    raise ValueError(f"unknown simulator {name!r}; choose one of {list(SIMULATORS)}")


def _row(sim, spec: LayerSpec, w: int, a: int, batch: int) -> dict:
    if hasattr(sim, "report"):
        r = sim.report(spec, w, a, batch)
        return {k: r[k] for k in ("latency", "energy", "bound", "intensity", "utilization",
                                  "compute_cycles", "memory_cycles", "dram_bytes")}
    return dict(sim.cost(spec, w, a, batch))


def network_cost(specs: Sequence[tuple], simulator: str = "bitfusion",
                 bits: Optional[tuple] = None, batch: int = 1, **sim_kw):
    """Per-layer cost of ``[(name, LayerSpec, w, a)]`` (e.g. from :func:`model_layer_specs`)
    on one target as a pandas DataFrame; ``bits=(w, a)`` overrides every layer's bits."""
    import pandas as pd
    sim = get_simulator(simulator, **sim_kw)
    rows = []
    for name, spec, w, a in specs:
        w, a = bits if bits is not None else (w, a)
        rows.append({"name": name, "key": spec.key(w, a), "macs": spec.macs,
                     "bitops": spec.macs * w * a, "w_bits": w, "a_bits": a,
                     "depthwise": spec.is_depthwise, "kernel": spec.kernel,
                     "fc": spec.in_size == 1 and spec.kernel == 1,
                     **_row(sim, spec, w, a, batch)})
    return pd.DataFrame(rows)


def model_cost(model: nn.Module, input_shape: Sequence[int], policy: Optional[Policy] = None,
               default_bits=(8, 8), simulator: str = "bitfusion", batch: int = 1, **sim_kw):
    """Per-layer latency (ms) and energy (mJ) of a torch model on one target, as a pandas
    DataFrame (one row per Conv2d/Linear call); sum the columns for the network."""
    specs = model_layer_specs(model, input_shape, policy, default_bits)
    return network_cost(specs, simulator, None, batch, **sim_kw)


def bits_sweep(layers: Mapping[str, LayerSpec], simulators: Iterable[str],
               bits: Iterable[int] = range(2, 9), pairs: Optional[Iterable[tuple]] = None):
    """Cost of each named layer on each simulator at W{b}A{b} for ``b in bits`` (or at the
    given ``(w, a)`` pairs): a long DataFrame with MACs/s achieved for roofline plots."""
    import pandas as pd
    pairs = list(pairs) if pairs is not None else [(b, b) for b in bits]
    rows = []
    for sname in simulators:
        sim = get_simulator(sname)
        for lname, spec in layers.items():
            for w, a in pairs:
                r = _row(sim, spec, w, a, 1)
                rows.append({"simulator": sname, "layer": lname, "key": spec.key(w, a),
                             "w_bits": w, "a_bits": a, "macs": spec.macs,
                             "macs_per_s": spec.macs / (r["latency"] * 1e-3), **r})
    return pd.DataFrame(rows)
