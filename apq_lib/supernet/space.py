"""APQ's joint search space (APQ §3.1): architecture (depth, kernel, fine-grained middle
channels) and quantization policy (pw_w, pw_a, dw_w, dw_a bits) for every MBConv block.

A configuration is a :class:`SubnetConfig`; whole populations are handled as integer
index arrays ``[N, n_blocks, 6]`` (columns :data:`COLUMNS`, ``-1`` for blocks switched off
by depth), which the predictor encoder, the lookup tables and the search all share.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from ..config import SpaceConfig

__all__ = ["BlockSlot", "SubnetConfig", "SearchSpace", "InvalidConfigError", "COLUMNS",
           "BIT_FIELDS", "apq_imagenet_space", "FixedLayer"]

COLUMNS = ("kernel", "mid", "pw_w", "pw_a", "dw_w", "dw_a")
BIT_FIELDS = ("pw_w", "pw_a", "dw_w", "dw_a")


# the names every table gives the space's reference points
MBV2_NAME = "MobileNetV2 (3x3, e6)"      # APQ's fixed network as a point of the space
SMALLEST_NAME, LARGEST_NAME = "smallest corner", "largest corner"


class InvalidConfigError(ValueError):
    """A configuration outside the search space; the message names block and allowed values."""


@dataclass(frozen=True)
class BlockSlot:
    """One searchable MBConv position. ``in_c`` is fixed per slot (the first block of a
    stage takes the previous stage's width), so each slot's cost depends only on its choices."""
    stage: int
    index: int                 # position within the stage
    in_c: int
    out_c: int
    stride: int
    in_size: int
    mid_choices: tuple

    @property
    def out_size(self) -> int:
        return -(-self.in_size // self.stride)

    @property
    def name(self) -> str:
        return f"blocks.{self.stage}.{self.index}"


@dataclass(frozen=True)
class FixedLayer:
    """A layer outside the searchable blocks (stem, head MBConv, tail, classifier)."""
    name: str
    in_c: int
    out_c: int
    in_size: int
    kernel: int
    stride: int
    groups: int
    w_bits: int
    a_bits: int

    @property
    def padding(self) -> int:
        return self.kernel // 2


@dataclass
class SubnetConfig:
    """An ⟨architecture, quantization policy⟩ pair. Per-block lists cover every slot;
    entries of blocks switched off by ``depths`` are ignored."""
    depths: list
    kernels: list
    mids: list
    pw_w: list
    pw_a: list
    dw_w: list
    dw_a: list

    def to_dict(self) -> dict:
        return {k: list(map(int, getattr(self, k))) for k in
                ("depths", "kernels", "mids", *BIT_FIELDS)}

    @classmethod
    def from_dict(cls, d: dict) -> "SubnetConfig":
        return cls(**{k: list(d[k]) for k in ("depths", "kernels", "mids", *BIT_FIELDS)})

    def block_bits(self, i: int) -> tuple:
        return (self.pw_w[i], self.pw_a[i], self.dw_w[i], self.dw_a[i])


def _ceil_to(x: int, step: int) -> int:
    return -(-x // step) * step


class SearchSpace:
    """The space a profile's ``space`` section describes."""

    def __init__(self, cfg: Optional[SpaceConfig] = None):
        self.cfg = cfg = cfg or SpaceConfig()
        self.kernel_choices = tuple(cfg.kernel_choices)
        self.bit_choices = tuple(cfg.bit_choices)
        self.n_stages = len(cfg.stage_widths)
        self.depth_choices = [tuple(d for d in cfg.depth_choices if d <= m) or (m,)
                              for m in cfg.stage_max_depth]
        size = -(-cfg.image_size // cfg.stem_stride)
        self.head_out_size = size
        blocks, c_in = [], cfg.head_width
        for s, (w, st, m) in enumerate(zip(cfg.stage_widths, cfg.stage_strides,
                                           cfg.stage_max_depth)):
            for i in range(m):
                stride = st if i == 0 else 1
                lo = _ceil_to(cfg.expand_min * c_in, cfg.channel_step)
                hi = cfg.expand_max * c_in
                mids = tuple(range(lo, hi + 1, cfg.channel_step)) or (lo,)
                blocks.append(BlockSlot(s, i, c_in, w, stride, size, mids))
                size = -(-size // stride)
                c_in = w
        self.blocks = blocks
        self.final_size = size
        self.n_blocks = len(blocks)
        self.stage_slices = []
        start = 0
        for m in cfg.stage_max_depth:
            self.stage_slices.append(slice(start, start + m))
            start += m

    # ------------------------------------------------------------------ structure
    def fixed_layers(self) -> list[FixedLayer]:
        c = self.cfg
        hs = self.head_out_size
        return [
            FixedLayer("stem", c.in_channels, c.stem_width, c.image_size, 3, c.stem_stride, 1,
                       8, 8),
            FixedLayer("head.dw", c.stem_width, c.stem_width, hs, 3, 1, c.stem_width, 8, 8),
            FixedLayer("head.pw", c.stem_width, c.head_width, hs, 1, 1, 1, 8, 8),
            FixedLayer("tail", c.stage_widths[-1], c.tail_width, self.final_size, 1, 1, 1, 8, 8),
            FixedLayer("classifier", c.tail_width, c.num_classes, 1, 1, 1, 1, 8, 8),
        ]

    def active_mask(self, depths: Sequence[int]) -> np.ndarray:
        mask = np.zeros(self.n_blocks, dtype=bool)
        for s, sl in enumerate(self.stage_slices):
            mask[sl.start: sl.start + int(depths[s])] = True
        return mask

    def active_blocks(self, cfg: SubnetConfig) -> list[int]:
        return [int(i) for i in np.flatnonzero(self.active_mask(cfg.depths))]

    # ------------------------------------------------------------------ validation
    def validate(self, cfg: SubnetConfig) -> SubnetConfig:
        """Raise :class:`InvalidConfigError` naming the first offending block/stage."""
        if len(cfg.depths) != self.n_stages:
            raise InvalidConfigError(f"depths has {len(cfg.depths)} entries; the space has "
                                     f"{self.n_stages} stages")
        for s, d in enumerate(cfg.depths):
            if d not in self.depth_choices[s]:
                raise InvalidConfigError(f"stage {s}: depth {d} not allowed; allowed "
                                         f"{list(self.depth_choices[s])}")
        for k in ("kernels", "mids", *BIT_FIELDS):
            if len(getattr(cfg, k)) != self.n_blocks:
                raise InvalidConfigError(f"{k} has {len(getattr(cfg, k))} entries; the space "
                                         f"has {self.n_blocks} block slots")
        for i in self.active_blocks(cfg):
            b = self.blocks[i]
            if cfg.kernels[i] not in self.kernel_choices:
                raise InvalidConfigError(f"{b.name}: kernel {cfg.kernels[i]} not allowed; "
                                         f"allowed {list(self.kernel_choices)}")
            if cfg.mids[i] not in b.mid_choices:
                raise InvalidConfigError(f"{b.name}: middle channels {cfg.mids[i]} not "
                                         f"allowed; allowed {list(b.mid_choices)}")
            for f in BIT_FIELDS:
                v = getattr(cfg, f)[i]
                if v not in self.bit_choices:
                    raise InvalidConfigError(f"{b.name}: {f} bits {v} not allowed; allowed "
                                             f"{list(self.bit_choices)}")
            if self.cfg.forbid_k7_a4 and cfg.kernels[i] == 7 and cfg.dw_a[i] == 4:
                raise InvalidConfigError(f"{b.name}: 7x7 depthwise with 4-bit activations "
                                         f"is excluded by space.forbid_k7_a4")
        return cfg

    def is_valid(self, cfg: SubnetConfig) -> bool:
        try:
            self.validate(cfg)
            return True
        except InvalidConfigError:
            return False

    # ------------------------------------------------------------------ sampling
    def sample_arch(self, rng: np.random.Generator) -> SubnetConfig:
        """Random architecture with 8-bit policy."""
        depths = [int(rng.choice(c)) for c in self.depth_choices]
        kernels = [int(rng.choice(self.kernel_choices)) for _ in self.blocks]
        mids = [int(rng.choice(b.mid_choices)) for b in self.blocks]
        hi = max(self.bit_choices)
        n = self.n_blocks
        return SubnetConfig(depths, kernels, mids, [hi] * n, [hi] * n, [hi] * n, [hi] * n)

    def sample_policy(self, arch: SubnetConfig, rng: np.random.Generator) -> SubnetConfig:
        """Same architecture with a random quantization policy."""
        out = SubnetConfig.from_dict(arch.to_dict())
        for f in BIT_FIELDS:
            setattr(out, f, [int(rng.choice(self.bit_choices)) for _ in self.blocks])
        return self._fix_forbidden(out, rng)

    def sample(self, rng: np.random.Generator, quantized: bool = True) -> SubnetConfig:
        arch = self.sample_arch(rng)
        return self.sample_policy(arch, rng) if quantized else arch

    def _fix_forbidden(self, cfg: SubnetConfig, rng: np.random.Generator) -> SubnetConfig:
        if self.cfg.forbid_k7_a4:
            allowed = [b for b in self.bit_choices if b != 4] or list(self.bit_choices)
            for i in range(self.n_blocks):
                if cfg.kernels[i] == 7 and cfg.dw_a[i] == 4:
                    cfg.dw_a[i] = int(rng.choice(allowed))
        return cfg

    def lift_forbidden(self, cfg: SubnetConfig) -> SubnetConfig:
        """``cfg`` made valid deterministically: under ``forbid_k7_a4`` a 7×7 depthwise
        block with 4-bit activations gets the next activation bit choice up (in place)."""
        if self.cfg.forbid_k7_a4:
            up = [b for b in sorted(self.bit_choices) if b > 4]
            for i in range(self.n_blocks):
                if cfg.kernels[i] == 7 and cfg.dw_a[i] == 4 and up:
                    cfg.dw_a[i] = up[0]
        return cfg

    def largest(self, bits: Optional[int] = None) -> SubnetConfig:
        """Every choice at its largest, bits ``bits`` (default the highest) everywhere;
        under ``forbid_k7_a4`` at 4 bits the 7×7 depthwise activations take the next bit
        choice up (:meth:`lift_forbidden`), so the corner is a valid configuration."""
        b = bits or max(self.bit_choices)
        n = self.n_blocks
        return self.lift_forbidden(SubnetConfig(
            [max(c) for c in self.depth_choices], [max(self.kernel_choices)] * n,
            [max(bl.mid_choices) for bl in self.blocks], [b] * n, [b] * n, [b] * n, [b] * n))

    def smallest(self, bits: Optional[int] = None) -> SubnetConfig:
        b = bits or max(self.bit_choices)
        n = self.n_blocks
        return SubnetConfig([min(c) for c in self.depth_choices],
                            [min(self.kernel_choices)] * n,
                            [min(bl.mid_choices) for bl in self.blocks], [b] * n, [b] * n,
                            [b] * n, [b] * n)

    def mobilenetv2(self, bits: Optional[int] = None) -> SubnetConfig:
        """The space's MobileNetV2 point (Sandler et al. 2018, APQ's fixed network): every
        kernel 3×3 (the smallest choice when 3 is not offered), expand ratio 6 (the middle
        width nearest 6× the block's input), every stage at its largest depth."""
        b = bits or max(self.bit_choices)
        n = self.n_blocks
        k = 3 if 3 in self.kernel_choices else min(self.kernel_choices)
        mids = [min(bl.mid_choices, key=lambda m, c=bl.in_c: (abs(m - 6 * c), -m))
                for bl in self.blocks]
        return SubnetConfig([max(c) for c in self.depth_choices], [k] * n, mids,
                            [b] * n, [b] * n, [b] * n, [b] * n)

    def corners(self, bits: Optional[int] = None) -> dict[str, SubnetConfig]:
        """The reference points every table names: smallest, MobileNetV2, largest."""
        return {SMALLEST_NAME: self.smallest(bits), MBV2_NAME: self.mobilenetv2(bits),
                LARGEST_NAME: self.largest(bits)}

    def with_bits(self, cfg: SubnetConfig, pw_w: int, pw_a: int, dw_w: int,
                  dw_a: int) -> SubnetConfig:
        """Same architecture, uniform bits (fixed-precision policies)."""
        out = SubnetConfig.from_dict(cfg.to_dict())
        n = self.n_blocks
        out.pw_w, out.pw_a, out.dw_w, out.dw_a = [pw_w] * n, [pw_a] * n, [dw_w] * n, [dw_a] * n
        return out

    # ------------------------------------------------------------------ index arrays
    def to_index_array(self, configs: Sequence[SubnetConfig]) -> np.ndarray:
        """``[N, n_blocks, 6]`` int16 choice indices (columns :data:`COLUMNS`); -1 = off."""
        out = np.full((len(configs), self.n_blocks, 6), -1, dtype=np.int16)
        kidx = {k: i for i, k in enumerate(self.kernel_choices)}
        bidx = {b: i for i, b in enumerate(self.bit_choices)}
        for n, c in enumerate(configs):
            for i in self.active_blocks(c):
                out[n, i, 0] = kidx[c.kernels[i]]
                out[n, i, 1] = self.blocks[i].mid_choices.index(c.mids[i])
                for j, f in enumerate(BIT_FIELDS):
                    out[n, i, 2 + j] = bidx[getattr(c, f)[i]]
        return out

    def from_index_array(self, arr: np.ndarray) -> list[SubnetConfig]:
        """Inverse of :meth:`to_index_array` (inactive blocks get the smallest choices)."""
        out = []
        for row in np.asarray(arr):
            active = row[:, 0] >= 0
            depths = [int(active[sl].sum()) for sl in self.stage_slices]
            r = np.where(active[:, None], row, 0)
            kernels = [self.kernel_choices[k] for k in r[:, 0]]
            mids = [self.blocks[i].mid_choices[m] for i, m in enumerate(r[:, 1])]
            bits = [[self.bit_choices[b] for b in r[:, 2 + j]] for j in range(4)]
            out.append(SubnetConfig(depths, kernels, mids, *bits))
        return out

    def n_choices(self) -> dict:
        """Choices per column per slot (for encoders and vectorised samplers)."""
        return {"kernel": len(self.kernel_choices),
                "mid": [len(b.mid_choices) for b in self.blocks],
                "bits": len(self.bit_choices)}

    def __repr__(self) -> str:
        return (f"SearchSpace({self.n_stages} stages, {self.n_blocks} block slots, "
                f"kernels {list(self.kernel_choices)}, bits {list(self.bit_choices)})")


def apq_imagenet_space() -> SearchSpace:
    """APQ's own ImageNet space (224x224, widths 24/40/80/96/192/320, 21 block slots)."""
    return SearchSpace(SpaceConfig(
        stem_width=32, stem_stride=2, head_width=16,
        stage_widths=[24, 40, 80, 96, 192, 320], stage_strides=[2, 2, 2, 1, 2, 1],
        stage_max_depth=[4, 4, 4, 4, 4, 1], depth_choices=[2, 3, 4], kernel_choices=[3, 5, 7],
        expand_min=4, expand_max=6, channel_step=8, bit_choices=[4, 6, 8], tail_width=1280,
        image_size=224, in_channels=3, num_classes=1000))
