"""Our BitFusion model against the official simulator (APQ §4's latency/energy target):
load the reference grid (``env/reference/bitfusion_official_grid.csv``, provenance in
``env/reference/README.md``), cost every row with :class:`BitFusionSim`, and summarise the
parity per layer kind (Spearman, median ratio, worst error) and the W8A8/W4A4 speed-ups."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from .bitfusion import BitFusionSim
from .layers import LayerSpec

__all__ = ["REFERENCE_GRID", "load_bitfusion_grid", "bitfusion_parity", "parity_summary",
           "speedup_table"]

REFERENCE_GRID = Path(__file__).resolve().parents[2] / "env" / "reference" / \
    "bitfusion_official_grid.csv"
_FIELDS = ["in_c", "out_c", "in_size", "kernel", "stride", "padding", "groups"]
_NEED = ["kind", *_FIELDS, "w_bits", "a_bits", "latency_ms", "energy_mj",
         "apqvar_latency_ms", "apqvar_energy_mj"]


def load_bitfusion_grid(path=None):
    """The official-simulator grid as a DataFrame (one row per layer × bit pair)."""
    import pandas as pd
    path = Path(path) if path is not None else REFERENCE_GRID
    if not path.is_file():
        raise FileNotFoundError(f"BitFusion reference grid {path} not found; it ships with the "
                                "repository under env/reference/ (see its README.md)")
    try:
        df = pd.read_csv(path)
    except Exception as e:                       # noqa: BLE001 - re-raised with the file name
        raise ValueError(f"BitFusion reference grid {path} is not a readable CSV: {e}") from e
    missing = [c for c in _NEED if c not in df.columns]
    if missing:
        raise ValueError(f"BitFusion reference grid {path} lacks columns {missing}; restore "
                         "it from git (env/reference/bitfusion_official_grid.csv)")
    return df


def bitfusion_parity(grid, sim: Optional[BitFusionSim] = None, **options):
    """``grid`` plus our ``ours_latency_ms``, ``ours_energy_mj``, ``ours_cycles`` and
    ``ours_dram_bits`` (``options`` go to :class:`BitFusionSim` when ``sim`` is None)."""
    sim = sim or BitFusionSim(**options)
    specs = [LayerSpec(*map(int, r)) for r in grid[_FIELDS].itertuples(index=False)]
    bits = list(zip(grid["w_bits"].astype(int), grid["a_bits"].astype(int)))
    by_spec: dict = {}
    for s, b in zip(specs, bits):
        by_spec.setdefault(s, set()).add(b)
    for s, pairs in by_spec.items():
        sim.prefetch(s, sorted(pairs))
    reps = [sim.report(s, w, a) for s, (w, a) in zip(specs, bits)]
    out = grid.copy()
    out["ours_latency_ms"] = [r["latency"] for r in reps]
    out["ours_energy_mj"] = [r["energy"] for r in reps]
    out["ours_cycles"] = [r["cycles"] for r in reps]
    out["ours_dram_bits"] = [r["dram_bits"] for r in reps]
    return out


def parity_summary(df, ref: str = "official"):
    """Per kind: Spearman, median ratio ours/ref and max |ours/ref − 1| of latency and
    energy; ``ref`` is ``"official"`` (``latency_ms``) or ``"apqvar"`` (``apqvar_*``)."""
    import pandas as pd
    from scipy.stats import spearmanr
    cols = {"official": ("latency_ms", "energy_mj"),
            "apqvar": ("apqvar_latency_ms", "apqvar_energy_mj")}
    if ref not in cols:
        raise ValueError(f"ref={ref!r}; choose one of {list(cols)}")
    rows = []
    for kind, d in [*df.groupby("kind"), ("all", df)]:
        row = {"kind": kind}
        for m, col in zip(("latency", "energy"), cols[ref]):
            d2 = d[d[col].notna()]
            ours = d2["ours_latency_ms" if m == "latency" else "ours_energy_mj"]
            ratio = ours / d2[col]
            row.update({f"{m}_spearman": float(spearmanr(ours, d2[col])[0]),
                        f"{m}_median_ratio": float(np.median(ratio)),
                        f"{m}_max_err": float(np.abs(ratio - 1).max()), f"{m}_rows": len(d2)})
        rows.append(row)
    return pd.DataFrame(rows).set_index("kind")


def speedup_table(df):
    """Median W8A8/W4A4 latency speed-up per kind: ours vs the official simulator (and the
    APQ-table variant where it exists)."""
    import pandas as pd
    key = ["kind", *_FIELDS]
    rows = []
    for kind, d in df.groupby("kind"):
        p8 = d[(d.w_bits == 8) & (d.a_bits == 8)].set_index(key)
        p4 = d[(d.w_bits == 4) & (d.a_bits == 4)].set_index(key)
        row = {"kind": kind, "layers": len(p8)}
        for name, col in (("ours", "ours_latency_ms"), ("official", "latency_ms"),
                          ("apqvar", "apqvar_latency_ms")):
            row[f"{name}_w8a8/w4a4"] = float(np.nanmedian(p8[col] / p4[col]))
        rows.append(row)
    return pd.DataFrame(rows).set_index("kind")
