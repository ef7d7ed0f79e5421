"""Notebook 07's steps: rebuild the models notebooks 04 / 05 chose, convert each to the
integer-only model (Jacob et al. 2018), measure parity on the test split, export it (ONNX
Q/DQ at 8 bits, QONNX below) and time the 8-bit ones in onnxruntime beside the proxies the
search used (BitOps, BitFusion latency; APQ §3.3).
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import hardware as hw
from ..baselines import spread
from ..quant.policy import layer_policy
from ..realize import realized_model
from ..supernet.metrics import recalibrate_bn
from ..supernet.space import MBV2_NAME, SubnetConfig
from .export import (
    count_qdq,
    export_qdq,
    export_qonnx,
    ort_latency,
    ort_run,
    ort_session,
    qonnx_run,
)
from .integer import to_integer
from .parity import parity

__all__ = ["w8a8_model", "deploy_candidates", "measure_model"]

def _policy_str(c) -> str:
    bits = sorted({*c.pw_w, *c.pw_a, *c.dw_w, *c.dw_a})
    return "W8A8" if bits == [8] else "mixed " + "/".join(map(str, bits))


def w8a8_model(supernet, config: dict, data, recal_images: int, seed: int = 0):
    """``config``'s architecture at W8A8 with the supernet's weights, BN recalibrated (the
    fixed-precision baseline of notebook 05 without its finetune)."""
    space = supernet.space
    c = space.with_bits(SubnetConfig.from_dict(config), 8, 8, 8, 8)
    sub = supernet.export(c, quantized=True)
    recalibrate_bn(sub, data.fixed_batches("train", recal_images, seed=seed))
    return sub.eval(), c


def deploy_candidates(ctx, supernet, supernet_key: str, data, apq_rows: pd.DataFrame,
                      max_models: int):
    """``(name, model, SubnetConfig)`` for up to ``max_models`` of 04's models (spread over
    its rows), each also at W8A8, and the space's MobileNetV2 point (3×3, e6) at W8A8."""
    out, recal = [], ctx.cfg.finetune.recal_images
    for _, r in apq_rows.iloc[spread(len(apq_rows), max_models)].iterrows():
        conf = json.loads(r["config"])
        tag = f"APQ {r['constraint']} ≤ {r['limit']:.3g}"
        sub, info = realized_model(ctx, supernet, conf, supernet_key, data, r["model_id"],
                                   ctx.force)
        out.append((tag, sub, SubnetConfig.from_dict(conf), info["test_acc"]))
        sub8, c8 = w8a8_model(supernet, conf, data, recal, ctx.cfg.seed)
        out.append((tag + " arch", sub8, c8, float("nan")))
    mb = supernet.space.mobilenetv2(8)
    sub8, c8 = w8a8_model(supernet, mb.to_dict(), data, recal, ctx.cfg.seed)
    out.append((f"{MBV2_NAME} W8A8", sub8, c8, float("nan")))
    return out


def measure_model(name: str, sub, config, space, data, dcfg, sim, workdir=None) -> dict:
    """One row of ``07_deploy.csv``: parity of the integer model on the test split, export
    (Q/DQ + onnxruntime for 8-bit, QONNX + its executor otherwise), ORT latency, proxies."""
    test = data.test
    n = dcfg.parity_images or len(test)
    imodel = to_integer(sub, test, extra_bits=dcfg.extra_bits,
                        bias_correction=dcfg.bias_correction)
    p = parity(sub, imodel, test, batch_size=dcfg.batch_size, n_images=n)
    shape = (space.cfg.in_channels, space.cfg.image_size, space.cfg.image_size)
    pol = layer_policy(space, config)           # fixed layers: count_bitops' default 8 bits
    row = {"model": name, "policy": _policy_str(config), "images": p["images"],
           "fq_top1": p["fq_top1"], "int_top1": p["int_top1"], "agreement": p["agreement"],
           "acc_diff": p["acc_diff"], "max_logit_lsb": p["max_logit_lsb"],
           "mean_logit_lsb": p["mean_logit_lsb"], "int_seconds": p["int_seconds"],
           "fq_seconds": p["fq_seconds"],
           "bitops_g": hw.count_bitops(sub, shape, pol, default_bits=(8, 8)) / 1e9,
           "bitfusion_ms": hw.subnet_cost(space, config, sim.cost)["latency"],
           "config": json.dumps(config.to_dict())}
    tmp = Path(workdir or tempfile.mkdtemp())
    x = torch.stack([test.prepare(test.images[i:i + 1])[0]
                     for i in range(min(dcfg.ort_images, len(test)))])
    with torch.no_grad():
        ref = sub(x).numpy()
    if row["policy"] == "W8A8":
        f = export_qdq(sub, tmp / "model.onnx", shape[1], shape[0], dynamo=True, batch=1)
        y = ort_run(ort_session(f), x)                       # fed one image at a time
        lat = ort_latency(f, shape[1], shape[0], repeats=dcfg.latency_repeats,
                          warmup=dcfg.latency_warmup)
        labels = test.labels[:len(x)].numpy()
        row.update({"export": "onnx-qdq", "qdq_nodes": count_qdq(f)["QuantizeLinear"],
                    "ort_top1": 100.0 * float((y.argmax(1) == labels).mean()),
                    "ort_agreement": 100.0 * float((y.argmax(1) == ref.argmax(1)).mean()),
                    "ort_max_abs_diff": float(np.abs(y - ref).max()), "ort_ms": lat["ms"],
                    "ort_p10_ms": lat["p10_ms"], "ort_p90_ms": lat["p90_ms"]})
    else:
        k = min(dcfg.qonnx_images, len(x))
        f = export_qonnx(sub, tmp / "model.qonnx.onnx", shape[1], shape[0], batch=k)
        y = qonnx_run(f, x[:k])
        row.update({"export": "qonnx", "qdq_nodes": count_qdq(f)["Quant"],
                    "ort_agreement": 100.0 * float((y.argmax(1) == ref[:k].argmax(1)).mean()),
                    "ort_max_abs_diff": float(np.abs(y - ref[:k]).max())})
    if workdir is None:
        shutil.rmtree(tmp, ignore_errors=True)
    return row
