"""APQ's hardware lookup table (APQ §3.3, §4; mit-han-lab/apq ``utils/latency_predictor.py``):
every layer a search space can produce → {latency, energy}, and whole-network costs as
head + tail constants plus, per active MBConv block, first 1×1 + depthwise + second 1×1.

:class:`SpaceCostTable` precomputes, per block slot, a cost tensor over the slot's
choices ``(kernel, mid, pw_w, pw_a, dw_w, dw_a)`` and looks up a batch of subnets encoded
as ``space.to_index_array(configs)`` (``[N, n_blocks, 6]``, -1 rows for blocks switched
off) with one gather and one sum.
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Optional, Sequence

import numpy as np

from ..artifacts import Artifact, ArtifactStore, StageKey
from ..progress import tqdm
from .costs import get_simulator
from .layers import LayerSpec, mbconv_layers

__all__ = ["SpaceCostTable", "build_lut", "build_space_lut", "load_lut", "subnet_layers",
           "fixed_layer_specs", "subnet_cost", "LUT_STAGE", "LUT_VERSION"]

LUT_STAGE = "hardware_lut"
LUT_VERSION = 3                 # 2: BitFusion re-modelled on the official simulator
# the lookup table of a space on one simulator: the space's fields, and (added when it is
# built) the simulator and its parameters, which are not profile fields
LUT_KEY = StageKey(LUT_STAGE, version=LUT_VERSION, reads=("space",))
FP32 = 32
_COLUMNS = ("kernel", "mid", "pw_w", "pw_a", "dw_w", "dw_a")   # space.to_index_array columns


def fixed_layer_specs(space) -> list[tuple[str, LayerSpec, int, int]]:
    """The head/tail layers of ``space`` as ``(name, LayerSpec, w_bits, a_bits)``."""
    return [(f.name, LayerSpec(f.in_c, f.out_c, f.in_size, f.kernel, f.stride, f.padding,
                               f.groups), f.w_bits, f.a_bits) for f in space.fixed_layers()]


def _is_head(name: str) -> bool:
    return name.split(".")[0] in ("stem", "head")


def subnet_layers(space, cfg) -> list[tuple[str, LayerSpec, int, int]]:
    """Every layer of one subnet (fixed head, active blocks, fixed tail) with its bits."""
    fixed = fixed_layer_specs(space)
    out = [f for f in fixed if _is_head(f[0])]
    for i in space.active_blocks(cfg):
        b = space.blocks[i]
        pw1, dw, pw2 = mbconv_layers(b.in_c, cfg.mids[i], b.out_c, b.in_size, cfg.kernels[i],
                                     b.stride)
        out += [(f"{b.name}.pw1", pw1, cfg.pw_w[i], cfg.pw_a[i]),
                (f"{b.name}.dw", dw, cfg.dw_w[i], cfg.dw_a[i]),
                (f"{b.name}.pw2", pw2, cfg.pw_w[i], cfg.pw_a[i])]
    return out + [f for f in fixed if not _is_head(f[0])]


def _entries(space, fp32: bool):
    """Unique ``(LayerSpec, w, a)`` over the whole space (bits 32/32 for FP32 targets)."""
    bit_pairs = [(FP32, FP32)] if fp32 else [(w, a) for w in space.bit_choices
                                             for a in space.bit_choices]
    seen = {}
    for b in space.blocks:
        for k in space.kernel_choices:
            for mid in b.mid_choices:
                for spec in mbconv_layers(b.in_c, mid, b.out_c, b.in_size, k, b.stride):
                    for w, a in bit_pairs:
                        seen.setdefault(spec.key(w, a), (spec, w, a))
    for _n, spec, w, a in fixed_layer_specs(space):
        w, a = (FP32, FP32) if fp32 else (w, a)
        seen.setdefault(spec.key(w, a), (spec, w, a))
    return seen


def build_lut(space, sim, progress: bool = False) -> dict:
    """``{key: {"latency": ms, "energy": mJ}}`` for every layer of ``space``, plus APQ's
    ``"head"`` and ``"tail"`` totals. FP32 targets (``sim.name == "cpu"``) use W32A32 keys."""
    fp32 = sim.name == "cpu"
    entries = _entries(space, fp32)
    if hasattr(sim, "prefetch"):              # search all bit pairs of a layer at once
        by_spec: dict = {}
        for spec, w, a in entries.values():
            by_spec.setdefault(spec, []).append((w, a))
        for spec, pairs in by_spec.items():
            sim.prefetch(spec, pairs)
    items = entries.items()
    if progress:
        items = tqdm(items, desc=f"LUT {sim.name}", total=len(entries))
    lut = {key: {k: float(v) for k, v in sim.cost(spec, w, a).items()}
           for key, (spec, w, a) in items}
    for part in ("head", "tail"):
        sel = [lut[s.key(*((FP32, FP32) if fp32 else (w, a)))]
               for n, s, w, a in fixed_layer_specs(space) if _is_head(n) == (part == "head")]
        lut[part] = {m: float(sum(e[m] for e in sel)) for m in ("latency", "energy")}
    return lut


def load_lut(path) -> dict:
    return json.loads(Path(path).read_text())


class SpaceCostTable:
    """Vectorised whole-network latency/energy for one space and one target.

    ``costs``: ``[n_blocks, n_kernel, max_mid, n_bits, n_bits, n_bits, n_bits, 2]``
    (last axis latency ms, energy mJ); ``fixed``: head + tail ``[2]``.
    """

    def __init__(self, space, costs: np.ndarray, fixed: np.ndarray, target: str = ""):
        nk, nb = len(space.kernel_choices), len(space.bit_choices)
        mm = max(len(b.mid_choices) for b in space.blocks)
        want = (space.n_blocks, nk, mm, nb, nb, nb, nb, 2)
        if costs.shape != want:
            raise ValueError(f"cost tensor has shape {costs.shape}; this space needs {want}")
        self.space, self.target = space, target
        self.costs = np.ascontiguousarray(costs, dtype=np.float64)
        self.fixed = np.asarray(fixed, dtype=np.float64)
        # Lookup layout: every choice axis gets one extra leading slot so that an index
        # row of -1s (block switched off) shifted by +1 lands on an all-zero corner entry;
        # latency + 1j*energy in one complex array, so one gather fetches both.
        self._dims = want[1:-1]
        self._dims_arr = np.array(self._dims, dtype=np.int16)
        padded = tuple(n + 1 for n in want[1:-1])
        flat = np.zeros((space.n_blocks, *padded), dtype=np.complex128)
        inner = (slice(None),) + (slice(1, None),) * 6
        flat.real[inner] = self.costs[..., 0]          # (not lat + 1j*en: 1j*nan poisons lat)
        flat.imag[inner] = self.costs[..., 1]
        self._flat = flat.reshape(-1)
        per_slot = int(np.prod(padded))
        self._strides = np.array([int(np.prod(padded[j + 1:])) for j in range(6)], np.int32)
        self._offsets = (np.arange(space.n_blocks) * per_slot
                         + int(self._strides.sum())).astype(np.int32)

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_lut(cls, space, lut: dict, target: str = "") -> "SpaceCostTable":
        fp32 = target == "cpu"
        nk, nb = len(space.kernel_choices), len(space.bit_choices)
        mm = max(len(b.mid_choices) for b in space.blocks)
        costs = np.zeros((space.n_blocks, nk, mm, nb, nb, nb, nb, 2))
        bits = space.bit_choices

        def get(spec: LayerSpec, w: int, a: int) -> np.ndarray:
            key = spec.key(*((FP32, FP32) if fp32 else (w, a)))
            if key not in lut:
                raise KeyError(f"lookup table has no entry {key}")
            return np.array([lut[key]["latency"], lut[key]["energy"]])

        for s, b in enumerate(space.blocks):
            for ki, k in enumerate(space.kernel_choices):
                for mi, mid in enumerate(b.mid_choices):
                    pw1, dw, pw2 = mbconv_layers(b.in_c, mid, b.out_c, b.in_size, k, b.stride)
                    pw = np.array([[get(pw1, w, a) + get(pw2, w, a) for a in bits]
                                   for w in bits])                    # [nb, nb, 2]
                    d = np.array([[get(dw, w, a) for a in bits] for w in bits])
                    costs[s, ki, mi] = pw[:, :, None, None, :] + d[None, None, :, :, :]
        fixed = np.array([lut["head"]["latency"] + lut["tail"]["latency"],
                          lut["head"]["energy"] + lut["tail"]["energy"]])
        return cls(space, costs, fixed, target)

    def save(self, path) -> None:
        np.savez(path, costs=self.costs, fixed=self.fixed, target=np.array(self.target))

    @classmethod
    def load(cls, path, space) -> "SpaceCostTable":
        with np.load(path) as z:
            return cls(space, z["costs"], z["fixed"], str(z["target"]))

    # ---------------------------------------------------------------- lookup
    def lookup(self, index_array: np.ndarray, check: bool = True
               ) -> tuple[np.ndarray, np.ndarray]:
        """``[N, n_blocks, 6]`` choice indices → (latency ms ``[N]``, energy mJ ``[N]``).
        ``check=False`` skips the range check of the indices (slightly faster)."""
        idx = np.asarray(index_array)
        if idx.ndim == 2:
            idx = idx[None]
        if idx.ndim != 3 or idx.shape[1:] != (self.space.n_blocks, 6):
            raise ValueError(f"index array has shape {idx.shape}; expected "
                             f"[N, {self.space.n_blocks}, 6] from space.to_index_array")
        if idx.dtype not in (np.int16, np.int32):
            idx = idx.astype(np.int32)
        if check and idx.size and ((idx >= self._dims_arr) | (idx < -1)).any():
            flat = idx.reshape(-1, 6)
            lo, hi = flat.min(axis=0), flat.max(axis=0)
            for j, name in enumerate(_COLUMNS):
                if lo[j] < -1 or hi[j] >= self._dims[j]:
                    raise ValueError(f"index array column {name!r} has values in "
                                     f"[{lo[j]}, {hi[j]}]; allowed -1..{self._dims[j] - 1}")
        lin = np.einsum("nsj,j->ns", idx, self._strides, dtype=np.int32) + self._offsets
        tot = self._flat[lin].sum(axis=1)                                   # [N] complex
        return tot.real + self.fixed[0], tot.imag + self.fixed[1]

    def lookup_configs(self, configs: Sequence) -> tuple[np.ndarray, np.ndarray]:
        return self.lookup(self.space.to_index_array(list(configs)))

    def __repr__(self) -> str:
        return f"SpaceCostTable({self.target}, {self.space!r})"


def subnet_cost(space, cfg, cost: Callable[[LayerSpec, int, int], dict]) -> dict:
    """Reference per-layer sum for one subnet: ``cost(spec, w, a)`` over every layer."""
    tot = {"latency": 0.0, "energy": 0.0}
    for _n, spec, w, a in subnet_layers(space, cfg):
        c = cost(spec, w, a)
        tot["latency"] += c["latency"]
        tot["energy"] += c["energy"]
    return tot


def build_space_lut(space, simulator: str = "bitfusion", store: Optional[ArtifactStore] = None,
                    force: bool = False, cpu_repeats: int = 20, cpu_threads: int = 1,
                    progress: bool = False, bitfusion: Optional[dict] = None
                    ) -> tuple[SpaceCostTable, Artifact]:
    """Build (or load the cached) LUT of ``space`` on ``simulator`` as an artifact holding
    ``lut.json`` (APQ's key format) and ``cost.npz`` (the dense per-slot tensors).
    ``bitfusion``: BitFusion model options (``HardwareConfig.bitfusion_options()``)."""
    sim = get_simulator(simulator, cpu_repeats=cpu_repeats, cpu_threads=cpu_threads,
                        bitfusion=bitfusion if simulator == "bitfusion" else None)
    store = store or ArtifactStore()
    # the profile fields it reads (the space) plus the simulator and its measured parameters
    config = {**LUT_KEY.config(SimpleNamespace(space=space.cfg)), "simulator": simulator,
              "params": sim.params()}

    def fn(work: Path) -> None:
        lut = build_lut(space, sim, progress=progress)
        (work / "lut.json").write_text(json.dumps(lut, indent=0, sort_keys=True))
        SpaceCostTable.from_lut(space, lut, simulator).save(work / "cost.npz")

    art = store.build(LUT_STAGE, config, fn, force=force)
    return SpaceCostTable.load(art.file("cost.npz"), space), art
