"""Pruning baselines: magnitude (unstructured) and MBConv channel (structured) pruning,
both on the Zhu & Gupta gradual schedule."""
from .schedule import *  # noqa: F401,F403
from .schedule import __all__ as _s
from .magnitude import *  # noqa: F401,F403
from .magnitude import __all__ as _m
from .channel import *  # noqa: F401,F403
from .channel import __all__ as _c
from .train import *  # noqa: F401,F403
from .train import __all__ as _t

__all__ = [*_s, *_m, *_c, *_t]
