"""Search over ⟨architecture, quantization policy⟩: APQ's evolution, random search,
realisation of the found model. The baselines live in :mod:`apq_lib.baselines`."""
from ..realize import *  # noqa: F401,F403
from ..realize import __all__ as _realize
from .evolution import *  # noqa: F401,F403
from .evolution import __all__ as _evolution
from .genome import *  # noqa: F401,F403
from .genome import __all__ as _genome
from .random_search import *  # noqa: F401,F403
from .random_search import __all__ as _random
from .scoring import *  # noqa: F401,F403
from .scoring import __all__ as _scoring
from .sweep import *  # noqa: F401,F403
from .sweep import __all__ as _sweep

__all__ = [*_genome, *_evolution, *_random, *_scoring, *_sweep, *_realize]
