"""Progressive-shrinking schedule (OFA §3.2): one :class:`~apq_lib.config.Phase` per entry
of the profile's ``supernet.phases``, and the :class:`PhaseSampler` that draws the subnets
of a training step from the sub-space a phase trains.
"""
from __future__ import annotations

import numpy as np

from ..config import PHASE_KEYS, ConfigError, Phase
from .space import SearchSpace, SubnetConfig

__all__ = ["Phase", "PhaseSampler", "PHASE_KEYS"]

# Phase (the typed profile entry, validated when the profile loads) lives in apq_lib.config


def _nearest(choices, target: float) -> int:
    return min(range(len(choices)), key=lambda i: (abs(choices[i] - target), -choices[i]))


class PhaseSampler:
    """The sub-space one phase trains: per-stage depths, kernels, per-block mid choices."""

    def __init__(self, space: SearchSpace, phase: Phase):
        self.space, self.phase = space, phase
        kernels = phase.kernels or [max(space.kernel_choices)]
        depths = phase.depths or [max(space.cfg.stage_max_depth)]
        expands = phase.expands or [space.cfg.expand_max]
        self.kernels = [k for k in space.kernel_choices if k in kernels]
        if not self.kernels:
            raise ConfigError(f"phase {phase.name}: kernels {kernels} share nothing "
                              f"with space.kernel_choices {list(space.kernel_choices)}")
        self.depths = [[d for d in dc if d in depths] or [max(dc)]
                       for dc in space.depth_choices]
        self.mids = []
        for b in space.blocks:
            lo = _nearest(b.mid_choices, min(expands) * b.in_c)
            hi = _nearest(b.mid_choices, max(expands) * b.in_c)
            self.mids.append(list(b.mid_choices[lo:hi + 1]))

    @property
    def elastic_width(self) -> bool:
        return any(len(m) > 1 for m in self.mids)

    def _cfg(self, depths, kernels, mids) -> SubnetConfig:
        n, b = self.space.n_blocks, max(self.space.bit_choices)
        return SubnetConfig(list(depths), list(kernels), list(mids), [b] * n, [b] * n,
                            [b] * n, [b] * n)

    def largest(self) -> SubnetConfig:
        return self._cfg([max(d) for d in self.depths], [max(self.kernels)] * len(self.mids),
                         [max(m) for m in self.mids])

    def smallest(self) -> SubnetConfig:
        return self._cfg([min(d) for d in self.depths], [min(self.kernels)] * len(self.mids),
                         [min(m) for m in self.mids])

    def sample(self, rng: np.random.Generator) -> SubnetConfig:
        return self._cfg([int(rng.choice(d)) for d in self.depths],
                         [int(rng.choice(self.kernels)) for _ in self.mids],
                         [int(rng.choice(m)) for m in self.mids])

    def plan(self, rng: np.random.Generator) -> list[SubnetConfig]:
        """The subnets of one step: [largest if distilling] [smallest if sandwich] random."""
        out = [self.largest()] if self.phase.distill else []
        if self.phase.sandwich:
            out.append(self.smallest())
        while len(out) < self.phase.subnets_per_step:
            out.append(self.sample(rng))
        return out
