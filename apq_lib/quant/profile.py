"""The profile's ``quant:`` section applied to the weight quantizers
(:class:`~apq_lib.quant.quantizers.WeightQuantizer`): their calibration method and APQ's
KL rule."""
from __future__ import annotations

from torch import nn

from .quantizers import WeightQuantizer, _check_method

__all__ = ["weight_calibration_kw", "configure_weight_calibration"]


def weight_calibration_kw(qcfg) -> dict:
    """``WeightQuantizer`` keywords from the profile's ``quant:`` section: the calibration
    method of weight ranges and APQ's rule (KL below ``kl_below_bits`` bits; null: never)."""
    return {"method": qcfg.weight_calibration, "kl_below_bits": qcfg.kl_below_bits}


def configure_weight_calibration(model: nn.Module, qcfg) -> nn.Module:
    """Set every linear weight quantizer of ``model`` (e.g. a loaded supernet, whose
    exported subnets copy them) to the profile's calibration; cached clip ratios are
    dropped. Returns ``model``."""
    kw = weight_calibration_kw(qcfg)
    for m in model.modules():
        if isinstance(m, WeightQuantizer):
            m.method = _check_method(kw["method"])
            m.kl_below_bits = kw["kl_below_bits"]
            m._ratio_cache.clear()
    return model
