"""APQ §3.2 quantization-aware accuracy predictor: encoder, MLPs, data collection,
training, predictor transfer, the sample-efficiency study and the Table-4 controls."""
import importlib as _importlib

from .controls import *  # noqa: F401,F403
from .controls import __all__ as _c
from .encoder import *  # noqa: F401,F403
from .encoder import __all__ as _e
from .metrics import *  # noqa: F401,F403
from .metrics import __all__ as _m
from .model import *  # noqa: F401,F403
from .model import __all__ as _mo
from .pairs import *  # noqa: F401,F403
from .pairs import __all__ as _pa
from .samples import *  # noqa: F401,F403
from .samples import __all__ as _sa
from .study import *  # noqa: F401,F403
from .study import __all__ as _s
from .train import *  # noqa: F401,F403
from .train import __all__ as _t
from .transfer import *  # noqa: F401,F403
from .transfer import __all__ as _tr

# collect (the CLI: python -m apq_lib.predictor.collect) and pipeline load lazily, so
# running the CLI does not import its module twice
_LAZY = {"parse_shard_arg": "collect"}
_LAZY.update({n: "pipeline" for n in (
    "PAIR_STAGES", "MODEL_STAGE", "collection_config", "sample_store", "make_evaluator",
    "trained_supernet", "collect_pairs", "collect_cli", "train_predictors", "predictor_config",
    "save_predictors", "load_predictor", "AccuracyOracle", "predictor_artifact_key")})

__all__ = [*_c, *_e, *_m, *_mo, *_pa, *_sa, *_s, *_t, *_tr, *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        return getattr(_importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
