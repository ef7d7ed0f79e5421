"""Once-for-all supernet with APQ's fine-grained channels and per-block bits.

``space`` (the shared search-space contract), ``elastic`` (elastic kernel / width / BN
ops), ``block`` (:class:`ElasticMBConv`), ``network`` (:class:`APQSupernet`), ``static``
(exported standalone subnets), ``ofa_import`` (the official once-for-all weights),
``metrics`` (BN recalibration, top-1, MACs), ``schedule`` (progressive-shrinking phases),
``train`` (training loop, resume, DDP), ``checkpoint`` (its lock and checkpoint files),
``artifact`` (the supernet artifact: key, loading) and ``launch`` (artifact cache, CLI).
"""
import importlib

from .artifact import load_supernet, supernet_artifact_config
from .block import *  # noqa: F401,F403
from .block import __all__ as _block_all
from .elastic import *  # noqa: F401,F403
from .elastic import __all__ as _elastic_all
from .metrics import *  # noqa: F401,F403
from .metrics import __all__ as _metrics_all
from .network import *  # noqa: F401,F403
from .network import __all__ as _network_all
from .ofa_import import *  # noqa: F401,F403
from .ofa_import import __all__ as _ofa_all
from .schedule import *  # noqa: F401,F403
from .schedule import __all__ as _schedule_all
from .space import *  # noqa: F401,F403
from .space import __all__ as _space_all
from .static import *  # noqa: F401,F403
from .static import __all__ as _static_all

# ``train`` (and ``launch``, which imports it) load lazily so ``python -m
# apq_lib.supernet.train`` runs cleanly
_LAZY = {"train_supernet": "train", "get_trained_supernet": "launch"}
__all__ = [*_space_all, *_static_all, *_elastic_all, *_block_all, *_network_all,
           *_metrics_all, *_schedule_all, *_ofa_all, "load_supernet",
           "supernet_artifact_config", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
