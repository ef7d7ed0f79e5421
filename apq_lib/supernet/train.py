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
"""
from __future__ import annotations

import argparse
import dataclasses
import fcntl
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

from ..artifacts import (
    REPO_ROOT,
    ArtifactStore,
    MissingInputError,
    StageKey,
    config_key,
    file_sha256,
    load_state,
    save_state,
    write_json,
)
from ..config import ConfigError, Profile, load_profile
from ..runtime import get_device, make_rng, seed_everything
from .metrics import evaluate_subnet
from .network import APQSupernet
from .schedule import Phase, PhaseSampler
from .space import SearchSpace
from .static import load_tensor_state, tensor_state

__all__ = ["train_supernet", "get_trained_supernet", "load_supernet", "require_supernet",
           "supernet_artifact_config", "init_checkpoint", "main"]

STAGE = "supernet"
# What the trained supernet depends on (its artifact key). Version 3: keys derived from the
# declared fields (typed phases); the artifact holds the weights at the end of every phase.
# Not read by training: notebook 01's random-subnet evaluation and the test split.
SUPERNET_KEY = StageKey(STAGE, version=3, reads=("seed", "space", "data", "supernet"),
                        skip=("supernet.n_random_subnets", "supernet.random_eval_images",
                              "data.test_subset"))


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


def _save_checkpoint(path: Path, net, opt, meta: dict) -> None:
    state = {f"model.{k}": v for k, v in tensor_state(net).items()}
    osd = opt.state_dict()
    scalars = {}
    for idx, st in osd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                state[f"opt.{idx}.{k}"] = v
            else:
                scalars[f"{idx}.{k}"] = v
    state["rng.torch"] = torch.get_rng_state()
    save_state(state, path, {**meta, "opt_groups": osd["param_groups"],
                             "opt_scalars": scalars})


def _load_checkpoint(path: Path, net, opt=None) -> dict:
    state, meta = load_state(path)
    load_tensor_state(net, {k[6:]: v for k, v in state.items() if k.startswith("model.")})
    if opt is not None:
        st: dict = {}
        for k, v in state.items():
            if k.startswith("opt."):
                _, idx, name = k.split(".", 2)
                st.setdefault(int(idx), {})[name] = v
        for k, v in meta.get("opt_scalars", {}).items():
            idx, name = k.split(".", 1)
            st.setdefault(int(idx), {})[name] = v
        opt.load_state_dict({"state": st, "param_groups": meta["opt_groups"]})
    torch.set_rng_state(state["rng.torch"])
    return meta


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
    lock_fd = _acquire(workdir / "train.lock") if rank == 0 else None
    try:
        return _train_phases(net, data, cfg, workdir, device, progress, stop_after_epochs,
                             on_step, rank, world)
    finally:
        if lock_fd is not None:             # not left in the published artifact
            (workdir / "train.lock").unlink(missing_ok=True)
            os.close(lock_fd)               # releases the flock


def _acquire(lock: Path) -> int:
    """One trainer per work directory: an exclusive ``flock`` on ``lock`` (released by the
    kernel when the holder exits or dies), refused while another process holds it. The
    file holds the holder's pid, for the message only. Returns the fd to close."""
    fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise RuntimeError(f"{lock.parent} is being trained by process {pid}; wait for "
                           f"it (or end it) before training here") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def _train_phases(net, data, cfg, workdir, device, progress, stop_after_epochs, on_step,
                  rank, world) -> Optional[dict]:
    from ..progress import tqdm

    sn, space = cfg.supernet, net.space
    final, info_p, ckpt = (workdir / "supernet.safetensors", workdir / "info.json",
                           workdir / "checkpoint.safetensors")
    phases = [Phase.from_dict(p, f"supernet.phases[{i}]") for i, p in enumerate(sn.phases)]
    meta = {"phase": 0, "epoch": 0, "history": [], "seconds": 0.0}
    if ckpt.exists():
        meta = _load_checkpoint(ckpt, net)
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
                         seed=cfg.seed, rank=rank, world_size=world, drop_last=True)
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
            _load_checkpoint(ckpt, net, opt)
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
                for i, sub in enumerate(sampler.plan(make_rng(cfg.seed, p, e, s))):
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
                   "steps": steps, "subnets_per_step": len(sampler.plan(make_rng(0))),
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
                _save_checkpoint(ckpt, net, opt, meta)
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


# --------------------------------------------------------------------------- artifact
def phase_file(index: int, name: str) -> str:
    """File name of the weights at the end of phase ``index`` in the supernet artifact."""
    return f"phase{index}_{name}.safetensors"


def init_checkpoint(cfg: Profile) -> Optional[Path]:
    """``supernet.init_from`` as a path (relative paths from the repository root)."""
    p = cfg.supernet.init_from
    if p is None:
        return None
    p = Path(p).expanduser()
    return p if p.is_absolute() else REPO_ROOT / p


_SHA: dict = {}


def _checkpoint_sha256(path: Path) -> str:
    if not path.is_file():
        raise MissingInputError(f"supernet.init_from: {path} does not exist: put the "
                                f"once-for-all checkpoint there (README: 'ImageNet from the "
                                f"official OFA weights') or fix the profile")
    st = path.stat()
    tag = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if tag not in _SHA:
        _SHA[tag] = file_sha256(path)
    return _SHA[tag]


def supernet_artifact_config(cfg: Profile) -> dict:
    """What the trained supernet depends on (the artifact key is its hash): the fields
    :data:`SUPERNET_KEY` declares; an imported supernet's ``init_from`` by the sha256 of
    the checkpoint (not its path)."""
    conf = SUPERNET_KEY.config(cfg)
    ckpt = init_checkpoint(cfg)
    if ckpt is not None:
        conf["supernet"]["init_from"] = {"sha256": _checkpoint_sha256(ckpt)}
    return conf


def _bn_meta(space: SearchSpace) -> dict:
    return {"bn_eps": space.cfg.bn_eps, "bn_momentum": space.cfg.bn_momentum}


def load_supernet(path: Path | str, space: SearchSpace, device=None) -> APQSupernet:
    """The supernet saved at ``path`` over ``space``; a file that records another BN eps
    than the space's (eps is not in a state dict) is an error."""
    net = APQSupernet(space)
    state, meta = load_state(path)
    eps = meta.get("bn_eps")
    if eps is not None and abs(float(eps) - space.cfg.bn_eps) > 1e-12:
        raise ConfigError(f"space.bn_eps: {path} was saved with BN eps {eps:g}, the profile "
                          f"has {space.cfg.bn_eps:g}; set space.bn_eps: {eps:g}")
    load_tensor_state(net, state)
    return net.to(device or "cpu").eval()


def require_supernet(cfg: Profile, store: ArtifactStore, device=None, file: str =
                     "supernet.safetensors") -> tuple[APQSupernet, str, object]:
    """``(supernet in eval mode, artifact key, artifact)`` from notebook 01's artifact, with
    the profile's weight calibration (``quant:``) on its quantizers; never trains (a missing
    artifact or file raises :class:`MissingInputError` naming notebook 01). ``file``: e.g.
    a phase snapshot (:func:`phase_file`)."""
    from ..quant import configure_weight_calibration
    key = config_key(supernet_artifact_config(cfg))
    art = store.get(STAGE, key)
    if art is None:
        raise MissingInputError(f"artifacts/{STAGE}/{key} (the trained supernet of profile "
                                f"{cfg.name!r}) is missing: run notebook 01_supernet first "
                                f"(make reproduce runs them in order)")
    f = art.path / file
    if not f.exists():
        raise MissingInputError(f"{art.path} has no {file}: rerun notebook 01_supernet with "
                                f"force=True (the artifact was written by older code)")
    net = load_supernet(f, SearchSpace(cfg.space), device)
    return configure_weight_calibration(net, cfg.quant), key, art


def get_trained_supernet(cfg: Profile, data, store: Optional[ArtifactStore] = None,
                         force: bool = False, device=None,
                         progress: bool = True) -> tuple[APQSupernet, dict]:
    """The trained supernet of ``cfg`` from the artifact cache (``artifacts/supernet/``),
    training (or resuming) it first when missing. Returns ``(supernet, info)``; ``info``
    holds the curves (``history``), ``train_seconds``, ``epoch_seconds`` and ``artifact``."""
    store = store or ArtifactStore()
    device = device or get_device(cfg.device)
    space = SearchSpace(cfg.space)

    def build(work: Path) -> None:
        seed_everything(cfg.seed)
        if cfg.supernet.init_from is not None:
            from .ofa_import import import_supernet
            import_supernet(cfg, work, data, device, progress)
        else:
            train_supernet(APQSupernet(space).to(device), data, cfg, work, device, progress)

    art = store.build(STAGE, supernet_artifact_config(cfg), build, force=force)
    net = load_supernet(art.file("supernet.safetensors"), space, device)
    info = json.loads(art.file("info.json").read_text())
    info["artifact"] = str(art.path)
    return net, info


# --------------------------------------------------------------------------- CLI
def _parse_overrides(items: list[str]) -> dict:
    out = {}
    for it in items or []:
        k, _, v = it.partition("=")
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def main(argv: Optional[list[str]] = None) -> None:
    """``python -m apq_lib.supernet.train --profile smoke`` (also under ``torchrun``)."""
    ap = argparse.ArgumentParser(description="Train the APQ supernet (progressive shrinking)")
    ap.add_argument("--profile", default="default")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="profile overrides, e.g. supernet.phases='[...]' data.train_subset=2048")
    ap.add_argument("--force", action="store_true", help="retrain even if cached")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    from ..data import load_data

    world = int(os.environ.get("WORLD_SIZE", "1"))
    cfg = load_profile(a.profile, _parse_overrides(a.set))
    if world > 1:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = torch.cuda.is_available() and cfg.device != "cpu"
        if use_cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if use_cuda else "gloo")
        device = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    else:
        device = get_device(cfg.device)
    rank = _rank_world()[0]
    seed_everything(cfg.seed)
    data = load_data(cfg.data)
    store = ArtifactStore()
    conf = supernet_artifact_config(cfg)
    key = config_key(conf)
    if not a.force and store.get(STAGE, key) is not None:
        if rank == 0:
            print(f"[supernet] cached: {store.path(STAGE, key)}")
    elif world == 1:
        _, info = get_trained_supernet(cfg, data, store, a.force, device, not a.no_progress)
        print(f"[supernet] trained in {info['train_seconds']:.0f}s: {info['artifact']}")
    else:
        work = store.path(STAGE, key).with_name(key + ".partial")
        if cfg.supernet.init_from is not None:     # finetune of an imported supernet
            from .ofa_import import import_ofa_proxyless
            net = import_ofa_proxyless(init_checkpoint(cfg), SearchSpace(cfg.space))
        else:
            net = APQSupernet(SearchSpace(cfg.space))
        net = net.to(device)
        info = train_supernet(net, data, cfg, work, device, not a.no_progress)
        if rank == 0:   # publish: build() finds the finished files and only hashes them
            art = store.build(STAGE, conf, lambda w: train_supernet(net, data, cfg, w, device,
                                                                   False), force=a.force)
            print(f"[supernet] trained in {info['train_seconds']:.0f}s on {world} ranks: "
                  f"{art.path}")
        _barrier()
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
