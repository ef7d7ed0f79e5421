"""The supernet trainer's work-directory files (:mod:`apq_lib.supernet.train`): the
one-trainer-per-directory lock and the per-epoch checkpoint (weights, optimizer state and
scalars, torch RNG, the caller's meta)."""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

import torch

from ..artifacts import load_state, save_state
from .static import load_tensor_state, tensor_state

__all__ = ["acquire_lock", "save_checkpoint", "load_checkpoint"]


def save_checkpoint(path: Path, net, opt, meta: dict) -> None:
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


def load_checkpoint(path: Path, net, opt=None) -> dict:
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


def acquire_lock(lock: Path) -> int:
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
