"""The layer record of APQ's hardware lookup table (APQ §3.3 / mit-han-lab/apq ``lut/``):
``(in_c, out_c, in_size, kernel, stride, padding, groups)-W{w}A{a}``.

A fully-connected layer is the 1×1 conv ``(in_f, out_f, 1, 1, 1, 0, 1)``; an MBConv block
is first 1×1 (in_c→mid) + depthwise k×k (mid, stride, padding k//2) + second 1×1 (mid→out_c).
"""
from __future__ import annotations

import math
import numbers
import re
from dataclasses import asdict, dataclass

__all__ = ["LayerSpec", "layer_key", "parse_key", "mbconv_layers", "check_bit_range", "ceil_div",
           "AnalyticSim"]


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


@dataclass(frozen=True)
class LayerSpec:
    """One conv / FC layer at batch 1 (square feature maps, as in APQ's table)."""
    in_c: int
    out_c: int
    in_size: int
    kernel: int
    stride: int = 1
    padding: int = 0
    groups: int = 1

    def __post_init__(self):
        for name in ("in_c", "out_c", "in_size", "kernel", "stride", "padding", "groups"):
            v = getattr(self, name)
            if not _is_int(v):
                raise ValueError(f"layer {self.fields()}: {name} must be an int, got {v!r}")
            object.__setattr__(self, name, int(v))
            if v < (0 if name == "padding" else 1):
                raise ValueError(f"layer {self.fields()}: {name} must be "
                                 f"{'>= 0' if name == 'padding' else '>= 1'}, got {v}")
        if self.in_c % self.groups or self.out_c % self.groups:
            raise ValueError(f"layer {self.fields()}: groups={self.groups} does not divide "
                             f"in_c={self.in_c} and out_c={self.out_c}")
        if self.in_size + 2 * self.padding < self.kernel:
            raise ValueError(f"layer {self.fields()}: kernel {self.kernel} is larger than the "
                             f"padded input {self.in_size}+2*{self.padding}")

    @classmethod
    def fc(cls, in_features: int, out_features: int) -> "LayerSpec":
        return cls(in_features, out_features, 1, 1, 1, 0, 1)

    def fields(self) -> tuple:
        return (self.in_c, self.out_c, self.in_size, self.kernel, self.stride, self.padding,
                self.groups)

    # -------------------------------------------------------------- derived sizes
    @property
    def out_size(self) -> int:
        return (self.in_size + 2 * self.padding - self.kernel) // self.stride + 1

    @property
    def ic_per_group(self) -> int:
        return self.in_c // self.groups

    @property
    def oc_per_group(self) -> int:
        return self.out_c // self.groups

    @property
    def is_depthwise(self) -> bool:
        """One input channel per group (depthwise, possibly with a channel multiplier)."""
        return self.groups > 1 and self.ic_per_group == 1

    @property
    def macs(self) -> int:
        """Multiply-accumulates at batch 1: out_c · out_size² · (in_c/groups) · k²."""
        return self.out_c * self.out_size ** 2 * self.ic_per_group * self.kernel ** 2

    @property
    def n_weights(self) -> int:
        return self.out_c * self.ic_per_group * self.kernel ** 2

    @property
    def n_inputs(self) -> int:
        return self.in_c * self.in_size ** 2

    @property
    def n_outputs(self) -> int:
        return self.out_c * self.out_size ** 2

    def key(self, w_bits: int, a_bits: int) -> str:
        return layer_key(self, w_bits, a_bits)

    def __str__(self) -> str:
        return str(self.fields())


def layer_key(spec: LayerSpec, w_bits: int, a_bits: int) -> str:
    """APQ's table key, e.g. ``"(96, 456, 14, 1, 1, 0, 1)-W4A4"``."""
    return f"{spec.fields()}-W{int(w_bits)}A{int(a_bits)}"


_KEY = re.compile(r"^\((\d+(?:,\s*\d+){6})\)-W(\d+)A(\d+)$")


def parse_key(key: str) -> tuple[LayerSpec, int, int]:
    """Inverse of :func:`layer_key`."""
    m = _KEY.match(key.strip())
    if not m:
        raise ValueError(f"not a layer key: {key!r}; expected "
                         f"'(in_c, out_c, in_size, kernel, stride, padding, groups)-W8A8'")
    fields = [int(x) for x in m.group(1).split(",")]
    return LayerSpec(*fields), int(m.group(2)), int(m.group(3))


def mbconv_layers(in_c: int, mid: int, out_c: int, in_size: int, kernel: int,
                  stride: int) -> tuple[LayerSpec, LayerSpec, LayerSpec]:
    """(first 1×1, depthwise k×k, second 1×1) of one MBConv block, padding k//2."""
    pw1 = LayerSpec(in_c, mid, in_size, 1, 1, 0, 1)
    dw = LayerSpec(mid, mid, in_size, kernel, stride, kernel // 2, mid)
    pw2 = LayerSpec(mid, out_c, dw.out_size, 1, 1, 0, 1)
    return pw1, dw, pw2


def check_bit_range(w_bits, a_bits, lo: int, hi: int, who: str, why: str = "") -> None:
    """Raise ValueError unless both bit widths are ints in ``lo..hi``."""
    for name, b in (("w_bits", w_bits), ("a_bits", a_bits)):
        if not _is_int(b) and not (isinstance(b, float) and math.isfinite(b) and b == int(b)):
            raise ValueError(f"{who}: {name} must be an integer, got {b!r}")
        if not lo <= int(b) <= hi:
            raise ValueError(f"{who}: {name}={b} is outside the supported range {lo}..{hi}"
                             + (f" ({why})" if why else ""))


class AnalyticSim:
    """Shared interface of the analytic accelerator models (BitFusion, BISMO): a subclass
    sets ``cfg`` (a dataclass with ``peak_macs_per_cycle(w, a)``, ``freq_hz`` and
    ``dram_bytes_per_cycle``) and implements ``report(spec, w_bits, a_bits, batch)``."""

    cfg: object

    def params(self) -> dict:
        return asdict(self.cfg)

    def report(self, spec: LayerSpec, w_bits: int, a_bits: int, batch: int = 1) -> dict:
        raise NotImplementedError

    def cost(self, spec: LayerSpec, w_bits: int, a_bits: int, batch: int = 1) -> dict:
        """``{"latency": ms, "energy": mJ}``: the lookup-table entry of one layer."""
        r = self.report(spec, w_bits, a_bits, batch)
        return {"latency": r["latency"], "energy": r["energy"]}

    def roofline(self, w_bits: int, a_bits: int) -> dict:
        """Peak MAC/s, DRAM bytes/s and the ridge intensity (MACs per byte)."""
        peak = self.cfg.peak_macs_per_cycle(w_bits, a_bits) * self.cfg.freq_hz
        bw = self.cfg.dram_bytes_per_cycle * self.cfg.freq_hz
        return {"peak_macs_per_s": peak, "bytes_per_s": bw, "ridge": peak / bw}
