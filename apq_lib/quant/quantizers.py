"""Weight and activation quantizers (APQ §3.3 / HAQ §3: linear quantization; PACT for
activations, Choi et al. 2018; LSQ, Esser et al. 2020). Each quantizer is an ``nn.Module``
whose ``bits`` can be changed at run time; ``bits = 32`` switches it off (identity).

Activation quantizers share an observer-style calibration mode: between
:meth:`begin_calibration` and :meth:`end_calibration` they pass their input through unchanged
and record its statistics (:class:`~apq_lib.quant.calibration.RangeObserver`); ending the
calibration sets their range. ``signed=None`` means "decide from the data" (signed if a
negative value was seen).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .calibration import CALIBRATION_METHODS, RangeObserver, calibrate_range, minmax_range
from .functional import (
    FP_BITS,
    MIN_SCALE,
    affine_qparams,
    check_bits,
    fake_quantize,
    fake_quantize_learnable,
    lsq_grad_factor,
    pact_fake_quantize,
    qrange,
    symmetric_scale,
)

__all__ = ["WeightQuantizer", "PACTQuantizer", "ActQuantizer", "LSQQuantizer"]


def _check_method(method: str) -> str:
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"calibration method {method!r} unknown; use one of "
                         f"{', '.join(CALIBRATION_METHODS)}")
    return method


def _tristate(v: Optional[bool]) -> int:
    return -1 if v is None else int(bool(v))


def _from_tristate(v) -> Optional[bool]:
    v = int(v)
    return None if v < 0 else bool(v)


def _extra_state_dict(state) -> dict:
    """Extra state is stored as an int8 tensor (``[signed]`` or ``[signed, initialized]``,
    -1 = None) so that ``state_dict`` holds tensors only (TorchScript tracing and ONNX export
    call ``.detach()`` on every entry); dicts from older checkpoints are still read."""
    if isinstance(state, dict):
        return state
    vals = [_from_tristate(v) for v in torch.as_tensor(state).reshape(-1).tolist()]
    return dict(zip(("signed", "initialized"), vals))


class _Quantizer(nn.Module):
    """Common part: run-time ``bits`` and the calibration protocol."""

    def __init__(self, bits: int, what: str):
        super().__init__()
        self._what = what
        self.bits = check_bits(bits, what)
        self._observer: Optional[RangeObserver] = None

    def set_bits(self, bits: int) -> None:
        self.bits = check_bits(bits, self._what)

    @property
    def enabled(self) -> bool:
        return self.bits != FP_BITS

    @property
    def calibrating(self) -> bool:
        return self._observer is not None

    def begin_calibration(self) -> None:
        """Start observing (activation quantizers); weight quantizers ignore it."""

    def end_calibration(self) -> None:
        """Set the range from what was observed."""


# --------------------------------------------------------------------------- weights
class WeightQuantizer(_Quantizer):
    """Linear weight quantizer, signed codes, per tensor or per output channel (``axis``).

    ``method="minmax"`` recomputes the range from the weight on every call (``max|w|`` when
    ``symmetric``, else ``[min w, max w]``), so it follows training and works on sliced
    elastic weights. ``percentile`` / ``kl`` / ``mse`` find a clip *ratio* of that range when
    :meth:`calibrate` is called (or on the first call for a new bitwidth / channel count),
    which is then applied to the current min/max at every call. ``kl_below_bits=5`` uses KL
    when ``bits < 5`` (APQ's rule).
    """

    def __init__(self, bits: int = 8, per_channel: bool = False, axis: int = 0,
                 symmetric: bool = True, method: str = "minmax",
                 kl_below_bits: Optional[int] = None, percentile: float = 99.99):
        super().__init__(bits, "w_bits")
        self.per_channel, self.axis = per_channel, axis
        self.symmetric, self.method = symmetric, _check_method(method)
        self.kl_below_bits, self.percentile = kl_below_bits, percentile
        self._ratio_cache: dict = {}

    def active_method(self) -> str:
        if self.kl_below_bits is not None and self.bits < self.kl_below_bits:
            return "kl"
        return self.method

    def _axis(self, w: torch.Tensor) -> Optional[int]:
        if not self.per_channel:
            return None
        if not -w.dim() <= self.axis < w.dim():
            raise ValueError(f"axis={self.axis} is out of range for a weight with {w.dim()} "
                             f"dims")
        return self.axis % w.dim()

    @torch.no_grad()
    def calibrate(self, w: torch.Tensor) -> None:
        """Find and cache the clip ratio of the current method / bits for weight ``w``."""
        method, axis = self.active_method(), self._axis(w)
        key = (self.bits, method, 1 if axis is None else w.shape[axis])
        if method == "minmax" or self.bits == FP_BITS:
            return
        lo, hi = calibrate_range(w, method, self.bits, True, self.symmetric, axis,
                                 self.percentile)
        lo0, hi0 = minmax_range(w, axis, self.symmetric, True)
        r_lo = torch.where(lo0 < 0, lo / lo0.clamp_max(-1e-30), torch.ones_like(lo))
        r_hi = torch.where(hi0 > 0, hi / hi0.clamp_min(1e-30), torch.ones_like(hi))
        self._ratio_cache[key] = (r_lo.clamp(0, 1), r_hi.clamp(0, 1))

    def qparams(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        """``(scale, zero_point, qmin, qmax)`` for weight ``w`` at the current bits."""
        qmin, qmax = qrange(self.bits, signed=True)
        axis, method = self._axis(w), self.active_method()
        wd = w.detach()
        dims = None if axis is None else [d for d in range(w.dim()) if d != axis]
        if self.symmetric:
            hi = wd.abs().amax(dim=dims) if dims else wd.abs().max()
            lo = -hi
        else:
            lo = wd.amin(dim=dims) if dims else wd.min()
            hi = wd.amax(dim=dims) if dims else wd.max()
        if method != "minmax":
            key = (self.bits, method, 1 if axis is None else w.shape[axis])
            if key not in self._ratio_cache:
                self.calibrate(w)
            r_lo, r_hi = self._ratio_cache[key]
            lo, hi = lo * r_lo.to(lo.device), hi * r_hi.to(hi.device)
        if self.symmetric:
            scale = symmetric_scale(hi, self.bits, True)
            return scale, torch.zeros_like(scale, dtype=torch.int32), qmin, qmax
        scale, zp = affine_qparams(lo, hi, qmin, qmax)
        return scale, zp, qmin, qmax

    def scale(self, w: torch.Tensor) -> torch.Tensor:
        return self.qparams(w)[0]

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.bits == FP_BITS:
            return w
        scale, zp, qmin, qmax = self.qparams(w)
        return fake_quantize(w, scale, zp, qmin, qmax, self._axis(w), validate=False)

    def extra_repr(self) -> str:
        return (f"bits={self.bits}, per_channel={self.per_channel}, "
                f"symmetric={self.symmetric}, method={self.active_method()}")


# --------------------------------------------------------------------------- activations
class _ActBase(_Quantizer):
    def __init__(self, bits, signed, method, per_channel=False, axis=1, percentile=99.99):
        super().__init__(bits, "a_bits")
        self.signed, self.method = signed, _check_method(method)
        self.per_channel, self.axis, self.percentile = per_channel, axis, percentile

    def begin_calibration(self) -> None:
        self._observer = RangeObserver(self.method, self.axis if self.per_channel else None,
                                       percentile=self.percentile)

    def end_calibration(self) -> None:
        obs, self._observer = self._observer, None
        if obs is None or not obs.calibrated:
            return
        if self.signed is None:
            self.signed = bool((obs.min_val < 0).any())
        bits = self.bits if self.bits != FP_BITS else 8
        self._set_range(*obs.compute(bits, self.signed, self._symmetric_range()))

    def _symmetric_range(self) -> bool:
        return True

    def _resolve_sign(self, x: torch.Tensor) -> bool:
        if self.signed is None:   # first use without calibration: decide once (one sync)
            self.signed = bool((x.detach() < 0).any())
        return self.signed

    def get_extra_state(self):
        return torch.tensor([_tristate(self.signed)], dtype=torch.int8)

    def set_extra_state(self, state) -> None:
        self.signed = _extra_state_dict(state).get("signed", self.signed)


class PACTQuantizer(_ActBase):
    """PACT activation quantizer with a learnable clip ``alpha`` (init ``init_clip`` = 6.0).

    Unsigned (after ReLU): ``y = clamp(x, 0, alpha)``; signed: ``clamp(x, -alpha, alpha)``;
    then ``bits``-bit uniform fake quantization with scale ``alpha / qmax``. Gradients: STE to
    ``x`` inside the clip range, and to ``alpha`` from the clipped elements (PACT eq. 3).
    Calibration sets ``alpha`` to the observed clip (``method``: minmax/percentile/kl/mse).
    """

    def __init__(self, bits: int = 8, signed: Optional[bool] = False, init_clip: float = 6.0,
                 method: str = "minmax", percentile: float = 99.99):
        super().__init__(bits, signed, method, percentile=percentile)
        self.alpha = nn.Parameter(torch.tensor(float(init_clip)))

    @torch.no_grad()
    def _set_range(self, lo, hi) -> None:
        t = torch.maximum(lo.abs(), hi.abs()) if self.signed else hi
        self.alpha.fill_(max(float(t), 1e-3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._observer is not None:
            return self._observer(x)
        if self.bits == FP_BITS:
            return x
        return pact_fake_quantize(x, self.alpha, self.bits, self._resolve_sign(x))

    def extra_repr(self) -> str:
        return f"bits={self.bits}, signed={self.signed}"


class ActQuantizer(_ActBase):
    """Static (post-training) activation quantizer: range fixed by calibration, STE.

    ``symmetric``: ``z = 0``; else asymmetric ``[min, max]`` with a zero point. The range is
    kept as ``(lo, hi)`` buffers so ``bits`` can change after calibration (the KL / MSE
    optimum is for the bits in force at calibration). Using it uncalibrated is an error.
    """

    def __init__(self, bits: int = 8, signed: Optional[bool] = None, symmetric: bool = False,
                 method: str = "minmax", per_channel: bool = False, axis: int = 1,
                 percentile: float = 99.99):
        super().__init__(bits, signed, method, per_channel, axis, percentile)
        self.symmetric = symmetric
        self.register_buffer("lo", torch.zeros(0))
        self.register_buffer("hi", torch.zeros(0))

    def _symmetric_range(self) -> bool:
        return self.symmetric

    def _set_range(self, lo, hi) -> None:
        self.lo, self.hi = lo.detach().float().clone(), hi.detach().float().clone()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for k in ("lo", "hi"):   # size is set by calibration; adopt the stored one
            if prefix + k in state_dict:
                setattr(self, k, torch.empty_like(state_dict[prefix + k]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def calibrated(self) -> bool:
        return self.lo.numel() > 0

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        if not self.calibrated:
            raise RuntimeError("ActQuantizer is not calibrated: run "
                               "apq_lib.quant.calibrate(model, batches) first")
        qmin, qmax = qrange(self.bits, bool(self.signed))
        if self.symmetric:
            t = torch.maximum(self.lo.abs(), self.hi.abs())
            return symmetric_scale(t, self.bits, bool(self.signed)), \
                torch.zeros_like(t, dtype=torch.int32), qmin, qmax
        scale, zp = affine_qparams(self.lo, self.hi, qmin, qmax)
        return scale, zp, qmin, qmax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._observer is not None:
            return self._observer(x)
        if self.bits == FP_BITS:
            return x
        scale, zp, qmin, qmax = self.qparams()
        axis = self.axis if self.per_channel else None
        return fake_quantize(x, scale, zp, qmin, qmax, axis, validate=False)

    def extra_repr(self) -> str:
        return (f"bits={self.bits}, signed={self.signed}, symmetric={self.symmetric}, "
                f"method={self.method}, per_channel={self.per_channel}")


class LSQQuantizer(_ActBase):
    """LSQ quantizer (weights or activations): learnable ``scale`` (and ``zero_point`` when
    asymmetric) with LSQ's gradient scale ``1/sqrt(N * qmax)``.

    Initialised from calibration, or on first use with LSQ's ``2 mean|x| / sqrt(qmax)``.
    Per channel (``channels`` entries along ``axis``): a tensor with fewer channels (an
    elastic slice) uses the first ones. Changing ``bits`` rescales ``scale`` so that the clip
    range ``scale * qmax`` stays the same.
    """

    def __init__(self, bits: int = 8, signed: Optional[bool] = True, symmetric: bool = True,
                 per_channel: bool = False, axis: int = 0, channels: int = 1,
                 method: str = "minmax", percentile: float = 99.99):
        super().__init__(bits, signed, method, per_channel, axis, percentile)
        self.symmetric = symmetric
        n = channels if per_channel else 1
        self.scale = nn.Parameter(torch.ones(n))
        self.zero_point = nn.Parameter(torch.zeros(n), requires_grad=not symmetric)
        self._initialized = False

    def _symmetric_range(self) -> bool:
        return self.symmetric

    def set_bits(self, bits: int) -> None:
        bits = check_bits(bits, self._what)
        if self._initialized and FP_BITS not in (bits, self.bits) and self.signed is not None:
            q_old, q_new = qrange(self.bits, self.signed)[1], qrange(bits, self.signed)[1]
            with torch.no_grad():
                self.scale.mul_(q_old / q_new)
                if not self.symmetric:
                    self.zero_point.mul_(q_new / q_old)
        self.bits = bits

    @torch.no_grad()
    def _set_range(self, lo, hi) -> None:
        qmin, qmax = qrange(self.bits if self.bits != FP_BITS else 8, bool(self.signed))
        if self.symmetric:
            s = (torch.maximum(lo.abs(), hi.abs()) / qmax).clamp_min(MIN_SCALE)
            z = torch.zeros_like(s)
        else:
            s, z = affine_qparams(lo, hi, qmin, qmax)
        self.scale.copy_(s.reshape(-1).expand_as(self.scale))
        self.zero_point.copy_(z.float().reshape(-1).expand_as(self.zero_point))
        self._initialized = True

    @torch.no_grad()
    def init_from(self, x: torch.Tensor) -> None:
        """LSQ's initialisation ``s = 2 mean|x| / sqrt(qmax)`` (per channel if so)."""
        qmax = qrange(self.bits if self.bits != FP_BITS else 8, self._resolve_sign(x))[1]
        xd = x.detach().float()
        if self.per_channel:
            m = xd.abs().movedim(self.axis, 0).reshape(xd.shape[self.axis], -1).mean(1)
            self.scale[:m.numel()].copy_((2 * m / qmax ** 0.5).clamp_min(MIN_SCALE))
        else:
            self.scale.fill_(max(float(2 * xd.abs().mean() / qmax ** 0.5), MIN_SCALE))
        self.zero_point.zero_()
        self._initialized = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._observer is not None:
            return self._observer(x)
        if self.bits == FP_BITS:
            return x
        if not self._initialized:
            self.init_from(x)
        qmin, qmax = qrange(self.bits, self._resolve_sign(x))
        axis = self.axis % x.dim() if self.per_channel else None
        C = 1 if axis is None else x.shape[axis]
        if C > self.scale.numel():
            raise ValueError(f"LSQQuantizer has {self.scale.numel()} channel scales, the "
                             f"tensor has {C} channels along axis {axis}")
        s = self.scale[:C].clamp_min(MIN_SCALE)
        z = self.zero_point[:C] if not self.symmetric else self.zero_point[:C].detach()
        g = lsq_grad_factor(x, qmax, axis)
        return fake_quantize_learnable(x, s, z, qmin, qmax, axis, g, validate=False)

    def get_extra_state(self):
        return torch.tensor([_tristate(self.signed), int(self._initialized)], dtype=torch.int8)

    def set_extra_state(self, state) -> None:
        state = _extra_state_dict(state)
        self.signed = state.get("signed", self.signed)
        init = state.get("initialized", self._initialized)
        self._initialized = self._initialized if init is None else bool(init)

    def extra_repr(self) -> str:
        return (f"bits={self.bits}, signed={self.signed}, symmetric={self.symmetric}, "
                f"per_channel={self.per_channel}")
