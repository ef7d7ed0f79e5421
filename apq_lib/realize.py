"""Realise a final model (APQ §3.4 → §4): a searched ⟨arch, policy⟩ exported from the
supernet (FP32, BN recalibrated), or any baseline's float model and per-layer policy, goes
through one path: quantize at the policy → calibrate activation clips → finetune with the one
QAT recipe (:func:`apq_lib.loops.finetune`, the profile's ``finetune:`` section) → BN recal
→ top-1 on the test split, keeping the per-image correctness for paired comparisons.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import torch
from torch import nn

from .artifact_store import StageKey, load_state, save_state
from .loops import evaluate, finetune, finetune_batches, test_batches
from .quant.policy import layer_names, layer_policy, quantize_with_policy, to_float
from .quant.quantizers import WeightQuantizer
from .runtime import stream_seed
from .supernet.metrics import recalibrate_bn
from .supernet.space import SubnetConfig
from .supernet.static import load_tensor_state, tensor_state

__all__ = ["realize", "realize_policy", "export_float", "supernet_weight_kw", "Realized",
           "realize_seeds", "seed_id", "REALIZED_KEY", "save_realized", "realized_model"]


@dataclass
class Realized:
    """One realised model: predicted vs measured accuracy (top-1 %), its costs, and the
    per-image correctness on the test images (``correct``, bool, in test-batch order)."""
    config: dict
    predicted_acc: float
    test_acc: float
    test_acc_before_finetune: Optional[float]
    costs: dict
    finetune_steps: int
    finetune_seconds: float
    eval_seconds: float
    losses: list = field(default_factory=list)
    model: Optional[nn.Module] = None
    correct: Optional[np.ndarray] = None

    def row(self) -> dict:
        return {"predicted_acc": self.predicted_acc, "test_acc": self.test_acc,
                "test_acc_before_finetune": self.test_acc_before_finetune,
                "finetune_steps": self.finetune_steps,
                "finetune_seconds": self.finetune_seconds, "eval_seconds": self.eval_seconds,
                **self.costs}


def export_float(supernet, cfg, recal_batches: Optional[list], device=None) -> nn.Module:
    """``cfg``'s architecture exported FP32 from ``supernet`` (inherited weights), BN
    recalibrated on ``recal_batches``, as a plain float model (the supernet is unchanged)."""
    if isinstance(cfg, dict):
        cfg = SubnetConfig.from_dict(cfg)
    sub = supernet.export(cfg)
    if device is not None:
        sub.to(device)
    if recal_batches is not None:
        recalibrate_bn(sub, recal_batches, device)
    return to_float(sub).eval()


def supernet_weight_kw(supernet) -> dict:
    """The calibration of ``supernet``'s linear weight quantizers (the profile's ``quant:``
    section, :func:`apq_lib.quant.configure_weight_calibration`), for its exported models."""
    for m in supernet.modules():
        if isinstance(m, WeightQuantizer):
            return {"method": m.method, "kl_below_bits": m.kl_below_bits}
    return {}


def realize_policy(model: nn.Module, policy: dict, recipe, train_batches: Iterable,
                   recal_batches: Optional[list], test_batches, *,
                   calib_batches: Optional[list] = None, steps: Optional[int] = None,
                   device=None, seed: Optional[int] = None, weight_quantizer: str = "linear",
                   weight_kw: Optional[dict] = None, eval_before: bool = False,
                   progress: bool = False, predicted_acc: float = float("nan"),
                   costs: Optional[dict] = None, config: Optional[dict] = None) -> Realized:
    """The one path of every final model (APQ's, the random-search winners, the corners and
    every baseline): quantize the float ``model`` (BN already recalibrated) at ``policy``,
    calibrate its activation clips on ``calib_batches`` (k-means weights keep FP
    activations: nothing to calibrate), finetune ``steps`` steps (default: the recipe's) with
    ``recipe`` on ``train_batches``, recalibrate BN on ``recal_batches`` (after a finetune)
    and measure top-1 and the per-image correctness on ``test_batches`` (None: not
    measured). ``seed`` seeds torch first."""
    if seed is not None:
        torch.manual_seed(seed)
    calib = None if weight_quantizer == "kmeans" else calib_batches
    q = quantize_with_policy(model, policy, calib, weight_quantizer, device, weight_kw)
    before = evaluate(q, test_batches, device) if eval_before else None
    steps = recipe.steps if steps is None else int(steps)
    ft = {"steps": 0, "losses": [], "seconds": 0.0}
    if steps > 0:
        ft = finetune(q, recipe, train_batches, steps=steps, device=device,
                      progress=progress)
        if recal_batches is not None:            # QAT trained BN on batch statistics
            recalibrate_bn(q, recal_batches, device)
    t0 = time.perf_counter()
    acc, correct = (evaluate(q, test_batches, device, return_correct=True)
                    if test_batches is not None else (float("nan"), None))
    q.eval()
    losses = ft["losses"]
    return Realized(config=dict(config or {}), predicted_acc=float(predicted_acc),
                    test_acc=acc, test_acc_before_finetune=before, costs=dict(costs or {}),
                    finetune_steps=ft["steps"], finetune_seconds=ft["seconds"],
                    eval_seconds=time.perf_counter() - t0,
                    losses=[float(v) for v in losses[:: max(1, len(losses) // 200)]],
                    model=q, correct=correct)


def realize(supernet, cfg, recipe, train_batches: Iterable, recal_batches: list, test_batches,
            steps: Optional[int] = None, predicted_acc: float = float("nan"),
            costs: Optional[dict] = None, eval_before: bool = False, device=None, seed: int = 0,
            progress: bool = False, calib_batches: Optional[list] = None,
            weight_kw: Optional[dict] = None) -> Realized:
    """Realise subnet ``cfg`` (a :class:`SubnetConfig` or its dict) of ``supernet``: export
    it FP32 and recalibrate BN (:func:`export_float`), then :func:`realize_policy` at its
    per-layer policy (:func:`apq_lib.quant.policy.layer_policy`) with the supernet's weight
    calibration (or ``weight_kw``). The supernet itself is left unchanged."""
    if isinstance(cfg, dict):
        cfg = SubnetConfig.from_dict(cfg)
    fp = export_float(supernet, cfg, recal_batches, device)
    pol = layer_policy(supernet.space, cfg, layer_names(fp))
    r = realize_policy(fp, pol, recipe, train_batches, recal_batches, test_batches,
                       calib_batches=calib_batches, steps=steps, device=device, seed=seed,
                       weight_kw=supernet_weight_kw(supernet) if weight_kw is None
                       else weight_kw, eval_before=eval_before, progress=progress,
                       predicted_acc=predicted_acc, costs=costs, config=cfg.to_dict())
    r.model.quantized = True          # a StaticSubnet with its quantizers on, as export's
    return r


def seed_id(model_id: str, k: int) -> str:
    """The id of finetune seed ``k`` of a model (seed 0 keeps the model's own id)."""
    return model_id if k == 0 else f"{model_id}#seed{k}"


def realize_seeds(supernet, cfg, recipe, data, model_id: str, n_seeds: int, seed: int,
                  first: int = 0, **kw) -> list[Realized]:
    """:func:`realize` with ``n_seeds`` finetune seeds ``first, first + 1, ...``: seed ``k``
    has its own batch order (:func:`apq_lib.loops.finetune_batches` of :func:`seed_id`) and
    torch seed (the ``finetune`` stream of :func:`seed_id`, as every baseline's); seed 0 is
    the single-seed realisation of ``model_id``."""
    out = []
    for k in range(first, first + n_seeds):
        sid = seed_id(model_id, k)
        out.append(realize(supernet, cfg, recipe, finetune_batches(data, recipe, seed, sid),
                           seed=stream_seed(seed, "finetune", sid), **kw))
    return out


# the finetuned state of a realised APQ model (notebook 04 writes it, notebook 07 reads it):
# what it depends on besides the supernet (an input) and its own architecture, policy and
# model id (which seeds its finetune batches)
REALIZED_KEY = StageKey("realized", version=3, reads=(
    "seed", "finetune", "quant.weight_calibration", "quant.kl_below_bits",
    "baselines.calib_images"))


def _realized_config(cfg, config: dict, model_id: str) -> dict:
    return {**REALIZED_KEY.config(cfg), "config": config, "model_id": model_id}


def _write(work: Path, model, test_acc: float) -> None:
    save_state(tensor_state(model), work / "model.safetensors")
    (work / "info.json").write_text(json.dumps({"test_acc": float(test_acc)}))


def save_realized(ctx, realized: Realized, supernet_key: str, model_id: str):
    """Store a :class:`Realized` model's finetuned state as the ``realized`` artifact
    notebook 07 reads (notebook 04 calls it right after realising the model)."""
    return ctx.store.build(REALIZED_KEY.stage, _realized_config(ctx.cfg, realized.config,
                                                                model_id),
                           lambda w: _write(w, realized.model, realized.test_acc),
                           inputs=[supernet_key], force=True)


def realized_model(ctx, supernet, config: dict, supernet_key: str, data, model_id: str,
                   force: bool = False):
    """Notebook 04's realised model ``model_id``: the finetuned state from the ``realized``
    artifact (:func:`save_realized`), or, when missing, realised again with 04's recipe,
    seed, calibration and finetune batches (deterministic on one CPU) and stored. Returns
    ``(model, info)``."""
    cfg, ft = ctx.cfg, ctx.cfg.finetune
    sub = supernet.export(SubnetConfig.from_dict(config), quantized=True)

    def build(work: Path) -> None:
        m = realize(supernet, config, ft, finetune_batches(data, ft, cfg.seed, model_id),
                    data.fixed_batches("train", ft.recal_images, seed=cfg.seed),
                    test_batches(data, ft, cfg.seed), device=ctx.device,
                    seed=stream_seed(cfg.seed, "finetune", seed_id(model_id, 0)),
                    calib_batches=data.fixed_batches("train", cfg.baselines.calib_images,
                                                     seed=cfg.seed))
        _write(work, m.model, m.test_acc)

    art = ctx.store.build(REALIZED_KEY.stage, _realized_config(cfg, config, model_id), build,
                          inputs=[supernet_key], force=force)
    load_tensor_state(sub, load_state(art.file("model.safetensors"))[0])
    return sub.eval(), json.loads(art.file("info.json").read_text())

