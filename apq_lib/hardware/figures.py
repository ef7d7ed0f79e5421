"""Figures of the hardware cost models (HAQ Fig. 2-style bit sweeps, roofline of BitFusion
layers, APQ-style cost distributions of a search space, parity with the official BitFusion
simulator); seaborn, the suite's style."""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from .costs import get_simulator
from .layers import LayerSpec
from .parity import parity_summary

__all__ = ["plot_bits_sweep", "plot_wa_grid", "plot_roofline", "plot_space_costs",
           "plot_bitfusion_parity"]

_UNITS = {"latency": "latency (ms)", "energy": "energy (mJ)"}


def plot_bits_sweep(df: pd.DataFrame, metrics: Sequence[str] = ("latency", "energy")):
    """Rows: metric; columns: layer; one line per simulator over W=A bits (log y)."""
    layers = list(dict.fromkeys(df["layer"]))
    fig, axes = plt.subplots(len(metrics), len(layers), figsize=(3.4 * len(layers),
                                                                  2.8 * len(metrics)),
                             squeeze=False, sharex=True)
    for i, m in enumerate(metrics):
        for j, layer in enumerate(layers):
            ax = axes[i, j]
            d = df[(df["layer"] == layer) & df[m].notna()]
            sns.lineplot(data=d, x="w_bits", y=m, hue="simulator", marker="o", ax=ax,
                         legend=(i == 0 and j == len(layers) - 1))
            ax.set_yscale("log")
            ax.set_xlabel("bits (W = A)" if i == len(metrics) - 1 else "")
            ax.set_ylabel(_UNITS[m] if j == 0 else "")
            if i == 0:
                ax.set_title(layer, fontsize=10)
    leg = axes[0, -1].get_legend()
    if leg is not None:
        sns.move_legend(axes[0, -1], "upper left", bbox_to_anchor=(1.02, 1), fontsize=8)
    fig.tight_layout()
    return fig


def plot_wa_grid(spec: LayerSpec, simulators: Sequence[str], bits: Sequence[int] = range(2, 9),
                 metric: str = "latency"):
    """Heatmap of ``metric`` over (w_bits, a_bits), relative to W8A8, one panel per target:
    BitFusion's brick steps (6 = 8) against BISMO's w×a scaling."""
    bits = list(bits)
    fig, axes = plt.subplots(1, len(simulators), figsize=(3.6 * len(simulators), 3.2),
                             squeeze=False)
    for ax, name in zip(axes[0], simulators):
        sim = get_simulator(name)
        ref = sim.cost(spec, 8, 8)[metric]
        grid = pd.DataFrame([[sim.cost(spec, w, a)[metric] / ref for a in bits] for w in bits],
                            index=pd.Index(bits, name="w_bits"),
                            columns=pd.Index(bits, name="a_bits"))
        sns.heatmap(grid.iloc[::-1], annot=True, fmt=".2f", cmap="viridis", cbar=False, ax=ax,
                    annot_kws={"fontsize": 6})
        ax.set_title(name, fontsize=10)
    fig.suptitle(f"{metric} relative to W8A8, layer {spec}", fontsize=10)
    fig.tight_layout()
    return fig


def plot_roofline(df: pd.DataFrame, simulator: str = "bitfusion", hue: str = "layer type"):
    """Achieved MAC/s against arithmetic intensity (MACs per DRAM byte), one roof per bit
    width in ``df`` (columns intensity, macs_per_s, w_bits, a_bits, ``hue``, policy)."""
    sim = get_simulator(simulator)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    sns.scatterplot(data=df, x="intensity", y="macs_per_s", hue=hue, style="policy", ax=ax,
                    s=36, alpha=0.85)
    xs = np.logspace(np.log10(df["intensity"].min() / 2), np.log10(df["intensity"].max() * 2),
                     200)
    for (w, a), ls in zip(sorted(set(zip(df["w_bits"], df["a_bits"])), reverse=True),
                          ("-", "--", ":", "-.")):
        r = sim.roofline(w, a)
        ax.plot(xs, np.minimum(r["peak_macs_per_s"], xs * r["bytes_per_s"]), color="0.3",
                ls=ls, lw=1, label=f"roof W{w}A{a}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (MACs / DRAM byte)")
    ax.set_ylabel("achieved MAC/s")
    ax.set_title(f"{simulator} roofline")
    ax.legend(fontsize=7, loc="lower right", ncol=2)
    fig.tight_layout()
    return fig


def plot_space_costs(df: pd.DataFrame, targets: Sequence[str], hue: str = "mean bits"):
    """Latency against energy of sampled subnets, one panel per target (energy absent for
    measured targets: their panel shows the latency histogram instead)."""
    fig, axes = plt.subplots(1, len(targets), figsize=(3.6 * len(targets), 3.3), squeeze=False)
    with_energy = [t for t in targets if df[f"{t}_energy"].notna().any()]
    for ax, t in zip(axes[0], targets):
        lat, en = f"{t}_latency", f"{t}_energy"
        if t in with_energy:
            sns.scatterplot(data=df, x=lat, y=en, hue=hue, palette="viridis", s=10,
                            linewidth=0, ax=ax, legend=(t == with_energy[0]))
            if t == with_energy[0]:
                sns.move_legend(ax, "upper left", fontsize=7, title_fontsize=8)
            ax.set_ylabel("energy (mJ)")
        else:
            sns.histplot(df[lat], ax=ax, bins=40)
        ax.set_xlabel("latency (ms)")
        ax.set_title(t, fontsize=10)
    fig.tight_layout()
    return fig


def plot_bitfusion_parity(panels: Sequence[tuple]):
    """Parity plots, one column per ``(title, parity DataFrame, ref)`` (``ref`` = "official"
    or "apqvar", see :func:`~apq_lib.hardware.parity.parity_summary`); rows latency and
    energy, log-log, one colour per layer kind, Spearman and median ratio in the legend."""
    fig, axes = plt.subplots(2, len(panels), figsize=(4.2 * len(panels), 7.6), squeeze=False)
    for j, (title, df, ref) in enumerate(panels):
        summ = parity_summary(df, ref)
        for i, (m, ours) in enumerate((("latency", "ours_latency_ms"),
                                       ("energy", "ours_energy_mj"))):
            col = {"official": ("latency_ms", "energy_mj"),
                   "apqvar": ("apqvar_latency_ms", "apqvar_energy_mj")}[ref][i]
            ax = axes[i, j]
            for kind, d in df[df[col].notna()].groupby("kind"):
                s = summ.loc[kind]
                ax.scatter(d[col], d[ours], s=6, alpha=0.5,
                           label=f"{kind}: ρ={s[f'{m}_spearman']:.4f}, "
                                 f"median×{s[f'{m}_median_ratio']:.3f}")
            lo = float(np.nanmin(df[[col, ours]].to_numpy()))
            hi = float(np.nanmax(df[[col, ours]].to_numpy()))
            ax.plot([lo, hi], [lo, hi], color="k", lw=0.8, ls="--")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel(f"reference {_UNITS[m]} ({col})")
            ax.set_ylabel(f"ours {_UNITS[m]}")
            ax.legend(fontsize=7, loc="upper left")
            if i == 0:
                ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig
