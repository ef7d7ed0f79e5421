"""Speed of APQ's evolution search (APQ §3.4) on CPU: scored candidates per second and the
time of a full 500-generation search, with a predictor of APQ's size (3 x 400 MLP plus the
quantization branch, on APQ's 772-dim encoding) and a LUT-shaped cost (the hardware
package's :class:`SpaceCostTable` gather, filled with random per-choice costs).

    .venv/bin/python benchmarks/bench_search.py [--threads 2] [--generations 500]

Writes ``results/bench/search_cpu.csv`` (wall and CPU seconds, and the 1-minute load average:
on a shared box wall time is inflated by other processes). Targets: >= 1e4 scored
candidates/s on 2 cores; a 500-generation search in <= 10 s.
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parent.parent

from apq_lib.artifacts import record_file  # noqa: E402
from apq_lib.config import SearchConfig, load_profile  # noqa: E402
from apq_lib.hardware.lut import SpaceCostTable  # noqa: E402
from apq_lib.predictor.encoder import APQEncoder  # noqa: E402
from apq_lib.predictor.model import QuantAwarePredictor  # noqa: E402
from apq_lib.search import EvolutionFinder, IndexOps, PredictorScore, RandomSearch  # noqa: E402
from apq_lib.supernet.space import SearchSpace, apq_imagenet_space  # noqa: E402


def make_problem(space, seed: int = 0, threads: int = 1):
    """(score_fn, latency_table, encoder): APQ-sized predictor on ``space`` wrapped as the
    notebook wraps it (:class:`PredictorScore`); a random LUT."""
    enc = APQEncoder(space)
    torch.manual_seed(seed)
    model = QuantAwarePredictor(enc.arch_dims, enc.quant_dims, 400, 3).eval()
    model.init_output_bias(0.7)
    score = PredictorScore(model, space, threads=threads)

    rng = np.random.default_rng(seed)
    nk, nb = len(space.kernel_choices), len(space.bit_choices)
    mm = max(len(b.mid_choices) for b in space.blocks)
    costs = rng.random((space.n_blocks, nk, mm, nb, nb, nb, nb, 2)) * 0.5
    table = SpaceCostTable(space, costs, np.array([1.0, 1.0]), "random")
    return score, table, enc


def timeit(fn, repeats: int = 7) -> tuple[float, float]:
    """Median wall seconds and median CPU seconds (this process) of ``fn()``."""
    fn()
    ts, cs = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        ts.append(time.perf_counter() - t0)
        cs.append(time.process_time() - c0)
    return float(np.median(ts)), float(np.median(cs))


def main(argv=None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for the predictor during the search (a 100-row "
                         "batch is too small for intra-op parallelism)")
    ap.add_argument("--generations", type=int, default=500)
    ap.add_argument("--out", default=str(ROOT / "results" / "bench" / "search_cpu.csv"))
    args = ap.parse_args(argv)
    rows = []
    common = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
              "torch": torch.__version__, "load_avg_1m": os.getloadavg()[0]}
    spaces = {"apq_imagenet": apq_imagenet_space(),
              "default": SearchSpace(load_profile("default").space)}
    for sname, space in spaces.items():
        score, table, enc = make_problem(space, threads=args.threads)
        lat = lambda idx: table.lookup(idx)[0]  # noqa: E731
        ops = IndexOps(space)
        rng = np.random.default_rng(0)
        base = dict(space=sname, dims=enc.dims, threads=args.threads, **common)
        for n in (100, 10_000):                       # one generation; a big batch
            idx = ops.sample(rng, n)
            for th in sorted({1, 2, args.threads}):
                score.threads = th
                t, c = timeit(lambda: score(idx))
                rows.append(dict(base, threads=th, benchmark=f"score_batch_{n}", n=n,
                                 seconds=t, cpu_seconds=c, per_second=n / t))
            score.threads = args.threads
            t, c = timeit(lambda: lat(idx))
            rows.append(dict(base, benchmark=f"lut_lookup_{n}", n=n, seconds=t,
                             cpu_seconds=c, per_second=n / t))
            t, c = timeit(lambda: ops.mutate(rng, idx, 0.1) is not None and
                          ops.crossover(rng, idx, idx[::-1]) is not None)
            rows.append(dict(base, benchmark=f"mutate+crossover_{n}", n=2 * n, seconds=t,
                             cpu_seconds=c, per_second=2 * n / t))
        limit = float(np.quantile(lat(ops.sample(rng, 2000)), 0.25))
        finder = EvolutionFinder(space, score, {"latency": (lat, limit)}, SearchConfig(),
                                 generations=args.generations, seed=0)
        c0 = time.process_time()
        res = finder.run()
        c = time.process_time() - c0
        rows.append(dict(base, benchmark=f"evolution_{args.generations}_gen", n=res.n_scored,
                         seconds=res.seconds, cpu_seconds=c,
                         per_second=res.n_scored / res.seconds, target_per_second=1e4,
                         target_seconds=10.0 * args.generations / 500,
                         cost_evals=res.n_cost_evals, best_score=res.best_score))
        c0 = time.process_time()
        rnd = RandomSearch.like(finder).run()
        c = time.process_time() - c0
        rows.append(dict(base, benchmark="random_same_budget", n=rnd.n_scored,
                         seconds=rnd.seconds, cpu_seconds=c,
                         per_second=rnd.n_scored / rnd.seconds,
                         cost_evals=rnd.n_cost_evals, best_score=rnd.best_score))
        print(f"[{sname}] {enc.dims} dims: evolution {args.generations} gen "
              f"{res.seconds:.2f}s ({res.n_scored / res.seconds:,.0f} scored/s, best "
              f"{res.best_score:.4f}); random {rnd.seconds:.2f}s (best {rnd.best_score:.4f})",
              flush=True)
    df = pd.DataFrame(rows)
    df["meets_target"] = [
        (r.per_second >= r.target_per_second if pd.notna(r.get("target_per_second")) else True)
        and (r.seconds <= r.target_seconds if pd.notna(r.get("target_seconds")) else True)
        for _, r in df.iterrows()]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False, float_format="%.6g")
    record_file(out)                   # the writer vouches for it (manifest)
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(df[["space", "benchmark", "threads", "n", "seconds", "cpu_seconds", "per_second",
                  "meets_target"]])
    print(f"wrote {out}")
    return df


if __name__ == "__main__":
    main()
