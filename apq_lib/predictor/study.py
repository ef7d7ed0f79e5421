"""APQ §4.3 (Fig. 7) sample efficiency of predictor transfer: RMSE / Kendall τ / pairwise
accuracy of the transferred vs the from-scratch quantization-aware predictor as the number
of quantized training pairs grows, on one fixed set of held-out quantized pairs."""
from __future__ import annotations

from dataclasses import replace
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from ..progress import tqdm
from ..runtime import stream_rng
from .model import AccuracyPredictor
from .train import TrainSettings, evaluate_predictor, fit_quant_predictor
from .transfer import PredictorTransfer

__all__ = ["sample_efficiency", "summarize_study", "samples_to_match"]

METRICS = ("rmse", "kendall_tau", "pairwise_acc")


def sample_efficiency(fp32: AccuracyPredictor, x_pool: np.ndarray, y_pool: np.ndarray,
                      x_test: np.ndarray, y_test: np.ndarray, sizes: Sequence[int],
                      seeds: Sequence[int], settings: TrainSettings,
                      arch_dims: Optional[int] = None, progress: bool = True,
                      groups: Optional[Sequence] = None, **transfer_kw) -> pd.DataFrame:
    """One row per (size, seed, method ∈ {transfer, scratch}): the training subset is
    ``size`` pairs drawn from the pool with ``stream_rng(seed, "study_subset", size)`` (the
    same subset for both methods); ``y`` are accuracy fractions; metrics are in accuracy percent.
    ``groups``: the pool's architectures, for grouped early-stopping splits."""
    arch_dims = arch_dims or fp32.arch_dims
    quant_dims = x_pool.shape[1] - arch_dims
    rows = []
    jobs = [(n, s) for n in sizes for s in seeds]
    for n, s in tqdm(jobs, desc="sample efficiency", disable=not progress):
        if n > len(y_pool):
            raise ValueError(f"study size {n} exceeds the {len(y_pool)} training pairs; "
                             f"lower predictor.study_sizes or raise predictor.quant_pairs")
        sel = np.sort(stream_rng(s, "study_subset", n).choice(len(y_pool), n, replace=False))
        st = replace(settings, seed=int(s))
        g = None if groups is None else np.asarray(groups)[sel]
        fits = {"transfer": PredictorTransfer(fp32, quant_dims, **transfer_kw)
                .fit(x_pool[sel], y_pool[sel], st, groups=g),
                "scratch": fit_quant_predictor(x_pool[sel], y_pool[sel], arch_dims, st,
                                               fp32.hidden, fp32.n_layers, groups=g)}
        for method, res in fits.items():
            m = evaluate_predictor(res.model, x_test, y_test)
            rows.append({"n_train": n, "seed": s, "method": method,
                         **{k: m[k] for k in METRICS}, "epochs": res.epochs_run,
                         "seconds": res.seconds})
    return pd.DataFrame(rows)


def summarize_study(df: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds per (method, n_train): columns ``<metric>_mean/_std``."""
    g = df.groupby(["method", "n_train"])[list(METRICS)].agg(["mean", "std"])
    g.columns = [f"{a}_{b}" for a, b in g.columns]
    return g.reset_index()


def samples_to_match(df: pd.DataFrame, metric: str = "rmse") -> dict:
    """Smallest training size at which transfer's mean ``metric`` is as good as the
    from-scratch predictor's at the largest size (lower is better for rmse, higher for
    the ranking metrics); ``None`` when it never is."""
    s = summarize_study(df)
    lower = metric == "rmse"
    col = f"{metric}_mean"
    sc = s[s.method == "scratch"].sort_values("n_train")
    tr = s[s.method == "transfer"].sort_values("n_train")
    target = float(sc[col].iloc[-1])
    ok = tr[(tr[col] <= target) if lower else (tr[col] >= target)]
    n_needed = int(ok.n_train.iloc[0]) if len(ok) else None
    n_max = int(sc.n_train.iloc[-1])
    return {"metric": metric, "scratch_at_max": target, "n_max": n_max,
            "transfer_n_needed": n_needed,
            "fraction": (n_needed / n_max) if n_needed is not None else None}
