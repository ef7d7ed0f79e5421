"""Range calibration for linear quantization: min/max, percentile, KL divergence (TensorRT
entropy calibration, Migacz 2017; APQ uses it for < 5-bit weights) and MSE; plus an observer.

All functions take a detached tensor and return the clip range ``(lo, hi)`` as float32
tensors (0-dim per tensor, ``[C]`` per channel along ``axis``). ``symmetric`` ranges are
``(-T, T)`` (``(0, T)`` for unsigned codes). Use :func:`range_to_qparams` to turn a range into
``(scale, zero_point)``.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import nn

from .functional import FP_BITS, MIN_SCALE, affine_qparams, check_bits, fake_quantize, qrange

__all__ = ["CALIBRATION_METHODS", "minmax_range", "percentile_range", "kl_threshold",
           "mse_range", "calibrate_range", "range_to_qparams", "RangeObserver",
           "check_finite"]

CALIBRATION_METHODS = ("minmax", "percentile", "kl", "mse")


def check_finite(x: torch.Tensor, what: str = "calibration batch") -> None:
    """Raise ``ValueError`` if ``x`` holds NaN or inf (a device sync: calibration only)."""
    if not bool(torch.isfinite(x).all()):
        n_nan = int(torch.isnan(x).sum())
        raise ValueError(f"{what} contains non-finite values ({n_nan} NaN, "
                         f"{int((~torch.isfinite(x)).sum()) - n_nan} inf) in a tensor of shape "
                         f"{tuple(x.shape)}; check the inputs / the model before calibrating")


def _rows(x: torch.Tensor, axis: Optional[int]) -> torch.Tensor:
    """``[1, N]`` (per tensor) or ``[C, N/C]`` (per channel along ``axis``), float32."""
    x = x.detach().float()
    if axis is None:
        return x.reshape(1, -1)
    if not -x.dim() <= axis < x.dim():
        raise ValueError(f"axis={axis} is out of range for a tensor with {x.dim()} dims")
    return x.movedim(axis, 0).reshape(x.shape[axis], -1)


def _out(v: torch.Tensor, axis: Optional[int]) -> torch.Tensor:
    return v.reshape(()) if axis is None else v


def _symm(lo, hi, symmetric, signed):
    if not symmetric:
        return lo, hi
    t = torch.maximum(lo.abs(), hi.abs())
    return (-t if signed else torch.zeros_like(t)), t


def minmax_range(x: torch.Tensor, axis: Optional[int] = None, symmetric: bool = False,
                 signed: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    r = _rows(x, axis)
    if r.shape[1] == 0:
        raise ValueError("cannot calibrate on an empty tensor")
    lo, hi = r.amin(1), r.amax(1)
    lo, hi = _symm(lo, hi, symmetric, signed)
    return _out(lo, axis), _out(hi, axis)


def _percentile_rows(r: torch.Tensor, q: float) -> torch.Tensor:
    """numpy's default ("linear") percentile of each row of ``r``."""
    v = r.sort(dim=1).values.double()
    n = v.shape[1]
    pos = q / 100.0 * (n - 1)
    i0 = int(np.floor(pos))
    i1 = min(i0 + 1, n - 1)
    t = pos - i0
    a, b = v[:, i0], v[:, i1]
    out = b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t   # numpy's _lerp
    return out.float()


def percentile_range(x: torch.Tensor, q: float = 99.99, axis: Optional[int] = None,
                     symmetric: bool = False, signed: bool = True
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(percentile(x, 100-q), percentile(x, q))``, as ``numpy.percentile``; symmetric:
    ``T = percentile(|x|, q)``."""
    if not 0 < q <= 100:
        raise ValueError(f"percentile q={q} must be in (0, 100]")
    r = _rows(x, axis)
    if r.shape[1] == 0:
        raise ValueError("cannot calibrate on an empty tensor")
    if symmetric:
        t = _percentile_rows(r.abs(), q)
        lo = -t if signed else torch.zeros_like(t)
        return _out(lo, axis), _out(t, axis)
    return _out(_percentile_rows(r, 100 - q), axis), _out(_percentile_rows(r, q), axis)


def _kl_row(a: torch.Tensor, n_levels: int, num_bins: int) -> torch.Tensor:
    """KL-optimal threshold for one row of magnitudes ``a >= 0`` (vectorised over candidates).

    TensorRT's entropy calibration: histogram ``|x|`` into ``num_bins`` bins; for every
    candidate ``i >= n_levels`` bins, ``P`` = first ``i`` bins with the outlier mass added to
    the last, ``Q`` = the first ``i`` bins merged into ``n_levels`` groups and spread back over
    the non-empty bins; the threshold is the right edge of bin ``i`` minimising KL(P||Q).
    """
    amax = float(a.max())
    if amax <= 0:
        return a.new_tensor(0.0)
    h = torch.histc(a.double(), bins=num_bins, min=0.0, max=amax)
    total = h.sum()
    cum = torch.cat([h.new_zeros(1), h.cumsum(0)])                       # [B+1]
    nz = torch.cat([h.new_zeros(1), (h > 0).double().cumsum(0)])          # [B+1]
    hlogh = torch.where(h > 0, h * torch.log(h.clamp_min(1e-300)), h.new_zeros(()))
    cum_hlogh = torch.cat([h.new_zeros(1), hlogh.cumsum(0)])
    i = torch.arange(n_levels, num_bins + 1, dtype=torch.long)            # candidates
    merged = i // n_levels                                                # bins per group
    g = torch.arange(n_levels, dtype=torch.long)
    start = g[None, :] * merged[:, None]                                  # [I, L]
    end = torch.where(g[None, :] == n_levels - 1, i[:, None], start + merged[:, None])
    S = cum[end] - cum[start]                                             # group mass
    N = nz[end] - nz[start]                                               # non-empty bins
    qlog = torch.where(S > 0, torch.log(S.clamp_min(1e-300) / N.clamp_min(1)), h.new_zeros(()))
    sum_plogq = (S * qlog).sum(1)                                         # inlier part
    last = h[i - 1]
    outl = total - cum[i]
    p_last = last + outl
    # q of the last bin: its group's mean if non-empty, else a tiny mass (TensorRT smooths)
    eps_q = 1e-4 * cum[i] / i
    q_last = torch.where(last > 0, torch.exp(qlog[:, -1]), eps_q)
    sum_plogq = sum_plogq + outl * torch.log(q_last)
    sum_plogp = cum_hlogh[i - 1] + torch.where(p_last > 0, p_last * torch.log(
        p_last.clamp_min(1e-300)), h.new_zeros(()))
    kl = (sum_plogp - sum_plogq) / total - torch.log(total) + torch.log(cum[i].clamp_min(1e-300))
    best = int(torch.argmin(kl))
    return a.new_tensor(float(i[best]) * amax / num_bins)


def kl_threshold(x: torch.Tensor, bits: int, signed: bool = True, axis: Optional[int] = None,
                 num_bins: int = 2048) -> torch.Tensor:
    """Clip threshold ``T`` minimising KL(FP histogram || quantized histogram) of ``|x|``.

    ``2^(bits-1)`` quantization levels for signed codes, ``2^bits`` for unsigned. The
    histogram has ``num_bins`` bins, fewer for small tensors (a power of two near ``n/8``,
    at least the number of levels) so that it is not sparse. Returns a 0-dim tensor (per
    tensor) or ``[C]`` (per channel); ``T <= max|x|``.
    """
    bits = check_bits(bits)
    if bits == FP_BITS:
        raise ValueError("kl_threshold needs bits in 2..8")
    n_levels = 2 ** (bits - 1) if signed else 2 ** bits
    if num_bins < n_levels:
        raise ValueError(f"num_bins={num_bins} must be >= {n_levels} levels")
    r = _rows(x, axis).abs()
    if r.shape[1] == 0:
        raise ValueError("cannot calibrate on an empty tensor")
    # a sparse histogram makes KL degenerate (it then prefers a tiny threshold): keep at
    # least ~8 values per bin on average, as TensorRT's 2048 bins assume a large tensor
    bins = max(n_levels, min(num_bins, 1 << max(0, (r.shape[1] // 8).bit_length() - 1)))
    t = torch.stack([_kl_row(row.cpu(), n_levels, bins) for row in r]).to(r.device)
    return _out(t, axis)


def mse_range(x: torch.Tensor, bits: int, signed: bool = True, symmetric: bool = True,
              axis: Optional[int] = None, grid: int = 100
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Range ``r * (lo, hi)`` (``r`` on a grid in (0, 1]) minimising ``||fq(x) - x||^2``."""
    qmin, qmax = qrange(bits, signed)
    lo0, hi0 = minmax_range(x, axis, symmetric, signed)
    r = _rows(x, axis)
    lo0, hi0 = lo0.reshape(-1), hi0.reshape(-1)
    best_err = torch.full_like(lo0, float("inf"))
    best = torch.ones_like(lo0)
    for k in range(1, grid + 1):
        ratio = k / grid
        scale, zp = _qparams(lo0 * ratio, hi0 * ratio, qmin, qmax, symmetric)
        y = fake_quantize(r, scale, zp, qmin, qmax, axis=0, validate=False)
        err = (y - r).pow(2).sum(1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, torch.full_like(best, ratio), best)
    return _out(lo0 * best, axis), _out(hi0 * best, axis)


def calibrate_range(x: torch.Tensor, method: str = "minmax", bits: int = 8, signed: bool = True,
                    symmetric: bool = True, axis: Optional[int] = None,
                    percentile: float = 99.99, num_bins: int = 2048
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip range of ``x`` by ``method`` (one of :data:`CALIBRATION_METHODS`)."""
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"calibration method {method!r} unknown; use one of "
                         f"{', '.join(CALIBRATION_METHODS)}")
    if method == "minmax":
        return minmax_range(x, axis, symmetric, signed)
    if method == "percentile":
        return percentile_range(x, percentile, axis, symmetric, signed)
    if method == "mse":
        return mse_range(x, bits, signed, symmetric, axis)
    t = kl_threshold(x, bits, signed, axis, num_bins)
    lo, hi = minmax_range(x, axis, symmetric, signed)
    return torch.maximum(lo, -t), torch.minimum(hi, t)


def _qparams(lo, hi, qmin, qmax, symmetric):
    if symmetric:
        t = torch.maximum(lo.abs(), hi.abs())
        scale = (t / qmax).clamp_min(MIN_SCALE).float()
        return scale, torch.zeros_like(scale, dtype=torch.int32)
    return affine_qparams(lo, hi, qmin, qmax)


def range_to_qparams(lo: torch.Tensor, hi: torch.Tensor, bits: int, signed: bool,
                     symmetric: bool) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """``(scale, zero_point, qmin, qmax)`` for a clip range. Symmetric: ``z = 0`` and
    ``s = max(|lo|, |hi|) / qmax``; asymmetric: ``[min(lo,0), max(hi,0)]`` onto the codes."""
    qmin, qmax = qrange(bits, signed)
    scale, zp = _qparams(lo, hi, qmin, qmax, symmetric)
    return scale, zp, qmin, qmax


class RangeObserver(nn.Module):
    """Accumulates statistics of the tensors it sees, for activation calibration.

    Always tracks the running min / max (per tensor, or per channel along ``axis``); for
    ``percentile`` / ``kl`` / ``mse`` it also keeps a seeded random sample of at most
    ``max_samples`` values per channel, on which :meth:`compute` runs the method. NaN / inf in
    a batch raises ``ValueError``.
    """

    def __init__(self, method: str = "minmax", axis: Optional[int] = None,
                 max_samples: int = 2 ** 20, percentile: float = 99.99, seed: int = 0):
        super().__init__()
        if method not in CALIBRATION_METHODS:
            raise ValueError(f"calibration method {method!r} unknown; use one of "
                             f"{', '.join(CALIBRATION_METHODS)}")
        self.method, self.axis, self.max_samples = method, axis, int(max_samples)
        self.percentile, self.seed = percentile, seed
        self.reset()

    def reset(self) -> None:
        self.min_val: Optional[torch.Tensor] = None
        self.max_val: Optional[torch.Tensor] = None
        self._samples: list[torch.Tensor] = []
        self._n_kept = 0
        self.n_batches = 0
        self._gen = torch.Generator().manual_seed(self.seed)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_finite(x)
        r = _rows(x, self.axis)
        lo, hi = r.amin(1), r.amax(1)
        if self.min_val is None:
            self.min_val, self.max_val = lo, hi
        else:
            if lo.shape != self.min_val.shape:
                raise ValueError(f"observer saw {lo.numel()} channels, expected "
                                 f"{self.min_val.numel()}")
            self.min_val = torch.minimum(self.min_val, lo)
            self.max_val = torch.maximum(self.max_val, hi)
        if self.method != "minmax":
            per_batch = max(1, self.max_samples // 8)
            n = r.shape[1]
            if n > per_batch:
                idx = torch.randperm(n, generator=self._gen)[:per_batch].to(r.device)
                r = r[:, idx]
            self._samples.append(r.cpu())
            self._n_kept += r.shape[1]
            if self._n_kept > 2 * self.max_samples:   # thin the pool uniformly
                pool = torch.cat(self._samples, 1)
                idx = torch.randperm(pool.shape[1], generator=self._gen)[:self.max_samples]
                self._samples, self._n_kept = [pool[:, idx]], self.max_samples
        self.n_batches += 1
        return x

    @property
    def calibrated(self) -> bool:
        return self.min_val is not None

    def compute(self, bits: int, signed: bool, symmetric: bool
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Clip range ``(lo, hi)`` of everything observed so far."""
        if self.min_val is None:
            raise RuntimeError("observer has seen no data: run calibration batches first")
        if self.method == "minmax":
            lo, hi = _symm(self.min_val, self.max_val, symmetric, signed)
        else:
            pool = torch.cat(self._samples, 1)
            lo, hi = calibrate_range(pool, self.method, bits, signed, symmetric, axis=0,
                                     percentile=self.percentile)
            lo, hi = lo.to(self.min_val.device), hi.to(self.min_val.device)
        return _out(lo, self.axis), _out(hi, self.axis)

