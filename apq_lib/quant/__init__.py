"""Mixed-precision fake quantization: functional ops, quantizers, modules, kernels."""
from .functional import *  # noqa: F401,F403
from .functional import __all__ as _f
from .quantizers import *  # noqa: F401,F403
from .quantizers import __all__ as _q

__all__ = [*_f, *_q]
