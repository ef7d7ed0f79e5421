"""Build time and lookups per second of the hardware LUT (apq_lib.hardware, APQ §3.3).

For each space (the default profile's and APQ's ImageNet space): the wall time of building
the whole BitFusion table from a cold simulator (every layer's tiling/loop-order search,
official-simulator model), then the vectorised ``SpaceCostTable.lookup`` rate (with and
without the index range check) against the per-layer Python sum over the same subnets, as
ratios within this run. Prints a table; writes nothing.
Usage: .venv/bin/python benchmarks/bench_lut.py [--quick]
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from apq_lib.config import load_profile  # noqa: E402
from apq_lib.hardware import BitFusionSim, SpaceCostTable, build_lut, subnet_layers  # noqa: E402
from apq_lib.supernet.space import SearchSpace, apq_imagenet_space  # noqa: E402


def best_rate(fn, n: int, repeats: int) -> float:
    fn()                                            # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return n / min(times)


def python_sum(lut, space, configs) -> None:
    for c in configs:
        sum(lut[s.key(w, a)]["latency"] for _n, s, w, a in subnet_layers(space, c))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller batches, fewer repeats")
    args = ap.parse_args()
    sizes = [1_000, 10_000] if args.quick else [1_000, 10_000, 100_000]
    repeats = 2 if args.quick else 5
    spaces = {"default": SearchSpace(load_profile("default").space),
              "apq_imagenet": apq_imagenet_space()}
    print(f"cpus={os.cpu_count()} OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    for sname, space in spaces.items():
        t = time.perf_counter()
        lut = build_lut(space, BitFusionSim())       # cold: no memoised searches
        build_s = time.perf_counter() - t
        table = SpaceCostTable.from_lut(space, lut, "bitfusion")
        print(f"{sname:13s} LUT build {build_s:6.1f} s for {len(lut) - 2} entries "
              f"({build_s / (len(lut) - 2) * 1e3:.2f} ms/entry)", flush=True)
        rng = np.random.default_rng(0)
        pool = space.to_index_array([space.sample(rng) for _ in range(2000)])
        configs = space.from_index_array(pool[:200])
        py_rate = best_rate(lambda c=configs, lu=lut, sp=space: python_sum(lu, sp, c),
                            len(configs), 1 if args.quick else 3)
        for n in sizes:
            idx = np.ascontiguousarray(np.resize(pool, (n, *pool.shape[1:])))
            for check in (True, False):
                rate = best_rate(lambda i=idx, ch=check, tb=table: tb.lookup(i, check=ch),
                                 n, repeats)
                print(f"{sname:13s} N={n:>7d} check={check!s:5s} {rate:12.0f} subnets/s "
                      f"({rate / py_rate:6.0f}x the per-layer Python sum, "
                      f"{py_rate:.0f}/s)", flush=True)


if __name__ == "__main__":
    main()
