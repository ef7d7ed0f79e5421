"""One SGD training step of the default space's largest subnet (batch 256): the elastic
supernet with the largest subnet active (also in ``channels_last``), the exported static
network (the baseline), the static network in ``channels_last`` and under
``torch.compile``; median wall time of ``--steps`` steps after warm-up, as ratios against
the eager static network in this one run (the numbers that decide what the supernet trainer
and the finetune use).
Writes ``results/bench/train_step_cpu.csv``.
Usage: .venv/bin/python benchmarks/bench_train_step.py [--threads 2] [--steps 8]
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from apq_lib.artifacts import record_file
from apq_lib.baselines.fixed import to_float
from apq_lib.config import load_profile
from apq_lib.supernet.network import APQSupernet
from apq_lib.supernet.space import SearchSpace

OUT = Path(__file__).resolve().parent.parent / "results" / "bench" / "train_step_cpu.csv"


def step_times(model, x, y, steps: int, warmup: int = 3, channels_last: bool = False):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    out = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if i >= warmup:
            out.append(time.perf_counter() - t)
    return statistics.median(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=256)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = load_profile("default")
    space = SearchSpace(cfg.space)
    c = cfg.space
    x = torch.randn(a.batch, c.in_channels, c.image_size, c.image_size)
    y = torch.randint(0, c.num_classes, (a.batch,))
    sn = APQSupernet(space).train()
    sn.set_active_subnet(space.largest())
    static = lambda: to_float(sn.get_active_subnet()).train()  # noqa: E731
    rows = {"supernet (largest active)": step_times(sn, x, y, a.steps),
            "static (eager)": step_times(static(), x, y, a.steps)}
    rows["supernet channels_last"] = step_times(sn.to(memory_format=torch.channels_last),
                                                x, y, a.steps, channels_last=True)
    sn.to(memory_format=torch.contiguous_format)
    rows["static channels_last"] = step_times(static().to(memory_format=torch.channels_last),
                                              x, y, a.steps, channels_last=True)
    try:
        rows["static torch.compile"] = step_times(torch.compile(static()), x, y, a.steps,
                                                  warmup=3)
    except Exception as e:                     # no compiler toolchain: say so, keep the rest
        print(f"torch.compile unavailable: {type(e).__name__}: {e}")
    base = rows["static (eager)"]
    df = pd.DataFrame([{"variant": k, "median_step_ms": 1e3 * v, "speedup_vs_static": base / v,
                        "threads": a.threads, "batch": a.batch} for k, v in rows.items()])
    print(df.round(3).to_string(index=False))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(OUT, index=False, float_format="%.5g")
    record_file(OUT)                   # the writer vouches for it (manifest)


if __name__ == "__main__":
    main()
