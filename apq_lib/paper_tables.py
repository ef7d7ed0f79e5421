"""The paper's comparisons (APQ §4: Tables 1–4, Fig. 1) rebuilt from the results of
notebooks 01–05, with APQ's published numbers (``env/paper_reference.yaml``) beside ours.

Every number in our columns is read from a results file or computed in this module from
such numbers; :func:`check_provenance` verifies that for the built tables.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import yaml

from .artifacts import MissingInputError
from .config import ENV_DIR

__all__ = ["Results", "load_results", "joint_vs_fixed_haq", "joint_vs_multistage",
           "limited_bitops", "predictor_transfer", "run_summary", "check_provenance", "missed_budgets",
           "CO2_KG_PER_KWH", "DEVICE_WATTS", "COST_COLUMNS"]

# CO2 estimate: energy = seconds x device power; intensity = world-average grid 2019
# (IEA, 0.475 kg CO2e / kWh). Power: typical sustained draw, stated in the table.
CO2_KG_PER_KWH = 0.475
DEVICE_WATTS = {"cpu": 65.0, "cuda": 700.0}
COST_COLUMNS = {"latency": "latency_ms", "energy": "energy_mj", "bitops": "bitops_g"}

_SOURCES = {
    "01_summary.json": "01_supernet", "02_summary.json": "02_hardware",
    "03_summary.json": "03_predictor", "03_sample_efficiency.csv": "03_predictor",
    "04_search.csv": "04_search", "04_summary.json": "04_search",
    "05_baselines.csv": "05_baselines", "05_summary.json": "05_baselines",
    "05_pruning_sweep.csv": "05_baselines",
}


@dataclass
class Results:
    """Everything notebooks 01–05 wrote that the tables use."""
    s01: dict
    s02: dict
    s03: dict
    s04: dict
    s05: dict
    efficiency: pd.DataFrame
    search: pd.DataFrame
    baselines: pd.DataFrame
    pruning: pd.DataFrame
    manifest: dict
    paper: dict

    def numbers(self) -> np.ndarray:
        """Every number in the inputs (for the provenance check)."""
        vals: list[float] = []

        def walk(o):
            if isinstance(o, bool) or o is None:
                return
            if isinstance(o, (int, float)):
                vals.append(float(o))
            elif isinstance(o, dict):
                for v in o.values():
                    walk(v)
            elif isinstance(o, (list, tuple)):
                for v in o:
                    walk(v)

        for d in (self.s01, self.s02, self.s03, self.s04, self.s05):
            walk(d)
        for df in (self.efficiency, self.search, self.baselines, self.pruning):
            walk(df.select_dtypes("number").to_numpy().ravel().tolist())
        arr = np.asarray(vals, float)
        return arr[np.isfinite(arr)]


def load_results(results_dir: Path, paper_file: Optional[Path] = None) -> Results:
    """Read the inputs; a missing one names the notebook that writes it."""
    data = Path(results_dir) / "data"
    for name, nb in _SOURCES.items():
        if not (data / name).exists():
            raise MissingInputError(f"results/data/{name} is missing: run notebook {nb} first "
                                    f"(make reproduce runs them in order)")
    js = lambda n: json.loads((data / n).read_text())  # noqa: E731
    man = Path(results_dir) / "manifest.json"
    paper = yaml.safe_load((paper_file or ENV_DIR / "paper_reference.yaml").read_text())
    return Results(js("01_summary.json"), js("02_summary.json"), js("03_summary.json"),
                   js("04_summary.json"), js("05_summary.json"),
                   pd.read_csv(data / "03_sample_efficiency.csv"),
                   pd.read_csv(data / "04_search.csv"), pd.read_csv(data / "05_baselines.csv"),
                   pd.read_csv(data / "05_pruning_sweep.csv"),
                   json.loads(man.read_text()) if man.exists() else {}, paper)


def _constraint_kind(s: str) -> str:
    return str(s).split()[0].split("<=")[0].strip()


def _met(d: pd.DataFrame) -> pd.DataFrame:
    """Rows that met their budget (a budget the method cannot reach is flagged
    ``met = False`` by notebook 05 and left out of the comparisons)."""
    if "met" not in d:
        return d
    return d[d["met"].isna() | (d["met"].astype(str).str.lower() == "true")]


def missed_budgets(r: Results) -> pd.DataFrame:
    """Baseline rows whose budget was out of reach (listed beside the tables)."""
    b = r.baselines
    return b.drop(_met(b).index)


def _qat_rows(r: Results, method: str) -> pd.DataFrame:
    b = _met(r.baselines)
    d = b[b["method"] == method]
    if "variant" in d:
        d = d[d["variant"] != "PTQ"]
    if "model" in d:
        d = d[~d["model"].astype(str).str.startswith("APQ arch")]
    return d


def _cheapest_at_least(apq: pd.DataFrame, col: str, acc: float) -> Optional[pd.Series]:
    """The APQ model with the lowest ``col`` among those at least as accurate as ``acc``."""
    d = apq[apq["test_acc"] >= acc]
    return None if d.empty else d.loc[d[col].idxmin()]


def joint_vs_fixed_haq(r: Results) -> pd.DataFrame:
    """Table 1: APQ vs fixed-architecture (MobileNetV2-style) + HAQ, matched latency/energy.

    For each HAQ model: the cheapest APQ model (any budget of notebook 04) at least as
    accurate, and the cost ratio HAQ / APQ at equal accuracy (cost in ms or mJ as
    ``matched`` says). HAQ models searched under that cost's budget are compared on it;
    when there are none (``baselines.haq_costs`` left it out), every HAQ model is."""
    apq = r.search
    rows = []
    claims = r.paper["claims"]["joint_vs_fixed_haq"]
    haq = _qat_rows(r, "HAQ")
    for kind, paper_ratio in (("latency", claims["latency_ratio"]),
                              ("energy", claims["energy_ratio"])):
        col = COST_COLUMNS[kind]
        same = haq[haq["constraint"].map(_constraint_kind) == kind]
        for _, h in (same if len(same) else haq).iterrows():
            a = _cheapest_at_least(apq, col, h["test_acc"])
            rows.append({
                "matched": kind, "HAQ budget": h["constraint"], "HAQ top-1": h["test_acc"],
                "HAQ cost": h[col], "APQ top-1": np.nan if a is None else a["test_acc"],
                "APQ cost": np.nan if a is None else a[col],
                "ratio (HAQ/APQ)": np.nan if a is None else h[col] / a[col],
                "paper ratio": paper_ratio})
    return pd.DataFrame(rows, columns=["matched", "HAQ budget", "HAQ top-1", "HAQ cost",
                                       "APQ top-1", "APQ cost", "ratio (HAQ/APQ)",
                                       "paper ratio"])


def _co2_kg(seconds: float, device: str) -> float:
    kind = "cuda" if "cuda" in device.lower() or "nvidia" in device.lower() else "cpu"
    return seconds * DEVICE_WATTS[kind] / 3.6e6 * CO2_KG_PER_KWH


def joint_vs_multistage(r: Results) -> pd.DataFrame:
    """Table 2: APQ vs the multi-stage pipeline (NAS → pruning → HAQ) at the same budgets,
    with search cost (seconds actually spent; shared stages amortised) and a CO2 estimate."""
    apq = r.search
    ms = _qat_rows(r, "Multi-stage")
    cost = r.s05.get("search_cost", {})
    device = r.manifest.get("device", "cpu")
    claims = r.paper["claims"]["joint_vs_multistage"]
    rows = []
    for _, m in ms.iterrows():
        kind = _constraint_kind(m["constraint"])
        col = COST_COLUMNS.get(kind)
        a = apq[(apq["constraint"] == kind) & np.isclose(apq["limit"], m["target"])]
        if col is None or a.empty:
            continue
        a = a.iloc[0]
        rows.append({"budget": m["constraint"], "APQ top-1": a["test_acc"],
                     "multi-stage top-1": m["test_acc"],
                     "top-1 gain": a["test_acc"] - m["test_acc"],
                     "APQ latency_ms": a["latency_ms"], "multi-stage latency_ms": m["latency_ms"],
                     "APQ energy_mj": a["energy_mj"], "multi-stage energy_mj": m["energy_mj"],
                     "paper top-1 gain": claims["top1_gain"]})
    out = pd.DataFrame(rows)
    for method in ("APQ", "Multi-stage"):
        c = cost.get(method)
        if not c:
            continue
        first = c.get("first_search_s")
        amort = next((v for k, v in c.items() if k.startswith("amortised_s")), None)
        out[f"{method} first-search hours"] = np.nan if first is None else first / 3600
        out[f"{method} amortised hours"] = np.nan if amort is None else amort / 3600
        out[f"{method} CO2 kg"] = np.nan if first is None else _co2_kg(first, device)
    if {"APQ first-search hours", "Multi-stage first-search hours"} <= set(out):
        out["cost ratio (multi/APQ)"] = (out["Multi-stage first-search hours"] /
                                         out["APQ first-search hours"])
        out["paper cost ratio"] = claims["cost_ratio"]
    return out


def limited_bitops(r: Results) -> pd.DataFrame:
    """Table 3: under BitOps budgets, APQ vs fixed-precision models and HAWQ-V2."""
    rows = []
    apq = r.search[r.search["constraint"] == "bitops"]
    for _, a in apq.iterrows():
        rows.append({"method": "APQ", "budget (G BitOps)": a["limit"], "top-1": a["test_acc"],
                     "BitOps (G)": a["bitops_g"], "latency_ms": a["latency_ms"],
                     "energy_mj": a["energy_mj"]})
    b = _met(r.baselines)
    for method in sorted(set(b["method"])):
        if not (method.startswith("Fixed") or method.startswith("HAWQ")):
            continue
        d = b[b["method"] == method]
        if "variant" in d:
            d = d[d["variant"] != "PTQ"]
        if method.startswith("HAWQ"):
            d = d[d["constraint"].map(_constraint_kind) == "bitops"]
        for _, x in d.iterrows():
            rows.append({"method": method + ("" if "model" not in x else f" ({x['model']})"),
                         "budget (G BitOps)": x.get("target", np.nan), "top-1": x["test_acc"],
                         "BitOps (G)": x["bitops_g"], "latency_ms": x["latency_ms"],
                         "energy_mj": x["energy_mj"]})
    out = pd.DataFrame(rows)
    w8 = out[out["method"].str.startswith("Fixed W8A8")]
    if not w8.empty and not apq.empty:
        ref = w8.loc[w8["top-1"].idxmax()]
        out["BitOps ratio vs best W8A8"] = ref["BitOps (G)"] / out["BitOps (G)"]
        out["paper BitOps ratio (APQ vs W8 ResNet-34)"] = np.where(
            out["method"] == "APQ",
            r.paper["claims"]["limited_bitops"]["bitops_ratio_vs_resnet34_w8"], np.nan)
    return out


def predictor_transfer(r: Results) -> pd.DataFrame:
    """Table 4: quantized-predictor quality vs training pairs, transfer vs scratch."""
    g = r.efficiency.groupby(["n_train", "method"])
    metrics = [m for m in ("rmse", "kendall_tau", "pairwise_acc") if m in r.efficiency]
    mean = g[metrics].mean().unstack("method")
    std = g[metrics].std().unstack("method")
    out = pd.DataFrame({"quantized pairs": mean.index})
    for m in metrics:
        for method in mean[m].columns:
            out[f"{m} {method} mean"] = mean[m][method].to_numpy()
            out[f"{m} {method} std"] = std[m][method].to_numpy()
    out["paper quantized pairs (full)"] = r.paper["claims"]["predictor_transfer"]["quant_pairs"]
    return out


def run_summary(r: Results) -> pd.DataFrame:
    """Table 5: what this run was: profile, dataset, device, sizes and times."""
    nbs = r.manifest.get("notebooks", {})
    rows = [("profile", r.manifest.get("profile")), ("device", r.manifest.get("device")),
            ("git commit", r.manifest.get("git_commit")),
            ("supernet largest top-1 (%)", r.s01.get("largest_top1")),
            ("supernet smallest top-1 (%)", r.s01.get("smallest_top1")),
            ("supernet train seconds", r.s01.get("train_seconds")),
            ("FP32 predictor pairs", r.s03.get("fp32_pairs")),
            ("quantized predictor pairs", r.s03.get("quant_pairs")),
            ("seconds per FP32 pair", r.s03.get("seconds_per_fp32_pair")),
            ("seconds per quantized pair", r.s03.get("seconds_per_quant_pair")),
            ("MobileNetV2 W8A8 BitOps", r.s02.get("mbv2_w8a8_bitops")),
            ("MobileNetV2 W8A8 BitFusion ms", r.s02.get("mbv2_w8a8_bitfusion_ms"))]
    rows += [(f"notebook {k} seconds", v.get("seconds")) for k, v in sorted(nbs.items())]
    return pd.DataFrame(rows, columns=["item", "value"]).astype({"value": object})


def check_provenance(table: pd.DataFrame, r: Results, derived: tuple = (),
                     rtol: float = 1e-6) -> None:
    """Every number in ``table`` outside the paper columns and ``derived`` columns must
    appear in the results of notebooks 01–05 (no literal typed in)."""
    known = np.sort(r.numbers())
    for col in table.columns:
        if str(col).startswith("paper") or col in derived:
            continue
        vals = pd.to_numeric(table[col], errors="coerce").dropna().to_numpy(float)
        for v in vals:
            i = np.searchsorted(known, v)
            near = known[max(0, i - 1): i + 1]
            assert len(near) and np.isclose(near, v, rtol=rtol, atol=1e-12).any(), \
                f"column {col!r}: {v} is not a number from the results of notebooks 01-05"
