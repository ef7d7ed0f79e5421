"""``make dryrun``: the imagenet profile's whole chain (notebooks 01-08) on CPU in minutes.

A tiny synthetic ImageFolder at 224 px (a few images of a few classes; the head stays
1000-way), a random ``OFAProxylessNASNets`` w1.3 (package ``ofa``) saved as a checkpoint and
imported with ``apq-import-ofa``, then every notebook with the imagenet profile shrunk by
:data:`OVERRIDES` to seconds each: every code path at 224 px with the ProxylessNAS space
runs in CI, and the same code runs on a GPU when present.
``python -m apq_lib.dryrun [--out build/dryrun] [--only 01 02 03]``.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Optional

import yaml

from .config import ENV_DIR, apply_overrides, load_profile
from .data import load_data
from .runner import REPO, run_chain, scoped_env
from .supernet.launch import import_ofa_main as import_main

__all__ = ["OVERRIDES", "make_imagefolder", "make_ofa_checkpoint", "write_profile",
           "run_dryrun", "main"]


# the imagenet profile shrunk to seconds per notebook (data.root / init_from added). Every
# model evaluation is at 224 px on CPU (~0.1 s per image on a free core), so the image
# counts set the time; the pair and model counts are the least the notebooks' statistics
# accept (three architectures per CV fold set, one target per baseline cost).
OVERRIDES = {
    "device": "cpu",
    "data.val_size": 8, "data.batch_size": 8, "data.eval_batch_size": 8,
    "data.num_workers": 0,
    "supernet.bn_recal_images": 8, "supernet.eval_images": 8,
    "supernet.n_random_subnets": 6, "supernet.random_eval_images": 16,
    "finetune": {"steps": 1, "batch_size": 4, "recal_images": 8, "test_images": 16,
                 "seeds": 1},
    "predictor": {"fp32_pairs": 20, "quant_pairs": 12, "policies_per_arch": 3,
                  "finetune_steps": 1, "eval_images": 16, "recal_images": 8, "workers": 1,
                  "epochs": 5, "patience": 3, "study_sizes": [3, 6], "study_seeds": [0, 1],
                  "cv_folds": 3, "bootstrap_resamples": 1000, "realised_pairs": 2,
                  "ensemble": 2, "timing_configs": 500},
    "hardware": {"simulators": ["bitfusion"], "cpu_repeats": 1, "measure_cpu": False},
    "search": {"population": 8, "parents": 2, "mutants": 4, "crossovers": 4,
               "generations": 2, "sweep_points": 1, "threads": 1,
               "baseline_costs": ["latency"], "seeds": 1},
    "baselines": {"threads": 1, "scratch_source": "train", "scratch_epochs": 1,
                  "scratch_images": 8, "calib_images": 8, "reward_images": 8,
                  "fixed_bits": [8], "apq_models": 1, "max_targets": 1,
                  "relative_targets": [], "haq_costs": ["latency"],
                  "hawq_costs": ["latency"], "multistage_costs": ["latency"],
                  "haq_episodes": 2, "haq_warmup": 1, "haq_finetune_steps": 1,
                  "haq_kmeans": False, "hawq_samples": 2, "hawq_images": 8,
                  "prune_ratios": [0.5], "prune_scopes": ["global"], "prune_steps": 1,
                  "fbnet": {"max_targets": 1, "variants": ["haq"], "train_images": 16,
                            "batch_size": 2, "warmup_epochs": 1, "epochs": 1,
                            "retrain_steps": 1, "mid_points": 1, "haq_episodes": 2,
                            "haq_warmup": 1}},
    "deploy": {"max_models": 1, "parity_images": 8, "batch_size": 8, "ort_images": 8,
               "qonnx_images": 2, "latency_repeats": 2, "latency_warmup": 1},
    "sparsity": {"seeds": 2, "threads": 1, "hidden": [32, 16], "batch_size": 8,
                 "test_images": 8, "steps": 4,
                 "targets": [0.5], "prune_updates": 2, "lmc_steps": 6, "lmc_ks": [0, 2],
                 "imp_rounds": 1, "bootstrap": 200},
}


def make_imagefolder(root: Path, classes: int = 4, train_per_class: int = 6,
                     val_per_class: int = 4, size: int = 224, noise: float = 10.0,
                     seed: int = 0) -> Path:
    """``root/{train,val}/<class>/<i>.png``: noise images around a mean colour per class
    (the same in both splits, so a model fitted on train can score on val); returns
    ``root``."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(seed)
    bases = rng.integers(40, 216, size=(classes, 3))    # one colour per class, both splits
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for c in range(classes):
            d = Path(root) / split / f"n{c:08d}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = np.clip(bases[c] + rng.normal(0, noise, (size, size, 3)), 0, 255)
                Image.fromarray(img.astype(np.uint8)).save(d / f"{i}.png")
    return Path(root)


def make_ofa_checkpoint(path: Path, data_root: Optional[Path] = None, classes: int = 4,
                        seed: int = 0) -> Path:
    """A random ``OFAProxylessNASNets`` (w1.3, kernels 3/5/7, expand 3/4/6, depths 2/3/4;
    the layout of ``ofa_proxyless_d234_e346_k357_w1.3``) saved as ``{"state_dict": ...}``.

    The head keeps 1000 outputs; those beyond ``classes`` get a bias of -100, so subnets
    predict among the synthetic classes. With ``data_root`` (the synthetic ImageFolder) the
    checkpoint stands in for a *trained* one: BN statistics of the largest network are
    recalibrated on the training images and the first ``classes`` rows of the head are a
    ridge fit (closed form, deterministic) on its pooled features: a random backbone with a
    linear probe. Subnets and quantization policies then differ in accuracy (a random head
    maps every image to one class: all labels tie, and rank statistics are undefined)."""
    import torch
    from ofa.imagenet_classification.elastic_nn.networks import OFAProxylessNASNets
    torch.manual_seed(seed)
    net = OFAProxylessNASNets(n_classes=1000, width_mult=1.3, ks_list=[3, 5, 7],
                              expand_ratio_list=[3, 4, 6], depth_list=[2, 3, 4])
    with torch.no_grad():
        net.classifier.linear.bias[classes:] = -100.0
    if data_root is not None:
        _fit_head(net, data_root, classes)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": net.state_dict()}, path)
    return Path(path)


def _fit_head(net, data_root: Path, classes: int, ridge: float = 1e-3,
              scale: float = 10.0) -> None:
    """Recalibrate ``net``'s BN on the training split (eval transform, one batch) and
    ridge-fit ``classes`` rows of its head on the pooled features of that pass."""
    import torch

    cfg = load_profile("imagenet", {"data.root": str(data_root),
                                    "data.val_size": OVERRIDES["data.val_size"],
                                    "data.num_workers": 0})
    data = load_data(cfg.data)
    x, y = zip(*data.loader("train", batch_size=len(data.train), shuffle=False,
                            augment=False))
    x, y = torch.cat(x), torch.cat(y)
    net.set_max_net()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    feats = []
    hook = net.classifier.register_forward_hook(lambda m, i, o: feats.append(i[0]))
    with torch.no_grad():
        net.train()             # one pass: batch statistics, which the BN layers keep
        net(x)
        hook.remove()
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = 0.1
        net.eval()
        f = feats[0].double()
        t = torch.nn.functional.one_hot(y, classes).double()
        mu, tm = f.mean(0), t.mean(0)
        fc = f - mu
        gram = fc @ fc.T
        lam = ridge * gram.diagonal().mean()
        w = fc.T @ torch.linalg.solve(gram + lam * torch.eye(len(f), dtype=f.dtype), t - tm)
        b = tm - mu @ w
        net.classifier.linear.weight[:classes] = (scale * w.T).float()
        net.classifier.linear.bias[:classes] = (scale * b).float()


def write_profile(out: Path, data_root: Path, checkpoint: Path) -> Path:
    """``out/params_dryrun.yaml``: the imagenet profile with :data:`OVERRIDES`."""
    raw = yaml.safe_load((ENV_DIR / "params_imagenet.yaml").read_text())
    raw = apply_overrides(raw, {**OVERRIDES, "data.root": str(data_root),
                                "supernet.init_from": str(checkpoint)})
    raw.pop("name", None)
    p = Path(out) / "params_dryrun.yaml"
    p.write_text(yaml.safe_dump(raw, sort_keys=False))
    return p


def run_dryrun(out: Path, only: Optional[list] = None) -> float:
    """Build the inputs under ``out`` and run the chain there; returns the seconds."""
    t0 = time.time()
    out = Path(out).absolute()
    with scoped_env({"APQ_RESULTS_DIR": str(out / "results"),
                     "APQ_ARTIFACTS": str(out / "artifacts")}, {"APQ_PROGRESS": "text"}):
        _build_and_run(out, only)
    seconds = time.time() - t0
    print(f"[dryrun] done in {seconds:.0f} s", flush=True)
    return seconds


def _build_and_run(out: Path, only: Optional[list]) -> None:
    data = out / "imagefolder"
    if not (data / "val").is_dir():
        make_imagefolder(data)
    ckpt = out / "ofa_proxyless_random_w1.3.pth"
    if not ckpt.exists():
        make_ofa_checkpoint(ckpt, data)
    profile = write_profile(out, data, ckpt)
    import_main([str(ckpt), "--profile", str(profile)])
    run_chain(str(profile), out / "executed", only)


def main(argv: Optional[list] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "build" / "dryrun"))
    ap.add_argument("--only", nargs="*", help="notebook prefixes, e.g. 01 02 03")
    a = ap.parse_args(argv)
    run_dryrun(Path(a.out), a.only)


if __name__ == "__main__":
    main()
