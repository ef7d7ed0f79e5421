"""Loop-tiling and loop-order search of the BitFusion simulator (Sharma et al., ISCA 2018;
APQ §4 costs its subnets on it), re-written vectorised: every power-of-two tiling × every
loop order × every requested (w, a) pair is one numpy array, so a layer's search is a few
dozen array operations instead of the official per-tiling Python loop.

The structure follows hsharma35/bitfusion ``bitfusion/src/optimizer/optimizer.py``
(``_optimize_for_order``, ``get_stats_fast``) and ``bitfusion/src/simulator/accelerator.py``
(``get_compute_cycles``, ``get_perf_factor``): a conv ``(K, OW, S, IC, OC)`` (OW the output
width = height) is tiled into ``ow = oh = 2^i`` output pixels, ``ic = 2^j`` input channels
and ``oc = 32·2^k`` output channels (``2^k`` under im2col); a tile's weights, inputs and
32-bit partial sums must fit half of their SRAM (double buffering); every loop order
decides how far each tile's DRAM transfer can be hoisted out of the loops it does not
depend on; DRAM runs in the background of compute except the first fill and the last
write-back; the tiling with the fewest cycles (then least energy) wins.
"""
from __future__ import annotations

from itertools import permutations

import numpy as np

__all__ = ["search_conv", "perf_factor"]

PSUM_BITS = 32        # optimizer.py get_stats_fast: ``oprec = 32`` for every output move
# optimizer.py ``tile_deps``: which tensors each tile loop indexes (act, wgt, out)
_DEPS = {"B": (True, False, True), "OW": (True, False, True), "OH": (True, False, True),
         "IC": (True, True, False), "OC": (False, True, True)}


def _cdiv(a, b):
    return -(-a // b)


def _nlog2(x: int) -> int:
    """Number of power-of-two tile sizes for a loop of extent x: ceil(log2 x) + 1."""
    return int(np.ceil(np.log2(x))) + 1 if x > 1 else 1


def perf_factor(w_bits, a_bits, pmax: int = 8, pmin: int = 2):
    """accelerator.py ``get_perf_factor``: MACs per Fusion Unit per cycle,
    ``⌊pmax/max(a, pmin)⌋ · ⌊pmax/max(w, pmin)⌋`` (1 at 8 or 6 bits, 4 at W4A4, 16 at W2A2)."""
    w = np.maximum(np.asarray(w_bits), pmin)
    a = np.maximum(np.asarray(a_bits), pmin)
    return (pmax // a) * (pmax // w)


def search_conv(acc, K: int, OW: int, S: int, IC: int, OC: int, pairs, batch: int = 1,
                im2col: bool = False, pad_tiles: bool = True) -> dict:
    """Best tiling of one conv for each ``(w_bits, a_bits)`` of ``pairs`` on accelerator
    ``acc`` (a :class:`~apq_lib.hardware.bitfusion.BitFusionConfig`). Returns arrays
    ``[len(pairs)]``: ``cycles, compute_cycles, mem_stall_cycles, memory_cycles, dram_bits``,
    SRAM accesses ``{act,wgt,out}_{reads,writes}`` (bits), ``energy_{core,sram,dram}`` (nJ).

    ``pad_tiles=False`` drops the rounding of a tile's weights up to ``N·pf`` rows and of its
    outputs up to ``M`` columns in the traffic (the compute still runs whole array passes).
    """
    N, M = acc.n_rows, acc.m_cols
    w = np.array([p[0] for p in pairs], dtype=np.int64)[:, None, None]       # [P,1,1]
    a = np.array([p[1] for p in pairs], dtype=np.int64)[:, None, None]
    pf = perf_factor(w, a, acc.pmax, acc.pmin)
    npf = N * pf
    B = int(batch)

    # ---- every power-of-two tiling (optimizer.py _optimize_for_order), flattened [T]
    bs = np.minimum(1 << np.arange(_nlog2(B)), B)
    os_ = np.minimum(1 << np.arange(_nlog2(OW)), OW)
    ics = np.minimum(1 << np.arange(_nlog2(IC)), IC)
    if im2col:
        ocs = np.minimum(1 << np.arange(_nlog2(OC)), OC)
    else:
        ocs = np.minimum((1 << np.arange(_nlog2(_cdiv(OC, M)))) * M, OC)
    tb, to, tic, toc = (x.reshape(-1).astype(np.int64)
                        for x in np.meshgrid(bs, os_, ics, ocs, indexing="ij"))
    num = {"B": _cdiv(B, tb), "OW": _cdiv(OW, to), "OH": _cdiv(OW, to),
           "IC": _cdiv(IC, tic), "OC": _cdiv(OC, toc)}
    kk = K * K

    # ---- one tile's DRAM transfers in bits (get_stats_fast ``writes``/``reads``)
    if pad_tiles:
        wgt0 = _cdiv(kk * tic, npf) * npf * toc * w
        out0 = to * to * _cdiv(toc, M) * M * tb * PSUM_BITS
    else:
        wgt0 = kk * tic * toc * w
        out0 = to * to * toc * tb * PSUM_BITS
    if im2col:
        act0 = to * to * kk * tic * tb * a
    else:
        side = K + (to - 1) * S
        act0 = side * side * tic * tb * a
    cap = {"act": acc.act_sram_bytes * 8 / 2, "wgt": acc.wgt_sram_bytes * 8 / 2,
           "out": acc.out_sram_bytes * 8 / 2}
    shape = np.broadcast_shapes(np.shape(wgt0), np.shape(act0), np.shape(out0))
    init = {"act": np.broadcast_to(act0, shape), "wgt": np.broadcast_to(wgt0, shape),
            "out": np.broadcast_to(out0, shape)}
    fits = (init["act"] <= cap["act"]) & (init["wgt"] <= cap["wgt"]) & \
        (init["out"] <= cap["out"])                                          # [P,1,T]

    # ---- loop orders: hoist each transfer out of the inner loops it does not depend on
    loops = ["OW", "OH", "IC", "OC"] + (["B"] if B > 1 else [])
    # OW and OH have the same tile counts and dependencies, so an order and the one with
    # OW, OH swapped cost the same: keep OW outside OH (halves the search, same optimum)
    orders = [o for o in permutations(loops) if o.index("OW") < o.index("OH")]
    tot, peak = {}, {}
    for j, ns in enumerate(("act", "wgt", "out")):
        v = np.repeat(init[ns].astype(np.float64), len(orders), axis=1)     # [P,R,T]
        mx = v.copy()
        promote = np.ones(v.shape, dtype=bool)
        for pos in range(len(loops) - 1, -1, -1):                           # innermost first
            n = np.stack([num[o[pos]] for o in orders])[None].astype(np.float64)  # [1,R,T]
            dep = np.array([_DEPS[o[pos]][j] for o in orders])[None, :, None]
            grow = ~promote | dep
            v = np.where(grow, v * n, v)
            still = promote & (~dep | (v <= cap[ns]))
            mx = np.where(promote & dep & still, v, mx)
            promote = still
        tot[ns], peak[ns] = v, mx
    initial = peak["act"] + peak["wgt"] + peak["out"]
    final = peak["out"]                                # the official max_read_size['out']
    dram = tot["act"] + tot["wgt"] + 2 * tot["out"]    # fills + partial-sum write-backs
    fill_cycles = _cdiv(initial, acc.dram_bits_per_cycle) + _cdiv(final, acc.dram_bits_per_cycle)
    middle_cycles = _cdiv(dram - initial - final, acc.dram_bits_per_cycle)

    # ---- compute (accelerator.py get_compute_cycles) over all tiles
    n_tiles = num["B"] * num["OW"] * num["OH"] * num["IC"] * num["OC"]
    if im2col:
        per_tile = tb * to * to * _cdiv(toc, M) * _cdiv(kk * tic, npf)
    else:
        per_tile = tb * _cdiv(toc, M) * to * to * kk * _cdiv(tic, npf)
    compute = (n_tiles * per_tile).astype(np.float64)                       # [P,1,T]
    stalls = np.maximum(0, middle_cycles - compute) + fill_cycles
    cycles = compute + stalls

    # ---- on-chip dataflow of one tile (get_stats_fast: IS / OS / WS, cheapest SRAM bits)
    is_loop = _cdiv(toc, M) * M
    red = _cdiv(kk * tic, npf) * npf if im2col else _cdiv(tic, npf) * npf * kk
    ws_loop = tb * to * to
    e_is = red * ws_loop * (a + is_loop * (w + PSUM_BITS))
    e_os = is_loop * ws_loop * (PSUM_BITS + red * (a + w))
    e_ws = red * is_loop * (w + ws_loop * (a + PSUM_BITS))
    best = np.minimum(np.minimum(e_is, e_os), e_ws)
    x_is = kk * tic * to * to * tb
    y_os = toc * to * to * tb
    z_ws = kk * tic * toc
    use_is, use_os = e_is == best, (e_os == best) & (e_is != best)
    nt = n_tiles.astype(np.float64)
    act_r = nt * np.where(use_is, x_is * a, np.where(use_os, y_os * kk * tic * a,
                                                     z_ws * ws_loop * a))
    out_rw = nt * np.where(use_is, x_is * toc * PSUM_BITS,
                           np.where(use_os, y_os * PSUM_BITS, z_ws * ws_loop * PSUM_BITS))
    wgt_r = nt * np.where(use_is, x_is * toc * w, np.where(use_os, y_os * kk * tic * w,
                                                           z_ws * w))
    acts = {"act_reads": act_r, "act_writes": tot["act"], "wgt_reads": wgt_r,
            "wgt_writes": tot["wgt"], "out_reads": tot["out"] + out_rw,
            "out_writes": tot["out"] + out_rw}
    acts = {k: np.broadcast_to(v, cycles.shape) for k, v in acts.items()}
    e = acc.sram_pj_per_bit
    e_sram = sum(acts[k] * e[k] for k in acts) * 1e-3                       # nJ
    e_core = compute * acc.core_nj_per_cycle
    e_dram = dram * acc.dram_pj_per_bit * 1e-3
    energy = e_core + e_sram + e_dram

    # ---- fewest cycles, then least energy (optimizer.py optimize_for_order)
    big = np.where(fits, cycles, np.inf)
    flat_c = big.reshape(len(pairs), -1)
    flat_e = np.where(fits, energy, np.inf).reshape(len(pairs), -1)
    cmin = flat_c.min(axis=1, keepdims=True)
    if not np.isfinite(cmin).all():
        raise ValueError(f"bitfusion: no tiling of conv K={K} OW={OW} S={S} IC={IC} OC={OC} "
                         "fits the SRAMs")
    pick = np.where(flat_c == cmin, flat_e, np.inf).argmin(axis=1)
    rows = np.arange(len(pairs))

    def take(arr):
        return np.broadcast_to(arr, cycles.shape).reshape(len(pairs), -1)[rows, pick]

    out = {"cycles": take(cycles), "compute_cycles": take(compute),
           "mem_stall_cycles": take(stalls), "memory_cycles": take(middle_cycles + fill_cycles),
           "dram_bits": take(dram), "energy_core": take(e_core),
           "energy_sram": take(e_sram), "energy_dram": take(e_dram)}
    out.update({k: take(v) for k, v in acts.items()})
    return out
