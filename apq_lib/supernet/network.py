"""The APQ supernet (APQ §3.1 on top of OFA §3): fixed 8-bit head and tail, searchable
elastic MBConv blocks whose architecture (depth, kernel, middle channels) and
quantization policy (pw_w, pw_a, dw_w, dw_a) are set per sample.

Usage::

    net = APQSupernet(SearchSpace(cfg.space))
    net.set_active_subnet(cfg)          # architecture (+ its bits if quantization is on)
    net.set_quantization_policy(cfg)    # turn quantization on with cfg's bits (None: FP32)
    sub = net.get_active_subnet()       # standalone nn.Module, same eval output
"""
from __future__ import annotations

import copy
from typing import Optional

import numpy as np
import torch
from torch import nn

from .block import ElasticMBConv
from .space import BIT_FIELDS, SearchSpace, SubnetConfig
from .static import MobileNetBody, StaticSubnet

__all__ = ["APQSupernet"]

FIXED_BITS = 8          # head and tail when quantized (APQ: 8-bit, stem input unquantized)


class APQSupernet(MobileNetBody):
    """Once-for-all supernet over a :class:`SearchSpace`. Starts as the largest subnet,
    FP32 (all quantizers off)."""

    def __init__(self, space: SearchSpace):
        super().__init__()
        self.space = space
        self._build_head(space.cfg)
        tail = self._make_tail(space.cfg)     # drawn before the blocks (fixed init order),
        self.blocks = nn.ModuleList(ElasticMBConv(slot, space.kernel_choices)
                                    for slot in space.blocks)
        for name, m in tail.items():          # registered after them (forward order)
            setattr(self, name, m)
        nn.init.normal_(self.classifier.weight, 0, 0.01)
        nn.init.zeros_(self.classifier.bias)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
        self.set_bn_params(space.cfg.bn_eps, space.cfg.bn_momentum)
        self.quantized = False
        self.set_fixed_bits(32)
        self._active: SubnetConfig = space.largest()
        self._run: list[int] = space.active_blocks(self._active)
        self.set_active_subnet(self._active)

    # ---------------------------------------------------------------- configuration
    @property
    def active_config(self) -> SubnetConfig:
        """The active configuration (a copy); its bits are the policy when quantized."""
        return SubnetConfig.from_dict(self._active.to_dict())

    def set_active_subnet(self, cfg: SubnetConfig) -> SubnetConfig:
        """Activate ``cfg``'s architecture; when quantization is on, also its bits.
        Raises :class:`~apq_lib.supernet.space.InvalidConfigError` for invalid configs."""
        self.space.validate(cfg)
        self._active = SubnetConfig.from_dict(cfg.to_dict())
        self._run = self.space.active_blocks(cfg)
        for i, b in enumerate(self.blocks):
            if i in self._run:
                b.set_active(cfg.kernels[i], cfg.mids[i])
            else:                          # switched off by depth: park at the largest
                b.set_active(b.dw.kernels[-1], b.max_mid)
        if self.quantized:
            self._apply_bits(cfg)
        return cfg

    def set_quantization_policy(self, cfg: Optional[SubnetConfig]) -> None:
        """Turn quantization on with ``cfg``'s per-block bits (head/tail 8-bit), or off
        with ``None`` (FP32). The architecture is not changed."""
        if cfg is None:
            self.quantized = False
            self.set_fixed_bits(32)
            for b in self.blocks:
                b.set_bits(32, 32, 32, 32)
            return
        self.space.validate(cfg)
        for f in BIT_FIELDS:
            setattr(self._active, f, list(map(int, getattr(cfg, f))))
        self.quantized = True
        self.set_fixed_bits(FIXED_BITS)
        self._apply_bits(cfg)

    def _apply_bits(self, cfg: SubnetConfig) -> None:
        for i, b in enumerate(self.blocks):
            bits = cfg.block_bits(i)
            # blocks switched off by depth may hold any value; keep them at the max bits
            b.set_bits(*(bits if i in self._run else (max(self.space.bit_choices),) * 4))

    def sample_active_subnet(self, rng: np.random.Generator) -> SubnetConfig:
        """Random architecture (``space.sample_arch``); a quantized supernet keeps its
        current per-block bits. Returns the configuration set."""
        cfg = self.space.sample_arch(rng)
        if self.quantized:
            for f in BIT_FIELDS:
                setattr(cfg, f, list(getattr(self._active, f)))
            cfg = self.space._fix_forbidden(cfg, rng)
        self.set_active_subnet(cfg)
        return self.active_config

    def sample_quantization_policy(self, rng: np.random.Generator) -> SubnetConfig:
        """Random policy for the active architecture (``space.sample_policy``); turns
        quantization on. Returns the full configuration."""
        cfg = self.space.sample_policy(self._active, rng)
        self.set_quantization_policy(cfg)
        return self.active_config

    # ---------------------------------------------------------------- compute
    def run_blocks(self, x: torch.Tensor) -> torch.Tensor:
        for i in self._run:
            x = self.blocks[i](x)
        return x

    def sort_channels(self) -> None:
        """Importance-sort every block's middle channels (before elastic width training)."""
        for b in self.blocks:
            b.sort_channels()

    def get_active_subnet(self) -> StaticSubnet:
        """A standalone copy of the active subnet (chosen channels, kernels and blocks, with
        its quantizers and their bits); in eval mode its output equals the supernet's."""
        fixed = {n: copy.deepcopy(getattr(self, n)) for n in StaticSubnet.FIXED}
        blocks = [self.blocks[i].to_static() for i in self._run]
        sub = StaticSubnet(fixed, blocks, self.active_config, self.quantized)
        sub.train(self.training)
        return sub.to(next(self.parameters()).device)

    def export(self, cfg: SubnetConfig, quantized: bool = False) -> StaticSubnet:
        """A standalone copy of ``cfg`` (FP32, or with quantizers at ``cfg``'s bits when
        ``quantized``); the supernet's own active subnet and policy are restored, also when
        ``cfg`` is invalid."""
        prev_cfg, prev_q = self.active_config, self.quantized
        try:
            self.set_quantization_policy(cfg if quantized else None)
            self.set_active_subnet(cfg)
            return self.get_active_subnet()
        finally:
            self.set_quantization_policy(prev_cfg if prev_q else None)
            self.set_active_subnet(prev_cfg)

    def extra_repr(self) -> str:
        return f"{self.space!r}, quantized={self.quantized}"
