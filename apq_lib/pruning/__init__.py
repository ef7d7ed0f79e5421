"""Pruning baselines: magnitude (unstructured) and MBConv channel (structured) pruning,
both on the Zhu & Gupta gradual schedule."""
from .channel import *  # noqa: F401,F403
from .channel import __all__ as _c
from .imp import *  # noqa: F401,F403
from .imp import __all__ as _imp
from .l0 import *  # noqa: F401,F403
from .l0 import __all__ as _l0
from .lmc import *  # noqa: F401,F403
from .lmc import __all__ as _lmc
from .magnitude import *  # noqa: F401,F403
from .magnitude import __all__ as _m
from .schedule import *  # noqa: F401,F403
from .schedule import __all__ as _s
from .train import *  # noqa: F401,F403
from .train import __all__ as _t
from .variational import *  # noqa: F401,F403
from .variational import __all__ as _v

__all__ = [*_s, *_m, *_c, *_t, *_v, *_l0, *_imp, *_lmc]
