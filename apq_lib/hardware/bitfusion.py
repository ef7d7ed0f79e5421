"""Analytic BitFusion model (Sharma et al., ISCA 2018): a systolic array of Fusion Units,
each 16 2-bit BitBricks that fuse into 2/4/8-bit multipliers; the cost model behind APQ's
BitFusion lookup table (APQ §3.3, §4), whose own construction was never published.

Per layer, at batch 1 (or ``batch``):

* compute cycles — the array has ``rows × cols`` Fusion Units (FUs). Bits are rounded up to
  the next brick width (2, 4, 8), so 6-bit runs at 8-bit speed and a FU does
  ``16 / ((w/2)(a/2))`` MACs per cycle (1 at W8A8, 4 at W4A4, 16 at W2A2). Regular convs use
  the BitFusion simulator's channel mapping (hsharma35/bitfusion ``accelerator.py``): input
  channels packed down the rows, output channels across the columns, kernel taps in time:
  ``cycles = groups·⌈oc_g/cols⌉ · OH·OW · k² · ⌈ic_g/(rows·perf)⌉``.
  Depthwise layers (one input channel per group) cannot share inputs across columns; we
  assume each column takes one channel with its own input stream and reduces the k² taps
  down its rows: ``cycles = ⌈out_c/cols⌉ · OH·OW · ⌈k²/(rows·perf)⌉``, a poor
  utilization (28 % for 3×3 at W8A8, 7 % at W4A4), so low bits barely speed depthwise
  layers up.
* DRAM traffic — inputs, weights and outputs once at their (brick-rounded) widths, plus
  re-fetches when weights exceed WBUF and inputs exceed IBUF (the cheaper loop order:
  ``min((n_w−1)·inputs, (n_i−1)·weights)``). Outputs are written at the activation width.
* latency = max(compute, DRAM) cycles / clock (double-buffered, compute and DRAM overlap).
* energy = every FU burns ``e_fu_cycle_pj`` on every compute cycle (the BitFusion simulator
  charges the whole array per cycle) + SRAM bytes × ``e_sram`` + DRAM bytes × ``e_dram``.
  No leakage term.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from .layers import AnalyticSim, LayerSpec, ceil_div, check_bits

__all__ = ["BitFusionConfig", "BitFusionSim", "bitfusion_layer_cost", "fused_bits",
           "BRICK_WIDTHS"]

BRICK_WIDTHS = (2, 4, 8)


def fused_bits(b: int) -> int:
    """The multiplier width a b-bit operand runs at: the next of 2, 4, 8."""
    for w in BRICK_WIDTHS:
        if b <= w:
            return w
    raise ValueError(f"bitfusion: {b} bits exceeds the 8-bit maximum")


@dataclass(frozen=True)
class BitFusionConfig:
    """Every constant with its source; ``assumed`` marks our own choices."""
    # Sharma et al. 2018 §V and hsharma35/bitfusion bf_e_conf.ini (a=16, c=32): the
    # 45 nm design evaluated against Eyeriss has 512 Fusion Units at 500 MHz.
    rows: int = 32                    # FUs along the reduction (input-channel) dimension
    cols: int = 16                    # FUs along the output-channel dimension
    bricks_per_fu: int = 16           # 2-bit BitBricks per Fusion Unit (4×4), paper Fig. 3
    freq_hz: float = 500e6            # 500 MHz
    # On-chip SRAM, bf_e_conf.ini: Wgt 64 KiB + Act 32 KiB + Out 16 KiB = 112 KiB.
    wbuf_bytes: int = 64 * 1024
    ibuf_bytes: int = 32 * 1024
    obuf_bytes: int = 16 * 1024
    # DRAM interface, bf_e_conf.ini if_width = 192 bits per cycle (12 GB/s at 500 MHz).
    dram_bits_per_cycle: int = 192
    psum_bytes: int = 4               # assumed: 32-bit partial sums in OBUF
    # Energies at 45 nm, Horowitz ISSCC 2014 ("Computing's energy problem"):
    # 8-bit int mult 0.2 pJ + 32-bit int add 0.1 pJ per fully-fused FU-cycle (assumed: a
    # FU of 16 fused bricks costs one 8x8 multiply-accumulate regardless of the split).
    e_fu_cycle_pj: float = 0.3
    # SRAM: 20 pJ per 64-bit read of a 32 KB array -> 2.5 pJ/byte (all three buffers).
    e_sram_pj_per_byte: float = 2.5
    # DRAM: 1.3-2.6 nJ per 64-bit access; we take 2.0 nJ -> 250 pJ/byte.
    e_dram_pj_per_byte: float = 250.0

    @property
    def n_fu(self) -> int:
        return self.rows * self.cols

    def macs_per_fu(self, w_bits: int, a_bits: int) -> int:
        """MACs one Fusion Unit does per cycle at these (brick-rounded) widths."""
        return self.bricks_per_fu // ((fused_bits(w_bits) // 2) * (fused_bits(a_bits) // 2))

    def peak_macs_per_cycle(self, w_bits: int, a_bits: int) -> int:
        return self.n_fu * self.macs_per_fu(w_bits, a_bits)

    @property
    def dram_bytes_per_cycle(self) -> float:
        return self.dram_bits_per_cycle / 8


class BitFusionSim(AnalyticSim):
    """``sim.report(spec, w, a)``: every intermediate quantity; ``sim.cost``: the LUT entry."""

    name = "bitfusion"

    def __init__(self, config: Optional[BitFusionConfig] = None):
        self.cfg = config or BitFusionConfig()

    def report(self, spec: LayerSpec, w_bits: int, a_bits: int, batch: int = 1) -> dict:
        c = self.cfg
        check_bits(w_bits, a_bits, 1, 8, "bitfusion",
                   "BitBricks fuse into 2/4/8-bit multipliers; 1..8 bits are rounded up")
        if batch < 1:
            raise ValueError(f"bitfusion: batch must be >= 1, got {batch}")
        wb, ab = fused_bits(int(w_bits)), fused_bits(int(a_bits))
        perf = c.macs_per_fu(wb, ab)
        k2 = spec.kernel ** 2
        pix = batch * spec.out_size ** 2
        if spec.is_depthwise:
            col_tiles = ceil_div(spec.out_c, c.cols)
            red_passes = ceil_div(k2, c.rows * perf)
            ibuf_reads = spec.out_c * pix * k2 * ab / 8
        else:
            col_tiles = spec.groups * ceil_div(spec.oc_per_group, c.cols)
            red_passes = k2 * ceil_div(spec.ic_per_group, c.rows * perf)
            ibuf_reads = col_tiles * pix * k2 * spec.ic_per_group * ab / 8
        compute_cycles = col_tiles * pix * red_passes

        in_bytes = batch * spec.n_inputs * ab / 8
        w_bytes = spec.n_weights * wb / 8
        out_bytes = batch * spec.n_outputs * ab / 8
        n_w = max(1, math.ceil(w_bytes / c.wbuf_bytes))
        n_i = max(1, math.ceil(in_bytes / c.ibuf_bytes))
        refetch = min((n_w - 1) * in_bytes, (n_i - 1) * w_bytes)
        dram = in_bytes + w_bytes + out_bytes + refetch
        mem_cycles = dram / c.dram_bytes_per_cycle
        cycles = max(compute_cycles, mem_cycles)

        obuf = batch * spec.n_outputs * red_passes * 2 * c.psum_bytes
        sram = dram + ibuf_reads + w_bytes + obuf
        e_compute = compute_cycles * c.n_fu * c.e_fu_cycle_pj
        e_sram = sram * c.e_sram_pj_per_byte
        e_dram = dram * c.e_dram_pj_per_byte
        macs = batch * spec.macs
        return {
            "latency": cycles / c.freq_hz * 1e3,                     # ms
            "energy": (e_compute + e_sram + e_dram) * 1e-9,          # mJ
            "macs": macs, "w_fused": wb, "a_fused": ab,
            "compute_cycles": compute_cycles, "memory_cycles": mem_cycles,
            "bound": "compute" if compute_cycles >= mem_cycles else "memory",
            "utilization": macs / (compute_cycles * c.peak_macs_per_cycle(wb, ab)),
            "dram_bytes": dram, "sram_bytes": sram,
            "intensity": macs / dram,                                # MACs per DRAM byte
            "energy_compute": e_compute * 1e-9, "energy_sram": e_sram * 1e-9,
            "energy_dram": e_dram * 1e-9,
        }


_DEFAULT = BitFusionSim()


def bitfusion_layer_cost(in_c: int, out_c: int, in_size: int, kernel: int, stride: int,
                         padding: int, groups: int, w_bits: int, a_bits: int, *,
                         batch: int = 1, config: Optional[BitFusionConfig] = None) -> dict:
    """``{"latency": ms, "energy": mJ}`` of one layer on BitFusion (APQ's table entry)."""
    sim = _DEFAULT if config is None else BitFusionSim(config)
    spec = LayerSpec(in_c, out_c, in_size, kernel, stride, padding, groups)
    return sim.cost(spec, w_bits, a_bits, batch)
