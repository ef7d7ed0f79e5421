"""One look for every figure of the suite (seaborn), plus the plots several notebooks share."""
from __future__ import annotations

from typing import Optional, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

__all__ = ["set_style", "pareto_mask", "plot_front", "plot_block_policy", "METHOD_ORDER"]

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
