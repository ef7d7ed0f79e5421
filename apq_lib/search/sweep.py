"""Constraint sweeps for notebook 04 (APQ §4, Table 2 / Fig. 5: accuracy under a range of
latency, energy and BitOps budgets): targets from the profile or derived from the costs of
random samples, one evolution (and its random-search baseline) per target.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Optional

import numpy as np
import pandas as pd

from ..artifacts import MissingInputError
from ..config import SearchConfig, key_dict
from ..hardware.lut import SpaceCostTable
from ..predictor import pipeline as pp
from ..progress import tqdm
from ..results import read_summary
from ..runtime import stream_rng, stream_seed
from ..supernet import train as sn
from ..supernet.space import SearchSpace
from .evolution import EvolutionFinder
from .genome import IndexOps, SearchResult
from .random_search import RandomSearch

__all__ = ["COST_UNITS", "COST_COLUMNS", "PROFILE_TARGETS", "sweep_targets", "run_sweep",
           "history_table", "round_sig", "load_search_inputs", "search_seed"]

COST_UNITS = {"latency": "ms", "energy": "mJ", "bitops": "G", "size": "kB"}
# the results tables' column of each cost (one map for notebooks 04-06)
COST_COLUMNS = {"latency": "latency_ms", "energy": "energy_mj", "bitops": "bitops_g"}
PROFILE_TARGETS = {"latency": "latency_targets_ms", "energy": "energy_targets_mj",
                   "bitops": "bitops_targets_g"}


def _missing(what: str, notebook: str, why: str = ""):
    return MissingInputError(f"{what} is missing{': ' + why if why else ''}: run notebook "
                             f"{notebook} first with this profile (make reproduce runs them "
                             f"in order)")


def load_search_inputs(ctx, target: str = "bitfusion", device=None) -> dict:
    """Notebook 04's inputs, loaded (never rebuilt): the trained supernet (notebook 01), the
    ``target`` lookup table (notebook 02) and the quantization-aware predictor (notebook 03).
    A missing one raises :class:`~apq_lib.artifacts.MissingInputError` naming the notebook.

    Returns ``{"supernet", "supernet_key", "table", "lut_artifact", "predictor",
    "predictor_artifact", "summaries"}`` (``summaries``: the typed summaries of 01-03)."""

    cfg, store = ctx.cfg, ctx.store
    sums = {nb[:2]: read_summary(ctx.results, nb)
            for nb in ("01_supernet", "02_hardware", "03_predictor")}
    space = SearchSpace(cfg.space)
    # 01 · supernet: load the artifact only (get_trained_supernet would train a missing one)
    net, skey, art = sn.require_supernet(cfg, store, device)
    # 02 · lookup table of this space on `target`
    entry = sums["02"].get("lut", {}).get(target)
    if entry is None:
        raise _missing(f"the {target} lookup table", "02_hardware",
                       "results/data/02_summary.json has no entry for it")
    stage, key = entry["artifact"].split("/")
    lut_art = store.get(stage, key)
    if lut_art is None or lut_art.meta["config"].get("space") != key_dict(cfg.space):
        raise _missing(f"artifacts/{stage}/{key} for this profile's space", "02_hardware")
    table = SpaceCostTable.load(lut_art.file("cost.npz"), space)
    # 03 · predictor (quantization-aware, by transfer)
    stage, key = sums["03"]["predictor_artifact"].split("/")[-2:]
    pred_art = store.get(stage, key)
    if pred_art is None:
        raise _missing(f"artifacts/{stage}/{key} (the trained predictor)", "03_predictor")
    model = pp.load_predictor(pred_art, "quant_transfer")
    return {"supernet": net, "supernet_key": skey, "table": table, "lut_artifact": lut_art,
            "predictor": model, "predictor_artifact": pred_art, "summaries": sums}


def round_sig(x: float, sig: int = 3) -> float:
    if x == 0 or not math.isfinite(x):
        return float(x)
    return float(round(x, sig - 1 - int(math.floor(math.log10(abs(x))))))


def sweep_targets(scfg: SearchConfig, space, cost_fns: Mapping[str, Callable],
                  n_samples: int = 5000, seed: int = 0) -> tuple[dict, pd.DataFrame]:
    """``{cost name: [limits]}`` for latency / energy / BitOps.

    The profile's ``search.<cost>_targets`` are used as given. An empty list is derived:
    ``search.sweep_quantiles`` of the cost of ``n_samples`` uniform random configurations
    of the space (when empty, ``search.sweep_points`` quantiles ``(i + 0.5) / n``; 4 points:
    12.5 / 37.5 / 62.5 / 87.5 %), rounded to 3 significant digits — tight budgets at the
    low end, nearly the largest models at the high end. Also returns the random-sample
    costs (for plotting)."""
    rng = stream_rng(seed, "search", "sweep sample")
    idx = IndexOps(space).sample(rng, n_samples)
    sample = pd.DataFrame({k: np.asarray(fn(idx), dtype=float) for k, fn in cost_fns.items()})
    out = {}
    for name, attr in PROFILE_TARGETS.items():
        if name not in cost_fns:
            continue
        given = list(getattr(scfg, attr))
        if given:
            out[name] = [float(t) for t in given]
        else:
            q = np.asarray(scfg.sweep_quantiles, float) if scfg.sweep_quantiles else \
                (np.arange(scfg.sweep_points) + 0.5) / scfg.sweep_points
            out[name] = [round_sig(v) for v in np.quantile(sample[name], q)]
    return out, sample


def search_seed(seed: int, k: int) -> int:
    """The evolution seed of search ``k`` at a budget (search 0 uses ``seed`` itself)."""
    return seed if k == 0 else stream_seed(seed, "search", "rerun", k)


def run_sweep(space, score_fn, cost_fns: Mapping[str, Callable], targets: Mapping[str, list],
              scfg: SearchConfig, seed: int = 0, random_baseline: Optional[bool] = None,
              progress: bool = True, rerun: Optional[Callable] = None) -> list[dict]:
    """One single-constraint evolution per (cost, limit), plus random search at the same
    budget. Returns ``[{"constraint", "limit", "evolution": SearchResult,
    "random": SearchResult | None, "costs", "random_costs", "reruns"}]``; ``costs`` holds
    every cost of the best configuration found (not only the constrained one). Budgets for
    which ``rerun(cost, limit)`` is true are searched ``scfg.seeds`` times (evolution seeds
    :func:`search_seed`): ``reruns`` holds searches 1.. as ``(SearchResult, costs)``."""
    random_baseline = scfg.random_baseline if random_baseline is None else random_baseline
    jobs = [(c, lim) for c, lims in targets.items() for lim in lims]
    out = []
    for c, lim in tqdm(jobs, desc="searches", disable=not progress):
        finder = EvolutionFinder(space, score_fn, {c: (cost_fns[c], lim)}, scfg, seed=seed)
        evo = finder.run()
        rnd = RandomSearch.like(finder).run() if random_baseline else None
        more = range(1, scfg.seeds) if rerun is not None and rerun(c, lim) else ()
        reruns = [finder.run(seed=search_seed(seed, k)) for k in more]
        out.append({"constraint": c, "limit": float(lim), "evolution": evo, "random": rnd,
                    "costs": _all_costs(cost_fns, evo),
                    "random_costs": _all_costs(cost_fns, rnd) if rnd else None,
                    "reruns": [(r, _all_costs(cost_fns, r)) for r in reruns]})
    return out


def _all_costs(cost_fns, res: SearchResult) -> dict:
    best = res.best_index[None]
    return {k: float(np.asarray(fn(best))[0]) for k, fn in cost_fns.items()}


def history_table(results: list[dict]) -> pd.DataFrame:
    """Long table of every run's per-generation best: constraint, limit, budget (rank of
    the limit among its constraint's, ``1/n`` = tightest), method, generation, n_scored,
    best_score."""
    frames = []
    for r in results:
        lims = sorted(x["limit"] for x in results if x["constraint"] == r["constraint"])
        budget = f"{lims.index(r['limit']) + 1}/{len(lims)}"
        for m in ("evolution", "random"):
            res: Optional[SearchResult] = r[m]
            if res is None:
                continue
            h = res.history_frame()[["generation", "n_scored", "best_score"]]
            frames.append(h.assign(constraint=r["constraint"], limit=r["limit"],
                                   budget=budget, method=m))
    return pd.concat(frames, ignore_index=True)
