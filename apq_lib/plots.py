"""One look for every figure of the suite (seaborn), plus the plots several notebooks share."""
from __future__ import annotations

from typing import Optional, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

__all__ = ["set_style", "pareto_mask", "plot_front", "plot_block_policy", "METHOD_ORDER",
           "COST_AXES", "plot_fronts", "plot_policy_grid", "plot_haq_episodes",
           "plot_hawq_traces", "plot_stage_seconds", "plot_pruning_sweep"]

METHOD_ORDER = ("APQ", "Random search", "Multi-stage", "HAQ", "HAWQ-V2", "Fixed W8A8",
                "Fixed W6A6", "Fixed W4A4")


def set_style() -> None:
    """The suite's figure style (call once per notebook)."""
    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind")
    plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 130, "axes.titleweight": "bold",
                         "figure.figsize": (6.0, 4.0)})


def pareto_mask(cost: Sequence[float], acc: Sequence[float]) -> np.ndarray:
    """True for points no other point beats (lower-or-equal cost and higher accuracy)."""
    cost, acc = np.asarray(cost, float), np.asarray(acc, float)
    order = np.lexsort((-acc, cost))
    mask = np.zeros(len(cost), bool)
    best = -np.inf
    for i in order:
        if acc[i] > best:
            mask[i] = True
            best = acc[i]
    return mask


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">", "p")


def plot_front(ax, df: pd.DataFrame, x: str, y: str, hue: str = "method",
               xlabel: Optional[str] = None, ylabel: str = "top-1 (%)") -> None:
    """Scatter every method's points and connect each method's Pareto front. Every method
    has its own colour *and* marker (no repeats up to 20 methods); points with ``y_lo`` /
    ``y_hi`` columns (a CI of ``y``) get error bars."""
    hues = [m for m in METHOD_ORDER if m in set(df[hue])] + \
        sorted(set(df[hue]) - set(METHOD_ORDER))
    colours = sns.color_palette("colorblind" if len(hues) <= 10 else "tab20", len(hues))
    pal = dict(zip(hues, colours))
    marks = dict(zip(hues, [MARKERS[i % len(MARKERS)] for i in range(len(hues))]))
    for m in hues:
        d = df[df[hue] == m].dropna(subset=[x, y])
        if d.empty:
            continue
        ax.scatter(d[x], d[y], label=m, color=pal[m], marker=marks[m], s=36, alpha=0.85)
        if {"y_lo", "y_hi"} <= set(d):
            e = d.dropna(subset=["y_lo", "y_hi"])
            ax.errorbar(e[x], e[y], yerr=[e[y] - e["y_lo"], e["y_hi"] - e[y]], fmt="none",
                        ecolor=pal[m], elinewidth=0.8, capsize=2, alpha=0.8)
        f = d[pareto_mask(d[x], d[y])].sort_values(x)
        if len(f) > 1:
            ax.plot(f[x], f[y], color=pal[m], lw=1.2, alpha=0.8)
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8, frameon=True)


def plot_block_policy(ax, kernels: Sequence[int], mids: Sequence[int],
                      bits: dict, active: Sequence[bool], title: str = "") -> None:
    """HAQ-style per-block bar plot: bits per block (pw_w/pw_a/dw_w/dw_a), kernel on top."""
    idx = np.flatnonzero(np.asarray(active))
    width = 0.2
    for j, (name, vals) in enumerate(bits.items()):
        ax.bar(np.arange(len(idx)) + (j - 1.5) * width, np.asarray(vals)[idx], width,
               label=name)
    for i, b in enumerate(idx):
        ax.text(i, 8.4, f"k{kernels[b]}\n{mids[b]}", ha="center", va="bottom", fontsize=6)
    ax.set_ylim(0, 10.5)
    ax.set_xticks(np.arange(len(idx)), [str(b) for b in idx], fontsize=7)
    ax.set_xlabel("block")
    ax.set_ylabel("bits")
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=4, loc="lower right")


COST_AXES = (("latency_ms", "BitFusion latency (ms)"), ("energy_mj", "BitFusion energy (mJ)"),
             ("bitops_g", "BitOps (G)"))


def plot_fronts(pts: pd.DataFrame, y: str = "test_acc", title: Optional[str] = None,
                legend_ncol: int = 1):
    """Top-1 against latency, energy and BitOps, one panel each (:func:`plot_front`); the
    legend on the first panel only. Returns the figure."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, (col, lab) in zip(axes, COST_AXES):
        plot_front(ax, pts, col, y, xlabel=lab)
        ax.xaxis.set_major_locator(plt.MaxNLocator(5))
    for ax in axes[1:]:
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    axes[0].legend(fontsize=7, ncol=legend_ncol)
    if title:
        fig.suptitle(title, y=1.02)
    fig.tight_layout()
    return fig


def plot_policy_grid(rows: Sequence[dict], configs: Sequence, targets: dict, space):
    """One :func:`plot_block_policy` panel per searched model: a row per constraint, a
    column per budget (``targets``: constraint → budgets). Returns the figure."""
    kinds = list(targets)
    ncol = max(len(v) for v in targets.values())
    fig, axes = plt.subplots(len(kinds), ncol, figsize=(4.2 * ncol, 2.8 * len(kinds)),
                             squeeze=False)
    for ax in axes.ravel():
        ax.set_visible(False)
    for row, c in zip(rows, configs):
        ax = axes[kinds.index(row["constraint"]), targets[row["constraint"]].index(row["limit"])]
        ax.set_visible(True)
        plot_block_policy(ax, c.kernels, c.mids, {f: getattr(c, f) for f in
                                                   ("pw_w", "pw_a", "dw_w", "dw_a")},
                          space.active_mask(c.depths),
                          title=f"{row['constraint']} ≤ {row['limit']:g} {row['unit']}: "
                                f"{row['test_acc']:.1f}%")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    for ax in axes.ravel():
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    fig.legend(handles, labels, loc="upper center", ncol=4, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    return fig


def plot_haq_episodes(rows: Sequence[dict], warmup: int):
    """HAQ's reward-time accuracy and mean searched bits per episode, one line per search
    (the dotted line ends the warm-up). Returns the figure."""
    hist = pd.concat([pd.DataFrame(r["history"]).assign(search=r["constraint"]) for r in rows])
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    sns.lineplot(data=hist, x="episode", y="accuracy", hue="search", ax=axes[0])
    axes[0].axvline(warmup - 0.5, color="grey", ls=":", lw=1)
    axes[0].set(title="HAQ: reward-time accuracy per episode", ylabel="val top-1 (%)")
    sns.lineplot(data=hist, x="episode", y="mean_w_bits", hue="search", ax=axes[1],
                 legend=False)
    sns.lineplot(data=hist.dropna(subset=["mean_a_bits"]), x="episode", y="mean_a_bits",
                 hue="search", ax=axes[1], ls="--", legend=False)
    axes[1].set(title="mean bits of the searched layers after the action wall (— w, - - a)",
                ylabel="bits")
    fig.tight_layout()
    return fig


def plot_hawq_traces(traces: pd.Series, model):
    """HAWQ-V2's Hessian trace per weight and layer of ``model`` (symlog; negative
    estimates in red). Returns the figure."""
    fig, ax = plt.subplots(figsize=(11, 3.2))
    if len(traces):
        mods = dict(model.named_modules())
        per = traces / pd.Series({n: mods[n].weight.numel() for n in traces.index})
        pal = sns.color_palette()
        per.plot.bar(ax=ax, color=[pal[2] if v >= 0 else pal[3] for v in per], width=0.85)
        ax.set_yscale("symlog", linthresh=max(1e-12, 1e-3 * float(per.abs().max())))
        ax.set(title="HAWQ-V2: Hessian trace per weight, per layer (Hutchinson; red: negative "
                     "estimate, treated as 0)", ylabel="Tr(H)/n", xlabel="")
        ax.tick_params(axis="x", labelsize=5)
    fig.tight_layout()
    return fig


def plot_stage_seconds(stages: pd.DataFrame, title: str):
    """Stacked wall seconds per stage (columns), one bar per row index. Returns the
    figure."""
    ax = stages.plot.barh(stacked=True, figsize=(9, 1.4 + 0.5 * len(stages)))
    ax.set(title=title, xlabel="seconds", ylabel="")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    return ax.figure


def plot_pruning_sweep(sweep: pd.DataFrame):
    """Top-1 against measured sparsity per pruning scope, the dense model dotted. Returns
    the figure."""
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for scope, d in sweep[sweep["scope"] != "dense"].groupby("scope"):
        ax.plot(100 * d["sparsity"], d["test_acc"], marker="o", label=scope)
    ax.axhline(sweep.loc[sweep["scope"] == "dense", "test_acc"].iloc[0], color="grey", ls=":",
               label="dense")
    ax.set(xlabel="sparsity of conv/linear weights (%)", ylabel="top-1 (%)",
           title="Magnitude pruning: accuracy vs sparsity")
    ax.legend()
    return fig
