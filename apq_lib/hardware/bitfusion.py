"""BitFusion (Sharma et al., ISCA 2018), the accelerator behind APQ's latency/energy table
(APQ §3.3, §4): our own vectorised model of the official simulator hsharma35/bitfusion
(``bitfusion/src/``), run with its ``bf_e_conf.ini`` and checked against a grid of its
outputs (``env/reference/bitfusion_official_grid.csv``, tests/test_hardware_bitfusion.py).

* Array: ``N = 16`` Fusion Units down the reduction (input channels × taps) times
  ``M = 32`` across output channels; a FU does ``pf = ⌊8/max(a,2)⌋·⌊8/max(w,2)⌋`` MACs a
  cycle (bricks fuse into 2/4/8-bit multipliers: 6 bits runs at 8-bit speed, while DRAM
  traffic uses the true widths).
* Each layer's power-of-two tiling and loop order are searched
  (:mod:`~apq_lib.hardware.bitfusion_search`); every output moves through DRAM as a 32-bit
  partial sum, read and written; DRAM (192 bits a cycle) overlaps compute except the
  first fill and the last write-back. A conv whose input is the image (``in_c ≤ 3``) runs as
  im2col, as the simulator does for the first layer.
* Energy = core dynamic energy per compute cycle (synthesis table) + SRAM accesses × per-bit
  CACTI energies + DRAM bits × 15 pJ; optionally + SRAM leakage per cycle.

Options (defaults reproduce how APQ's published table behaves, see the reference README):
``depthwise`` — ``"grouped"``: ⌈C/(8·pf)⌉ dense 8·pf→8·pf convs (pf = ⌊8/w⌋·⌊8/a⌋);
``"official"``: one input channel → C outputs, as the simulator (which ignores groups)
runs it. ``pad_tiles`` — round tile traffic up to the array (the simulator does; APQ's
table does not). ``static_power`` — add the SRAM leakage the simulator computes but never adds.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional, Sequence

import numpy as np

from .bitfusion_search import perf_factor, search_conv
from .layers import AnalyticSim, LayerSpec, check_bit_range

__all__ = ["BitFusionConfig", "BitFusionSim", "bitfusion_layer_cost", "fused_bits",
           "BRICK_WIDTHS", "DEPTHWISE_MODES"]

BRICK_WIDTHS = (2, 4, 8)
DEPTHWISE_MODES = ("grouped", "official")

# bitfusion/sram/cacti_sweep.csv, 45 nm rows the simulator looks up (simulator.py
# get_energy_cost): per-access read/write energy (nJ) and per-bank leakage (mW) of one bank
# with 32-bit words (wbuf_bits = ibuf_bits = pmax²/pmin = 32, obuf_bits = 32).
_CACTI = {  # name: (bank bytes, banks, read nJ, write nJ, leak mW)
    "wgt": (128, 16 * 32, 0.000683701, 0.000925317, 0.249588),   # 64 KiB / (N·M banks)
    "act": (2048, 16, 0.00190318, 0.00363853, 3.22997),          # 32 KiB / N banks
    "out": (512, 32, 0.00106097, 0.00233869, 1.03183),           # 16 KiB / M banks, rw port
}
_WORD_BITS = 32


def fused_bits(b: int) -> int:
    """The multiplier width a b-bit operand runs at: the next of 2, 4, 8."""
    for w in BRICK_WIDTHS:
        if b <= w:
            return w
    raise ValueError(f"bitfusion: {b} bits exceeds the 8-bit maximum")


def _sram_pj_per_bit() -> dict:
    return {f"{ns}_{op}": e * 1e3 / _WORD_BITS for ns, (_b, _n, r, w, _l) in _CACTI.items()
            for op, e in (("reads", r), ("writes", w))}


@dataclass(frozen=True)
class BitFusionConfig:
    """Every constant with the official file it comes from, plus the three model options."""
    # bf_e_conf.ini [accelerator]: a = 16 (N, reduction), c = 32 (M, outputs), 500 MHz,
    # high_prec 8 / low_prec 2, Wgt/Act/Out SRAM bytes (halved by the simulator: double
    # buffering); [system] if_width = 192 DRAM bits per cycle.
    n_rows: int = 16
    m_cols: int = 32
    freq_hz: float = 500e6
    pmax: int = 8
    pmin: int = 2
    wgt_sram_bytes: int = 65536
    act_sram_bytes: int = 32768
    out_sram_bytes: int = 16384
    dram_bits_per_cycle: int = 192
    # results/systolic_array_synth.csv, row (N=4, M=4, 8/2 bits): dynamic power 3,673,500 nW
    # at 500 MHz, scaled by N·M/16 (simulator.py's fallback for sizes it did not
    # synthesise) -> nJ per compute cycle.
    core_nj_per_cycle: float = 3673500e-9 * (16 * 32) / 16 / 500e6 * 1e9
    # stats.py Stats.get_energy: dram_cost = 15e-3 nJ per bit ("6 pJ/bit" in its comment).
    dram_pj_per_bit: float = 15.0
    # cacti_sweep.csv energies per bit (see _CACTI), keys {act,wgt,out}_{reads,writes}.
    sram_pj_per_bit: dict = field(default_factory=_sram_pj_per_bit)
    # SRAM leakage of all banks (cacti_sweep.csv leak_power_mW × banks ≈ 212.5 mW) per cycle;
    # added only with static_power (the simulator computes it but leaves it out).
    static_nj_per_cycle: float = sum(b[1] * b[4] for b in _CACTI.values()) * 1e-3 / 500e6 * 1e9
    im2col_max_in_c: int = 3          # the image-input conv runs as im2col (simulator.py)
    # model options (module docstring)
    depthwise: str = "grouped"
    pad_tiles: bool = False
    static_power: bool = True

    def __post_init__(self):
        if self.depthwise not in DEPTHWISE_MODES:
            raise ValueError(f"bitfusion: depthwise={self.depthwise!r}; choose one of "
                             f"{list(DEPTHWISE_MODES)}")
        for name in ("pad_tiles", "static_power"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"bitfusion: {name} must be true or false, "
                                 f"got {getattr(self, name)!r}")

    @property
    def n_fu(self) -> int:
        return self.n_rows * self.m_cols

    def macs_per_fu(self, w_bits: int, a_bits: int) -> int:
        return int(perf_factor(w_bits, a_bits, self.pmax, self.pmin))

    def peak_macs_per_cycle(self, w_bits: int, a_bits: int) -> int:
        return self.n_fu * self.macs_per_fu(w_bits, a_bits)

    @property
    def dram_bytes_per_cycle(self) -> float:
        return self.dram_bits_per_cycle / 8


_SUMS = ("cycles", "compute_cycles", "mem_stall_cycles", "memory_cycles", "dram_bits",
         "energy_core", "energy_sram", "energy_dram", "act_reads", "act_writes", "wgt_reads",
         "wgt_writes", "out_reads", "out_writes")


class BitFusionSim(AnalyticSim):
    """``sim.report(spec, w, a)``: every intermediate quantity; ``sim.cost``: the LUT entry.
    Results are memoised per layer; :meth:`prefetch` searches many bit pairs at once."""

    name = "bitfusion"

    def __init__(self, config: Optional[BitFusionConfig] = None, **options):
        cfg = config or BitFusionConfig()
        self.cfg = replace(cfg, **options) if options else cfg
        self._cache: dict = {}

    # ------------------------------------------------------------------ mapping
    def _jobs(self, spec: LayerSpec, w: int, a: int) -> list[tuple]:
        """``[(repeat, (K, OW, S, IC, OC, im2col))]``: the dense convs one layer runs as."""
        c = self.cfg
        K, OW, S = spec.kernel, spec.out_size, spec.stride
        if spec.is_depthwise:
            if c.depthwise == "official":
                return [(1, (K, OW, S, 1, spec.out_c, False))]
            g = 8 * int(perf_factor(w, a, c.pmax, c.pmin))
            return [(-(-spec.out_c // g), (K, OW, S, g, g, False))]
        im2col = spec.in_c <= c.im2col_max_in_c and spec.groups == 1 and K > 1
        return [(spec.groups, (K, OW, S, spec.ic_per_group, spec.oc_per_group, im2col))]

    def prefetch(self, spec: LayerSpec, pairs: Sequence[tuple], batch: int = 1) -> None:
        """Search every ``(w, a)`` of ``pairs`` for this layer in one vectorised call."""
        todo = {}
        for w, a in pairs:
            self._check(w, a, batch)
            if (spec, int(w), int(a), batch) in self._cache:
                continue
            for rep, job in self._jobs(spec, int(w), int(a)):
                todo.setdefault(job, []).append((rep, int(w), int(a)))
        parts: dict = {}
        for job, items in todo.items():
            uniq = sorted({(w, a) for _r, w, a in items})
            res = search_conv(self.cfg, *job[:5], uniq, batch=batch, im2col=job[5],
                              pad_tiles=self.cfg.pad_tiles)
            for rep, w, a in items:
                i = uniq.index((w, a))
                acc = parts.setdefault((w, a), {k: 0.0 for k in _SUMS})
                for k in _SUMS:
                    acc[k] += rep * float(res[k][i])
        for (w, a), r in parts.items():
            self._cache[(spec, w, a, batch)] = self._finish(spec, w, a, batch, r)

    def _finish(self, spec, w, a, batch, r) -> dict:
        c = self.cfg
        e_static = r["cycles"] * c.static_nj_per_cycle if c.static_power else 0.0
        energy = r["energy_core"] + r["energy_sram"] + r["energy_dram"] + e_static   # nJ
        macs = batch * spec.macs
        mem = r["memory_cycles"]
        return {
            "latency": r["cycles"] / c.freq_hz * 1e3,                 # ms
            "energy": energy * 1e-6,                                  # mJ
            "macs": macs, "w_fused": fused_bits(w), "a_fused": fused_bits(a),
            "cycles": r["cycles"], "compute_cycles": r["compute_cycles"],
            "memory_cycles": mem, "mem_stall_cycles": r["mem_stall_cycles"],
            "bound": "compute" if r["compute_cycles"] >= mem else "memory",
            "utilization": macs / (r["compute_cycles"] * c.peak_macs_per_cycle(w, a)),
            "dram_bits": r["dram_bits"], "dram_bytes": r["dram_bits"] / 8,
            "intensity": macs / (r["dram_bits"] / 8),                 # MACs per DRAM byte
            "energy_compute": r["energy_core"] * 1e-6, "energy_sram": r["energy_sram"] * 1e-6,
            "energy_dram": r["energy_dram"] * 1e-6, "energy_static": e_static * 1e-6,
            **{f"sram_{k}": r[k] for k in _SUMS[8:]},
        }

    def _check(self, w_bits, a_bits, batch) -> None:
        check_bit_range(w_bits, a_bits, 1, 8, "bitfusion",
                   "BitBricks fuse into 2/4/8-bit multipliers; 1..8 bits are supported")
        if not isinstance(batch, (int, np.integer)) or batch < 1:
            raise ValueError(f"bitfusion: batch must be an int >= 1, got {batch!r}")

    def report(self, spec: LayerSpec, w_bits: int, a_bits: int, batch: int = 1) -> dict:
        self._check(w_bits, a_bits, batch)
        key = (spec, int(w_bits), int(a_bits), batch)
        if key not in self._cache:
            self.prefetch(spec, [(int(w_bits), int(a_bits))], batch)
        return dict(self._cache[key])


_DEFAULT = BitFusionSim()


def bitfusion_layer_cost(in_c: int, out_c: int, in_size: int, kernel: int, stride: int,
                         padding: int, groups: int, w_bits: int, a_bits: int, *,
                         batch: int = 1, config: Optional[BitFusionConfig] = None) -> dict:
    """``{"latency": ms, "energy": mJ}`` of one layer on BitFusion (APQ's table entry)."""
    sim = _DEFAULT if config is None else BitFusionSim(config)
    spec = LayerSpec(in_c, out_c, in_size, kernel, stride, padding, groups)
    return sim.cost(spec, w_bits, a_bits, batch)
