"""APQ searched where the fixed-architecture baselines are (APQ §4.2, Tables 1 and 3).

The paper's fixed network, MobileNetV2, is a point of APQ's space (``space.mobilenetv2()``).
Notebook 04 therefore searches at each of its fixed-precision costs, realises the space's
corners (smallest, MobileNetV2, largest at every uniform bit width) through the same
:func:`apq_lib.realize.realize` path as APQ's own models, and checks containment:
at a baseline's cost, APQ must not lose to a network its space contains (lower CI bound of
APQ − baseline ≥ −``margin`` points), else the run reports a search or predictor failure.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from ..stats import hierarchical_difference, holm_verdicts

__all__ = ["corner_configs", "corner_costs", "with_baseline_budgets", "containment",
           "CONTAINMENT_MARGIN"]

CONTAINMENT_MARGIN = 0.3          # points: "APQ at the baseline's cost does not lose to it"


def _ceil_sig(x: float, sig: int) -> float:
    """``x`` rounded up to ``sig`` significant digits (a budget the baseline itself meets)."""
    if x <= 0 or not math.isfinite(x):
        return float(x)
    digits = sig - 1 - int(math.floor(math.log10(x)))
    up = math.ceil(round(x * 10 ** digits, 6)) / 10 ** digits
    return float(round(up, digits))


def corner_configs(space, bits: Optional[Sequence[int]] = None) -> dict:
    """``{"<corner> W<b>A<b>": SubnetConfig}`` for the smallest, MobileNetV2 and largest
    corners at every uniform bit width of the space (or ``bits``)."""
    bits = sorted(set(bits or space.bit_choices) - {32})
    return {f"{name} W{b}A{b}": cfg for b in bits for name, cfg in space.corners(b).items()}


def corner_costs(space, cost_fns: Mapping[str, Callable], configs: Mapping) -> dict:
    """``{corner: {cost name: value}}`` from the same cost functions the search uses."""
    idx = space.to_index_array(list(configs.values()))
    cols = {k: np.asarray(fn(idx), dtype=float) for k, fn in cost_fns.items()}
    return {name: {k: float(v[i]) for k, v in cols.items()} for i, name in enumerate(configs)}


def with_baseline_budgets(targets: Mapping[str, list], costs: Mapping[str, dict],
                          names: Sequence[str], kinds: Optional[Sequence[str]] = None
                          ) -> tuple[dict, dict]:
    """The sweep's budgets plus, for the costs in ``kinds`` (default all), the cost of every
    corner in ``names`` (e.g. MobileNetV2 at each bit width, the largest corner at W8A8).
    Returns ``(targets, sources)`` with
    ``sources[(cost, limit)]`` naming the baseline a budget comes from ("sweep" else). A
    budget is the baseline's cost rounded *up* to 4 significant digits, so the baseline
    itself is affordable."""
    out, src = {}, {}
    for c, lims in targets.items():
        vals = {float(v): "sweep" for v in lims}
        for n in (names if kinds is None or c in kinds else ()):
            v = costs[n][c]
            vals[_ceil_sig(v, 4)] = n
        out[c] = sorted(vals)
        src.update({(c, v): s for v, s in vals.items()})
    return out, src


def containment(pairs: Sequence[dict], correct: Mapping[str, np.ndarray],
                margin: float = CONTAINMENT_MARGIN, seed: int = 0) -> list[dict]:
    """One entry per (baseline, budget): ``pairs`` items ``{"baseline", "constraint",
    "budget", "apq_id", "baseline_id"}`` and optionally ``"apq_searches"`` (APQ's rows are
    that many searches' winners × their seeds); ``correct[id]`` is ``[seeds, n_images]``.
    The difference APQ − baseline with a (searches ×) seeds × images bootstrap interval,
    ``ok`` when its lower bound is ≥ −``margin``, and Holm-corrected verdicts over all
    entries."""
    out = []
    for p in pairs:
        d = hierarchical_difference(correct[p["apq_id"]], correct[p["baseline_id"]],
                                    seed=seed, searches_a=p.get("apq_searches", 1))
        out.append({"baseline": p["baseline"], "constraint": p["constraint"],
                    "budget": float(p["budget"]), "apq_minus_baseline": d["estimate"],
                    "ci_low": d["ci_low"], "ci_high": d["ci_high"], "p_value": d["p_value"],
                    "seeds": int(np.atleast_2d(correct[p["apq_id"]]).shape[0]),
                    "ok": bool(np.isfinite(d["ci_low"]) and d["ci_low"] >= -margin)})
    for e, v in zip(out, holm_verdicts(out, estimate="apq_minus_baseline")):
        e["verdict"] = v
    return out
