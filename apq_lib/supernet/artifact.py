"""The supernet artifact (notebook 01's ``artifacts/supernet/<key>``): its stage key and
configuration (an imported supernet keyed by its checkpoint's sha256), the phase-snapshot
file names, and loading a saved supernet; :func:`require_supernet` is how the later
notebooks get it (it never trains). Training it: :mod:`apq_lib.supernet.train`; building it
through the artifact cache: :func:`apq_lib.supernet.launch.get_trained_supernet`."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..artifacts import (
    REPO_ROOT,
    ArtifactStore,
    MissingInputError,
    StageKey,
    config_key,
    file_sha256,
    load_state,
)
from ..config import ConfigError, Profile
from ..quant import configure_weight_calibration
from .network import APQSupernet
from .space import SearchSpace
from .static import load_tensor_state

__all__ = ["STAGE", "SUPERNET_KEY", "phase_file", "init_checkpoint",
           "supernet_artifact_config", "load_supernet", "require_supernet"]

STAGE = "supernet"
# What the trained supernet depends on (its artifact key). Version 3: keys derived from the
# declared fields (typed phases); the artifact holds the weights at the end of every phase.
# Version 4: the subnets of each step drawn from the registered "supernet" RNG stream.
# Not read by training: notebook 01's random-subnet evaluation and the test split.
SUPERNET_KEY = StageKey(STAGE, version=5, reads=("seed", "space", "data", "supernet"),
                        skip=("supernet.n_random_subnets", "supernet.random_eval_images",
                              "data.test_subset"))


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
