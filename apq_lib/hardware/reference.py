"""Reference networks on every cost target: torchvision MobileNetV2 under uniform WbAb
policies, the fixed-precision baseline of HAQ (§4) and APQ (Table 2)."""
from __future__ import annotations

from typing import Iterable, Sequence

from .bitops import count_bitops, layer_table, model_layer_specs, model_size_bits
from .costs import network_cost

__all__ = ["mobilenet_v2_costs", "reference_model"]


def reference_model(arch: str = "mobilenet_v2"):
    """An untrained torchvision model (``weights=None``: costs do not depend on weights)."""
    import torchvision
    return getattr(torchvision.models, arch)(weights=None)


def mobilenet_v2_costs(resolution: int = 224, bits: Iterable[int] = (8, 6, 4),
                       simulators: Sequence[str] = ("bitfusion",), measure_cpu: bool = False,
                       cpu_repeats: int = 20, cpu_threads: int = 1, arch: str = "mobilenet_v2"):
    """One row per (policy, target): BitOps (G), size (MB), latency (ms), energy (mJ).

    Every conv/FC layer runs at W{b}A{b} (the first conv's unquantized input is ignored).
    ``measure_cpu`` adds the FP32 network as the sum of its measured layers ("cpu").
    Returns ``(summary DataFrame, {(b, target): per-layer DataFrame})``.
    """
    import pandas as pd
    model = reference_model(arch)
    shape = (3, resolution, resolution)
    specs = model_layer_specs(model, shape)
    macs = int(layer_table(model, shape)["macs"].sum())
    rows, layers = [], {}
    for b in bits:
        base = {"policy": f"W{b}A{b}", "bits": b, "macs_g": macs / 1e9,
                "bitops_g": count_bitops(model, shape, default_bits=(b, b)) / 1e9,
                "size_mb": model_size_bits(model, default_bits=(b, b)) / 8e6}
        for sim in simulators:
            df = network_cost(specs, sim, bits=(b, b))
            layers[(b, sim)] = df
            rows.append({**base, "target": sim, "latency_ms": df["latency"].sum(),
                         "energy_mj": df["energy"].sum(),
                         "memory_bound_layers": int((df["bound"] == "memory").sum()),
                         "layers": len(df)})
    if measure_cpu:
        df = network_cost(specs, "cpu", cpu_repeats=cpu_repeats, cpu_threads=cpu_threads)
        layers[(32, "cpu")] = df
        rows.append({"policy": "FP32", "bits": 32, "macs_g": macs / 1e9,
                     "bitops_g": macs * 32 * 32 / 1e9,
                     "size_mb": model_size_bits(model, default_bits=(32, 32)) / 8e6,
                     "target": "cpu", "latency_ms": df["latency"].sum(),
                     "energy_mj": float("nan"), "memory_bound_layers": None,
                     "layers": len(df)})
    out = pd.DataFrame(rows)
    out["memory_bound_layers"] = out["memory_bound_layers"].astype("Int64")
    return out, layers

