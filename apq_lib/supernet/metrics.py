"""Evaluating subnets (OFA §3.3 / APQ §3.2): BN recalibration on a fixed set of training
images, top-1 accuracy, and analytical MACs (cross-checked with ``FlopCounterMode`` in
the tests). Used by notebook 01, the predictor data collection, search and baselines.
"""
from __future__ import annotations

import json
from typing import Iterable

import numpy as np
import torch
from torch import nn

from ..loops import evaluate
from ..progress import tqdm
from .space import SearchSpace, SubnetConfig

__all__ = ["recalibrate_bn", "evaluate", "subnet_macs", "evaluate_subnet",
           "evaluate_random_subnets"]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable, device=None) -> nn.Module:
    """Reset every BN's running statistics and re-estimate them as the cumulative average
    over ``batches`` (``(x, y)`` pairs), with only the BN layers in train mode. The
    model's modes and BN momenta are restored afterwards."""
    device = device or next(model.parameters()).device
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    modes = {m: m.training for m in model.modules()}
    momenta = [bn.momentum for bn in bns]
    model.eval()
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None          # cumulative moving average over the batches
        bn.train()
    for x, *_ in batches:
        model(x.to(device))
    for bn, mom in zip(bns, momenta):
        bn.momentum = mom
    for m, t in modes.items():
        m.training = t
    return model


def subnet_macs(space: SearchSpace, cfg: SubnetConfig) -> int:
    """Multiply-accumulates of one image through ``cfg`` (convs + classifier; BN, ReLU6,
    residual adds and pooling not counted)."""
    c = space.cfg
    hs = space.head_out_size
    macs = c.in_channels * c.stem_width * 9 * hs * hs            # stem
    macs += c.stem_width * 9 * hs * hs + c.stem_width * c.head_width * hs * hs   # head
    for i in space.active_blocks(cfg):
        b = space.blocks[i]
        mid, k, o = cfg.mids[i], cfg.kernels[i], b.out_size
        macs += b.in_c * mid * b.in_size ** 2 + mid * k * k * o * o + mid * b.out_c * o * o
    macs += c.stage_widths[-1] * c.tail_width * space.final_size ** 2 + c.tail_width * \
        c.num_classes
    return int(macs)


def evaluate_subnet(supernet, cfg: SubnetConfig, recal_batches: list,
                    eval_sets: dict, device=None, quantized: bool = False) -> dict:
    """Export ``cfg`` from the supernet, recalibrate its BN, and return top-1 (percent) on
    each of ``eval_sets`` (name → batches). The supernet itself is left unchanged."""
    sub = supernet.export(cfg, quantized)
    recalibrate_bn(sub, recal_batches, device)
    return {name: evaluate(sub, batches, device) for name, batches in eval_sets.items()}


def evaluate_random_subnets(supernet, n: int, rng: np.random.Generator, recal_batches: list,
                            eval_sets: dict, device=None, progress: bool = True):
    """``n`` random architectures (``space.sample_arch``), FP32: a DataFrame with columns
    ``config`` (JSON), ``macs``, ``depth``, and ``<name>_top1`` for every eval set."""
    import pandas as pd


    space = supernet.space
    rows = []
    for k in tqdm(range(n), desc="random subnets", disable=not progress):
        cfg = space.sample_arch(rng)
        accs = evaluate_subnet(supernet, cfg, recal_batches, eval_sets, device)
        rows.append({"subnet": k, "config": json.dumps(cfg.to_dict()),
                     "macs": subnet_macs(space, cfg), "depth": int(sum(cfg.depths)),
                     **{f"{name}_top1": a for name, a in accs.items()}})
    return pd.DataFrame(rows)
