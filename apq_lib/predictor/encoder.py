"""APQ §3.2 encoding: one-hot architecture (kernel, middle channels) and quantization policy
(pw_w, pw_a, dw_w, dw_a bits) per block; blocks switched off by depth are all zeros.

Layout of one encoding (``dims = arch_dims + quant_dims``)::

    [ block 0: kernel (K) | mid (M_0) ][ block 1: ... ] ... || [ block 0: pw_w pw_a dw_w dw_a
                                                               (4 x B one-hots) ] ...

The FP32 predictor reads ``x[:, :arch_dims]``; the quantization-aware branch reads
``x[:, arch_dims:]``. APQ's ImageNet space gives 520 + 252 = 772 dims.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..supernet.space import BIT_FIELDS, SearchSpace, SubnetConfig

__all__ = ["APQEncoder"]


class APQEncoder:
    """Vectorised one-hot encoder over a :class:`SearchSpace` (numpy, float32)."""

    def __init__(self, space: SearchSpace):
        self.space = space
        nc = space.n_choices()
        self.n_kernel, self.n_bits = nc["kernel"], nc["bits"]
        self.n_mid = np.asarray(nc["mid"], dtype=np.int64)              # [B]
        B = space.n_blocks
        per_block = self.n_kernel + self.n_mid                           # [B]
        self.kernel_offset = np.concatenate([[0], np.cumsum(per_block)[:-1]])  # [B]
        self.mid_offset = self.kernel_offset + self.n_kernel             # [B]
        self.arch_dims = int(per_block.sum())
        self.quant_dims = int(B * len(BIT_FIELDS) * self.n_bits)
        # quant offsets [B, 4]: block-major, then field, then bit choice
        self.quant_offset = (self.arch_dims + np.arange(B)[:, None] * 4 * self.n_bits
                             + np.arange(4)[None, :] * self.n_bits)

    @property
    def dims(self) -> int:
        return self.arch_dims + self.quant_dims

    @property
    def arch_slice(self) -> slice:
        return slice(0, self.arch_dims)

    @property
    def quant_slice(self) -> slice:
        return slice(self.arch_dims, self.dims)

    # ------------------------------------------------------------------ encode
    def encode_index(self, idx: np.ndarray, quant: bool = True) -> np.ndarray:
        """Index array ``[N, B, 6]`` (``-1`` = block off) -> encodings ``[N, dims]``
        (``[N, arch_dims]`` with ``quant=False``)."""
        idx = np.asarray(idx)
        if idx.ndim == 2:
            idx = idx[None]
        N, B, C = idx.shape
        if B != self.space.n_blocks or C != 6:
            raise ValueError(f"index array has shape {idx.shape}; expected [N, "
                             f"{self.space.n_blocks}, 6]")
        active = idx[:, :, 0] >= 0                                        # [N, B]
        if ((idx[:, :, 1] >= self.n_mid[None]) & active).any() or \
                ((idx[:, :, 0] >= self.n_kernel) & active).any():
            raise ValueError("index array has a choice index outside the space")
        out = np.zeros((N, self.dims if quant else self.arch_dims), dtype=np.float32)
        n, b = np.nonzero(active)
        out[n, self.kernel_offset[b] + idx[n, b, 0]] = 1.0
        out[n, self.mid_offset[b] + idx[n, b, 1]] = 1.0
        if quant:
            bits = idx[n, b, 2:].astype(np.int64)                         # [K, 4]
            if (bits < 0).any() or (bits >= self.n_bits).any():
                raise ValueError("index array has a bit index outside the space on an "
                                 "active block")
            cols = self.quant_offset[b] + bits                            # [K, 4]
            out[np.repeat(n, 4), cols.ravel()] = 1.0
        return out

    def encode(self, configs: Sequence[SubnetConfig] | SubnetConfig,
               quant: bool = True) -> np.ndarray:
        """Configurations -> encodings ``[N, dims]``."""
        if isinstance(configs, SubnetConfig):
            configs = [configs]
        return self.encode_index(self.space.to_index_array(configs), quant)

    def block_codes(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-block codes for table-lookup inference (:class:`FastPredictor`):
        ``arch [N, B]`` = 1 + kernel * n_mid[b] + mid and ``quant [N, B]`` = 1 + the four
        bit indices in base ``n_bits``; 0 for blocks that are off (int64)."""
        idx = np.asarray(idx)
        if idx.ndim == 2:
            idx = idx[None]
        i = idx.astype(np.int64)
        on = i[:, :, 0] >= 0
        arch = np.where(on, 1 + i[:, :, 0] * self.n_mid + i[:, :, 1], 0)
        nb = self.n_bits
        q = ((i[:, :, 2] * nb + i[:, :, 3]) * nb + i[:, :, 4]) * nb + i[:, :, 5]
        return arch, np.where(on, 1 + q, 0)

    def block_tables(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """The one-hot rows each block code stands for: per block, ``arch [1 + K*M_b,
        arch_dims]`` and ``quant [1 + n_bits^4, quant_dims]`` 0/1 matrices (row 0: off), so
        ``W @ encoding = sum over blocks of (table @ W.T)[code]``."""
        arch_t, quant_t = [], []
        nb = self.n_bits
        for b in range(self.space.n_blocks):
            m = int(self.n_mid[b])
            ta = np.zeros((1 + self.n_kernel * m, self.arch_dims), np.float32)
            for k in range(self.n_kernel):
                for j in range(m):
                    ta[1 + k * m + j, self.kernel_offset[b] + k] = 1
                    ta[1 + k * m + j, self.mid_offset[b] + j] = 1
            tq = np.zeros((1 + nb ** 4, self.quant_dims), np.float32)
            for c in range(nb ** 4):
                digits = [(c // nb ** (3 - f)) % nb for f in range(4)]
                for f, v in enumerate(digits):
                    tq[1 + c, self.quant_offset[b, f] - self.arch_dims + v] = 1
            arch_t.append(ta)
            quant_t.append(tq)
        return arch_t, quant_t

    # ------------------------------------------------------------------ decode
    def decode_index(self, x: np.ndarray) -> np.ndarray:
        """Encodings ``[N, dims]`` (or ``[N, arch_dims]``) -> index arrays ``[N, B, 6]``.
        Without a quant part (or an all-zero one) active blocks get the highest bits."""
        x = np.asarray(x)
        if x.ndim == 1:
            x = x[None]
        if x.shape[1] not in (self.arch_dims, self.dims):
            raise ValueError(f"encoding has {x.shape[1]} dims; expected {self.arch_dims} "
                             f"or {self.dims}")
        N, B = x.shape[0], self.space.n_blocks
        idx = np.full((N, B, 6), -1, dtype=np.int16)
        for i in range(B):
            k = x[:, self.kernel_offset[i]: self.kernel_offset[i] + self.n_kernel]
            m = x[:, self.mid_offset[i]: self.mid_offset[i] + self.n_mid[i]]
            on = k.max(1) > 0.5
            idx[on, i, 0] = k[on].argmax(1)
            idx[on, i, 1] = m[on].argmax(1)
            for j in range(4):
                if x.shape[1] == self.dims:
                    q = x[:, self.quant_offset[i, j]: self.quant_offset[i, j] + self.n_bits]
                    has = on & (q.max(1) > 0.5)
                    idx[has, i, 2 + j] = q[has].argmax(1)
                    idx[on & ~has, i, 2 + j] = self.n_bits - 1
                else:
                    idx[on, i, 2 + j] = self.n_bits - 1
        return idx

    def decode(self, x: np.ndarray) -> list[SubnetConfig]:
        """Encodings -> configurations (inactive blocks get the smallest choices)."""
        return self.space.from_index_array(self.decode_index(x))

    def feature_names(self) -> list[str]:
        """A name per dimension, e.g. ``blocks.2.0.kernel=5`` / ``blocks.2.0.dw_a=4``."""
        names = []
        for i, b in enumerate(self.space.blocks):
            names += [f"{b.name}.kernel={k}" for k in self.space.kernel_choices]
            names += [f"{b.name}.mid={m}" for m in b.mid_choices]
        for b in self.space.blocks:
            for f in BIT_FIELDS:
                names += [f"{b.name}.{f}={q}" for q in self.space.bit_choices]
        return names

    def __repr__(self) -> str:
        return f"APQEncoder({self.arch_dims} arch + {self.quant_dims} quant = {self.dims} dims)"
