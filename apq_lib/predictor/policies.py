"""Which ⟨architecture, policy⟩ pairs the predictor's labels measure (APQ §3.2).

Quantized pairs come in blocks of ``policies_per_arch`` that share one architecture, so
both the between-architecture and the within-architecture (bit) effect are in the labels:

* the first pairs of a block are the **uniform** policies at the lowest, middle and
  highest bit choice (W4A4 / W6A6 / W8A8 with ``bit_choices: [4, 6, 8]``);
* the rest are **mixed** policies drawn around a per-architecture bit level ``L``
  (uniform over the range of bit-choice indices) with a per-layer spread: every weight /
  activation bitwidth of every block is the choice nearest ``L + spread · N(0, 1)``.

Architectures span the whole cost range: the space's corners come first (smallest, the
MobileNetV2 point, largest), then a ``large_fraction`` of the architectures is drawn
*large* (every stage at its largest depth, middle widths from the upper half of each
block's choices, any kernel), the rest uniformly per choice (APQ's sampler). FP32 pairs use
the same architecture sampler (their own stream ids).

Every draw comes from :func:`apq_lib.runtime.stream_rng` with the registered streams
``pair_arch`` (per architecture) and ``pair_policy`` (per pair), so sample ``i`` depends on
``(seed, i)`` alone."""
from __future__ import annotations

import numpy as np

from ..runtime import stream_rng
from ..supernet.space import SearchSpace, SubnetConfig

__all__ = ["uniform_bits", "corner_architectures", "draw_architecture", "uniform_config",
           "mixed_policy", "pair_config", "POLICY_KINDS", "coverage_fraction",
           "mean_bits"]

POLICY_KINDS = ("uniform", "mixed")
_FIELDS = ("pw_w", "pw_a", "dw_w", "dw_a")


def uniform_bits(space: SearchSpace) -> list[int]:
    """The lowest, middle and highest bit choice (fewer when the space has fewer)."""
    b = sorted(space.bit_choices)
    return sorted({b[0], b[(len(b) - 1) // 2], b[-1]})


def corner_architectures(space: SearchSpace) -> list[SubnetConfig]:
    """smallest, the MobileNetV2 point, largest (highest bits; a policy replaces them)."""
    return [space.smallest(), space.mobilenetv2(), space.largest()]


def draw_architecture(space: SearchSpace, rng: np.random.Generator,
                      large_fraction: float = 0.0) -> tuple[SubnetConfig, str]:
    """``(architecture, "large" | "random")``: with probability ``large_fraction`` every
    stage at its largest depth and each block's middle width from the upper half of its
    choices (any kernel); else APQ's uniform draw per choice."""
    large = bool(rng.random() < large_fraction)
    if not large:
        return space.sample_arch(rng), "random"
    arch = space.sample_arch(rng)
    arch.depths = [max(c) for c in space.depth_choices]
    arch.mids = [int(b.mid_choices[rng.integers((len(b.mid_choices) - 1) // 2,
                                                len(b.mid_choices))]) for b in space.blocks]
    return arch, "large"


def uniform_config(space: SearchSpace, arch: SubnetConfig, bits: int) -> SubnetConfig:
    """``arch`` at W``bits``A``bits`` everywhere (forbidden 7×7/4-bit-activation blocks, if
    the space forbids them, get the next bit choice up)."""
    return space.lift_forbidden(space.with_bits(arch, bits, bits, bits, bits))


def mixed_policy(space: SearchSpace, arch: SubnetConfig, level: float, spread: float,
                 rng: np.random.Generator) -> SubnetConfig:
    """Per-layer bits: choice index ``round(level + spread · N(0, 1))`` (clipped to the
    range) for each of the four bitwidths of every block."""
    b = sorted(space.bit_choices)
    out = SubnetConfig.from_dict(arch.to_dict())
    for f in _FIELDS:
        k = np.clip(np.rint(level + spread * rng.standard_normal(space.n_blocks)), 0,
                    len(b) - 1).astype(int)
        setattr(out, f, [int(b[j]) for j in k])
    return space._fix_forbidden(out, rng)


def pair_config(space: SearchSpace, kind: str, seed: int, i: int,
                policies_per_arch: int = 6, large_fraction: float = 0.25,
                bit_spread: float = 0.75) -> tuple[SubnetConfig, str, int]:
    """``(config, sampler, group)`` of pair ``i`` (see the module docstring).

    ``fp32``: architecture ``i`` (corners first); ``sampler`` is ``corner``, ``large`` or
    ``random``; ``group = i``. ``quant``: block ``i // policies_per_arch`` shares one
    architecture (``group = -(block + 1)``); ``sampler`` is ``"<arch kind>+uniform"`` or
    ``"<arch kind>+mixed"``."""
    corners = corner_architectures(space)
    if kind == "fp32":
        if i < len(corners):
            return corners[i], "corner", i
        arch, how = draw_architecture(space, stream_rng(seed, "pair_arch", "fp32", i),
                                      large_fraction)
        return arch, how, i
    if kind != "quant":
        raise ValueError(f"kind={kind!r}: use 'fp32' or 'quant'")
    ppa = int(policies_per_arch)
    block, r = divmod(int(i), ppa)
    arng = stream_rng(seed, "pair_arch", "quant", block)
    if block < len(corners):
        arch, how = corners[block], "corner"
    else:
        arch, how = draw_architecture(space, arng, large_fraction)
    level = float(arng.uniform(0, len(space.bit_choices) - 1))   # this architecture's level
    ub = uniform_bits(space)
    if r < len(ub):
        return uniform_config(space, arch, ub[r]), f"{how}+uniform", -(block + 1)
    cfg = mixed_policy(space, arch, level, bit_spread,
                       stream_rng(seed, "pair_policy", "quant", i))
    return cfg, f"{how}+mixed", -(block + 1)


def mean_bits(space: SearchSpace, idx: np.ndarray) -> np.ndarray:
    """Mean weight/activation bitwidth ``[N]`` over the active blocks of index arrays."""
    idx = np.asarray(idx)
    on = idx[:, :, 0] >= 0
    bits = np.asarray(space.bit_choices, float)[np.clip(idx[:, :, 2:], 0, None)]
    return (bits * on[:, :, None]).sum((1, 2)) / (4 * on.sum(1))


def coverage_fraction(latency, reference: float, factor: float = 0.8) -> float:
    """Fraction of pairs whose latency is at least ``factor`` × ``reference`` (e.g. the
    space's MobileNetV2 point at W8A8)."""
    lat = np.asarray(latency, float)
    if not len(lat):
        raise ValueError("coverage_fraction: no pairs")
    if not np.isfinite(reference) or reference <= 0:
        raise ValueError(f"coverage_fraction: reference latency {reference!r} must be > 0")
    return float(np.mean(lat >= factor * reference))
