"""Notebook 04's study around APQ's search (APQ §4): which models are realised (APQ at every
budget, random search at the sweep's budgets, the space's corners), realising them on the
one path with their finetune seeds, checking each against the hardware simulator, comparing
evolution with random search, and the summary notebooks 05 and 06 read.
"""
from __future__ import annotations

import json
from typing import Callable, Optional

import numpy as np
import pandas as pd

from .. import hardware as hw
from .. import stats
from ..quant.policy import layer_policy
from ..realize import realize_seeds, seed_id
from ..supernet.space import MBV2_NAME, SubnetConfig
from .containment import containment
from .sweep import COST_COLUMNS, COST_UNITS

__all__ = ["realize_jobs", "realize_all", "check_constraints",
           "evolution_vs_random", "containment_rows", "versus_best_corner",
           "predictor_agreement"]


def realize_jobs(runs: list, budget_from: dict, corners: dict, corner_costs: dict) -> list:
    """``(method, constraint, limit, found, costs, reruns)`` for every model to realise:
    APQ's winner at every budget (``reruns``: the other searches' ``(winner, costs)`` at that
    budget), random search's at the sweep's budgets (the evolution's control), and every
    corner (``found`` is then its name)."""
    jobs = [(method, r["constraint"], r["limit"], found, costs,
             r.get("reruns", []) if method == "APQ" else []) for r in runs
            for method, found, costs in (("APQ", r["evolution"], r["costs"]),
                                         ("Random search", r["random"], r["random_costs"]))
            if found is not None and (method == "APQ"
                                      or budget_from[(r["constraint"], r["limit"])] == "sweep")]
    return jobs + [("Corner", "", np.nan, name, corner_costs[name], []) for name in corners]


def realize_all(jobs: list, budget_from: dict, corners: dict, supernet, recipe, data,
                seed: int, size_kb: Callable, on_apq: Optional[Callable] = None, **kw):
    """Realise every job on the one path (:func:`~apq_lib.realize.realize_seeds`):
    the models at MobileNetV2's costs (APQ's and the corners, not random search's) with the
    recipe's ``seeds``, the others with one. At a budget searched several times, every
    search's winner is realised with those seeds, numbered on (search ``j``'s seed ``k`` is
    seed ``j * seeds + k`` of the budget's model id), so the model's ``[seeds, images]``
    array holds searches × finetune seeds. ``size_kb(config) -> kB``; ``on_apq(model,
    model_id)`` is called for each APQ model (search 0's; e.g. to store its weights).
    Returns ``(rows, apq_models, correct, seeds)``: the table, APQ's :class:`Realized`
    models, the per-image correctness per seed id, and per model id its
    ``[seeds, images]`` array."""
    rows, models, correct, seeds = [], [], {}, {}
    for method, kind, limit, found, costs, reruns in jobs:
        corner = method == "Corner"
        src = found if corner else budget_from[(kind, limit)]
        mid = f"Corner|{found}" if corner else f"{method}|{kind}|{limit:.6g}"
        n = recipe.seeds if src.startswith(MBV2_NAME) and method != "Random search" else 1
        ms = realize_seeds(supernet, corners[found] if corner else found.best_config, recipe,
                           data, mid, n, seed, costs=costs,
                           predicted_acc=np.nan if corner else found.best_score, **kw)
        for j, (other, other_costs) in enumerate(reruns, start=1):
            ms += realize_seeds(supernet, other.best_config, recipe, data, mid, n, seed,
                                first=j * n, costs=other_costs,
                                predicted_acc=other.best_score, **kw)
        m, accs = ms[0], [x.test_acc for x in ms]
        seeds[mid] = np.stack([x.correct for x in ms])
        correct.update({seed_id(mid, k): x.correct for k, x in enumerate(ms)})
        if method == "APQ":
            models.append(m)
            if on_apq is not None:
                on_apq(m, mid)
        rows.append({"model_id": mid, "method": method, "model": found if corner else "searched",
                     "constraint": kind, "limit": limit, "budget_from": src,
                     "unit": COST_UNITS.get(kind, ""), "predicted_acc": m.predicted_acc,
                     "test_acc": m.test_acc, "seeds": len(ms), "searches": 1 + len(reruns),
                     "search_configs_distinct": len({json.dumps(x.config, sort_keys=True)
                                                     for x in ms}),
                     "test_acc_seed_mean": float(np.mean(accs)),
                     "test_acc_seed_sd": float(np.std(accs, ddof=1)) if len(ms) > 1 else np.nan,
                     "latency_ms": costs["latency"], "energy_mj": costs["energy"],
                     "bitops_g": costs["bitops"], "size_kb": size_kb(m.config),
                     "search_seconds": np.nan if corner else found.seconds,
                     "finetune_seconds": sum(x.finetune_seconds for x in ms),
                     "finetune_steps": m.finetune_steps, "eval_seconds": m.eval_seconds,
                     "config": json.dumps(m.config)})
    return pd.DataFrame(rows), models, correct, seeds


def check_constraints(res: pd.DataFrame, models: list, space, sim, input_shape) -> int:
    """Every realised APQ model meets its constraint on the hardware simulator (latency,
    energy) or by counting its BitOps on the model itself, and the table's cost is the
    measured one. Returns the number of models checked; raises ``AssertionError`` else."""
    for row, m in zip(res.to_dict("records"), models):
        c = SubnetConfig.from_dict(m.config)
        measured = dict(hw.subnet_cost(space, c, sim.cost))
        measured["bitops"] = hw.count_bitops(m.model, input_shape, layer_policy(space, c),
                                             default_bits=(8, 8)) / 1e9
        got = measured[row["constraint"]]
        assert got <= row["limit"] * (1 + 1e-9), (row["constraint"], row["limit"], got)
        assert np.isclose(got, row[COST_COLUMNS[row["constraint"]]], rtol=1e-6)
    return len(models)


def evolution_vs_random(sw: pd.DataFrame, rnd: pd.DataFrame, correct: dict, seed: int):
    """APQ's evolution against random search at the sweep's budgets (same order): per budget
    a paired image bootstrap with Holm-corrected verdicts, and the mean over budgets.
    Returns ``(per_budget, mean_diff)``."""
    pairs = list(zip(sw["model_id"], rnd["model_id"]))
    per = pd.DataFrame([{"constraint": sw.loc[k, "constraint"], "limit": sw.loc[k, "limit"],
                         "apq_test_acc": sw.loc[k, "test_acc"],
                         "random_test_acc": rnd.loc[k, "test_acc"],
                         **stats.paired_difference(correct[a], correct[b], seed=seed)}
                        for k, (a, b) in enumerate(pairs)])
    if len(per):
        per["verdict"] = stats.holm_verdicts(per)
    mean = stats.mean_paired_difference(np.stack([correct[a] for a, _ in pairs]),
                                        np.stack([correct[b] for _, b in pairs]), seed=seed)
    return per, mean


def containment_rows(res: pd.DataFrame, corner_res: pd.DataFrame, seeds: dict,
                     seed: int) -> list:
    """The containment check (:func:`~apq_lib.search.containment.containment`): APQ at each
    MobileNetV2 cost against that network, same path and seeds."""
    base_ids = {r["budget_from"]: r["model_id"] for _, r in corner_res.iterrows()}
    return containment([{"baseline": r["budget_from"], "constraint": r["constraint"],
                         "budget": r["limit"], "apq_id": r["model_id"],
                         "apq_searches": int(r["searches"]),
                         "baseline_id": base_ids[r["budget_from"]]}
                        for _, r in res.iterrows() if r["budget_from"] in base_ids
                        and r["budget_from"].startswith(MBV2_NAME)], seeds, seed=seed)


def versus_best_corner(res: pd.DataFrame, corner_res: pd.DataFrame, seeds: dict,
                       seed: int) -> pd.DataFrame:
    """At every APQ budget, APQ against the best corner (smallest, MobileNetV2, largest at
    each uniform bit width) that the budget affords: the corner of highest mean test top-1
    among those whose cost is within the limit, so the choice favours the corner (a
    conservative test of the search). Difference APQ − corner with a (searches ×) seeds × images
    interval, Holm-corrected verdicts over all budgets; ``not comparable`` where no corner
    is affordable."""
    rows = []
    for _, r in res.iterrows():
        col = COST_COLUMNS[r["constraint"]]
        ok = corner_res[corner_res[col] <= r["limit"] * (1 + 1e-9)]
        row = {"constraint": r["constraint"], "limit": r["limit"],
               "budget_from": r["budget_from"], "apq_test_acc": r["test_acc_seed_mean"],
               "apq_seeds": int(r["seeds"]), "corner": None, "corner_test_acc": np.nan,
               "corner_cost": np.nan, "estimate": np.nan, "ci_low": np.nan,
               "ci_high": np.nan, "p_value": np.nan}
        if len(ok):
            best = ok.loc[ok["test_acc_seed_mean"].idxmax()]
            d = stats.hierarchical_difference(seeds[r["model_id"]], seeds[best["model_id"]],
                                              seed=seed, searches_a=int(r["searches"]))
            row.update(corner=best["budget_from"], corner_test_acc=best["test_acc_seed_mean"],
                       corner_cost=best[col], estimate=d["estimate"], ci_low=d["ci_low"],
                       ci_high=d["ci_high"], p_value=d["p_value"])
        rows.append(row)
    out = pd.DataFrame(rows)
    if len(out):
        out["verdict"] = stats.holm_verdicts(out)
    return out.rename(columns={"estimate": "apq_minus_corner"})


def predictor_agreement(res: pd.DataFrame, seed: int) -> dict:
    """The predictor against the realised models (raw predictions, no offset): mean bias
    with a bootstrap interval over models, Spearman(predicted, test) with its interval and,
    beside it, Spearman(cost, test) per cost."""
    bias = res["predicted_acc"] - res["test_acc"]
    idx = np.arange(len(res))
    rho = stats.bootstrap_groups(idx, lambda i: res["predicted_acc"].iloc[i].corr(
        res["test_acc"].iloc[i], "spearman"), seed=seed, null=0.0)
    bias_ci = stats.bootstrap_groups(idx, lambda i: bias.iloc[i].mean(), seed=seed, null=0.0)
    return {"offset_source": "none",
            "predicted_minus_test_raw": float(bias.mean()),
            "predicted_minus_test_mean": float(bias.mean()),
            "predicted_minus_test_mean_ci": [bias_ci["ci_low"], bias_ci["ci_high"]],
            "predicted_test_spearman": rho["estimate"],
            "predicted_test_spearman_ci": [rho["ci_low"], rho["ci_high"]],
            "cost_test_spearman": {c: float(res[col].corr(res["test_acc"], "spearman"))
                                   for c, col in COST_COLUMNS.items()}}
