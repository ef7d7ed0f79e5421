"""Mixed-precision fake quantization (APQ §3.3, HAQ §3): functional ops and Triton kernels,
range calibration, quantizers (linear / PACT / static / LSQ / k-means), quantized layers and
policies, BN folding, PTQ and QAT helpers."""
from . import kernels
from .calibration import *  # noqa: F401,F403
from .calibration import __all__ as _c
from .folding import *  # noqa: F401,F403
from .folding import __all__ as _fo
from .functional import *  # noqa: F401,F403
from .functional import __all__ as _f
from .kernels import *  # noqa: F401,F403
from .kernels import __all__ as _k
from .kmeans import *  # noqa: F401,F403
from .kmeans import __all__ as _km
from .modules import *  # noqa: F401,F403
from .modules import __all__ as _m
from .profile import *  # noqa: F401,F403
from .profile import __all__ as _p
from .quantizers import *  # noqa: F401,F403
from .quantizers import __all__ as _q
from .training import *  # noqa: F401,F403
from .training import __all__ as _t

__all__ = [*_f, *_q, *_c, *_km, *_m, *_fo, *_t, *_k, *_p, "kernels"]
