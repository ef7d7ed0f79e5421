"""Once-for-all supernet with APQ's fine-grained channels and per-block bits."""
from .space import *  # noqa: F401,F403
from .space import __all__ as _space_all

__all__ = list(_space_all)
