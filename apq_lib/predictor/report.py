"""Notebook 03's analyses that are more than a call: label noise and its decomposition,
cost coverage of the pairs, the grouped-CV controls (Table 4), the label-to-realised
study on validation images, batched-inference timing, the figures and the summary."""
from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd
import torch

from ..hardware.costs import get_simulator
from ..hardware.lut import subnet_cost
from ..loops import finetune_batches
from ..realize import realize
from ..runtime import stream_rng, stream_seed
from ..supernet.space import SearchSpace
from .collect import PairSet
from .controls import arch_keys, controls_table, crossval_controls, index_macs, label_offset
from .metrics import label_noise, variance_shares
from .model import FastPredictor, predict_numpy, time_inference
from .policies import coverage_fraction, mean_bits
from .train import fit_fp32_predictor, grouped_kfold

__all__ = ["pair_latency", "coverage", "noise_table", "decomposition", "run_controls",
           "realise_on_validation", "inference_timing", "plot_pairs", "plot_predictions",
           "plot_controls", "plot_study", "summary_fields"]


# --------------------------------------------------------------------------- coverage
def pair_latency(space: SearchSpace, configs, hardware=None) -> np.ndarray:
    """BitFusion latency (ms) of each configuration (the simulator notebook 02 tabulates,
    with the profile's ``hardware`` options)."""
    opts = hardware.bitfusion_options() if hardware is not None else None
    sim = get_simulator("bitfusion", bitfusion=opts)
    return np.array([subnet_cost(space, c, lambda s, w, a: sim.report(s, w, a))["latency"]
                     for c in configs], float)


def coverage(space: SearchSpace, fp32: PairSet, quant: PairSet, hardware=None,
             factor: float = 0.8) -> dict:
    """Cost coverage of the pairs: quantized pairs' BitFusion latency (their own policy),
    FP32 pairs' at the highest bits, against the space's MobileNetV2 point and largest
    corner at the highest bits; ``pairs_at_baseline_cost_fraction`` = the share of
    quantized pairs at ≥ ``factor`` × MobileNetV2's latency."""
    hi = max(space.bit_choices)
    ref, big = pair_latency(space, [space.mobilenetv2(hi), space.largest(hi)], hardware)
    q_lat = pair_latency(space, space.from_index_array(quant.index), hardware)
    f_cfgs = [space.with_bits(c, hi, hi, hi, hi) for c in space.from_index_array(fp32.index)]
    f_lat = pair_latency(space, f_cfgs, hardware)
    macs_big = index_macs(space, space.to_index_array([space.largest(hi)]))[0]
    return {"reference": "MobileNetV2 point of the space at W%dA%d" % (hi, hi),
            "reference_ms": float(ref), "largest_ms": float(big), "factor": factor,
            "quant_latency_ms": q_lat, "fp32_latency_ms": f_lat,
            "pairs_at_baseline_cost_fraction": coverage_fraction(q_lat, ref, factor),
            "fp32_pairs_at_baseline_cost_fraction": coverage_fraction(f_lat, ref, factor),
            "quant_max_latency_ms": float(q_lat.max()), "fp32_max_latency_ms": float(f_lat.max()),
            "fp32_max_macs_fraction_of_largest": float(index_macs(space, fp32.index).max()
                                                       / macs_big)}


# --------------------------------------------------------------------------- labels
def noise_table(fp32: PairSet, quant: PairSet, seed: int = 0) -> pd.DataFrame:
    """Label noise (binomial, split-half and paired SE, points) against the labels' SD."""
    rows = {}
    for kind, pairs in (("fp32", fp32), ("quant", quant)):
        ln = label_noise(pairs.correct_matrix(), seed=seed)
        sd = float(pairs.acc.std(ddof=1))
        rows[kind] = {"labels": ln["n_labels"], "images": ln["n_images"], "label_sd": sd,
                      "se_binomial_median": ln["se_binomial_median"],
                      "se_split_half": ln["se_split_half"],
                      "se_paired_median": ln["se_paired_median"],
                      "ratio": ln["se_binomial_median"] / sd,
                      "ratio_paired": ln["se_paired_median"] / sd}
    return pd.DataFrame(rows).T


def decomposition(space: SearchSpace, quant: PairSet) -> dict:
    """:func:`variance_shares` of the quantized labels, plus how much the uniform
    policies move accuracy: mean label per uniform bit level (``uniform_means``) and the
    R² of mean bits alone."""
    vs = variance_shares(quant.acc, quant.group, quant.acc_half)
    mb = mean_bits(space, quant.index)
    uni = np.array([len(set(r[on].ravel())) == 1 for r, on in
                    zip(quant.index[:, :, 2:], quant.index[:, :, 0] >= 0)])
    vs["uniform_means"] = {f"W{int(b)}A{int(b)}": float(quant.acc[uni & (mb == b)].mean())
                           for b in np.unique(mb[uni])}
    vs["mean_bits_r2"] = float(np.corrcoef(mb, quant.acc)[0, 1] ** 2) if mb.std() > 0 \
        else float("nan")
    vs["mean_bits_sd"] = float(mb.std(ddof=1))
    return vs


# --------------------------------------------------------------------------- controls
def run_controls(trained: dict, fp32: PairSet, quant: PairSet, space: SearchSpace, pc,
                 seed: int, progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """Grouped ``pc.cv_folds``-fold CV over architectures with ``pc.cv_seeds`` training
    seeds per fold, and the Table-4 controls table. The FP32 predictor the transfer
    starts from is refitted without any FP32 training architecture that is also a
    quantized one (so no held-out architecture was ever seen). Returns
    ``(cv, controls, n_fp32_architectures_also_quantized)``."""
    folds = grouped_kfold(quant.group, pc.cv_folds, seed)
    f_tr = trained["split"]["fp32"][0]
    seen = np.isin(arch_keys(fp32.index[f_tr]), arch_keys(quant.index))
    model = trained["fp32"].model
    if seen.any():
        keep = f_tr[~seen]
        model = fit_fp32_predictor(trained["x"]["fp32"][keep], trained["y"]["fp32"][keep],
                                   trained["settings"], pc.hidden, pc.n_layers,
                                   members=pc.ensemble).model
    cv = crossval_controls(model, trained["x"]["quant"], quant.acc, quant.index, space, folds,
                           trained["settings"], pc.hidden, pc.n_layers,
                           pc.transfer_branch_init, progress=progress, seeds=pc.cv_seeds,
                           groups=quant.group, members=pc.ensemble)
    cv.insert(0, "pair", np.arange(len(cv)))
    cv.insert(1, "architecture", quant.group)
    table = controls_table(cv, quant.group, "transfer", pc.bootstrap_resamples, seed)
    return cv, table, int(seen.sum())


# --------------------------------------------------------------------------- realised
def realise_on_validation(cfg, supernet, data, space: SearchSpace, quant: PairSet,
                          heldout: np.ndarray, predicted: np.ndarray, device=None
                          ) -> tuple[pd.DataFrame, dict]:
    """Realise ``cfg.predictor.realised_pairs`` held-out pairs (spread over the label
    range) with notebook 04's recipe (``finetune:``), measured on the labels' own
    validation images — never the test split — and the offset realised − label
    (:func:`label_offset`, ``source: validation``)."""
    pc, ft = cfg.predictor, cfg.finetune
    by_label = heldout[np.argsort(quant.acc[heldout], kind="stable")]
    k = min(pc.realised_pairs, len(by_label))
    pick = by_label[np.unique(np.linspace(0, len(by_label) - 1, k).round().astype(int))]
    recal = data.fixed_batches("train", ft.recal_images, seed=cfg.seed)
    val = data.fixed_batches("val", pc.quant_eval_images or pc.eval_images, seed=cfg.seed)
    rows = []
    for i in pick:
        c = space.from_index_array(quant.index[i:i + 1])[0]
        mid = f"03 pair {i}"
        rm = realize(supernet, c, ft, finetune_batches(data, ft, cfg.seed, mid),
                     recal, val, predicted_acc=float(predicted[i]), device=device,
                     seed=stream_seed(cfg.seed, "finetune", mid))
        rows.append({"pair": int(i), "architecture": int(quant.group[i]),
                     "label": float(quant.acc[i]), "predicted_cv": rm.predicted_acc,
                     "realised_val": rm.test_acc, "finetune_steps": rm.finetune_steps})
    real = pd.DataFrame(rows)
    off = label_offset(real["label"], real["realised_val"])
    return real, {**off, "source": "validation"}


# --------------------------------------------------------------------------- timing
def inference_timing(model, encoder, space: SearchSpace, seed: int = 0, n: int = 10_000,
                     threads=(1, 2)) -> dict:
    """Batched inference on ``n`` random configurations: dense one-hot vs
    :class:`FastPredictor` (fp32, bf16), median of 5 runs per thread count; the largest
    fast-vs-dense difference (accuracy points)."""
    rng = stream_rng(seed, "timing")
    idx = space.to_index_array([space.sample(rng) for _ in range(n)])
    model = model.eval()
    f32, f16 = FastPredictor(model, encoder), FastPredictor(model, encoder, torch.bfloat16)
    ref = predict_numpy(model, encoder.encode_index(idx))
    before, timing = torch.get_num_threads(), {}
    for t in threads:
        torch.set_num_threads(t)
        timing[t] = {"dense one-hot (fp32)": time_inference(
            lambda i: predict_numpy(model, encoder.encode_index(i)), idx, 5)["median_ms"],
            "FastPredictor fp32": time_inference(f32, idx, 5)["median_ms"],
            "FastPredictor bf16": time_inference(f16, idx, 5)["median_ms"]}
    torch.set_num_threads(before)
    return {"table": pd.DataFrame(timing).rename(columns=lambda t: f"{t} thread(s), ms"),
            "best_ms": {k: min(v[k] for v in timing.values()) for k in timing[threads[0]]},
            "err32": float(np.abs(100 * (f32(idx) - ref)).max()),
            "err16": float(np.abs(100 * (f16(idx) - ref)).max())}


# --------------------------------------------------------------------------- figures
def plot_pairs(fp32: PairSet, quant: PairSet, space: SearchSpace, cov: dict):
    """Label histograms; quantized label vs mean bits; labels vs BitFusion latency."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    fig, ax = plt.subplots(1, 3, figsize=(15, 3.8))
    d = pd.concat([pd.DataFrame({"acc": fp32.acc, "kind": "FP32"}),
                   pd.DataFrame({"acc": quant.acc, "kind": "quantized"})])
    sns.histplot(d, x="acc", hue="kind", stat="density", common_norm=False, ax=ax[0])
    ax[0].set_xlabel("validation top-1 (%)")
    mb = mean_bits(space, quant.index)
    ax[1].scatter(mb, quant.acc, c=quant.group, cmap="tab20", s=14)
    ax[1].set_xlabel("mean bits of the policy (colour: architecture)")
    ax[1].set_ylabel("quantized top-1 (%)")
    ax[2].scatter(cov["fp32_latency_ms"], fp32.acc, s=10, alpha=0.6, label="FP32 (at W8A8)")
    ax[2].scatter(cov["quant_latency_ms"], quant.acc, s=10, alpha=0.6, label="quantized")
    for x, name in ((cov["factor"] * cov["reference_ms"], "0.8 x MobileNetV2"),
                    (cov["largest_ms"], "largest")):
        ax[2].axvline(x, color="k", ls="--", lw=1)
        ax[2].text(x, ax[2].get_ylim()[0], name, rotation=90, va="bottom", fontsize=8)
    ax[2].set_xlabel("BitFusion latency (ms)")
    ax[2].legend()
    fig.tight_layout()
    return fig


def plot_predictions(trained: dict):
    """Predicted vs measured on the single held-out split (FP32, transfer, scratch)."""
    import matplotlib.pyplot as plt
    m = trained["metrics"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    for ax, (k, kind, title) in zip(axes, [("fp32", "fp32", "FP32 predictor"),
                                           ("transfer", "quant", "quant-aware, transfer"),
                                           ("scratch", "quant", "quant-aware, from scratch")]):
        y, p = 100 * trained["y"][kind][trained["split"][kind][1]], m[k]["pred"]
        ax.scatter(y, p, s=12, alpha=0.7)
        lo, hi = min(y.min(), p.min()), max(y.max(), p.max())
        ax.plot([lo, hi], [lo, hi], color="k", lw=1, ls="--")
        ax.set(xlabel="measured top-1 (%)", ylabel="predicted top-1 (%)",
               title=f"{title}\nRMSE {m[k]['rmse']:.2f} · τ {m[k]['kendall_tau']:.3f}")
    fig.tight_layout()
    return fig


def plot_controls(controls: pd.DataFrame, label_sd: float, title: str):
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for ax, (col, lo, hi, label) in zip(axes, [
            ("kendall_tau", "tau_ci_low", "tau_ci_high", "Kendall τ"),
            ("rmse", "rmse_ci_low", "rmse_ci_high", "RMSE (accuracy points)")]):
        yv = np.arange(len(controls))
        err = np.clip([controls[col] - controls[lo], controls[hi] - controls[col]], 0, None)
        ax.errorbar(controls[col], yv, xerr=np.nan_to_num(err), fmt="o", capsize=3)
        ax.set_yticks(yv, controls["method"])
        ax.invert_yaxis()
        ax.set_xlabel(label + " (95 % CI: architectures x seeds)")
    axes[1].axvline(label_sd, color="k", ls="--", lw=1, label="label SD")
    axes[1].legend()
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def plot_study(summary_study: pd.DataFrame, sizes, title: str):
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    labels = {"rmse": "RMSE (accuracy points)", "kendall_tau": "Kendall τ",
              "pairwise_acc": "pairwise ranking accuracy"}
    for ax, (metric, label) in zip(axes, labels.items()):
        for method, d in summary_study.groupby("method"):
            ax.errorbar(d.n_train, d[f"{metric}_mean"], yerr=d[f"{metric}_std"], marker="o",
                        capsize=3, label=method)
        ax.set_xscale("log")
        ax.set_xticks(list(sizes), [str(n) for n in sizes])
        ax.minorticks_off()
        ax.set(xlabel="quantized training pairs", ylabel=label)
    axes[0].legend(title="quant-aware predictor")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- summary
def _r(v, n: int = 4):
    if v is None:
        return None
    v = float(v)
    return round(v, n) if np.isfinite(v) else None


def summary_fields(cfg, fp32: PairSet, quant: PairSet, trained: dict, noise: pd.DataFrame,
                   dec: dict, cov: dict, controls: pd.DataFrame, offset: Optional[dict],
                   real: Optional[pd.DataFrame], timing: dict, seconds: dict,
                   study: dict) -> dict:
    """Notebook 03's ``03_summary.json`` fields (see :data:`apq_lib.results.CONTRACTS`)."""
    pc, m, r = cfg.predictor, trained["metrics"], _r
    ctl = controls.set_index("method")
    fp = ctl.loc["fp32_predictor"]
    out = {
        "profile": cfg.name, "fp32_pairs": len(fp32), "quant_pairs": len(quant),
        "policies_per_arch": pc.policies_per_arch,
        "fp32_holdout": int(m["fp32"]["n"]), "quant_holdout": int(m["transfer"]["n"]),
        "fp32_acc_mean": r(fp32.acc.mean(), 3), "fp32_acc_std": r(fp32.acc.std(), 3),
        "quant_acc_mean": r(quant.acc.mean(), 3), "quant_acc_std": r(quant.acc.std(), 3),
        "fp32_rmse": r(m["fp32"]["rmse"]), "fp32_kendall_tau": r(m["fp32"]["kendall_tau"]),
        "fp32_pairwise_acc": r(m["fp32"]["pairwise_acc"]),
        "quant_rmse_transfer": r(m["transfer"]["rmse"]),
        "quant_rmse_scratch": r(m["scratch"]["rmse"]),
        **{f"quant_{k}_{meth}_split": r(m[src][k]) for k in ("kendall_tau", "pairwise_acc")
           for meth, src in (("transfer", "transfer"), ("scratch", "scratch"),
                             ("fp32_predictor", "fp32_on_quant"))},
        # label variance: architecture / bits / noise
        "label_variance_shares": {k: r(v) for k, v in dec["shares"].items()},
        "label_variance": {k: r(v) for k, v in dec["variance"].items()},
        "bit_to_noise_variance": r(dec["bit_to_noise_variance"], 3),
        "label_variance_method": dec["method"],
        "uniform_policy_mean_acc": {k: r(v, 3) for k, v in dec["uniform_means"].items()},
        "mean_bits_r2": r(dec["mean_bits_r2"]), "mean_bits_sd": r(dec["mean_bits_sd"]),
        # cost coverage
        "pairs_at_baseline_cost_fraction": r(cov["pairs_at_baseline_cost_fraction"]),
        "fp32_pairs_at_baseline_cost_fraction": r(cov["fp32_pairs_at_baseline_cost_fraction"]),
        "baseline_cost_reference": cov["reference"],
        "baseline_latency_ms": r(cov["reference_ms"]), "largest_latency_ms": r(cov["largest_ms"]),
        "quant_max_latency_ms": r(cov["quant_max_latency_ms"]),
        "fp32_max_latency_ms": r(cov["fp32_max_latency_ms"]),
        "fp32_max_macs_fraction_of_largest": r(cov["fp32_max_macs_fraction_of_largest"]),
        # Table 4: grouped CV over architectures, cv_seeds training seeds per fold
        "heldout_architectures": int(controls["n_architectures"].iloc[0]),
        "heldout_pairs": int(controls["n_pairs"].iloc[0]), "cv_folds": pc.cv_folds,
        "cv_seeds": pc.cv_seeds, "ensemble_members": pc.ensemble,
        "bootstrap_resamples": pc.bootstrap_resamples,
        **{f"quant_kendall_tau_{k}": r(row.kendall_tau) for k, row in ctl.iterrows()},
        **{f"quant_kendall_tau_{k}_ci": [r(row.tau_ci_low), r(row.tau_ci_high)]
           for k, row in ctl.iterrows()},
        **{f"quant_rmse_{k}_cv": r(row.rmse) for k, row in ctl.iterrows()},
        **{f"tau_transfer_minus_{k}": r(row.tau_transfer_minus_method)
           for k, row in ctl.iterrows() if k != "transfer"},
        **{f"tau_transfer_minus_{k}_ci": [r(row.ci_low), r(row.ci_high)]
           for k, row in ctl.iterrows() if k != "transfer"},
        **{f"tau_transfer_vs_{k}_p": r(row.p_value) for k, row in ctl.iterrows()
           if k != "transfer"},
        **{f"tau_transfer_vs_{k}_verdict": row.verdict for k, row in ctl.iterrows()
           if k != "transfer"},
        "tau_transfer_minus_fp32": r(fp.tau_transfer_minus_method),
        "tau_transfer_minus_fp32_ci": [r(fp.ci_low), r(fp.ci_high)],
        "tau_transfer_vs_fp32_verdict": fp.verdict,
        # label noise (quantized labels; fp32_* for the FP32 ones)
        "label_noise_se": r(noise.loc["quant", "se_binomial_median"]),
        "label_sd": r(noise.loc["quant", "label_sd"]),
        "label_noise_ratio": r(noise.loc["quant", "ratio"]),
        "label_noise_se_split_half": r(noise.loc["quant", "se_split_half"]),
        "label_noise_se_paired": r(noise.loc["quant", "se_paired_median"]),
        "label_noise_ratio_paired": r(noise.loc["quant", "ratio_paired"]),
        "fp32_label_noise_se": r(noise.loc["fp32", "se_binomial_median"]),
        "fp32_label_sd": r(noise.loc["fp32", "label_sd"]),
        "fp32_label_noise_ratio": r(noise.loc["fp32", "ratio"]),
        # label protocol -> realised models, on validation images only
        "offset_source": offset["source"] if offset else "none",
        "label_to_realised_offset": r(offset["mean"]) if offset else None,
        "label_to_realised_offset_ci": [r(v) for v in offset["ci"]] if offset else None,
        "label_realised_spearman": r(offset["spearman"]) if offset else None,
        "realised_pairs": int(len(real)) if real is not None else 0,
        "eval_images_fp32": pc.eval_images,
        "eval_images_quant": pc.quant_eval_images or pc.eval_images,
        "recal_images": pc.recal_images, "finetune_steps": pc.finetune_steps,
        "seconds_per_fp32_pair": r(fp32.seconds.mean(), 3),
        "seconds_per_quant_pair": r(quant.seconds.mean(), 3),
        "cpu_seconds_per_fp32_pair": r(np.nanmean(fp32.cpu_seconds), 3),
        "cpu_seconds_per_quant_pair": r(np.nanmean(quant.cpu_seconds), 3),
        "collection_seconds_fp32": r(fp32.seconds.sum(), 1),
        "collection_seconds_quant": r(quant.seconds.sum(), 1),
        **{k: r(v, 1) for k, v in seconds.items()},
        "study_sizes": list(pc.study_sizes), "study_seeds": list(pc.study_seeds),
        "transfer_n_to_match_scratch_rmse": study["rmse"]["transfer_n_needed"],
        "transfer_fraction_to_match_scratch_rmse": r(study["rmse"]["fraction"]),
        "transfer_n_to_match_scratch_tau": study["kendall_tau"]["transfer_n_needed"],
        "inference_ms_10k": r(timing["best_ms"]["FastPredictor fp32"], 1),
        "inference_ms_10k_bf16": r(timing["best_ms"]["FastPredictor bf16"], 1),
        "inference_ms_10k_dense": r(timing["best_ms"]["dense one-hot (fp32)"], 1),
        "inference_bf16_max_error_points": r(timing["err16"]),
    }
    return out


def check_predictor_summary(summary: dict, pc, cov: dict, controls: pd.DataFrame, cv: pd.DataFrame
                  ) -> None:
    """Notebook 03's own checks: pair counts as configured, variance shares summing to 1,
    the largest corner among the quantized pairs, τ in range, the controls' verdict
    vocabulary and seeds, every pair held out exactly once, the offset fit on validation
    images and the bf16 predictor within a point of fp32."""
    assert summary["fp32_pairs"] == pc.fp32_pairs and summary["quant_pairs"] == pc.quant_pairs
    assert abs(sum(summary["label_variance_shares"].values()) - 1) < 1e-3
    assert cov["quant_max_latency_ms"] >= cov["largest_ms"] - 1e-9
    assert -1 <= summary["quant_kendall_tau_transfer"] <= 1
    assert set(controls["verdict"]) <= {"reference", "transfer better", "transfer worse",
                                        "inconclusive", "not comparable"}
    seeds = controls.set_index("method").loc[["transfer", "scratch"], "training_seeds"]
    assert (seeds == pc.cv_seeds).all()
    assert cv.filter(like="pred_").notna().all().all()
    assert summary["offset_source"] == "validation"
    assert summary["inference_bf16_max_error_points"] < 1
