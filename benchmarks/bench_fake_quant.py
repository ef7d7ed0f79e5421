"""Forward + backward time of apq_lib.quant's fake quantization against the aten ops.

For weight-shaped (per output channel, axis 0) and activation-shaped (NCHW, axis 1)
tensors at 4 and 8 bits, per channel and per tensor, STE and LSQ, it times in one run:
``ours`` = ``apq_lib.quant.fake_quantize`` / ``fake_quantize_learnable`` (the fused Triton
kernels on CUDA; on CPU the aten ops behind our wrapper, except per-tensor STE on float32,
which runs ``apq_lib``'s in-place CPU path, same bits as aten) and ``aten`` =
``torch.fake_quantize_per_{channel,tensor}_affine`` /
``torch._fake_quantize_learnable_per_{channel,tensor}_affine``. Reports the time ratio
(``speedup = t_aten / t_ours``) and the achieved bandwidth, counting the ideal traffic of a
fused forward + backward (read x, write y; read dy and x, write dx: 5 tensors). Writes
results/bench/fake_quant_<device>.csv (device ``cpu``, ``cuda-h100``, ...).

Usage: .venv/bin/python benchmarks/bench_fake_quant.py [--small] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import platform
from pathlib import Path

import torch
import torch.utils.benchmark as tb

from apq_lib.artifacts import record_file, results_dir  # noqa: E402
from apq_lib.quant import (  # noqa: E402
    fake_quantize,
    fake_quantize_learnable,
    kernels,
    lsq_grad_factor,
    qrange,
)
from apq_lib.quant.functional import CPU_PATH_MIN_NUMEL  # noqa: E402
from apq_lib.runtime import device_tag  # noqa: E402

SHAPES = {  # kind -> (shape, axis): full sizes (GPU) and --small (CPU); "tiny" shows the
    # fixed per-call cost (wrapper, launch) that the larger tensors amortise
    "full": {"weight": ((512, 256, 3, 3), 0), "activation": ((64, 128, 56, 56), 1),
             "tiny": ((16, 16), 0)},
    "small": {"weight": ((128, 64, 3, 3), 0), "activation": ((8, 64, 28, 28), 1),
              "tiny": ((16, 16), 0)},
}


def make_case(shape, axis, bits, granularity, dev, dtype):
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(shape, generator=g).to(dev, dtype)
    C = shape[axis] if granularity == "channel" else 1
    qmin, qmax = qrange(bits, True)
    scale = (torch.rand(C, generator=g) * 0.05 + 0.01).to(dev)
    zp_f = torch.zeros(C, device=dev)
    zp_i = torch.zeros(C, dtype=torch.int32, device=dev)
    return x, scale, zp_f, zp_i, qmin, qmax


def fns(x, scale, zp_f, zp_i, qmin, qmax, axis, granularity, grad):
    """(ours, aten) closures doing one forward + backward."""
    ax = axis if granularity == "channel" else None
    gf = lsq_grad_factor(x, qmax, ax)
    dy = torch.randn_like(x)
    xr = x.detach().clone().requires_grad_()
    s_r = scale.detach().clone().requires_grad_()
    z_r = zp_f.detach().clone().requires_grad_()
    s0, zi0 = scale.reshape(-1)[0], zp_i.reshape(-1)[0]     # 0-dim (per tensor)

    if grad == "ste":
        def ours():
            xr.grad = None
            fake_quantize(xr, scale if ax is not None else s0, zp_i if ax is not None else zi0,
                          qmin, qmax, ax, validate=False).backward(dy)

        def aten():
            xr.grad = None
            if ax is None:
                y = torch.fake_quantize_per_tensor_affine(xr, s0, zi0, qmin, qmax)
            else:
                y = torch.fake_quantize_per_channel_affine(xr, scale, zp_i, ax, qmin, qmax)
            y.backward(dy)
    else:
        def ours():
            xr.grad = s_r.grad = z_r.grad = None
            fake_quantize_learnable(xr, s_r, z_r, qmin, qmax, ax, gf,
                                    validate=False).backward(dy)

        def aten():
            xr.grad = s_r.grad = z_r.grad = None
            if ax is None:
                y = torch._fake_quantize_learnable_per_tensor_affine(xr, s_r, z_r, qmin, qmax,
                                                                    gf)
            else:
                y = torch._fake_quantize_learnable_per_channel_affine(xr, s_r, z_r, ax, qmin,
                                                                     qmax, gf)
            y.backward(dy)
    return ours, aten


def time_pair(ours, aten, min_run_time: float, rounds: int, dev: torch.device):
    """Median time of each closure per round, rounds interleaved, minimum over rounds (a
    shared machine's load spikes inflate single timings, never shrink them)."""
    for fn in (ours, aten):                                      # warm-up / compile
        fn()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    best = [float("inf"), float("inf")]
    for _ in range(rounds):
        for i, fn in enumerate((ours, aten)):
            m = tb.Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(
                min_run_time=min_run_time)
            best[i] = min(best[i], m.median)
    return best[0], best[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", action="store_true", help="small tensors (CPU)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--min-run-time", type=float, default=None, help="seconds per timing")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--out", default=None, help="CSV path (default results/bench/...)")
    args = ap.parse_args()
    dev = torch.device("cuda" if args.device in ("auto", "cuda") and torch.cuda.is_available()
                       else "cpu")
    if args.device == "cuda" and dev.type != "cuda":
        raise SystemExit("--device cuda: no CUDA GPU visible")
    if args.threads:
        torch.set_num_threads(args.threads)
    size = "small" if args.small else "full"
    mrt = args.min_run_time or (0.05 if args.small else 0.2)
    tag = device_tag(dev)
    if dev.type == "cuda" and kernels.HAS_TRITON:
        kernels.set_triton_mode("always")     # the Triton kernels (auto runs aten on CUDA)
    ours_impl = "triton" if kernels.use_triton(torch.empty(0, device=dev)) else "aten"
    # per-tensor STE on a float32 CPU tensor: apq_lib's in-place path (functional.py)
    cpu_impl = {("tensor", "ste"): "inplace-cpu"} if dev.type == "cpu" else {}
    rows = []
    dtypes = [torch.float32] + ([torch.bfloat16] if dev.type == "cuda" else [])
    for kind, (shape, axis) in SHAPES[size].items():
        for granularity in ("channel", "tensor"):
            for grad in ("ste", "lsq"):
                for bits in (4, 8):
                    for dtype in dtypes:
                        if grad == "lsq" and dtype != torch.float32:
                            continue                  # aten's LSQ backward is float32 only
                        x, s, zf, zi, qmin, qmax = make_case(shape, axis, bits, granularity,
                                                             dev, dtype)
                        ours, aten = fns(x, s, zf, zi, qmin, qmax, axis, granularity, grad)
                        t_o, t_a = time_pair(ours, aten, mrt, args.rounds, dev)
                        nbytes = 5 * x.numel() * x.element_size()
                        impl = cpu_impl.get((granularity, grad), ours_impl)
                        if impl == "inplace-cpu" and x.numel() < CPU_PATH_MIN_NUMEL[1]:
                            impl = "aten"             # below the in-place path's size
                        row = {"device": tag, "ours_impl": impl, "tensor": kind,
                               "shape": "x".join(map(str, shape)), "granularity": granularity,
                               "grad": grad, "bits": bits,
                               "dtype": str(dtype).replace("torch.", ""),
                               "numel": x.numel(), "t_ours_us": t_o * 1e6,
                               "t_aten_us": t_a * 1e6, "speedup": t_a / t_o,
                               "gbps_ours": nbytes / t_o / 1e9, "gbps_aten": nbytes / t_a / 1e9}
                        rows.append(row)
                        print(f"{kind:10s} {row['shape']:>14s} {granularity:7s} {grad:3s} "
                              f"W{bits} {row['dtype']:8s} ours {t_o * 1e6:9.1f} us  "
                              f"aten {t_a * 1e6:9.1f} us  x{t_a / t_o:5.2f}  "
                              f"{row['gbps_ours']:7.1f} GB/s", flush=True)
    import pandas as pd
    out = Path(args.out) if args.out else results_dir() / "bench" / f"fake_quant_{tag}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    df["torch"] = torch.__version__
    df["threads"] = torch.get_num_threads()
    df["machine"] = (torch.cuda.get_device_name(dev) if dev.type == "cuda"
                     else platform.processor() or platform.machine())
    df.to_csv(out, index=False, float_format="%.3f")
    record_file(out)                   # the writer vouches for it (manifest)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
