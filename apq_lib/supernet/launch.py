"""Launching the supernet stage: :func:`get_trained_supernet` (the artifact from the cache,
trained, resumed or imported from once-for-all weights when missing) and the command line
``python -m apq_lib.supernet.train --profile P`` (also under ``torchrun``: DDP, see
:mod:`apq_lib.supernet.train`)."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from ..artifacts import ArtifactStore, config_key
from ..config import Profile, load_profile
from ..data import load_data
from ..runtime import get_device, seed_everything
from .artifact import STAGE, init_checkpoint, load_supernet, supernet_artifact_config
from .network import APQSupernet
from .ofa_import import import_ofa_proxyless, import_supernet
from .space import SearchSpace
from .train import _barrier, _rank_world, train_supernet

__all__ = ["get_trained_supernet", "main"]


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
            import_supernet(cfg, work, data, device, progress)
        else:
            train_supernet(APQSupernet(space).to(device), data, cfg, work, device, progress)

    art = store.build(STAGE, supernet_artifact_config(cfg), build, force=force)
    net = load_supernet(art.file("supernet.safetensors"), space, device)
    info = json.loads(art.file("info.json").read_text())
    info["artifact"] = str(art.path)
    return net, info


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


def import_ofa_main(argv: Optional[list] = None) -> None:
    """``apq-import-ofa CHECKPOINT --profile P``: the supernet artifact of profile ``P``
    with ``supernet.init_from: CHECKPOINT``, where notebook 01 and notebooks 02-08 look."""
    ap = argparse.ArgumentParser(description="Import an official once-for-all ProxylessNAS "
                                 "checkpoint as the supernet artifact of a profile")
    ap.add_argument("checkpoint", help="OFA checkpoint (.pth / .pth.tar; weights only)")
    ap.add_argument("--profile", default="imagenet")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="profile overrides, as for the notebooks")
    ap.add_argument("--out", default=None, help="artifact store root (default: "
                    "$APQ_ARTIFACTS or artifacts/)")
    ap.add_argument("--force", action="store_true", help="import again even if cached")
    a = ap.parse_args(argv)
    over = _parse_overrides(a.set)
    over["supernet.init_from"] = str(Path(a.checkpoint).expanduser().absolute())
    cfg = load_profile(a.profile, over)
    data = None
    if any(p.epochs > 0 for p in cfg.supernet.phases):
        data = load_data(cfg.data)
    _, info = get_trained_supernet(cfg, data, ArtifactStore(a.out), a.force)
    print(f"[apq-import-ofa] {a.checkpoint} -> {info['artifact']} ({info['seconds']:.1f} s); "
          f"notebooks 01-08 of profile {cfg.name!r} use it when its supernet.init_from names "
          f"this checkpoint (the artifact is keyed by the file's sha256)")
