"""The profile's quant: keys change what the quantizers do (supernet exports, baselines)."""
import numpy as np
import torch

from apq_lib.config import QuantConfig, SpaceConfig
from apq_lib.quant import configure_weight_calibration, weight_calibration_kw
from apq_lib.supernet.network import APQSupernet
from apq_lib.supernet.space import SearchSpace

SPACE = SpaceConfig(stage_widths=[8, 16], stage_strides=[1, 2], stage_max_depth=[2, 1],
                    image_size=16, tail_width=32, bit_choices=[4, 8])


def _export_out(qcfg, bits):
    torch.manual_seed(0)
    sp = SearchSpace(SPACE)
    net = configure_weight_calibration(APQSupernet(sp).eval(), qcfg)
    cfg = sp.with_bits(sp.largest(), bits, 8, bits, 8)
    sub = net.export(cfg, quantized=True).eval()
    from apq_lib.quant import QConv2d
    with torch.no_grad():          # the weights every exported conv computes with
        return torch.cat([m.w_quant(m.weight).flatten() for m in sub.modules()
                          if isinstance(m, QConv2d)])


def test_kl_below_bits_switches_4bit_weights_to_kl():
    apq = _export_out(QuantConfig(weight_calibration="minmax", kl_below_bits=5), 4)
    never = _export_out(QuantConfig(weight_calibration="minmax", kl_below_bits=None), 4)
    assert not torch.allclose(apq, never)
    # at 8 bits the rule does not apply: identical
    a8 = _export_out(QuantConfig(weight_calibration="minmax", kl_below_bits=5), 8)
    n8 = _export_out(QuantConfig(weight_calibration="minmax", kl_below_bits=None), 8)
    torch.testing.assert_close(a8, n8, rtol=0, atol=0)


def test_weight_calibration_method_changes_8bit_weights():
    mm = _export_out(QuantConfig(weight_calibration="minmax", kl_below_bits=None), 8)
    mse = _export_out(QuantConfig(weight_calibration="mse", kl_below_bits=None), 8)
    assert not torch.allclose(mm, mse)


def test_baseline_quantizers_get_the_profile_calibration():
    from apq_lib.baselines.fixed import quantize_with_policy
    from apq_lib.quant import WeightQuantizer
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 14 * 14, 10))
    q = quantize_with_policy(model, {"0": (4, 8), "2": (8, 8)},
                             weight_kw=weight_calibration_kw(QuantConfig(
                                 weight_calibration="percentile", kl_below_bits=5)))
    wq = [m for m in q.modules() if isinstance(m, WeightQuantizer)]
    assert {m.method for m in wq} == {"percentile"}
    assert sorted(m.active_method() for m in wq) == ["kl", "percentile"]
    assert np.isfinite(q(torch.randn(2, 1, 16, 16)).detach().numpy()).all()
