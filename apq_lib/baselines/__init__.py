"""The methods APQ is compared against (notebook 05): fixed precision, HAQ (DDPG), HAWQ-V2,
the multi-stage pipeline (NAS → channel pruning → HAQ), their search-cost accounting and the
suite that runs them all on one network. The pruning methods themselves live in
:mod:`apq_lib.pruning`; APQ's own search lives in :mod:`apq_lib.search`."""
from .cost import *  # noqa: F401,F403
from .cost import __all__ as _cost
from .fbnet import *  # noqa: F401,F403
from .fbnet import __all__ as _fbnet
from .fixed import *  # noqa: F401,F403
from .fixed import __all__ as _fixed
from .haq import *  # noqa: F401,F403
from .haq import __all__ as _haq
from .hawq import *  # noqa: F401,F403
from .hawq import __all__ as _hawq
from .multistage import *  # noqa: F401,F403
from .multistage import __all__ as _multistage
from .suite import *  # noqa: F401,F403
from .suite import __all__ as _suite

__all__ = [*_cost, *_fbnet, *_fixed, *_haq, *_hawq, *_multistage, *_suite]
