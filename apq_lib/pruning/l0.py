"""L0 regularisation with hard-concrete gates (Louizos, Welling & Kingma 2018, "Learning
Sparse Neural Networks through L0 Regularization").

Each weight is multiplied by a gate ``z = min(1, max(0, s̄))`` with ``s̄ = s(ζ − γ) + γ``
and ``s = σ((log u − log(1 − u) + log α) / β)``, ``u ~ U(0, 1)`` (§4, eq. 10), with
``β = 2/3, γ = −0.1, ζ = 1.1``. The expected L0 norm is closed-form (eq. 12):
``Σ σ(log α − β·log(−γ/ζ))``. At test time the gate is ``min(1, max(0, σ(log α)(ζ − γ) + γ))``
(eq. 13). The gates are ``torch.nn.utils.parametrize`` parametrizations of ``weight``.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = ["BETA", "GAMMA", "ZETA", "HardConcreteGate", "add_l0_gates", "l0_gates",
           "l0_penalty", "l0_sparsify"]

BETA, GAMMA, ZETA = 2.0 / 3.0, -0.1, 1.1


class HardConcreteGate(nn.Module):
    """A per-weight hard-concrete gate: ``forward(w) = w · z`` (sampled z in train mode,
    the deterministic test-time z in eval mode)."""

    def __init__(self, shape, init_drop: float = 0.1, beta: float = BETA,
                 gamma: float = GAMMA, zeta: float = ZETA, scale: float = 1.0):
        super().__init__()
        if not 0.0 < init_drop < 1.0:
            raise ValueError(f"init_drop={init_drop} must be in (0, 1)")
        if not (gamma < 0.0 and zeta > 1.0 and beta > 0.0):
            raise ValueError(f"need gamma < 0 < 1 < zeta and beta > 0, got "
                             f"beta={beta}, gamma={gamma}, zeta={zeta}")
        if scale <= 0:
            raise ValueError(f"scale={scale} must be > 0")
        self.beta, self.gamma, self.zeta, self.scale = beta, gamma, zeta, scale
        mean = math.log(1.0 - init_drop) - math.log(init_drop)
        # log α = scale · raw: with Adam, log α moves by ≈ scale·lr per step (a learning-
        # rate multiplier for the gates, for budgets far shorter than the paper's)
        self.raw = nn.Parameter(torch.empty(shape).normal_(mean, 1e-2) / scale)

    @property
    def log_alpha(self) -> torch.Tensor:
        return self.raw * self.scale

    def prob_nonzero(self) -> torch.Tensor:
        """P(z ≠ 0) per gate, closed form (eq. 12)."""
        return torch.sigmoid(self.log_alpha - self.beta * math.log(-self.gamma / self.zeta))

    def expected_l0(self) -> torch.Tensor:
        return self.prob_nonzero().sum()

    def sample(self, u: Optional[torch.Tensor] = None) -> torch.Tensor:
        """A reparameterised sample of z (``u`` uniform noise; drawn when not given)."""
        if u is None:
            u = torch.rand_like(self.log_alpha).clamp_(1e-6, 1.0 - 1e-6)
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + self.log_alpha) / self.beta)
        return (s * (self.zeta - self.gamma) + self.gamma).clamp(0.0, 1.0)

    def deterministic(self) -> torch.Tensor:
        """Test-time gate (eq. 13)."""
        s = torch.sigmoid(self.log_alpha)
        return (s * (self.zeta - self.gamma) + self.gamma).clamp(0.0, 1.0)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * (self.sample() if self.training else self.deterministic())


def add_l0_gates(model: nn.Module, layers: list[tuple[str, nn.Module]],
                 init_drop: float = 0.1, scale: float = 1.0) -> nn.Module:
    """Register a :class:`HardConcreteGate` on the weight of every ``(name, layer)``."""
    for _, m in layers:
        if parametrize.is_parametrized(m, "weight"):
            raise ValueError("add_l0_gates: the layer's weight is already parametrized")
        parametrize.register_parametrization(
            m, "weight",
            HardConcreteGate(m.weight.shape, init_drop, scale=scale).to(m.weight.device))
    return model


def l0_gates(model: nn.Module) -> list[tuple[str, HardConcreteGate]]:
    out = []
    for n, m in model.named_modules():
        if parametrize.is_parametrized(m, "weight"):
            out += [(n, p) for p in m.parametrizations.weight if isinstance(p, HardConcreteGate)]
    return out


def l0_penalty(model: nn.Module) -> torch.Tensor:
    """Expected number of non-zero gated weights (the L0 penalty, eq. 12)."""
    gates = l0_gates(model)
    if not gates:
        raise ValueError("l0_penalty: the model has no L0 gates; call add_l0_gates first")
    return torch.stack([g.expected_l0() for _, g in gates]).sum()


@torch.no_grad()
def l0_sparsify(model: nn.Module, sparsity: Optional[float] = None) -> nn.Module:
    """Replace every gated layer by a plain layer holding ``w · z`` (test-time gates). With
    ``sparsity``, additionally zero that fraction of gated weights with the lowest log α
    (ranked globally). In place; returns ``model``."""
    gates = l0_gates(model)
    if not gates:
        raise ValueError("l0_sparsify: the model has no L0 gates")
    if sparsity is not None:
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"sparsity={sparsity} must be in [0, 1)")
        la = torch.cat([g.log_alpha.detach().flatten() for _, g in gates])
        n_drop = int(round(sparsity * la.numel()))
        cut = torch.zeros_like(la, dtype=torch.bool)
        cut[torch.argsort(la, stable=True)[:n_drop]] = True
        off = 0
        for _, g in gates:
            c = cut[off:off + g.raw.numel()].view_as(g.raw)
            off += g.raw.numel()
            g.raw[c] = -1e4 / g.scale          # deterministic gate → exactly 0
    was = model.training
    model.eval()
    for n, _ in gates:
        # a fresh plain layer instead of remove_parametrizations: deep copies of a
        # parametrized module share its generated class, which removal would alter
        m = model.get_submodule(n)
        if isinstance(m, nn.Conv2d):
            plain = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride,
                              m.padding, m.dilation, m.groups, m.bias is not None)
        elif isinstance(m, nn.Linear):
            plain = nn.Linear(m.in_features, m.out_features, m.bias is not None)
        else:
            raise TypeError(f"l0_sparsify: layer {n!r} is {type(m).__name__}, "
                            f"not Linear / Conv2d")
        plain.weight.copy_(m.weight)
        if m.bias is not None:
            plain.bias.copy_(m.bias)
        parent, _, leaf = n.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf,
                plain.to(m.weight.device))
    model.train(was)
    return model
