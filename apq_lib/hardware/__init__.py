"""Hardware cost models (APQ §3.3, §4; HAQ §4): BitOps and model size, analytic BitFusion
(checked against the official simulator) and BISMO simulators, measured CPU latency, and
APQ-style lookup tables over a search space."""
from .bismo import BISMO_PLATFORMS, BismoConfig, BismoSim, bismo_layer_cost
from .bitfusion import (
    BRICK_WIDTHS,
    DEPTHWISE_MODES,
    BitFusionConfig,
    BitFusionSim,
    bitfusion_layer_cost,
    fused_bits,
)
from .bitops import (
    count_bitops,
    count_macs,
    flop_counter_macs,
    layer_table,
    model_layer_specs,
    model_size_bits,
)
from .costs import SIMULATORS, bits_sweep, get_simulator, model_cost, network_cost
from .cpu import CpuSim, cpu_info, cpu_layer_latency
from .layers import LayerSpec, layer_key, mbconv_layers, parse_key
from .lut import (
    LUT_STAGE,
    SpaceCostTable,
    build_lut,
    build_space_lut,
    fixed_layer_specs,
    load_lut,
    subnet_cost,
    subnet_layers,
)
from .parity import (
    REFERENCE_GRID,
    bitfusion_parity,
    load_bitfusion_grid,
    parity_summary,
    speedup_table,
)
from .reference import mobilenet_v2_costs, reference_model

__all__ = [
    "LayerSpec", "layer_key", "parse_key", "mbconv_layers",
    "count_bitops", "count_macs", "model_size_bits", "layer_table", "flop_counter_macs",
    "model_layer_specs",
    "BitFusionConfig", "BitFusionSim", "bitfusion_layer_cost", "fused_bits", "BRICK_WIDTHS",
    "DEPTHWISE_MODES", "REFERENCE_GRID", "load_bitfusion_grid", "bitfusion_parity",
    "parity_summary", "speedup_table",
    "BismoConfig", "BismoSim", "BISMO_PLATFORMS", "bismo_layer_cost",
    "CpuSim", "cpu_layer_latency", "cpu_info",
    "SIMULATORS", "get_simulator", "model_cost", "network_cost", "bits_sweep",
    "SpaceCostTable", "build_lut", "build_space_lut", "load_lut", "subnet_layers",
    "subnet_cost", "fixed_layer_specs", "LUT_STAGE",
    "mobilenet_v2_costs", "reference_model",
    "plot_bits_sweep", "plot_wa_grid", "plot_roofline", "plot_space_costs",
    "plot_bitfusion_parity",
]

# figures import seaborn, so they load on first use
_LAZY = {"plot_bits_sweep", "plot_wa_grid", "plot_roofline", "plot_space_costs",
         "plot_bitfusion_parity"}


def __getattr__(name):
    if name in _LAZY:
        from . import figures
        return getattr(figures, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
