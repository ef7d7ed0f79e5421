"""Deployment of the found mixed-precision models (Jacob et al., CVPR 2018): integer-only
inference, ONNX Q/DQ / QONNX export run by onnxruntime / qonnx, MAC counters, measured CPU
latency (notebook 07)."""
from .counting import macs_by_counter, reference_macs, thop_custom_ops
from .export import (
                     count_qdq,
                     export_qdq,
                     export_qonnx,
                     ort_latency,
                     ort_run,
                     ort_session,
                     qonnx_run,
)
from .fixedpoint import div_round, multipliers, quantize_multiplier, requantize, rounding_shift
from .integer import (
                     ActGrid,
                     IntBlock,
                     IntConv,
                     IntegerSubnet,
                     Requant,
                     act_grid,
                     int_conv,
                     to_integer,
)
from .parity import FloatOpError, NoFloatMode, parity

__all__ = ["macs_by_counter", "reference_macs", "thop_custom_ops", "count_qdq", "export_qdq",
           "export_qonnx", "ort_latency", "ort_run", "ort_session", "qonnx_run", "div_round",
           "multipliers", "quantize_multiplier", "requantize", "rounding_shift", "ActGrid",
           "IntBlock", "IntConv", "IntegerSubnet", "Requant", "act_grid", "int_conv",
           "to_integer", "FloatOpError", "NoFloatMode", "parity"]
