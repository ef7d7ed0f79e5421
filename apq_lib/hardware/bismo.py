"""Analytic BISMO model (Umuroglu et al., "BISMO: A Scalable Bit-Serial Matrix
Multiplication Overlay for Reconfigurable Computing", FPL 2018), the latency target of HAQ
(Wang et al., CVPR 2019, §4: Xilinx Zynq-7020 "edge" and VU9P "cloud").

BISMO's Dot-Product Array (FPL 2018 §III-B) has ``Dm × Dn`` dot-product units, each an
AND-popcount over ``Dk`` bits per cycle; a w-bit × a-bit matmul is the ``w·a`` binary
matmuls of its bit planes (§II, eq. 2), so compute costs ∝ ``w·a`` at every width 1…8 (no
rounding, unlike BitFusion). Per layer:

* the conv is a matmul (lowering as in BISMO's convolution use, FPL 2018 §IV): per group
  ``M = oc_g`` lhs rows (weights), ``K = ic_g·k²``, ``N = OH·OW`` rhs columns; grouped and
  depthwise convs may pack ``gp`` groups block-diagonally into one tile (the cheaper of gp=1
  and the largest gp that fits ``Dm``);
* execute cycles = ``⌈G/gp⌉·⌈gp·M/Dm⌉·⌈N/Dn⌉·⌈gp·K/Dk⌉·w·a`` (§III-B: one binary tile a
  cycle in steady state);
* DRAM traffic at the operands' own widths: weight bit planes (w bits), the input feature
  map once (a bits, the fetch stage reads each input bit plane once), and the outputs
  written back requantised to a bits (the next layer's activations), plus re-fetches when
  an operand exceeds its buffer;
* latency = max(execute, DRAM) cycles / clock (fetch, execute and result stages overlap,
  §III-A).

So a compute-bound layer runs ``(8·8)/(w·a)`` times faster than at W8A8 until its traffic
``(weights·w + (inputs + outputs)·a)/bandwidth`` exceeds the execute time (the *bound*,
``report()["memory_cycles"]``), and a layer whose traffic is its weights (a batch-1 FC)
scales with w only. Energy = static power × latency + array power × execute time + DRAM
bytes × e_dram; HAQ took energy from BitFusion only, so the BISMO energy is a rough model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from .layers import AnalyticSim, LayerSpec, ceil_div, check_bit_range

__all__ = ["BismoConfig", "BismoSim", "BISMO_PLATFORMS", "bismo_layer_cost"]


@dataclass(frozen=True)
class BismoConfig:
    name: str
    dm: int                         # DPA rows (lhs / weight rows per tile)
    dk: int                         # bits per dot-product per cycle
    dn: int                         # DPA columns (rhs / activation columns per tile)
    freq_hz: float
    dram_bytes_per_cycle: float
    lhs_buffer_bytes: int
    rhs_buffer_bytes: int
    static_power_w: float           # assumed
    array_power_w: float            # assumed: dynamic power of a busy DPA
    e_dram_pj_per_byte: float = 250.0   # Horowitz ISSCC 2014, 2 nJ per 64-bit DRAM access
    max_bits: int = 8               # HAQ §4: BISMO layers get 1..8 bits

    @property
    def binary_ops_per_cycle(self) -> int:
        return self.dm * self.dk * self.dn

    def peak_macs_per_cycle(self, w_bits: int, a_bits: int) -> float:
        return self.binary_ops_per_cycle / (w_bits * a_bits)


# Edge: HAQ §4 (Wang et al. CVPR 2019) runs BISMO on a Xilinx Zynq-7020. Umuroglu et al.
# FPL 2018 §V evaluate it on the PYNQ-Z1 (Zynq-7020); its largest instance there is
# Dm×Dk×Dn = 8×256×8 at 200 MHz (6.5 binary TOPS; also EECS-NTNU/bismo doc/platforms.md),
# reading DRAM through one 64-bit AXI HP port (8 B/cycle = 1.6 GB/s). Assumed: 128 KiB lhs
# and rhs buffers (the device has 630 KB of BRAM); 0.25 W static, 1 W for the busy array.
# Cloud: HAQ §4's Xilinx VU9P with "a larger array"; assumed 16×512×16 at 250 MHz (~22x the
# LUTs of a Zynq-7020 buys ~20x the array), a 512-bit AXI port to one DDR4 channel
# (64 B/cycle = 16 GB/s), 1 MiB buffers each, 3 W static, 15 W for the busy array.
BISMO_PLATFORMS = {
    "edge": BismoConfig("edge", 8, 256, 8, 200e6, 8.0, 128 * 1024, 128 * 1024, 0.25, 1.0),
    "cloud": BismoConfig("cloud", 16, 512, 16, 250e6, 64.0, 1 << 20, 1 << 20, 3.0, 15.0),
}


class BismoSim(AnalyticSim):
    def __init__(self, platform: str = "edge", config: Optional[BismoConfig] = None):
        if config is None:
            if platform not in BISMO_PLATFORMS:
                raise ValueError(f"bismo: unknown platform {platform!r}; choose one of "
                                 f"{sorted(BISMO_PLATFORMS)}")
            config = BISMO_PLATFORMS[platform]
        self.cfg = config
        self.name = f"bismo_{config.name}"

    def _exec_cycles(self, spec: LayerSpec, gp: int, n: int, bits: int) -> int:
        c = self.cfg
        m, k = spec.oc_per_group, spec.ic_per_group * spec.kernel ** 2
        return (ceil_div(spec.groups, gp) * ceil_div(gp * m, c.dm) * ceil_div(n, c.dn)
                * ceil_div(gp * k, c.dk) * bits)

    def report(self, spec: LayerSpec, w_bits: int, a_bits: int, batch: int = 1) -> dict:
        c = self.cfg
        check_bit_range(w_bits, a_bits, 1, c.max_bits, self.name,
                   "BISMO is bit-serial over 1..8-bit operands")
        if batch < 1:
            raise ValueError(f"{self.name}: batch must be >= 1, got {batch}")
        w, a = int(w_bits), int(a_bits)
        n = batch * spec.out_size ** 2
        m, k = spec.oc_per_group, spec.ic_per_group * spec.kernel ** 2
        gp_max = max(1, min(spec.groups, c.dm // m)) if m < c.dm else 1
        gp = min((1, gp_max), key=lambda g: (self._exec_cycles(spec, g, n, w * a), g))
        exec_cycles = self._exec_cycles(spec, gp, n, w * a)

        n_tiles = ceil_div(spec.groups, gp)
        lhs = n_tiles * (gp * m) * (gp * k) * w / 8          # weight bit planes (with zeros)
        rhs = batch * spec.n_inputs * a / 8                   # input bit planes, read once
        res = spec.out_c * n * a / 8                          # outputs requantised to a bits
        n_l = max(1, math.ceil(lhs / c.lhs_buffer_bytes))
        n_r = max(1, math.ceil(rhs / c.rhs_buffer_bytes))
        refetch = min((n_l - 1) * rhs, (n_r - 1) * lhs)
        dram = lhs + rhs + res + refetch
        mem_cycles = dram / c.dram_bytes_per_cycle
        cycles = max(exec_cycles, mem_cycles)
        latency_s = cycles / c.freq_hz
        e_static = c.static_power_w * latency_s
        e_array = c.array_power_w * exec_cycles / c.freq_hz
        e_dram = dram * c.e_dram_pj_per_byte * 1e-12
        macs = batch * spec.macs
        return {
            "latency": latency_s * 1e3, "energy": (e_static + e_array + e_dram) * 1e3,
            "macs": macs, "groups_per_tile": gp,
            "compute_cycles": exec_cycles, "memory_cycles": mem_cycles,
            "bound": "compute" if exec_cycles >= mem_cycles else "memory",
            "utilization": macs * w * a / (exec_cycles * c.binary_ops_per_cycle),
            "dram_bytes": dram, "intensity": macs / dram,
            "energy_static": e_static * 1e3, "energy_compute": e_array * 1e3,
            "energy_dram": e_dram * 1e3,
        }


_SIMS: dict = {}


def bismo_layer_cost(in_c: int, out_c: int, in_size: int, kernel: int, stride: int,
                     padding: int, groups: int, w_bits: int, a_bits: int,
                     platform: str = "edge", *, batch: int = 1) -> dict:
    """``{"latency": ms, "energy": mJ}`` of one layer on BISMO ``edge`` or ``cloud``."""
    if platform not in _SIMS:
        _SIMS[platform] = BismoSim(platform)     # raises on an unknown platform
    spec = LayerSpec(in_c, out_c, in_size, kernel, stride, padding, groups)
    return _SIMS[platform].cost(spec, w_bits, a_bits, batch)
