"""Sparse variational dropout (Molchanov, Ashukha & Vetrov 2017, "Variational Dropout
Sparsifies Deep Neural Networks").

Every weight has a Gaussian posterior ``N(θ, σ²)`` (additive reparameterisation, §4.3) with
``log α = log σ² − log θ²``. Training uses the local reparameterisation trick (§4.1): the
pre-activation is sampled from ``N(x·θ, x²·σ²)``. The KL term to the log-uniform prior is
approximated by eq. 14, ``−KL ≈ k1·σ(k2 + k3·log α) − ½·log(1 + 1/α) − k1`` with
``k1 = 0.63576, k2 = 1.87320, k3 = 1.48695``. At evaluation, weights with ``log α > 3``
are zero (§4.4); :func:`vd_sparsify` bakes that (or a fixed sparsity, ranked by log α)
into plain ``Linear`` / ``Conv2d`` layers.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["K1", "K2", "K3", "LOG_ALPHA_THRESHOLD", "vd_kl", "VDLinear", "VDConv2d",
           "to_variational", "vd_penalty", "vd_sparsify", "vd_layers"]

K1, K2, K3 = 0.63576, 1.87320, 1.48695
LOG_ALPHA_THRESHOLD = 3.0
_CLAMP = 8.0          # log α is clipped to [-8, 8], as in the authors' code


def vd_kl(log_alpha: torch.Tensor) -> torch.Tensor:
    """KL(q(w | θ, α) ‖ log-uniform prior) per weight, eq. 14 (positive; → 0 as α → ∞)."""
    neg_kl = (K1 * torch.sigmoid(K2 + K3 * log_alpha)
              - 0.5 * F.softplus(-log_alpha) - K1)
    return -neg_kl


class _VDMixin:
    """Shared parameters: ``weight`` (θ), ``log_sigma2``; ``log_alpha`` derived."""
    threshold: float = LOG_ALPHA_THRESHOLD

    def _init_vd(self, log_sigma2_init: float) -> None:
        self.log_sigma2 = nn.Parameter(torch.full_like(self.weight, log_sigma2_init))

    @property
    def log_alpha(self) -> torch.Tensor:
        la = self.log_sigma2 - torch.log(self.weight ** 2 + 1e-8)
        return la.clamp(-_CLAMP, _CLAMP)

    def kl(self) -> torch.Tensor:
        return vd_kl(self.log_alpha).sum()

    def eval_weight(self) -> torch.Tensor:
        """θ with the weights of ``log α > threshold`` set to zero."""
        return self.weight * (self.log_alpha <= self.threshold)


class VDLinear(_VDMixin, nn.Linear):
    """``nn.Linear`` with sparse variational dropout (local reparameterisation in train)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 log_sigma2_init: float = -10.0):
        super().__init__(in_features, out_features, bias)
        self._init_vd(log_sigma2_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return F.linear(x, self.eval_weight(), self.bias)
        mu = F.linear(x, self.weight, self.bias)
        var = F.linear(x * x, torch.exp(self.log_alpha) * self.weight ** 2)
        return mu + torch.sqrt(var + 1e-8) * torch.randn_like(mu)


class VDConv2d(_VDMixin, nn.Conv2d):
    """``nn.Conv2d`` with sparse variational dropout (local reparameterisation in train)."""

    def __init__(self, *args, log_sigma2_init: float = -10.0, **kw):
        super().__init__(*args, **kw)
        self._init_vd(log_sigma2_init)

    def _conv(self, x, w, b):
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self._conv(x, self.eval_weight(), self.bias)
        mu = self._conv(x, self.weight, self.bias)
        var = self._conv(x * x, torch.exp(self.log_alpha) * self.weight ** 2, None)
        return mu + torch.sqrt(var + 1e-8) * torch.randn_like(mu)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def vd_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _VDMixin)]


@torch.no_grad()
def to_variational(model: nn.Module, layer_names: Optional[list[str]] = None,
                   log_sigma2_init: float = -10.0) -> nn.Module:
    """Swap ``Linear`` / ``Conv2d`` layers (all, or ``layer_names``) for VD layers that keep
    the current weights as θ; in place, returns ``model``."""
    for n, m in list(model.named_modules()):
        if layer_names is not None and n not in layer_names:
            continue
        if type(m) is nn.Linear:
            new = VDLinear(m.in_features, m.out_features, m.bias is not None,
                           log_sigma2_init)
        elif type(m) is nn.Conv2d:
            new = VDConv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride,
                           m.padding, m.dilation, m.groups, m.bias is not None,
                           log_sigma2_init=log_sigma2_init)
        else:
            continue
        new.weight.copy_(m.weight)
        if m.bias is not None:
            new.bias.copy_(m.bias)
        _replace(model, n, new.to(m.weight.device))
    if layer_names is not None:
        missing = set(layer_names) - {n for n, _ in vd_layers(model)}
        if missing:
            raise KeyError(f"to_variational: no Linear / Conv2d layer named {sorted(missing)}")
    return model


def vd_penalty(model: nn.Module) -> torch.Tensor:
    """Sum of the per-weight KL terms of every VD layer (the ELBO's regulariser)."""
    layers = vd_layers(model)
    if not layers:
        raise ValueError("vd_penalty: the model has no VD layers; call to_variational first")
    return torch.stack([m.kl() for _, m in layers]).sum()


@torch.no_grad()
def vd_sparsify(model: nn.Module, sparsity: Optional[float] = None) -> nn.Module:
    """Replace the VD layers by plain layers holding θ with weights removed: those of
    ``log α > 3`` (``sparsity=None``), or the ``sparsity`` fraction of all VD weights with
    the largest log α (ranked globally). In place; returns ``model``."""
    layers = vd_layers(model)
    if not layers:
        raise ValueError("vd_sparsify: the model has no VD layers")
    if sparsity is not None:
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"sparsity={sparsity} must be in [0, 1)")
        la = torch.cat([m.log_alpha.flatten() for _, m in layers])
        n_drop = int(round(sparsity * la.numel()))
        drop = torch.zeros_like(la, dtype=torch.bool)
        drop[torch.argsort(la, descending=True, stable=True)[:n_drop]] = True
    off = 0
    for n, m in layers:
        if sparsity is None:
            keep = m.log_alpha <= m.threshold
        else:
            keep = ~drop[off:off + m.weight.numel()].view_as(m.weight)
            off += m.weight.numel()
        if isinstance(m, nn.Linear):
            new = nn.Linear(m.in_features, m.out_features, m.bias is not None)
        else:
            new = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride,
                            m.padding, m.dilation, m.groups, m.bias is not None)
        new.weight.copy_(m.weight * keep)
        if m.bias is not None:
            new.bias.copy_(m.bias)
        _replace(model, n, new.to(m.weight.device))
    return model
