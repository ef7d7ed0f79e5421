"""Speed of APQ's evolution search (APQ §3.4) on CPU: scored candidates per second and the
time of a full 500-generation search, with a predictor of APQ's size (3 x 400 MLP plus the
quantization branch, on APQ's 772-dim encoding) and a LUT-shaped cost (the hardware
package's :class:`SpaceCostTable` gather, filled with random per-choice costs).

    .venv/bin/python benchmarks/bench_search.py [--threads 2] [--generations 500]

Writes ``results/bench/search_cpu.csv``. Targets: >= 1e4 scored candidates/s on 2 cores; a
500-generation search in <= 10 s.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from apq_lib.config import SearchConfig, load_profile  # noqa: E402
from apq_lib.hardware.lut import SpaceCostTable  # noqa: E402
from apq_lib.predictor.encoder import APQEncoder  # noqa: E402
from apq_lib.predictor.model import QuantAwarePredictor  # noqa: E402
from apq_lib.search import EvolutionFinder, IndexOps, RandomSearch  # noqa: E402
from apq_lib.supernet.space import SearchSpace, apq_imagenet_space  # noqa: E402


def make_problem(space, seed: int = 0):
    """(score_fn, latency_table): APQ-sized predictor on ``space``; a random LUT."""
    enc = APQEncoder(space)
    torch.manual_seed(seed)
    model = QuantAwarePredictor(enc.arch_dims, enc.quant_dims, 400, 3).eval()
    model.init_output_bias(0.7)

    @torch.inference_mode()
    def score(idx):
        return model(torch.from_numpy(enc.encode_index(idx))).numpy()

    rng = np.random.default_rng(seed)
    nk, nb = len(space.kernel_choices), len(space.bit_choices)
    mm = max(len(b.mid_choices) for b in space.blocks)
    costs = rng.random((space.n_blocks, nk, mm, nb, nb, nb, nb, 2)) * 0.5
    table = SpaceCostTable(space, costs, np.array([1.0, 1.0]), "random")
    return score, table, enc


def timeit(fn, repeats: int = 5) -> float:
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def main(argv=None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--generations", type=int, default=500)
    ap.add_argument("--out", default=str(ROOT / "results" / "bench" / "search_cpu.csv"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    common = {"threads": args.threads, "cpu": platform.processor() or platform.machine(),
              "torch": torch.__version__}
    spaces = {"apq_imagenet": apq_imagenet_space(),
              "default": SearchSpace(load_profile("default").space)}
    for sname, space in spaces.items():
        score, table, enc = make_problem(space)
        lat = lambda idx: table.lookup(idx)[0]  # noqa: E731
        ops = IndexOps(space)
        rng = np.random.default_rng(0)
        base = dict(space=sname, dims=enc.dims, **common)
        for n in (100, 10_000):                       # one generation; a big batch
            idx = ops.sample(rng, n)
            t = timeit(lambda: score(idx))
            rows.append(dict(base, benchmark=f"score_batch_{n}", n=n, seconds=t,
                             per_second=n / t, target_per_second=1e4 if n == 100 else None))
            t = timeit(lambda: lat(idx))
            rows.append(dict(base, benchmark=f"lut_lookup_{n}", n=n, seconds=t,
                             per_second=n / t))
            t = timeit(lambda: ops.mutate(rng, idx, 0.1) is not None and
                       ops.crossover(rng, idx, idx[::-1]) is not None)
            rows.append(dict(base, benchmark=f"mutate+crossover_{n}", n=2 * n, seconds=t,
                             per_second=2 * n / t))
        limit = float(np.quantile(lat(ops.sample(rng, 2000)), 0.25))
        finder = EvolutionFinder(space, score, {"latency": (lat, limit)}, SearchConfig(),
                                 generations=args.generations, seed=0)
        res = finder.run()
        rows.append(dict(base, benchmark=f"evolution_{args.generations}_gen", n=res.n_scored,
                         seconds=res.seconds, per_second=res.n_scored / res.seconds,
                         target_per_second=1e4,
                         target_seconds=10.0 * args.generations / 500,
                         cost_evals=res.n_cost_evals, best_score=res.best_score))
        rnd = RandomSearch.like(finder).run()
        rows.append(dict(base, benchmark="random_same_budget", n=rnd.n_scored,
                         seconds=rnd.seconds, per_second=rnd.n_scored / rnd.seconds,
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
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(df[["space", "benchmark", "n", "seconds", "per_second", "meets_target"]])
    print(f"wrote {out}")
    return df


if __name__ == "__main__":
    main()
