"""Export of quantized subnets to runtimes (Jacob et al. 2018 §3 deployment; QONNX:
Pappalardo et al. 2022). 8-bit models go to ONNX QuantizeLinear/DequantizeLinear pairs (the
fake-quant ops' standard lowering; TorchScript or dynamo exporter) and run in onnxruntime,
which fuses them into int8 kernels. ONNX Q/DQ only has 8-bit ranges, so sub-8-bit models go to
QONNX: the FP32 graph with a ``Quant`` node (scale, zero point, bit width) on every quantized
weight and conv input, executed by ``qonnx``'s reference executor.
"""
from __future__ import annotations

import copy
import os
import time
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from ..quant import quant_layers
from ..quant.functional import FP_BITS
from .integer import _weight_codes, act_grid

__all__ = ["export_qdq", "export_qonnx", "ort_session", "ort_run", "qonnx_run",
           "ort_latency", "count_qdq"]

QONNX_DOMAIN = "qonnx.custom_op.general"


def _example(model: nn.Module, image_size: int, in_channels: int, batch: int = 1):
    return torch.zeros(batch, in_channels, image_size, image_size)


def export_qdq(model: nn.Module, path, image_size: int, in_channels: int = 1,
               dynamo: bool = True, opset: int = 18, batch: int = 1) -> Path:
    """Export an 8-bit fake-quant model to ONNX with Q/DQ nodes. The dynamo exporter gives a
    fixed batch size ``batch`` (torch.export cannot trace the fake-quant ops with a symbolic
    batch); the TorchScript exporter a dynamic one. A layer below 8 bits raises: use
    :func:`export_qonnx` for it."""
    low = {n: (m.w_bits, m.a_bits) for n, m in quant_layers(model).items()
           if min(m.w_bits, m.a_bits) < 8}
    if low:
        raise ValueError(f"ONNX QuantizeLinear/DequantizeLinear only have 8-bit ranges; layers "
                         f"{list(low)[:4]} are below 8 bits: use export_qonnx")
    path = Path(path)
    model = copy.deepcopy(model).eval()
    x = _example(model, image_size, in_channels, batch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(model, (x,), str(path), dynamo=True, opset_version=opset,
                              verbose=False, external_data=False)
        else:
            torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=min(opset, 17),
                              input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return path


def count_qdq(path) -> dict:
    """Number of QuantizeLinear / DequantizeLinear / Quant nodes in an ONNX file."""
    import onnx
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    return {k: ops.count(k) for k in ("QuantizeLinear", "DequantizeLinear", "Quant")}


def ort_session(path, threads: int = 1):
    """An onnxruntime CPU session with ``threads`` intra-op threads, one inter-op thread,
    sequential execution and all graph optimisations (Q/DQ → int8 kernels)."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def ort_run(sess, x: torch.Tensor) -> np.ndarray:
    """Outputs for ``x``; a fixed-batch graph is fed in chunks (the last one zero-padded)."""
    inp = sess.get_inputs()[0]
    xs = x.numpy().astype(np.float32)
    b = inp.shape[0]
    if not isinstance(b, int) or b == len(xs):
        return sess.run(None, {inp.name: xs})[0]
    outs = []
    for i in range(0, len(xs), b):
        chunk = xs[i:i + b]
        pad = b - len(chunk)
        if pad:
            chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], np.float32)])
        outs.append(sess.run(None, {inp.name: chunk})[0][:b - pad])
    return np.concatenate(outs)


def ort_latency(path, image_size: int, in_channels: int = 1, repeats: int = 50,
                warmup: int = 10, cpu: Optional[int] = None) -> dict:
    """Median / p10 / p90 wall time (ms) of one inference (batch 1 or the graph's fixed one)
    in onnxruntime, one
    intra-op thread, the process pinned to one core (``cpu``: the first allowed one)."""
    sess = ort_session(path, threads=1)
    shape = sess.get_inputs()[0].shape
    x = _example(None, image_size, in_channels,
                 shape[0] if isinstance(shape[0], int) else 1).numpy()
    name = sess.get_inputs()[0].name
    pinned = hasattr(os, "sched_getaffinity")
    if pinned:
        before = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {cpu if cpu is not None else min(before)})
    try:
        for _ in range(warmup):
            sess.run(None, {name: x})
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            sess.run(None, {name: x})
            ts.append(1e3 * (time.perf_counter() - t0))
    finally:
        if pinned:
            os.sched_setaffinity(0, before)
    ts = np.asarray(ts)
    return {"ms": float(np.median(ts)), "p10_ms": float(np.percentile(ts, 10)),
            "p90_ms": float(np.percentile(ts, 90)), "repeats": repeats}


# --------------------------------------------------------------------------- QONNX
def _quant_node(nodes: list, graph, name: str, x: str, scale, zero_point: float, bits: int,
                signed: bool, narrow: bool) -> str:
    """Append a QONNX ``Quant`` node reading ``x`` to ``nodes`` (its constants to ``graph``'s
    initializers); returns its output name."""
    from onnx import helper, numpy_helper
    inits = [numpy_helper.from_array(np.asarray(scale, dtype=np.float32), f"{name}_scale"),
             numpy_helper.from_array(np.asarray(zero_point, dtype=np.float32), f"{name}_zp"),
             numpy_helper.from_array(np.asarray(float(bits), dtype=np.float32), f"{name}_bits")]
    graph.initializer.extend(inits)
    out = f"{name}_q"
    nodes.append(helper.make_node(
        "Quant", [x, f"{name}_scale", f"{name}_zp", f"{name}_bits"], [out], name=name,
        domain=QONNX_DOMAIN, signed=int(signed), narrow=int(narrow), rounding_mode="ROUND"))
    return out


def export_qonnx(model: nn.Module, path, image_size: int, in_channels: int = 1,
                 batch: int = 1) -> Path:
    """QONNX export of a fake-quant model at any bit widths 2–8: the FP32 graph (dynamo
    exporter) with ``Quant`` nodes inserted on each quantized layer's weight (signed,
    symmetric, per tensor or per output channel) and input (PACT: signed narrow or
    unsigned; static: with zero point). Fixed batch size ``batch``."""
    import onnx
    from onnx import helper
    path = Path(path)
    fq = copy.deepcopy(model).eval()
    layers = quant_layers(fq)
    fp = copy.deepcopy(fq)
    for m in quant_layers(fp).values():
        m.set_bits(FP_BITS, FP_BITS)
    tmp = path.with_suffix(".fp32.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(fp, (_example(fp, image_size, in_channels, batch),), str(tmp),
                          dynamo=True, verbose=False, external_data=False,
                          optimize=False)        # keep BN: weights are quantized before it
    m = onnx.load(str(tmp))
    tmp.unlink()
    g = m.graph
    consumers = {}
    for node in g.node:
        for i, inp in enumerate(node.input):
            consumers.setdefault(inp, []).append((node, i))
    new_nodes = []
    for lname, layer in layers.items():
        wname = f"{lname}.weight"
        users = [(n, i) for n, i in consumers.get(wname, []) if n.op_type in ("Conv", "Gemm",
                                                                              "MatMul")]
        if len(users) != 1:
            raise RuntimeError(f"QONNX export: weight {wname} is not read by exactly one "
                               f"Conv/Gemm in the exported graph ({len(users)} users)")
        node, i = users[0]
        if layer.w_bits != FP_BITS:
            _, s = _weight_codes(layer)
            scale = s.numpy().reshape((-1,) + (1,) * (layer.weight.dim() - 1)) \
                if s.unique().numel() > 1 else s[0].numpy()
            node.input[i] = _quant_node(new_nodes, g, f"{lname}.wq", wname, scale, 0.0,
                                        layer.w_bits, True, False)
        if layer.a_bits != FP_BITS:
            grid = act_grid(layer.a_quant)
            signed, narrow = grid.lo < 0, grid.lo == -grid.hi
            node.input[0] = _quant_node(new_nodes, g, f"{lname}.aq", node.input[0],
                                        grid.scale, float(grid.zero_point), layer.a_bits,
                                        signed, narrow)
    # Quant nodes go right before the graph's nodes that read them (topological order)
    order = list(g.node)
    del g.node[:]
    produced = {n.output[0]: n for n in new_nodes}
    for node in order:
        for inp in node.input:
            if inp in produced:
                g.node.append(produced.pop(inp))
        g.node.append(node)
    m.opset_import.append(helper.make_opsetid(QONNX_DOMAIN, 1))
    onnx.save(m, str(path))
    return path


def qonnx_run(path, x: torch.Tensor) -> np.ndarray:
    """Execute a QONNX file with qonnx's executor (node by node, Quant in numpy)."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.infer_shapes import InferShapes
    mw = ModelWrapper(str(path)).transform(InferShapes())
    iname, oname = mw.graph.input[0].name, mw.graph.output[0].name
    return execute_onnx(mw, {iname: x.numpy().astype(np.float32)})[oname]
