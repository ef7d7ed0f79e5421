"""Seconds per predictor pair (notebook 03's collection) at 224 px on the imagenet profile.

Builds what ``make dryrun`` builds (:mod:`apq_lib.dryrun`: a synthetic ImageFolder at 224
px, a random ``OFAProxylessNASNets`` w1.3 from the ``ofa`` package with BN recalibrated and
a linear probe, imported with ``apq-import-ofa``), but with a few hundred images, then
measures pairs with the collection's own evaluators (:func:`apq_lib.predictor.pipeline.
make_evaluator`): FP32 pairs (export, BN recal, eval) and quantized pairs (export, QAT
finetune of ``--steps`` steps, BN recal, eval) at two step counts, so a pair's time splits
into a fixed part and a part per finetune step. Writes
``results/bench/pair_collection_<device>.csv`` (one row per pair) and prints the fit and
the extrapolation to the imagenet profile's counts (quantized pair: 500 steps of batch 256,
2,000 recal and 10,000 eval images).

Usage: python benchmarks/bench_pair_collection.py [--device cuda] [--pairs 6]
       [--steps 10 40] [--workers 8] [--work /tmp/pairbench]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from apq_lib.artifacts import ArtifactStore, record_file, results_dir
from apq_lib.config import apply_overrides, load_profile
from apq_lib.data import load_data
from apq_lib.dryrun import make_imagefolder, make_ofa_checkpoint, write_profile
from apq_lib.predictor.pipeline import make_evaluator, sample_store, trained_supernet
from apq_lib.runner import scoped_env
from apq_lib.runtime import device_tag, get_device
from apq_lib.supernet.launch import import_ofa_main

# the imagenet profile's counts per quantized pair (env/params_imagenet.yaml)
PROFILE_STEPS, PROFILE_BATCH, PROFILE_RECAL, PROFILE_EVAL = 500, 256, 2000, 10000


def build(work: Path, classes: int, train_per_class: int, val_per_class: int,
          overrides: dict) -> Path:
    """Synthetic ImageFolder, random OFA checkpoint, the dry run's profile with
    ``overrides``, the supernet imported for it; the profile's path."""
    data = work / "imagefolder"
    if not (data / "val").is_dir():
        make_imagefolder(data, classes=classes, train_per_class=train_per_class,
                         val_per_class=val_per_class)
    ckpt = work / "ofa_proxyless_random_w1.3.pth"
    if not ckpt.exists():
        make_ofa_checkpoint(ckpt, data, classes=classes)
    profile = write_profile(work, data, ckpt)
    raw = apply_overrides(yaml.safe_load(profile.read_text()), overrides)
    profile.write_text(yaml.safe_dump(raw, sort_keys=False))
    import_ofa_main([str(ckpt), "--profile", str(profile)])
    return profile


def measure(profile: Path, kind: str, steps: int, n: int, work: Path) -> list[dict]:
    """``n`` pairs of ``kind`` with the collection's evaluator; one row each."""
    cfg = load_profile(str(profile), {"predictor.finetune_steps": steps})
    dev = get_device(cfg.device)
    data = load_data(cfg.data)
    net, _ = trained_supernet(cfg, data, ArtifactStore(), dev)
    store = sample_store(cfg, kind, work / f"samples_{kind}_{steps}")
    evaluate = make_evaluator(cfg, kind, net, data, dev)
    rows = []
    for i in range(n):
        config, _, _ = store.config(i)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        rec = evaluate(config, i)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        rows.append({"kind": kind, "i": i, "steps": steps if kind == "quant" else 0,
                     "batch_size": cfg.finetune.batch_size,
                     "recal_images": cfg.predictor.recal_images,
                     "eval_images": rec["n_images"], "seconds": time.perf_counter() - t0,
                     "acc": rec["acc"]})
        print(f"{kind:5s} steps {rows[-1]['steps']:3d} pair {i}: "
              f"{rows[-1]['seconds']:7.3f} s  acc {rec['acc']:5.1f}", flush=True)
    return rows


def summarise(df) -> dict:
    """Per-step and fixed seconds of a quantized pair (least squares over the pairs after
    each run's first, which pays cuDNN's autotuning and the workers' start), and the
    extrapolation to the profile's counts."""
    warm = df[df.i > 0]
    q = warm[warm.kind == "quant"]
    slope, intercept = np.polyfit(q.steps.to_numpy(float), q.seconds.to_numpy(float), 1)
    f = warm[warm.kind == "fp32"]
    img = float((f.recal_images + f.eval_images).mean())
    per_image = float(f.seconds.median()) / img          # recal + eval, seconds per image
    step_at_profile = slope * PROFILE_BATCH / float(q.batch_size.iloc[0])  # linear in images
    est = PROFILE_STEPS * step_at_profile + (PROFILE_RECAL + PROFILE_EVAL) * per_image
    return {"quant_seconds_per_step": slope, "quant_fixed_seconds": intercept,
            "fp32_pair_seconds": float(f.seconds.median()),
            "recal_eval_seconds_per_image": per_image,
            "profile_quant_pair_seconds_estimate": est}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--pairs", type=int, default=6, help="pairs per kind and step count")
    ap.add_argument("--steps", type=int, nargs=2, default=[10, 40],
                    help="two QAT step counts per quantized pair")
    ap.add_argument("--classes", type=int, default=4)
    ap.add_argument("--train-per-class", type=int, default=96)
    ap.add_argument("--val-per-class", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=64, help="QAT finetune batch")
    ap.add_argument("--eval-images", type=int, default=128)
    ap.add_argument("--recal-images", type=int, default=128)
    ap.add_argument("--workers", type=int, default=0, help="data loader workers")
    ap.add_argument("--work", default="build/pair_bench")
    ap.add_argument("--out", default=None, help="CSV (default results/bench/...)")
    a = ap.parse_args()
    import pandas as pd
    dev = get_device(a.device)
    work = Path(a.work).absolute()
    work.mkdir(parents=True, exist_ok=True)
    overrides = {"device": dev.type, "data.num_workers": a.workers,
                 "data.val_size": a.eval_images, "data.eval_batch_size": 128,
                 "finetune.batch_size": a.batch_size,
                 "predictor.eval_images": a.eval_images,
                 "predictor.recal_images": a.recal_images}
    t0 = time.perf_counter()
    with scoped_env({"APQ_RESULTS_DIR": str(work / "results"),
                     "APQ_ARTIFACTS": str(work / "artifacts")}):
        profile = build(work, a.classes, a.train_per_class, a.val_per_class, overrides)
        print(f"built data, checkpoint and import in {time.perf_counter() - t0:.1f} s",
              flush=True)
        rows = measure(profile, "fp32", 0, a.pairs, work)
        for s in a.steps:
            rows += measure(profile, "quant", s, a.pairs, work)
    df = pd.DataFrame(rows)
    tag = device_tag(dev)
    df.insert(0, "device", tag)
    df["machine"] = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    df["torch"] = torch.__version__
    df["threads"] = torch.get_num_threads()
    df["workers"] = a.workers
    out = Path(a.out) if a.out else results_dir() / "bench" / f"pair_collection_{tag}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False, float_format="%.4f")
    record_file(out)
    for k, v in summarise(df).items():
        print(f"{k}: {v:.4f}")
    print(f"wrote {out} ({time.perf_counter() - t0:.0f} s in all)")


if __name__ == "__main__":
    main()
