"""Search over ⟨architecture, quantization policy⟩: APQ's evolution, random search,
realisation of the found model (and the baselines: HAQ, HAWQ-V2, multi-stage)."""
from .genome import *  # noqa: F401,F403
from .genome import __all__ as _genome
from .evolution import *  # noqa: F401,F403
from .evolution import __all__ as _evolution
from .random_search import *  # noqa: F401,F403
from .random_search import __all__ as _random
from .scoring import *  # noqa: F401,F403
from .scoring import __all__ as _scoring
from .sweep import *  # noqa: F401,F403
from .sweep import __all__ as _sweep
from .realize import *  # noqa: F401,F403
from .realize import __all__ as _realize

# baselines (notebook 05): HAQ, HAWQ-V2, the multi-stage pipeline, fixed-architecture
# helpers and the search-cost accounting
from .cost import (CostMeter, StageCost, apq_cost_from_results,  # noqa: F401
                   stages_from_results)
from .fixed import (LayerCostTable, PolicyEvaluator, build_fixed_model,  # noqa: F401
                    quantize_with_policy, uniform_policy)
from .haq import (DDPGAgent, DDPGConfig, HAQLayer, HAQResult, HAQSearch,  # noqa: F401
                  action_wall, bits_from_action, haq_layers)
from .hawq import (hawq_allocate, hawq_sensitivity, hessian_traces,  # noqa: F401
                   hutchinson_trace, pareto_frontier)
from .multistage import MultiStagePipeline, MultiStageResult, fp32_arch_search  # noqa: F401

_baselines = ["CostMeter", "StageCost", "apq_cost_from_results", "stages_from_results",
              "LayerCostTable", "PolicyEvaluator", "build_fixed_model", "quantize_with_policy",
              "uniform_policy", "DDPGAgent", "DDPGConfig", "HAQLayer", "HAQResult",
              "HAQSearch", "action_wall", "bits_from_action", "haq_layers", "hawq_allocate",
              "hawq_sensitivity", "hessian_traces", "hutchinson_trace", "pareto_frontier",
              "MultiStagePipeline", "MultiStageResult", "fp32_arch_search"]

__all__ = [*_genome, *_evolution, *_random, *_scoring, *_sweep, *_realize, *_baselines]
