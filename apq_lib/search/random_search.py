"""Random search under the same constraints and budget as the evolution (a sanity baseline
for APQ §3.4): uniform feasible ⟨arch, policy⟩ samples, best predicted accuracy wins.
"""
from __future__ import annotations

import time
from typing import Mapping, Optional, Sequence, Union

import numpy as np

from ..runtime import stream_rng
from .evolution import EvolutionFinder, _Sampler, score_batch
from .genome import IndexOps, ScoreFn, SearchResult, normalize_constraints

__all__ = ["RandomSearch", "random_search"]


class RandomSearch:
    """Score ``budget`` feasible random candidates (in generations of ``batch`` so the
    history lines up with the evolution's); same result and history format as
    :class:`~apq_lib.search.evolution.EvolutionFinder`."""

    def __init__(self, space, score_fn: ScoreFn, constraints: Union[None, Mapping, Sequence] = None,
                 budget: int = 50_100, batch: int = 100, first: Optional[int] = None,
                 seed: int = 0, max_tries: int = 20, max_batch: int = 8192,
                 chunk: int = 10_000):
        self.space, self.score_fn = space, score_fn
        self.constraints = normalize_constraints(constraints)
        self.budget, self.batch = int(budget), int(batch)
        self.first = int(first if first is not None else batch)
        self.seed, self.max_tries, self.max_batch, self.chunk = seed, max_tries, max_batch, chunk
        self.ops = IndexOps(space)

    @classmethod
    def like(cls, finder: EvolutionFinder, seed: Optional[int] = None) -> "RandomSearch":
        """Same space, score, constraints and number of scored candidates as ``finder``."""
        return cls(finder.space, finder.score_fn, finder.constraints, budget=finder.budget,
                   batch=finder.mutants + finder.crossovers, first=finder.population,
                   seed=finder.seed if seed is None else seed, max_tries=finder.max_tries,
                   max_batch=finder.max_batch)

    def run(self) -> SearchResult:
        rng = stream_rng(self.seed, "search", "random")
        t0 = time.perf_counter()
        smp = _Sampler(self.ops, self.constraints, self.max_batch)
        f_idx, f_cost, _ = smp.initial(rng, self.first, self.max_tries, 0.1)
        idx, costs = [f_idx], [f_cost]
        left = self.budget - f_idx.shape[0]
        while left > 0:                                     # big chunks: fast scoring
            n = min(self.chunk, left)
            got, c = smp.draw(lambda m: self.ops.sample(rng, m), n, self.max_tries, "random")
            idx.append(got)
            costs.append(c)
            left -= got.shape[0]
            if got.shape[0] < n:            # rejection gave up (tiny feasible region)
                break
        idx = np.concatenate(idx)
        costs = {k: np.concatenate([c[k] for c in costs]) for k in costs[0]}
        scores = np.concatenate([score_batch(self.score_fn, idx[i:i + self.chunk])
                                 for i in range(0, idx.shape[0], self.chunk)])
        # history: generation g has seen the first `first + g * batch` candidates
        ends = np.minimum(np.arange(self.first, idx.shape[0] + self.batch, self.batch),
                          idx.shape[0])
        ends = np.unique(ends)
        run_best = np.maximum.accumulate(scores)
        arg_best = _running_argmax(scores)
        history = []
        for g, e in enumerate(ends):
            b = int(arg_best[e - 1])
            row = {"generation": g, "n_scored": int(e), "best_score": float(run_best[e - 1]),
                   "mean_score": float(scores[max(0, e - self.batch):e].mean()), "fallback": 0}
            row.update({f"cost_{k}": float(v[b]) for k, v in costs.items()})
            history.append(row)
        b = int(arg_best[-1])
        top = np.argsort(-scores, kind="stable")[:25]
        return SearchResult(
            method="random", best_index=idx[b].copy(), best_score=float(scores[b]),
            best_costs={k: float(v[b]) for k, v in costs.items()},
            best_config=self.space.from_index_array(idx[b:b + 1])[0].to_dict(),
            limits={c.name: c.limit for c in self.constraints}, history=history,
            n_scored=int(idx.shape[0]), n_cost_evals=smp.n_cost_evals,
            seconds=time.perf_counter() - t0, seed=self.seed,
            settings={"budget": self.budget, "batch": self.batch, "first": self.first},
            population=idx[top].copy(), population_scores=scores[top].copy())


def _running_argmax(x: np.ndarray) -> np.ndarray:
    """Index of the (first) running maximum at every position."""
    best = np.maximum.accumulate(x)
    is_new = np.empty(x.shape[0], dtype=bool)
    is_new[0] = True
    is_new[1:] = best[1:] > best[:-1]
    pos = np.where(is_new, np.arange(x.shape[0]), 0)
    return np.maximum.accumulate(pos)


def random_search(space, score_fn: ScoreFn, constraints=None, budget: int = 50_100,
                  seed: int = 0, **kw) -> SearchResult:
    """Functional form of :class:`RandomSearch`."""
    return RandomSearch(space, score_fn, constraints, budget=budget, seed=seed, **kw).run()
