"""Choosing and matching baseline runs against APQ's models (notebook 05, Tables 1-3): spread
targets over a range, the best model within a budget, the model at matched realised cost,
and the paper's "same accuracy, N× lower cost" reading.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd

from ..stats import cheapest_at_least

__all__ = ["spread", "pick_targets", "cost_at_equal_accuracy", "best_under", "matched_by_cost"]


def spread(n_items: int, n: int) -> list[int]:
    """``n`` indices spread over ``range(n_items)``: the middle one for ``n = 1``, else
    both ends and evenly in between."""
    if n <= 0 or n_items == 0:
        return []
    if n >= n_items:
        return list(range(n_items))
    if n == 1:
        return [(n_items - 1) // 2]
    return sorted({int(round(i)) for i in np.linspace(0, n_items - 1, n)})


def pick_targets(values, n: int) -> list[float]:
    """Up to ``n`` targets spread over the sorted unique ``values`` (:func:`spread`)."""
    v = sorted({float(x) for x in values if np.isfinite(x)})
    return [v[i] for i in spread(len(v), n)]


def cost_at_equal_accuracy(apq: pd.DataFrame, base: pd.DataFrame, col: str) -> pd.DataFrame:
    """The paper's "same accuracy, N× lower cost" reading: for every baseline row, the
    cheapest APQ model (by ``col``) at least as accurate (:func:`apq_lib.stats.
    cheapest_at_least`, the matcher of notebook 06's bootstrap), and the ratio of the
    costs."""
    rows = []
    acc, cost = apq["test_acc"].to_numpy(float), apq[col].to_numpy(float)
    for _, b in base.dropna(subset=[col, "test_acc"]).iterrows():
        c = float(cheapest_at_least(acc[None], cost, np.array([b["test_acc"]]))[0])
        best = (apq[(cost == c) & (acc >= b["test_acc"] - 1e-9)].iloc[0]
                if np.isfinite(c) else None)
        rows.append({"method": b["method"], "model": b["model"], "constraint": b["constraint"],
                     "test_acc": b["test_acc"], col: b[col],
                     f"apq_{col}": None if best is None else c,
                     "apq_test_acc": None if best is None else float(best["test_acc"]),
                     "ratio": None if best is None else float(b[col] / c)})
    return pd.DataFrame(rows)


def best_under(rows: pd.DataFrame, col: str, limit: float) -> Optional[float]:
    """Best test top-1 among ``rows`` with ``col <= limit`` (None when none fits)."""
    d = rows[rows[col] <= limit * (1 + 1e-9)]
    return None if d.empty else float(d["test_acc"].max())


def matched_by_cost(rows: pd.DataFrame, col: str, cost: float, tol: float
                    ) -> Optional[pd.Series]:
    """The row whose ``col`` is nearest ``cost`` within a relative ``tol`` (None if none):
    a comparison at matched realised cost, not at a shared budget."""
    d = rows[(rows[col] - cost).abs() <= tol * cost]
    return None if d.empty else d.loc[(d[col] - cost).abs().idxmin()]
