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

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data import BatchLoader, TensorImageSet, _torch_loader, cycle
from ..loops import make_optimizer, train_steps
from ..runtime import stream_generator, stream_seed
from ..supernet.space import SearchSpace, SubnetConfig
from .fbnet_supernet import MixedQuant, StochasticSupernet, block_ops, op_latency_tables

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
    idx = torch.randperm(len(ds), generator=stream_generator(seed, "fbnet", "subset"))[:n]
    n_val = max(1, int(round(val_fraction * n)))
    parts = idx[n_val:].sort().values, idx[:n_val].sort().values
    if min(len(p) for p in parts) < batch_size:
        raise ValueError(f"baselines.fbnet.train_images={n_images}: each split needs at least "
                         f"batch_size={batch_size} images; raise train_images")
    seeds = [stream_seed(seed, "fbnet", part) for part in ("weights", "theta")]
    if isinstance(ds, TensorImageSet):
        its = [cycle(BatchLoader(ds.subset(p), batch_size, True, data.cfg.augment and k == 0,
                                 seeds[k], drop_last=True)) for k, p in enumerate(parts)]
    else:       # a torch dataset (ImageFolder): its own transforms, both splits
        its = [cycle(_torch_loader(torch.utils.data.Subset(ds, p.tolist()), batch_size, True,
                                   seeds[k], data.cfg.num_workers, True))
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
        return StochasticSupernet(self.space, self.ops, self.bits,
                                  stream_seed(self.seed, "fbnet", "init")).to(self.device)

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
