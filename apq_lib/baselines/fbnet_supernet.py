"""FBNet's stochastic supernet (Wu et al. 2019, on APQ's space): per block slot every kernel
× middle-width op (plus a skip op where the stage's depth allows), each with its own weights
and, for the bits-as-choices variant, mixed-precision quantizers; the per-op latency lookup
tables of the hardware model. The search that trains it: :mod:`apq_lib.baselines.fbnet`.
"""
from __future__ import annotations

import copy
import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..hardware import fixed_layer_specs, mbconv_layers
from ..quant import PACTQuantizer, WeightQuantizer
from ..quant.policy import to_float
from ..supernet.space import SearchSpace, SubnetConfig
from ..supernet.static import MobileNetBody, StaticMBConv, StaticSubnet
from .matching import spread

__all__ = ["block_ops", "op_latency_tables", "MixedQuant", "StochasticSupernet"]


# --------------------------------------------------------------------------- space / LUT
def block_ops(space: SearchSpace, mid_points: int = 2) -> list[list[Optional[tuple]]]:
    """Per block slot the candidate ops ``(kernel, mid)`` (every kernel × ``mid_points``
    middle widths spread over the slot's choices) plus ``None`` (skip) for slots the
    stage's smallest depth lets go."""
    out = []
    for s, sl in enumerate(space.stage_slices):
        dmin = min(space.depth_choices[s])
        for j, i in enumerate(range(sl.start, sl.stop)):
            b = space.blocks[i]
            mids = [b.mid_choices[k] for k in spread(len(b.mid_choices), mid_points)]
            ops: list = [(k, m) for k in space.kernel_choices for m in mids]
            out.append(ops + ([None] if j >= dmin else []))
    return out


def op_latency_tables(space: SearchSpace, ops, bits: Sequence[int], sim
                      ) -> tuple[list[torch.Tensor], float]:
    """Per slot ``[n_ops, n_w_bits, n_a_bits]`` latency (ms) of each op (1×1 + dw + 1×1 at
    ``W{w}A{a}``; skip = 0) and the head + tail latency (8 bits), from ``sim.cost``."""
    tables = []
    for b, cand in zip(space.blocks, ops):
        t = torch.zeros(len(cand), len(bits), len(bits), dtype=torch.float64)
        for i, op in enumerate(cand):
            if op is None:
                continue
            layers = mbconv_layers(b.in_c, op[1], b.out_c, b.in_size, op[0], b.stride)
            for wi, w in enumerate(bits):
                for ai, a in enumerate(bits):
                    t[i, wi, ai] = sum(sim.cost(s, w, a)["latency"] for s in layers)
        tables.append(t)
    fixed = sum(sim.cost(s, w, a)["latency"] for _n, s, w, a in fixed_layer_specs(space))
    return tables, float(fixed)


# --------------------------------------------------------------------------- supernet
class MixedQuant(nn.Module):
    """Σ_b mix[b] · Q_b(x), uniform symmetric fake quantization at each of ``bits``, the
    weights' range from max|w| (``clip=None``) or a PACT clip α (activations, learnable;
    ``signed`` for the residual stream). Straight-through: ∂/∂x = 1 inside the clip,
    ∂/∂mix[b] = Q_b(x). ``mix=None``: identity (FP32)."""

    def __init__(self, bits: Sequence[int], clip: Optional[float] = None,
                 signed: bool = True):
        super().__init__()
        self.bits, self.signed = [int(b) for b in bits], signed
        self.alpha = None if clip is None else nn.Parameter(torch.tensor(float(clip)))
        self.mix: Optional[torch.Tensor] = None

    def _levels(self, b: int) -> int:
        return 2 ** (b - 1) - 1 if self.signed else 2 ** b - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mix is None:
            return x
        if self.alpha is None:
            top = x.detach().abs().max().clamp_min(1e-8)
            y = x
        else:
            top = self.alpha.detach().abs().clamp_min(1e-3)
            a = self.alpha.abs()
            y = torch.minimum(torch.maximum(x, -a if self.signed else torch.zeros_like(a)), a)
        yd = y.detach()
        levels = [self._levels(b) for b in self.bits]
        if not self.mix.requires_grad:          # hard sample: the chosen bitwidth only
            n = levels[int(self.mix.argmax())]
            return y + (torch.round(yd * (n / top)) * (top / n) - yd)
        q = [torch.round(yd * (n / top)) * (top / n) for n in levels]
        return y - yd + sum(m * qb for m, qb in zip(self.mix, q))


def _mixed_op(op: StaticMBConv, bits: Sequence[int]) -> StaticMBConv:
    for conv in (op.expand, op.dw, op.project):
        conv.w_quant = MixedQuant(bits)
        conv.a_quant = MixedQuant(bits, 6.0, signed=conv.a_quant.signed)
    return op


class StochasticSupernet(MobileNetBody):
    """The space's fixed head/tail plus, per slot, its candidate ops with separate weights
    and θ (``theta_op``; ``theta_w`` / ``theta_a`` over ``bits`` when bits are searched)."""

    def __init__(self, space: SearchSpace, ops, bits: Sequence[int] = (8,), seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.space, self.ops_spec, self.bits = space, ops, list(bits)
        self._build_head(space.cfg)
        self.cands = nn.ModuleList()
        for b, cand in zip(space.blocks, ops):
            self.cands.append(nn.ModuleList(
                nn.Identity() if op is None else _mixed_op(
                    StaticMBConv(b.in_c, op[1], b.out_c, op[0], b.stride), self.bits)
                for op in cand))
        for name, m in self._make_tail(space.cfg).items():
            setattr(self, name, m)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
        self.set_bn_params(space.cfg.bn_eps, space.cfg.bn_momentum)
        nb = len(self.bits)
        self.theta_op = nn.ParameterList(nn.Parameter(torch.zeros(len(c))) for c in ops)
        self.theta_w = nn.ParameterList(nn.Parameter(torch.zeros(nb)) for _ in ops)
        self.theta_a = nn.ParameterList(nn.Parameter(torch.zeros(nb)) for _ in ops)
        self.search_bits = False
        self.masks: Optional[list] = None        # per slot (m_op, m_w, m_a); None: uniform
        self.mix_ops = False                     # sampled masks: the weighted sum of all ops

    def arch_parameters(self) -> list[nn.Parameter]:
        return [*self.theta_op, *self.theta_w, *self.theta_a]

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def sample_masks(self, tau: float, weights_only: bool = False) -> None:
        """Soft Gumbel-softmax masks for every slot (every op runs, weighted: FBNet's
        relaxation). θ steps: the masks carry θ's gradient. ``weights_only`` (a weight
        step): no θ gradient, and the bit masks are hard (one bit width per step)."""
        def draw(t, hard=False):
            m = F.gumbel_softmax(t, tau=tau, hard=hard)
            return m.detach() if weights_only else m
        self.mix_ops = True
        self.masks = [(draw(to), draw(tw, weights_only) if self.search_bits else None,
                       draw(ta, weights_only) if self.search_bits else None)
                      for to, tw, ta in zip(self.theta_op, self.theta_w, self.theta_a)]

    def _set_mix(self, cand, m_w, m_a) -> None:
        for op in cand:
            if isinstance(op, StaticMBConv):
                for conv in (op.expand, op.dw, op.project):
                    conv.w_quant.mix, conv.a_quant.mix = m_w, m_a

    def clear_masks(self) -> None:
        """Drop the sampled masks (they hold graph tensors; needed before a deepcopy)."""
        self.masks, self.mix_ops = None, False
        for cand in self.cands:
            self._set_mix(cand, None, None)

    def run_blocks(self, x: torch.Tensor) -> torch.Tensor:
        for cand, (m_op, m_w, m_a) in zip(self.cands, self.masks):
            self._set_mix(cand, m_w, m_a)
            if self.mix_ops:
                x = sum(m * op(x) for m, op in zip(m_op, cand))
            else:
                i = int(m_op.argmax())
                x = cand[i](x) * m_op[i]
        return x

    def expected_latency(self, tables: Sequence[torch.Tensor], fixed: float) -> torch.Tensor:
        """head/tail + Σ_slots Σ_{op, w, a} softmax(θ_op)·softmax(θ_w)·softmax(θ_a)·LAT."""
        tot = torch.tensor(fixed, dtype=torch.float64)
        for t, to, tw, ta in zip(tables, self.theta_op, self.theta_w, self.theta_a):
            pw = F.softmax(tw, 0) if self.search_bits else torch.ones(1)
            pa = F.softmax(ta, 0) if self.search_bits else torch.ones(1)
            tt = t if self.search_bits else t[:, -1:, -1:]
            tot = tot + torch.einsum("o,w,a,owa->", F.softmax(to, 0).double(), pw.double(),
                                     pa.double(), tt)
        return tot

    def argmax_choices(self) -> list[tuple]:
        """Per slot ``(op index, w-bits index, a-bits index)`` of the largest θ."""
        hi = len(self.bits) - 1
        return [(int(to.argmax()), int(tw.argmax()) if self.search_bits else hi,
                 int(ta.argmax()) if self.search_bits else hi)
                for to, tw, ta in zip(self.theta_op, self.theta_w, self.theta_a)]

    def derive(self, choices: Sequence[tuple]) -> tuple[SubnetConfig, StaticSubnet]:
        """The :class:`SubnetConfig` of per-slot ``choices`` (skipped slots compacted: the
        slots after a stage's first have equal shapes) and the standalone float model with
        the chosen ops' weights."""
        sp, n = self.space, self.space.n_blocks
        hi = max(sp.bit_choices)
        cfg = SubnetConfig([0] * sp.n_stages, [min(sp.kernel_choices)] * n,
                           [b.mid_choices[0] for b in sp.blocks], *[[hi] * n for _ in range(4)])
        blocks = []
        for s, sl in enumerate(sp.stage_slices):
            keep = [(i, choices[i]) for i in range(sl.start, sl.stop)
                    if self.ops_spec[i][choices[i][0]] is not None]
            d = min(x for x in sp.depth_choices[s] if x >= len(keep))
            for i in range(sl.start, sl.stop):      # depth not allowed: add likeliest op
                if len(keep) >= d:
                    break
                if all(i != k for k, _ in keep):
                    p = self.theta_op[i].detach().clone()
                    p[[j for j, o in enumerate(self.ops_spec[i]) if o is None]] = -math.inf
                    keep.append((i, (int(p.argmax()), *choices[i][1:])))
            keep.sort()
            cfg.depths[s] = d
            for pos, (i, (oi, wi, ai)) in zip(range(sl.start, sl.stop), keep):
                k, mid = self.ops_spec[i][oi]
                cfg.kernels[pos], cfg.mids[pos] = k, mid
                w, a = self.bits[wi], self.bits[ai]
                cfg.pw_w[pos], cfg.dw_w[pos], cfg.pw_a[pos], cfg.dw_a[pos] = w, w, a, a
                op = copy.deepcopy(self.cands[i][oi])
                blocks.append(op)
        fixed = {n_: copy.deepcopy(getattr(self, n_)) for n_ in StaticSubnet.FIXED}
        for b in blocks:
            for conv in (b.expand, b.dw, b.project):
                conv.w_quant = WeightQuantizer(32)
                conv.a_quant = PACTQuantizer(32, signed=conv.a_quant.signed)
        sp.validate(cfg)
        return cfg, to_float(StaticSubnet(fixed, blocks, cfg)).eval()


# --------------------------------------------------------------------------- search
