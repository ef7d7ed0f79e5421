"""FBNet (Wu et al., CVPR 2019, §3): differentiable NAS with a hardware latency loss, as a
baseline on APQ's space and BitFusion lookup table.

* A stochastic supernet of its own (shares weights with nothing): per block slot a compact
  set of candidate MBConv ops (every kernel × ``fbnet.mid_points`` middle widths, plus a
  skip op where the stage's depth allows it, §3.2), each with its own weights.
* Architecture parameters θ per block; the block output is Σ m_i · op_i(x) with m drawn
  by Gumbel-softmax at temperature τ = τ0 · 0.956^epoch (§3.3, τ0 = 5).
* Latency (§3.2, eq. 6-7): per op a LUT entry (sum of its three layers on BitFusion),
  the expected latency E[LAT] = head/tail + Σ_blocks Σ_i softmax(θ)_i · LAT_i, which is
  differentiable in θ. Loss (eq. 8): CE · α · log(LAT)^β, α = 0.2, β = 0.6; LAT is
  measured in units of target / ``latency_scale`` so that the budget maps to the paper's
  operating point (our BitFusion latencies are ~0.05 ms, where log < 0).
* Weights (SGD) and θ (Adam) are updated alternately on an 80 / 20 split of the training
  data after weight-only warm-up epochs. Both steps run every op under the soft
  Gumbel-softmax mask (the paper's relaxation; weight steps without θ gradient). A
  single-path alternative (hard samples for the weight steps, 1/n_ops of the compute)
  was measured not to train at this budget: CE stays at chance (2.30) through 120
  steps with 7 ops per slot, while the soft mixture reaches 0.8.
* Two variants: (a) ops at W8A8 (LUT at 8 bits, FP32 training), then HAQ on the result;
  (b) per-block weight and activation bits as further choices (separate θ each; the mixed
  quantizer Σ_b m_b Q_b(·) on inputs and weights makes the conv output the exact
  expectation over the independent (w, a) choices).
* The final architecture is the argmax of θ per block. FBNet trains it afterwards (paper:
  from scratch); here ``retrain_steps`` SGD steps on the training split starting from the
  chosen ops' weights (a discretisation gap: the argmax path alone tests near chance,
  since each op was trained as ~1/n of a mixture), counted as FBNet's per-search cost,
  then the suite's finetune recipe and paired test like every row
  (:func:`apq_lib.baselines.study.run_fbnet`).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data import BatchLoader, TensorImageSet, _torch_loader, cycle
from ..hardware import fixed_layer_specs, mbconv_layers
from ..loops import make_optimizer, train_steps
from ..quant import PACTQuantizer, WeightQuantizer
from ..quant.policy import to_float
from ..supernet.space import SearchSpace, SubnetConfig
from ..supernet.static import MobileNetBody, StaticMBConv, StaticSubnet
from .matching import spread

__all__ = ["temperature", "latency_factor", "fbnet_loss", "block_ops", "op_latency_tables",
           "MixedQuant", "StochasticSupernet", "FBNetResult", "FBNetSearch", "search_batches",
           "FBNET_METHODS"]

FBNET_METHODS = {"haq": ("FBNet+HAQ", "W8A8 search, then HAQ"),
           "bits": ("FBNet-MP", "per-block w/a bits as choices")}


# --------------------------------------------------------------------------- loss pieces
def temperature(epoch: int, tau0: float = 5.0, decay: float = 0.956) -> float:
    """Gumbel-softmax temperature of joint epoch ``epoch`` (FBNet §4.1: 5.0 × 0.956^epoch)."""
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    return float(tau0 * decay ** epoch)


def latency_factor(lat: torch.Tensor, target: float, alpha: float = 0.2, beta: float = 0.6,
                   scale: float = 25.0) -> torch.Tensor:
    """α · log(scale · LAT / target)^β (FBNet eq. 8, LAT in units of target / scale)."""
    if target <= 0:
        raise ValueError(f"latency target must be > 0, got {target}")
    return alpha * torch.log((scale * lat / target).clamp_min(1.0 + 1e-6)) ** beta


def fbnet_loss(ce: torch.Tensor, lat: torch.Tensor, target: float, alpha: float = 0.2,
               beta: float = 0.6, scale: float = 25.0) -> torch.Tensor:
    """CE · α · log(LAT)^β."""
    return ce * latency_factor(lat, target, alpha, beta, scale)


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
@dataclass
class FBNetResult:
    config: SubnetConfig
    model: nn.Module
    expected_latency_ms: float               # E[LAT] at the end of the search
    argmax_latency_ms: float                 # LUT latency of the derived architecture
    probs: list = field(default_factory=list)
    history: list = field(default_factory=list)


def search_batches(data, n_images: int, val_fraction: float, batch_size: int, seed: int = 0):
    """Endless (weight, θ) batch iterators over a disjoint ``1 - val_fraction`` /
    ``val_fraction`` split of ``n_images`` training images, and their batches per pass."""
    ds = data.train
    n = min(n_images, len(ds))
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n]
    n_val = max(1, int(round(val_fraction * n)))
    parts = idx[n_val:].sort().values, idx[:n_val].sort().values
    if min(len(p) for p in parts) < batch_size:
        raise ValueError(f"baselines.fbnet.train_images={n_images}: each split needs at least "
                         f"batch_size={batch_size} images; raise train_images")
    if isinstance(ds, TensorImageSet):
        its = [cycle(BatchLoader(ds.subset(p), batch_size, True, data.cfg.augment and k == 0,
                                 seed + k, drop_last=True)) for k, p in enumerate(parts)]
    else:       # a torch dataset (ImageFolder): its own transforms, both splits
        its = [cycle(_torch_loader(torch.utils.data.Subset(ds, p.tolist()), batch_size, True,
                                   seed + k, data.cfg.num_workers, True))
               for k, p in enumerate(parts)]
    return its[0], its[1], len(parts[0]) // batch_size, len(parts[1]) // batch_size


class FBNetSearch:
    """Warm-up (weights only) then joint search for one latency target and variant."""

    def __init__(self, space: SearchSpace, cfg, sim, device=None, seed: int = 0):
        self.space, self.cfg, self.device, self.seed = space, cfg, device or "cpu", seed
        self.ops = block_ops(space, cfg.mid_points)
        self.bits = sorted(space.bit_choices)
        self.tables, self.fixed = op_latency_tables(space, self.ops, self.bits, sim)

    def new_supernet(self) -> StochasticSupernet:
        return StochasticSupernet(self.space, self.ops, self.bits, self.seed).to(self.device)

    def _w_step(self, net, opt, batch, tau, lr) -> float:
        for g in opt.param_groups:
            g["lr"] = lr
        net.train()
        net.sample_masks(tau, weights_only=True)
        x, y = (t.to(self.device) for t in batch)
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    def warmup(self, net, w_batches, steps_per_epoch: int) -> list[float]:
        """``warmup_epochs`` of weight steps with θ = 0 (uniform ops), cosine lr."""
        c = self.cfg
        opt = make_optimizer(nn.ModuleList([net]), c.w_lr, weight_decay=c.w_weight_decay)
        steps = c.warmup_epochs * steps_per_epoch
        return [self._w_step(net, opt, next(w_batches), c.tau0,
                             c.w_lr * 0.5 * (1 + math.cos(math.pi * t / max(1, steps))))
                for t in range(steps)]

    def search(self, net: StochasticSupernet, target: float, search_bits: bool, w_batches,
               t_batches, w_steps: int, t_steps: int) -> FBNetResult:
        """``epochs`` epochs, each a pass of weight steps (``w_steps`` batches of the 80 %
        split) then one of θ steps (``t_steps`` batches of the 20 %), as the paper
        alternates; then the argmax architecture."""
        c = self.cfg
        net.search_bits = search_bits
        w_opt = torch.optim.SGD(net.weight_parameters(), lr=c.w_lr, momentum=0.9,
                                weight_decay=c.w_weight_decay)
        t_opt = torch.optim.Adam(net.arch_parameters(), lr=c.theta_lr,
                                 weight_decay=c.theta_weight_decay)
        total, history = c.epochs * w_steps, []
        for e in range(c.epochs):
            tau, ces, lats = temperature(e, c.tau0, c.tau_decay), [], []
            for t in range(w_steps):
                k = e * w_steps + t
                self._w_step(net, w_opt, next(w_batches), tau,
                             0.5 * c.w_lr * (1 + math.cos(math.pi * k / total)))
            for _ in range(t_steps):
                net.sample_masks(tau)
                x, y = (v.to(self.device) for v in next(t_batches))
                ce = F.cross_entropy(net(x), y)
                lat = net.expected_latency(self.tables, self.fixed)
                loss = fbnet_loss(ce, lat.float(), target, c.alpha, c.beta, c.latency_scale)
                t_opt.zero_grad(set_to_none=True)
                loss.backward()
                t_opt.step()
                ces.append(float(ce.detach()))
                lats.append(float(lat.detach()))
            history.append({"epoch": e, "tau": tau, "ce": float(np.mean(ces)),
                            "expected_latency_ms": float(np.mean(lats))})
        net.clear_masks()
        choices = net.argmax_choices()
        cfg, model = net.derive(choices)
        with torch.no_grad():
            e_lat = float(net.expected_latency(self.tables, self.fixed))
        a_lat = self.fixed + sum(float(self.tables[i][o, w, a] if search_bits
                                       else self.tables[i][o, -1, -1])
                                 for i, (o, w, a) in enumerate(choices))
        probs = [F.softmax(t.detach(), 0).tolist() for t in net.theta_op]
        return FBNetResult(cfg, model, e_lat, a_lat, probs, history)

    def retrain(self, model: nn.Module, batches) -> list[float]:
        """FBNet's training of the searched architecture: ``retrain_steps`` SGD steps
        (momentum 0.9, cosine from ``retrain_lr``) in place; the losses."""
        c = self.cfg
        if c.retrain_steps <= 0:
            return []
        model.train()
        return train_steps(model, batches, c.retrain_steps, c.retrain_lr, "sgd", 0.9,
                           c.w_weight_decay, device=self.device,
                           lr_key="baselines.fbnet.retrain_lr")
