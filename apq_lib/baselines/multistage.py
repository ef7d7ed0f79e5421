"""The multi-stage baseline of APQ §4 ("ProxylessNAS + AMC + HAQ"), on the suite's own
supernet, predictor and simulators:

1. FP32 architecture search: evolution over the supernet's architectures scored by the
   FP32 accuracy predictor, under the target measured at uniform 8 bits (times a slack,
   since pruning and mixed precision cut the cost further) — quantization-unaware;
2. channel pruning of the found model: L1-norm structured pruning of every MBConv's
   middle channels on a gradual schedule with finetuning (the pruned model physically
   has fewer channels);
3. HAQ on the pruned model under the real target (action wall on the simulator);
4. final quantization-aware finetune of the chosen policy.

Every stage's wall / CPU seconds go to a :class:`~apq_lib.baselines.cost.CostMeter`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from ..config import FinetuneConfig
from ..pruning import gradual_channel_prune
from ..pruning.train import accuracy
from ..search.evolution import EvolutionFinder
from ..supernet.metrics import recalibrate_bn
from .cost import CostMeter
from .fixed import LayerCostTable, PolicyEvaluator, to_float
from .haq import run_haq

__all__ = ["fp32_arch_search", "at_uniform_bits", "MultiStageResult", "MultiStagePipeline",
           "METHOD"]

METHOD = "Multi-stage"          # plots.METHOD_ORDER name (ProxylessNAS + AMC + HAQ analogue)


def at_uniform_bits(space, idx: np.ndarray, bits: Optional[int] = None) -> np.ndarray:
    """Index arrays with every active block's four bit columns set to ``bits`` (default the
    highest choice): the FP32 stage's view of a candidate's cost."""
    b = space.bit_choices.index(bits or max(space.bit_choices))
    out = np.array(idx, copy=True)
    active = out[..., 0] >= 0
    out[..., 2:][active] = b
    return out


def fp32_arch_search(space, score_fn: Callable, cost_fn: Callable, limit: float,
                     search_cfg=None, seed: int = 0, name: str = "cost", **kw):
    """Quantization-unaware evolution: ``score_fn`` (FP32 predictor, bits ignored) under
    ``cost_fn(at_uniform_bits(idx)) ≤ limit``. Returns the finder's ``SearchResult``."""
    cons = {name: (lambda idx: cost_fn(at_uniform_bits(space, idx)), limit)}
    return EvolutionFinder(space, score_fn, cons, cfg=search_cfg, seed=seed, **kw).run()


@dataclass
class MultiStageResult:
    metric: str
    target: float
    arch: dict                         # SubnetConfig.to_dict() of the FP32 search's pick
    predicted_fp32: float
    widths_before: list
    widths_after: list
    policy: dict                       # {layer: (w, a)} chosen by HAQ
    haq_accuracy: float                # reward-time accuracy (validation, short finetune)
    accuracy: float                    # after the final finetune, on the eval batches
    costs: dict                        # latency / energy / BitOps / size of the result
    met: bool
    stage_seconds: dict = field(default_factory=dict)
    model: Optional[nn.Module] = None
    correct: Optional[list] = None   # per-image correctness on the final batches, per seed


class MultiStagePipeline:
    """Runs the four stages for one (metric, target).

    ``export(arch_dict) -> nn.Module`` gives the FP32 subnet with inherited supernet weights
    (BN recalibrated); ``arch_cost(idx) -> [N]`` the cost of index arrays (the space LUT);
    ``batches``: dict with ``calib`` (list), ``train`` (endless iterator), ``reward`` (list,
    validation), ``final`` (list, test) and optionally ``recal`` (BN recalibration)
    batches; ``settings``: the profile's baselines
    section (``haq_*``, ``prune_*``, ``multistage_*``); ``recipe``: the final finetune (the
    profile's ``finetune:`` section)."""

    def __init__(self, space, score_fn: Callable, arch_cost: dict, export: Callable,
                 batches: dict, settings, input_shape, search_cfg=None, device=None,
                 meter: Optional[CostMeter] = None, seed: int = 0, progress: bool = False,
                 recipe=None, weight_kw: Optional[dict] = None, seeds: int = 1):
        self.space, self.score_fn, self.arch_cost = space, score_fn, arch_cost
        self.export, self.b, self.s = export, batches, settings
        self.input_shape, self.search_cfg = tuple(input_shape), search_cfg
        self.device = device or torch.device("cpu")
        self.meter = meter or CostMeter(self.device)
        self.seed, self.progress = seed, progress
        self.recipe = recipe or FinetuneConfig()     # the one final finetune (finetune:)
        self.weight_kw = weight_kw
        self.seeds = seeds              # finetune seeds of the final model

    def run(self, metric: str, target: float, method: str = METHOD) -> MultiStageResult:
        s, m, secs = self.s, self.meter, {}
        kind = metric.partition(":")[0]
        with m.stage(method, "1 FP32 architecture search") as t:
            res = fp32_arch_search(self.space, self.score_fn, self.arch_cost[kind],
                                   target * s.multistage_arch_slack, self.search_cfg,
                                   self.seed, name=kind)
        secs["arch_search"] = t["wall_s"]
        with m.stage(method, "2 channel pruning") as t:
            model = to_float(self.export(res.best_config)).to(self.device)
            train = self.b["train"]
            pr = gradual_channel_prune(model, train(f"multistage|prune|{metric}|{target}")
                                       if callable(train) else train, s.prune_steps,
                                       s.channel_prune_ratio, lr=s.prune_lr,
                                       device=self.device, step=self.space.cfg.channel_step)
            if self.b.get("recal") is not None:
                recalibrate_bn(model, self.b["recal"], self.device)
        secs["channel_pruning"] = t["wall_s"]
        with m.stage(method, "3 HAQ") as t:
            table = LayerCostTable(model, self.input_shape, ["bitfusion"])
            ev = PolicyEvaluator(model, table.names, self.b["calib"], self.b["train"],
                                 self.b["reward"], s.haq_finetune_steps,
                                 device=self.device, recal_batches=self.b["calib"],
                                 recipe=self.recipe, weight_kw=self.weight_kw, seed=self.seed)
            acc_fp = _fp32_accuracy(model, self.b["reward"], self.device)
            haq, layers = run_haq(table, ev, metric, target, acc_fp, s, self.seed,
                                  progress=self.progress)
        secs["haq"] = t["wall_s"]
        with m.stage(method, "4 finetune") as t:
            ev.recal = self.b.get("recal", ev.recal)
            rs = ev.realized_seeds(haq.bits, self.seeds, self.recipe.steps, self.b["final"])
            q, acc, correct = rs[0].model, rs[0].test_acc, [r.correct for r in rs]
        secs["finetune"] = t["wall_s"]
        return MultiStageResult(metric, target, res.best_config, float(res.best_score),
                                pr["widths_before"], pr["widths_after"],
                                haq.policy(layers), haq.accuracy, float(acc),
                                table.summary(haq.bits), haq.met, secs, q, correct)


@torch.no_grad()
def _fp32_accuracy(model: nn.Module, batches, device) -> float:
    return accuracy(model, batches, device)
