"""Progressive shrinking (OFA §3.2) of the APQ supernet, FP32 (APQ §3.1 trains the
supernet in full precision and quantizes per sample later).

The schedule is the profile's ``supernet.phases`` list; every phase is data (see
:class:`Phase`): which kernels, depths and expand ratios it samples, how many subnets per
step (gradients accumulated), whether it distils. Distillation is *in place*: the first
subnet of every distilling step is the phase's largest subnet, trained on the labels, and
its detached logits are the soft targets of the other subnets in the same step. That
costs no extra forward pass and no second model (a frozen teacher would add a full
forward per step), and it keeps training the largest subnet while the space shrinks.

Checkpoints (weights, optimizer, phase/epoch, RNG, curves) go to the artifact's
``.partial`` directory after every epoch; a killed run resumes the same schedule (the
data order depends only on the epoch, the sampled subnets only on (seed, phase, epoch,
step)). Multi-GPU: ``torchrun --nproc_per_node=N -m apq_lib.supernet.train --profile P``
(DDP; every rank samples the same subnets; the global batch ``data.batch_size`` is split
over the ranks).

CPU notes: activations are channels-last (3-5x faster depthwise convs); on shared cores use
``OMP_NUM_THREADS=1`` or ``OMP_WAIT_POLICY=PASSIVE`` — an oversubscribed OpenMP pool that
spin-waits makes every step several times slower.

This module is the training loop; the work directory's lock and checkpoint files are in
:mod:`apq_lib.supernet.checkpoint`, the artifact (key, loading) in
:mod:`apq_lib.supernet.artifact`, the artifact cache, the command line and the DDP set-up in
:mod:`apq_lib.supernet.launch`; their former names here still work.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..artifacts import load_state, save_state, write_json
from ..config import ConfigError, Profile
from ..progress import tqdm
from ..runtime import stream_rng, stream_seed
from .artifact import (  # noqa: F401  (re-exported: their home before the split)
    STAGE,
    SUPERNET_KEY,
    _bn_meta,
    _checkpoint_sha256,
    init_checkpoint,
    load_supernet,
    phase_file,
    require_supernet,
    supernet_artifact_config,
)
from .checkpoint import acquire_lock, load_checkpoint, save_checkpoint
from .metrics import evaluate_subnet
from .network import APQSupernet
from .schedule import Phase, PhaseSampler
from .static import load_tensor_state, tensor_state

__all__ = ["train_supernet", "get_trained_supernet", "load_supernet",  # noqa: F822
           "require_supernet", "supernet_artifact_config", "init_checkpoint", "main"]

# The launch layer (artifact cache, CLI, DDP set-up) imports this module, so its names are
# reached from here lazily (the names' home before the split; python -m and the
# apq-train-supernet script still start here).
_LAUNCH = ("get_trained_supernet", "main", "_parse_overrides")


def __getattr__(name):
    if name in _LAUNCH:
        return getattr(importlib.import_module(".launch", __package__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------- helpers
def _make_optimizer(net: torch.nn.Module, lr: float, sn) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in net.named_parameters():
        if name.endswith("a_quant.alpha"):
            continue                      # PACT clips: unused while training in FP32
        (decay if p.dim() > 1 and "transforms" not in name else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": sn.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if sn.optimizer == "adam":
        return torch.optim.Adam(groups, lr=lr)
    return torch.optim.SGD(groups, lr=lr, momentum=sn.momentum, nesterov=sn.nesterov)


def _lr_at(phase: Phase, t: int, total: int, warmup_steps: int) -> float:
    if t < warmup_steps:
        return phase.lr * (t + 1) / warmup_steps
    return 0.5 * phase.lr * (1 + math.cos(math.pi * (t - warmup_steps) /
                                          max(1, total - warmup_steps)))


def _kd_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """KL(softmax(teacher) ‖ softmax(student)), mean over the batch (soft targets, T=1)."""
    return F.kl_div(F.log_softmax(student, 1), F.softmax(teacher, 1), reduction="batchmean")


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    if _rank_world()[1] > 1:
        dist.barrier()


# --------------------------------------------------------------------------- training
def train_supernet(net: APQSupernet, data, cfg: Profile, workdir: Path | str,
                   device=None, progress: bool = True, stop_after_epochs: Optional[int] = None,
                   on_step: Optional[Callable[[int, int, int], None]] = None) -> Optional[dict]:
    """Run (or resume) ``cfg.supernet.phases`` on ``net``, checkpointing into ``workdir``.

    Writes ``supernet.safetensors`` + ``info.json`` when done and returns ``info``
    (curves, seconds). ``stop_after_epochs``: return ``None`` after that many epochs of
    this call (as if killed after the checkpoint). ``on_step(phase, epoch, step)`` is
    called before each step (tests raise from it to simulate a kill mid-epoch)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    device = device or next(net.parameters()).device
    rank, world = _rank_world()
    final, info_p = workdir / "supernet.safetensors", workdir / "info.json"
    if final.exists() and info_p.exists():
        load_tensor_state(net, load_state(final)[0])
        return json.loads(info_p.read_text())
    lock_fd = acquire_lock(workdir / "train.lock") if rank == 0 else None
    try:
        return _train_phases(net, data, cfg, workdir, device, progress, stop_after_epochs,
                             on_step, rank, world)
    finally:
        if lock_fd is not None:             # not left in the published artifact
            (workdir / "train.lock").unlink(missing_ok=True)
            os.close(lock_fd)               # releases the flock


def _train_phases(net, data, cfg, workdir, device, progress, stop_after_epochs, on_step,
                  rank, world) -> Optional[dict]:
    sn, space = cfg.supernet, net.space
    final, info_p, ckpt = (workdir / "supernet.safetensors", workdir / "info.json",
                           workdir / "checkpoint.safetensors")
    phases = [Phase.from_dict(p, f"supernet.phases[{i}]") for i, p in enumerate(sn.phases)]
    meta = {"phase": 0, "epoch": 0, "history": [], "seconds": 0.0}
    if ckpt.exists():
        meta = load_checkpoint(ckpt, net)
    model = net
    if world > 1:
        # 1x1 conv grads come back with channels-last strides that differ from the bucket
        # views only in size-1 dims (no copy cost); silence DDP's stride warning for them
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view")
        model = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True)
    if data.num_classes > cfg.space.num_classes:
        raise ConfigError(f"space.num_classes={cfg.space.num_classes} but the dataset "
                          f"{data.name} has {data.num_classes} classes: the head cannot "
                          f"predict them all; set space.num_classes: {data.num_classes}")
    if cfg.data.batch_size % world:
        raise ConfigError(f"data.batch_size={cfg.data.batch_size} must divide by the "
                          f"{world} ranks")
    loader = data.loader("train", batch_size=cfg.data.batch_size // world, shuffle=True,
                         seed=stream_seed(cfg.seed, "supernet", "batches"), rank=rank,
                         world_size=world, drop_last=True)
    steps = len(loader)
    if steps == 0:
        raise ConfigError("data: fewer training images than one batch per rank")
    recal = data.fixed_batches("train", sn.bn_recal_images) if rank == 0 else None
    val = data.fixed_batches("val", sn.eval_images) if rank == 0 else None
    history, done_epochs = list(meta["history"]), 0
    for p in range(meta["phase"], len(phases)):
        ph = phases[p]
        sampler = PhaseSampler(space, ph)
        first = meta["epoch"] if p == meta["phase"] else 0
        if first >= ph.epochs:
            continue
        opt = _make_optimizer(net, ph.lr, sn)
        if first > 0:
            load_checkpoint(ckpt, net, opt)
        elif sampler.elastic_width and not getattr(net, "keep_channel_order", False):
            net.sort_channels()            # OFA: importance-sort before elastic width
                                           # (never on imported weights: their order is OFA's)
        total = ph.epochs * steps
        warm = sn.warmup_epochs * steps if p == 0 else 0
        for e in range(first, ph.epochs):
            g_epoch = sum(q.epochs for q in phases[:p]) + e
            loader.set_epoch(g_epoch)
            net.train()
            t0, c0, loss_sum, correct, seen = time.time(), time.process_time(), 0.0, 0, 0
            bar = tqdm(loader, total=steps, desc=f"{ph.name} {e + 1}/{ph.epochs}",
                       disable=not progress or rank != 0, leave=False)
            for s, (x, y) in enumerate(bar):
                if on_step is not None:
                    on_step(p, e, s)
                lr = _lr_at(ph, e * steps + s, total, warm)
                for gr in opt.param_groups:
                    gr["lr"] = lr
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                opt.zero_grad(set_to_none=True)
                teacher = None
                for i, sub in enumerate(sampler.plan(stream_rng(cfg.seed, "supernet", p, e, s))):
                    net.set_active_subnet(sub)
                    out = model(x)
                    loss = F.cross_entropy(out, y, label_smoothing=sn.label_smoothing)
                    if teacher is not None:
                        loss = loss + sn.distill_weight * _kd_loss(out, teacher)
                    if not torch.isfinite(loss.detach()):
                        raise FloatingPointError(
                            f"supernet training: the loss became {float(loss.detach())} in phase "
                            f"{p} ({ph.name!r}), epoch {e}, step {s} (subnet {i} of the "
                            f"step); look at supernet.phases[{p}].lr (lower it)"
                            + (", supernet.distill_weight" if teacher is not None else "")
                            + f" and supernet.warmup_epochs. Checkpoint of the last "
                            f"finished epoch: {ckpt}")
                    loss.backward()
                    if i == 0:
                        loss_sum += float(loss.detach()) * len(y)
                        correct += int((out.argmax(1) == y).sum())
                        seen += len(y)
                        teacher = out.detach() if ph.distill else None
                opt.step()
                if s % max(1, sn.log_every) == 0:
                    bar.set_postfix(loss=f"{loss_sum / max(seen, 1):.3f}", lr=f"{lr:.4f}")
            net.set_active_subnet(space.largest())
            train_s = time.time() - t0
            row = {"phase": ph.name, "phase_index": p, "phase_epoch": e, "epoch": g_epoch,
                   "lr": lr, "loss": loss_sum / seen, "train_top1": 100.0 * correct / seen,
                   "steps": steps, "subnets_per_step": len(sampler.plan(stream_rng(0, "supernet"))),
                   "seconds": train_s, "cpu_seconds": time.process_time() - c0}
            if rank == 0:
                t1 = time.time()
                for tag, sub in (("largest", space.largest()), ("smallest", space.smallest())):
                    row[f"val_{tag}"] = evaluate_subnet(net, sub, recal, {"val": val},
                                                        device)["val"]
                row["eval_seconds"] = time.time() - t1
                if progress:
                    print(f"[supernet] {ph.name} epoch {e + 1}/{ph.epochs}: loss "
                          f"{row['loss']:.3f}, val largest {row['val_largest']:.2f} %, "
                          f"smallest {row['val_smallest']:.2f} %, {train_s:.0f}s", flush=True)
            history.append(row)
            if rank == 0 and e + 1 == ph.epochs:
                # the weights at the end of every phase (before the checkpoint that moves
                # past it, so a resumed run never lacks one): the full phase's snapshot is
                # the fixed-architecture baseline trained from scratch (notebook 05)
                save_state(tensor_state(net), workdir / phase_file(p, ph.name))
            meta = {"phase": p if e + 1 < ph.epochs else p + 1,
                    "epoch": e + 1 if e + 1 < ph.epochs else 0, "history": history,
                    "seconds": meta["seconds"] + time.time() - t0}
            if rank == 0:
                save_checkpoint(ckpt, net, opt, meta)
            _barrier()
            done_epochs += 1
            if stop_after_epochs is not None and done_epochs >= stop_after_epochs:
                return None
    net.set_active_subnet(space.largest())
    info = {"history": history, "seconds": meta["seconds"],
            "train_seconds": sum(r["seconds"] for r in history),
            "epoch_seconds": [r["seconds"] for r in history],
            "phases": [dataclasses.asdict(p) for p in phases], "world_size": world,
            "device": str(device), "threads": torch.get_num_threads()}
    if rank == 0:
        save_state(tensor_state(net), final, _bn_meta(space))
        write_json(info_p, info, sort_keys=False)
        ckpt.unlink(missing_ok=True)
    _barrier()
    return info


if __name__ == "__main__":
    from .launch import main
    main()
