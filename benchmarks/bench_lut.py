"""Lookups per second of the vectorised hardware LUT (apq_lib.hardware.SpaceCostTable).

Compares, in one run, the vectorised lookup (with and without the index range check)
against the per-layer Python sum over the same subnets. Prints a table and writes
results/bench/lut_cpu.csv.  Usage: .venv/bin/python benchmarks/bench_lut.py [--quick]
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from apq_lib.artifacts import RESULTS_DIR  # noqa: E402
from apq_lib.config import load_profile  # noqa: E402
from apq_lib.hardware import (BitFusionSim, SpaceCostTable, build_lut,  # noqa: E402
                              subnet_layers)
from apq_lib.supernet.space import SearchSpace, apq_imagenet_space  # noqa: E402


def best_rate(fn, n: int, repeats: int) -> float:
    fn()                                            # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return n / min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller batches, fewer repeats")
    args = ap.parse_args()
    sizes = [1_000, 10_000] if args.quick else [1_000, 10_000, 100_000]
    repeats = 2 if args.quick else 5
    spaces = {"default": SearchSpace(load_profile("default").space),
              "apq_imagenet": apq_imagenet_space()}
    sim = BitFusionSim()
    rows = []
    for sname, space in spaces.items():
        lut = build_lut(space, sim)
        table = SpaceCostTable.from_lut(space, lut, "bitfusion")
        rng = np.random.default_rng(0)
        pool = space.to_index_array([space.sample(rng) for _ in range(2000)])
        configs = space.from_index_array(pool[:200])

        def python_sum():
            for c in configs:
                sum(lut[s.key(w, a)]["latency"] for _n, s, w, a in subnet_layers(space, c))
        py_rate = best_rate(python_sum, len(configs), 1 if args.quick else 3)
        for n in sizes:
            idx = np.ascontiguousarray(np.resize(pool, (n, *pool.shape[1:])))
            for check in (True, False):
                rate = best_rate(lambda: table.lookup(idx, check=check), n, repeats)
                rows.append({"space": sname, "n_subnets": n, "range_check": check,
                             "lookups_per_s": rate, "python_per_layer_per_s": py_rate,
                             "speedup_vs_python": rate / py_rate})
                print(f"{sname:13s} N={n:>7d} check={check!s:5s} {rate:12.0f} subnets/s "
                      f"({rate / py_rate:6.0f}x the per-layer Python sum, "
                      f"{py_rate:.0f}/s)", flush=True)
    import pandas as pd
    out = RESULTS_DIR / "bench" / "lut_cpu.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    df["machine"] = f"{platform.processor() or platform.machine()}"
    df.to_csv(out, index=False, float_format="%.1f")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
