"""Notebook 05's study around :class:`~apq_lib.baselines.suite.BaselineSuite`: which budgets
each baseline is run at (and which it cannot reach), FBNet's rows, APQ's rows from notebook
04 in the suite's row schema, the comparisons at APQ's budgets and the summary notebook 06
reads. The algorithms live in their modules (``haq``, ``hawq``, ``fbnet``, ``multistage``);
this module only wires them to the suite.
"""
from __future__ import annotations

import copy
import dataclasses
import time
from typing import Optional, Sequence

import numpy as np
import pandas as pd
from torch import nn

from ..hardware import get_simulator
from ..pruning import accuracy, gradual_magnitude_prune, sparse_size_bits, sparsity
from ..quant.policy import layer_policy, to_float
from ..search.sweep import COST_COLUMNS
from ..stats import paired_difference
from ..supernet.metrics import recalibrate_bn
from .cost import MULTISTAGE_NAS, apq_cost_from_results, stages_from_results
from .fbnet import FBNET_METHODS, FBNetSearch, search_batches
from .matching import pick_targets
from .suite import (
    LARGEST,
    MBV2,
    MBV2_STANDALONE,
    ROW_COLUMNS,
    BaselineSuite,
    best_under,
    cost_at_equal_accuracy,
    matched_by_cost,
)

__all__ = ["COST_COLUMNS", "budget_jobs", "corner_qat", "run_fbnet", "fbnet_vs_apq",
           "hawq_trace_se", "haq_reward_trend", "apq_rows", "best_under_budgets",
           "front_points", "search_costs", "check_baseline_summary", "fixed_network",
           "standalone_reference",
           "multistage_table", "equal_accuracy", "cost_table", "apq_budgets",
           "pruning_sweep"]


def budget_jobs(costs: Sequence[str], targets: dict, relative: dict, fractions: Sequence[float],
                floor: dict) -> tuple[list, list]:
    """The ``(cost, target, target_from)`` runs of a bit search (HAQ, HAWQ-V2) on the fixed
    network: APQ's budgets (notebook 04) and the fractions of its W8A8 cost; a target below
    the network's cost floor (every searched layer at the lowest bits) is skipped, not run.
    Returns ``(jobs, skipped)``."""
    jobs = [(c, t, "APQ budget (04)") for c in costs for t in targets[c] if t >= floor[c]]
    jobs += [(c, t, f"{f:g} × {MBV2} W8A8") for c in costs
             for f, t in zip(fractions, relative[c]) if t >= floor[c]]
    skipped = [{"cost": c, "target": t, "floor": floor[c]} for c in costs
               for t in list(targets[c]) + list(relative[c]) if t < floor[c]]
    return jobs, skipped


def corner_qat(found: pd.DataFrame, network: str) -> dict:
    """``{bits: (model id, top-1, seeds)}`` of ``network``'s uniform-precision corners realised in
    notebook 04 (``Corner`` rows of 04_search.csv): the fixed-precision QAT baselines, on
    the same path and seeds as APQ's models."""
    d = found[found["method"] == "Corner"]
    out = {}
    for _, r in d.iterrows():
        name, _, tag = str(r["model"]).rpartition(" W")
        if name == network:
            out[int(tag.split("A")[0])] = (r["model_id"], float(r["test_acc"]), int(r["seeds"]))
    return out


def run_fbnet(suite: BaselineSuite, targets: Sequence[float], target_from: str = "") -> list:
    """FBNet rows of notebook 05: one shared warm-up, then per variant and latency target
    (ms) a joint search, the argmax model and its finetuned test accuracy (variant (a)
    through :meth:`BaselineSuite.haq` with FBNet's episode counts, variant (b) at its
    searched bits)."""
    c, s, meter = suite.s.fbnet, suite.s, suite.meter
    fb = FBNetSearch(suite.space, c, get_simulator(
        "bitfusion", bitfusion=suite.cfg.hardware.bitfusion_options()), suite.device,
        suite.cfg.seed)
    w_it, t_it, w_steps, t_steps = search_batches(suite.data, c.train_images,
                                                  c.val_fraction, c.batch_size, suite.cfg.seed)
    base = fb.new_supernet()
    with meter.stage(FBNET_METHODS[c.variants[0]][0], "FBNet warm-up (weights only)",
                     "shared") as t0:
        fb.warmup(base, w_it, w_steps)
    base.clear_masks()
    for v in c.variants[1:]:                         # the same warm-up serves both variants
        meter.add(FBNET_METHODS[v][0], "FBNet warm-up (weights only)", t0["wall_s"], "shared",
                  cpu_s=t0["cpu_s"], source="measured (shared with "
                                            f"{FBNET_METHODS[c.variants[0]][0]})")
    haq_settings = dataclasses.replace(
        s, haq_episodes=c.haq_episodes or s.haq_episodes,
        haq_warmup=s.haq_warmup if c.haq_warmup is None else c.haq_warmup)
    rows = []
    for v in c.variants:
        method, variant = FBNET_METHODS[v]
        for tgt in targets:
            label = f"latency<={tgt:.4g}"
            with meter.stage(method, "joint search (weights + θ)", search=label) as t:
                res = fb.search(copy.deepcopy(base), float(tgt), v == "bits", w_it, t_it,
                                w_steps, t_steps)
            with meter.stage(method, "train the searched architecture", search=label) as tr:
                losses = fb.retrain(res.model, suite.train_batches(f"{method} {label} retrain"))
            name = f"FBNet arch ({label})"
            if v == "haq":
                row = suite.haq(res.model, "latency", tgt, key=f"{method} {label}",
                                method=method, model_name=name, target_from=target_from,
                                settings=haq_settings, seeds=1)
                row["variant"] = variant
                row["search_s"] += t["wall_s"] + tr["wall_s"]
            else:
                table = suite.table(res.model, f"{method} {label}")
                pol = layer_policy(suite.space, res.config, table.names)
                ev = suite.evaluator(res.model, table, suite.recipe.steps,
                                     suite.batches["final"])
                r = ev.realized(pol)
                row = suite.add_row(method, variant, name, "latency", tgt, r.test_acc,
                                    table.summary(table.bits_of(pol)),
                                    search_s=t["wall_s"] + tr["wall_s"], policy=pol,
                                    target_from=target_from, correct=r.correct)
            row.update(arch=res.config.to_dict(), expected_latency_ms=res.expected_latency_ms,
                       argmax_latency_ms=res.argmax_latency_ms, history=res.history,
                       retrain_loss=(float(np.mean(losses[-max(1, len(losses) // 10):]))
                                     if losses else None))
            rows.append(row)
    return rows


def fbnet_vs_apq(fb_rows: list, apq: pd.DataFrame, correct: dict, apq_correct: dict,
                 tol: float = 0.10, seed: int = 0) -> pd.DataFrame:
    """Each FBNet model against APQ's model of the nearest realised latency within ``tol``
    (relative), else no comparison (``not comparable``): APQ − FBNet with a paired image
    bootstrap interval (the verdict names APQ, as in every table)."""
    out = []
    for r in fb_rows:
        a = matched_by_cost(apq, "latency_ms", r["latency_ms"], tol)
        d = (paired_difference(apq_correct[a["model_id"]], correct[r["row_id"]], seed=seed)
             if a is not None else None)
        out.append({
            "method": r["method"], "constraint": r["constraint"], "met": r["met"],
            "test_acc": r["test_acc"], "latency_ms": r["latency_ms"],
            "APQ test_acc": None if a is None else float(a["test_acc"]),
            "APQ latency_ms": None if a is None else float(a["latency_ms"]),
            "APQ - FBNet": None if d is None else d["estimate"],
            **{k: None if d is None else d[k] for k in ("ci_low", "ci_high")},
            "verdict": "not comparable" if d is None else d["verdict"],
            "E[LAT] end": r["expected_latency_ms"], "argmax LAT": r["argmax_latency_ms"],
            "retrain loss": r["retrain_loss"], "depths": r["arch"]["depths"],
            "search_s": r["search_s"]})
    return pd.DataFrame(out)


def hawq_trace_se(rows: list, probes: int) -> dict:
    """Hutchinson's standard error per layer relative to |trace|, over all layers and over
    the layers the allocations put below 8 bits (those that decide the policy)."""
    if not rows:
        return {"probes": probes, "decisive_layers": 0}
    traces = pd.Series(rows[0]["traces"])
    rel = pd.Series(rows[0]["trace_se"]) / traces.abs()
    dec = sorted({n for r in rows for n in r["decisive_layers"]})
    return {"probes": probes, "median_rel_se_all": float(rel.median()),
            "median_rel_se_decisive": float(rel[dec].median()) if dec else None,
            "max_rel_se_decisive": float(rel[dec].max()) if dec else None,
            "decisive_layers": len(dec),
            "decisive_below_20pct": int((rel[dec] < 0.2).sum()) if dec else 0}


def haq_reward_trend(rows: list, reward_images: int) -> dict:
    """Per HAQ search, whether its reward curve has flattened: the least-squares slope of the
    reward-time accuracy over the last third of its episodes (points per episode), the drift
    it implies across that window, and the standard error of one reward (binomial, at the
    window's mean accuracy on ``reward_images`` images). ``flat``: |drift| ≤ that error,
    i.e. the last third of the search moves the reward by less than one reward's noise."""
    out = {}
    for r in rows:
        acc = pd.DataFrame(r["history"])["accuracy"].to_numpy(float)
        if len(acc) < 3:
            continue
        k = max(3, len(acc) // 3)
        slope = float(np.polyfit(np.arange(len(acc))[-k:], acc[-k:], 1)[0])
        p = float(np.clip(acc[-k:].mean() / 100, 0, 1))
        se, drift = 100 * float(np.sqrt(p * (1 - p) / reward_images)), slope * (k - 1)
        out[r["constraint"]] = {"episodes": len(acc), "window": k, "slope": slope,
                                "drift": drift, "reward_se": se, "flat": abs(drift) <= se}
    return out


def apq_rows(found: pd.DataFrame) -> pd.DataFrame:
    """Notebook 04's APQ and random-search models in the suite's row schema (their
    per-image correctness stays in results/data/04_correct.npz under ``row_id``)."""
    return pd.DataFrame({
        "method": found["method"],
        "variant": np.where(found["method"] == "APQ", "evolution + predictor",
                            "random search + predictor"), "model": "searched",
        "constraint": [f"{c} <= {lim:.4g} {u}" for c, lim, u in
                       zip(found["constraint"], found["limit"], found["unit"])],
        "target": found["limit"], "target_from": "APQ budget (04)", "met": True,
        "test_acc": found["test_acc"], "seeds": found["seeds"],
        "latency_ms": found["latency_ms"], "energy_mj": found["energy_mj"],
        "bitops_g": found["bitops_g"], "size_kb": found["size_kb"],
        "search_s": found["search_seconds"], "policy": found["config"],
        "row_id": found["model_id"]}, columns=ROW_COLUMNS)


def front_points(res: pd.DataFrame) -> pd.DataFrame:
    """The rows drawn on the fronts: no PTQ, no budget a method missed (its fallback), the
    fixed-precision runs of APQ's architectures named as such, and those of the reference
    networks (the largest corner, MobileNetV2 trained standalone) as one series each, so
    ``Fixed W{b}A{b}`` is the fixed network (MobileNetV2 inherited) alone."""
    pts = res[(res["variant"] != "PTQ") & (res["met"].isna() | res["met"].astype(bool))].copy()
    model = pts["model"].astype(str)
    ref = pts["method"].astype(str).str.startswith("Fixed") & model.isin([LARGEST, MBV2_STANDALONE])
    pts["method"] = np.where(model.str.startswith("APQ arch"), pts["method"] + " (APQ arch)",
                             np.where(ref, model + " (fixed bits)", pts["method"]))
    return pts


def best_under_budgets(apq: pd.DataFrame, pts: pd.DataFrame, methods: Sequence[str]
                       ) -> pd.DataFrame:
    """At each of APQ's budgets, the best test top-1 of each method's models within it."""
    rows = []
    for _, r in apq.iterrows():
        row = {"constraint": r["constraint"], "limit": float(r["limit"]),
               "APQ": float(r["test_acc"])}
        for m in methods:
            row[m] = best_under(pts[pts["method"] == m], COST_COLUMNS[r["constraint"]],
                                r["limit"])
        rows.append(row)
    return pd.DataFrame(rows)


def search_costs(cost: pd.DataFrame, amortize: int) -> dict:
    """The cost meter's table (:meth:`CostMeter.table`) as the summary's ``search_cost`` and
    ``per_search_cost_vs_apq`` (each method's per-search seconds over APQ's)."""
    d = cost.set_index("method")
    cols = ["shared_s", "per_search_s", "first_search_s", f"amortised_s_N{amortize}"]
    per = d["per_search_s"]
    return {"search_cost": {m: {k: (None if pd.isna(v) else float(v))
                                for k, v in d.loc[m, cols].items()} for m in d.index},
            "per_search_cost_vs_apq": {m: float(per[m] / per["APQ"]) for m in per.index
                                       if m != "APQ" and per.get("APQ", 0) > 0
                                       and per[m] > 0}}


def check_baseline_summary(summary: dict, res: pd.DataFrame, sweep: pd.DataFrame, s) -> None:
    """Notebook 05's own checks: the summary's key fields, every configured method present,
    accuracies in range, the pruning sweep at its target sparsities."""
    for key in ("rows", "search_cost", "best_acc_under_apq_budgets", "pruning_sweep"):
        assert key in summary and summary[key], key
    need = {"APQ", *[f"Fixed W{b}A{b}" for b in s.fixed_bits]}
    need |= ({"HAQ"} if s.haq_costs else set()) | ({"HAWQ-V2"} if s.hawq_costs else set())
    need |= {"Multi-stage"} if s.multistage_costs else set()
    assert need <= set(res["method"]), need - set(res["method"])
    assert res["test_acc"].between(0, 100).all()
    assert (sweep["scope"] == "dense").sum() == 1
    pruned = sweep[sweep["scope"] != "dense"]
    assert np.allclose(pruned["sparsity"], pruned["target_sparsity"], atol=0.01)


def standalone_reference(suite: BaselineSuite, force: bool = False) -> Optional[dict]:
    """With ``baselines.standalone_reference``: MobileNetV2 trained standalone
    (:meth:`BaselineSuite.standalone_model`, the paper's protocol) at every fixed bit width,
    PTQ and QAT with the recipe's finetune seeds, as :data:`MBV2_STANDALONE` rows. Returns
    what the summary reports of it (None when not asked for)."""
    if not suite.s.standalone_reference:
        return None
    model, info = suite.standalone_model(force)
    rows = suite.fixed_precision(model, MBV2_STANDALONE, MBV2_STANDALONE, seeds=True)
    return {"epochs": suite.scratch_epochs(),
            **{k: info[k] for k in ("seconds", "steps", "val_acc", "source")},
            "fp32_test_acc": accuracy(model, suite.batches["final"], suite.device),
            "qat_test_acc_seed0": {r["method"]: r["test_acc"] for r in rows
                                   if r["variant"] == "QAT"}}


def fixed_network(suite: BaselineSuite, supernet, fractions: Sequence[float],
                  force: bool = False):
    """The fixed network (:data:`MBV2`, :meth:`BaselineSuite.scratch_model`) and what the
    runs on it need: its FP32 test top-1, its W8A8 costs, the targets at ``fractions`` of
    them and its cost floors. Returns ``(model, info)``."""
    mbv2 = suite.scratch_model(force=force, supernet=supernet)
    table = suite.table(mbv2, MBV2)
    w8 = table.summary(table.bits_of({n: (8, 8) for n in table.names}))
    info = {"fp32_test_acc": accuracy(mbv2, suite.batches["final"], suite.device),
            "parameters": sum(p.numel() for p in mbv2.parameters()),
            "layers": len(table.names), "w8a8": w8,
            "relative": {c: [round(f * w8[col], 6) for f in fractions]
                         for c, col in COST_COLUMNS.items()},
            "floor": {c: suite.floor(mbv2, MBV2, c) for c in COST_COLUMNS}}
    return mbv2, info


def multistage_table(rows: list) -> pd.DataFrame:
    """The multi-stage runs: top-1, costs, middle channels before / after pruning and the
    seconds of each stage."""
    return pd.DataFrame([{"constraint": r["constraint"], "met": r["met"],
                          "test_acc": r["test_acc"], "seeds": r["seeds"],
                          "latency_ms": r["latency_ms"], "energy_mj": r["energy_mj"],
                          "mid channels before": sum(r["widths_before"]),
                          "after": sum(r["widths_after"]), **r["stage_seconds"]}
                         for r in rows])


def equal_accuracy(pts: pd.DataFrame) -> dict:
    """The paper's reading per cost (latency, energy): for every HAQ / HAWQ-V2 /
    multi-stage / fixed-MobileNetV2 point, the cheapest APQ model at least as accurate
    (:func:`~apq_lib.baselines.suite.cost_at_equal_accuracy`)."""
    others = pts[pts["method"].isin(["HAQ", "Multi-stage", "HAWQ-V2"])
                 | ((pts["model"] == MBV2) & pts["method"].str.startswith("Fixed"))]
    return {c: cost_at_equal_accuracy(pts[pts["method"] == "APQ"], others, c)
            for c in ("latency_ms", "energy_mj")}


def cost_table(suite: BaselineSuite, results, amortize: int) -> pd.DataFrame:
    """The search-cost table of every method: the suite's measured stages plus APQ's and
    the multi-stage NAS stages read from notebooks 01–04's results."""
    apq_cost_from_results(suite.meter, results)
    stages_from_results(suite.meter, results, "Multi-stage", MULTISTAGE_NAS)
    return suite.meter.table(amortize)


def apq_budgets(apq: pd.DataFrame, cost: str, n: int) -> list:
    """Up to ``n`` of notebook 04's budgets for ``cost`` to run the baselines at: those set by
    MobileNetV2's costs (APQ's models there have the finetune recipe's seeds, so every
    comparison at them has seeds on both sides), else any of APQ's budgets."""
    d = apq[apq["constraint"] == cost]
    mb = d[d["budget_from"].astype(str).str.startswith(MBV2)] if "budget_from" in d else d
    return pick_targets((mb if len(mb) else d)["limit"], n)


def pruning_sweep(suite: BaselineSuite, model: nn.Module) -> pd.DataFrame:
    """Unstructured magnitude pruning of the FP32 model to each ratio (global and
    layer-wise scope), gradual Zhu & Gupta schedule during ``prune_steps`` finetune
    steps; test accuracy, measured sparsity and the sparse size."""
    s, rows = suite.s, []
    dense = to_float(model)
    rows.append({"scope": "dense", "target_sparsity": 0.0, "sparsity": 0.0,
                 "max_layer_sparsity": 0.0, "layers_fully_pruned": 0,
                 "test_acc": accuracy(dense, suite.batches["final"], suite.device),
                 "nonzero_params": sum(int((m.weight != 0).sum()) for m in dense.modules()
                                       if isinstance(m, (nn.Conv2d, nn.Linear))),
                 "size_kb_fp32": sparse_size_bits(dense, 32) / 8e3,
                 "size_kb_8bit": sparse_size_bits(dense, 8) / 8e3, "seconds": 0.0})
    for scope in s.prune_scopes:
        for r in s.prune_ratios:
            m = to_float(model).to(suite.device)
            t0 = time.perf_counter()
            out = gradual_magnitude_prune(m, suite.train_batches(f"{scope}|{r}", "prune"),
                                          s.prune_steps, r,
                                          scope, lr=s.prune_lr,
                                          device=suite.device)
            recalibrate_bn(m, suite.batches["recal"], suite.device)
            per_layer = sparsity(m)["layers"]
            rows.append({"scope": scope, "target_sparsity": r,
                         "sparsity": out["sparsity"],
                         "max_layer_sparsity": max(per_layer.values()),
                         "layers_fully_pruned": sum(v >= 1.0 for v in per_layer.values()),
                         "test_acc": accuracy(m, suite.batches["final"], suite.device),
                         "nonzero_params": sum(int((mm.weight != 0).sum())
                                               for mm in m.modules()
                                               if isinstance(mm, (nn.Conv2d, nn.Linear))),
                         "size_kb_fp32": sparse_size_bits(m, 32) / 8e3,
                         "size_kb_8bit": sparse_size_bits(m, 8) / 8e3,
                         "seconds": time.perf_counter() - t0})
    return pd.DataFrame(rows)
