"""APQ's evolutionary search over ⟨architecture, quantization policy⟩ (APQ §3.4), with the
predictor as the fitness and hardware costs as hard constraints.

Fully vectorised: each generation is a handful of numpy operations on index arrays
``[N, n_blocks, 6]`` plus one call of the score function and one call of each cost function
on the whole batch.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Mapping, Optional, Sequence, Union

import numpy as np

from ..config import SearchConfig
from ..progress import tqdm
from ..runtime import stream_rng
from .genome import (
    Constraint,
    IndexOps,
    InfeasibleConstraintError,
    ScoreFn,
    SearchResult,
    evaluate_costs,
    feasible_mask,
    normalize_constraints,
)

__all__ = ["EvolutionFinder", "score_batch"]


def rank(scores: np.ndarray) -> np.ndarray:
    """Indices by descending score; ties go to the newest entry (as the official code's
    ``sorted(...)[::-1]`` does), which lets the population drift along plateaus."""
    n = scores.shape[0]
    return (n - 1) - np.argsort(-scores[::-1], kind="stable")


_HASH_W = np.random.default_rng(0).integers(1, 2**62, 4096) * 2 + 1      # odd int64


def select(pop: np.ndarray, scores: np.ndarray, k: int, unique: bool) -> np.ndarray:
    """Indices of the top ``k`` by :func:`rank`; with ``unique`` duplicates of a better
    candidate come after every distinct one (only used when too few are distinct)."""
    order = rank(scores)
    if not unique:
        return order[:k]
    rows = pop[order].reshape(order.shape[0], -1).astype(np.int64) + 2
    w = _HASH_W[:rows.shape[1]] if rows.shape[1] <= _HASH_W.shape[0] else \
        np.random.default_rng(1).integers(1, 2**62, rows.shape[1]) * 2 + 1
    h = (rows * w).sum(axis=1)              # 64-bit row hash (wraps); a collision only
    _, first = np.unique(h, return_index=True)   # makes two candidates count as one
    is_first = np.zeros(order.shape[0], dtype=bool)
    is_first[first] = True
    return np.concatenate([order[is_first], order[~is_first]])[:k]


def score_batch(score_fn: ScoreFn, idx: np.ndarray) -> np.ndarray:
    """``score_fn`` on a batch as float64 ``[N]``; NaN scores become -inf (never chosen)."""
    s = score_fn(idx)
    if hasattr(s, "detach"):
        s = s.detach().cpu().numpy()
    s = np.asarray(s, dtype=np.float64).reshape(-1)
    if s.shape[0] != idx.shape[0]:
        raise ValueError(f"score_fn returned {s.shape[0]} scores for {idx.shape[0]} candidates")
    return np.where(np.isnan(s), -np.inf, s)


class _Sampler:
    """Rejection sampling shared by evolution and random search: draw extra candidates from
    an operator, keep the valid and feasible ones, bounded number of rounds."""

    def __init__(self, ops: IndexOps, constraints: Sequence[Constraint], max_batch: int = 8192):
        self.ops, self.constraints, self.max_batch = ops, list(constraints), max_batch
        self.rate: dict[str, float] = {}
        self.n_cost_evals = 0
        self.min_seen = {c.name: math.inf for c in self.constraints}

    def costs(self, idx: np.ndarray) -> dict:
        self.n_cost_evals += idx.shape[0]
        return evaluate_costs(self.constraints, idx)

    def draw(self, make: Callable[[int], np.ndarray], need: int, tries: int, op: str
             ) -> tuple[np.ndarray, dict]:
        """Up to ``need`` valid feasible candidates from ``make(n)`` (fewer after ``tries``
        rounds). The batch size adapts to the acceptance rate seen so far for ``op``."""
        parts, cparts, have = [], [], 0
        for _ in range(tries):
            rem = need - have
            if rem <= 0:
                break
            rate = self.rate.get(op, 1.0)
            n = int(min(self.max_batch, max(rem, math.ceil(1.2 * rem / max(rate, 1e-4)) + 2)))
            cand = make(n)
            cand = cand[self.ops.valid_mask(cand)]
            c = self.costs(cand)
            for k, v in c.items():
                if v.size:
                    self.min_seen[k] = min(self.min_seen[k], float(np.nanmin(v)))
            ok = feasible_mask(self.constraints, c, cand.shape[0])
            self.rate[op] = 0.5 * rate + 0.5 * (ok.sum() / max(n, 1))
            keep = np.flatnonzero(ok)[:rem]
            parts.append(cand[keep])
            cparts.append({k: v[keep] for k, v in c.items()})
            have += keep.size
        if not parts:
            return np.empty((0, self.ops.B, 6), np.int16), {c.name: np.empty(0)
                                                            for c in self.constraints}
        return (np.concatenate(parts),
                {c.name: np.concatenate([p[c.name] for p in cparts]) for c in self.constraints})

    def initial(self, rng: np.random.Generator, n: int, tries: int, mutation_prob: float
                ) -> tuple[np.ndarray, dict, int]:
        """``n`` feasible random candidates; ``(idx, costs, n_filled)``. Raises
        :class:`InfeasibleConstraintError` when neither random sampling nor the minimal
        configuration meets the constraints. If random sampling finds too few (a tight
        limit), the rest come from mutating the feasible ones (and the minimal config)."""
        ops = self.ops
        mini = ops.minimal()
        mc = self.costs(mini)
        mini_ok = bool(feasible_mask(self.constraints, mc, 1)[0])
        for k, v in mc.items():
            self.min_seen[k] = min(self.min_seen[k], float(v[0]))
        pop, costs = self.draw(lambda m: ops.sample(rng, m), n, tries if mini_ok else
                               min(tries, 4), "init")
        if pop.shape[0] == 0 and not mini_ok:
            self._raise()
        filled = n - pop.shape[0]
        if filled > 0:
            if mini_ok:
                pop = np.concatenate([pop, mini])
                costs = {k: np.concatenate([costs[k], mc[k]]) for k in costs}
            base = pop
            more, mcost = self.draw(
                lambda m: ops.mutate(rng, base[rng.integers(0, base.shape[0], m)],
                                     max(mutation_prob, 0.1)), n - pop.shape[0], tries, "fill")
            pop = np.concatenate([pop, more])
            costs = {k: np.concatenate([costs[k], mcost[k]]) for k in costs}
            if pop.shape[0] < n:                  # still short: repeat feasible ones
                rep = rng.integers(0, pop.shape[0], n - pop.shape[0])
                pop = np.concatenate([pop, pop[rep]])
                costs = {k: np.concatenate([v, v[rep]]) for k, v in costs.items()}
        return pop[:n], {k: v[:n] for k, v in costs.items()}, max(filled, 0)

    def _raise(self):
        bad = [c for c in self.constraints if self.min_seen[c.name] > c.limit]
        if bad:
            c = bad[0]
            others = [f"{b.name} <= {b.limit:g} (min {self.min_seen[b.name]:g})"
                      for b in bad[1:]]
            more = f"also unreachable: {', '.join(others)}" if others else ""
            raise InfeasibleConstraintError(c.name, c.limit, self.min_seen[c.name], more)
        c = self.constraints[0]
        names = " and ".join(f"{x.name} <= {x.limit:g}" for x in self.constraints)
        raise InfeasibleConstraintError(
            c.name, c.limit, self.min_seen[c.name],
            f"each limit alone is reachable but no sampled configuration meets {names} together")


class EvolutionFinder:
    """APQ's evolution search (APQ §3.4; OFA's finder) under hardware constraints.

    Each generation keeps the top ``parents`` of the population, then makes ``mutants``
    children by mutation (per block with probability ``mutation_prob``: kernel, channels and
    the four bitwidths resampled together; per stage, same probability: depth) and
    ``crossovers`` children by uniform crossover of two random parents. **All children are
    scored** and join the population: the official APQ code (``evolution_finder.py``) only
    scores and keeps the mutants and silently drops the crossover children — fixed here.

    Candidates violating any constraint (or invalid, e.g. 7×7 depthwise with 4-bit activations
    under ``forbid_k7_a4``) are rejected by vectorised rejection sampling: extra candidates
    are drawn, the feasible ones kept, for at most ``max_tries`` rounds (a child that still
    has no feasible draw is replaced by a copy of a random parent; counted in the history).

    Selection: the top ``parents`` of parents + children by score, ties to the newest (as
    the official ``sorted(...)[::-1]``). With ``unique_parents`` (default; set it False for
    the official behaviour) they are the top *distinct* candidates: without it copies of
    the best soon fill every parent slot and crossover stops doing anything (on synthetic
    problems it loses 1–3 points of a 140–330 objective at 500 generations).

    The initial population is ``population`` feasible random samples. An impossible budget
    raises :class:`InfeasibleConstraintError` (name, limit and the least cost found, from the
    minimal configuration — shallowest, smallest, lowest bits — and the random samples);
    a budget random samples rarely meet but the minimal configuration does is filled by
    mutating the feasible ones found.

    ``score_fn(idx [N, B, 6]) -> [N]`` is the predicted accuracy; ``constraints`` is
    ``{name: (cost_fn, limit)}`` with ``cost_fn(idx) -> [N]``; ``on_generation(g, pop,
    scores, costs)`` is called after every generation. Deterministic for a seed.
    """

    def __init__(self, space, score_fn: ScoreFn,
                 constraints: Union[None, Mapping, Sequence] = None,
                 cfg: Optional[SearchConfig] = None, *, population: Optional[int] = None,
                 parents: Optional[int] = None, mutants: Optional[int] = None,
                 crossovers: Optional[int] = None, mutation_prob: Optional[float] = None,
                 generations: Optional[int] = None, seed: int = 0,
                 max_tries: Optional[int] = None, unique: Optional[bool] = None,
                 max_batch: int = 8192,
                 on_generation: Optional[Callable] = None, progress: bool = False):
        cfg = cfg or SearchConfig()
        pick = lambda v, d: d if v is None else v  # noqa: E731
        self.space, self.score_fn = space, score_fn
        self.constraints = normalize_constraints(constraints)
        self.population = int(pick(population, cfg.population))
        self.parents = int(pick(parents, cfg.parents))
        self.mutants = int(pick(mutants, cfg.mutants))
        self.crossovers = int(pick(crossovers, cfg.crossovers))
        self.mutation_prob = float(pick(mutation_prob, cfg.mutation_prob))
        self.generations = int(pick(generations, cfg.generations))
        self.max_tries = int(pick(max_tries, cfg.max_tries))
        self.unique = bool(pick(unique, cfg.unique_parents))
        self.seed, self.max_batch = seed, max_batch
        self.on_generation, self.progress = on_generation, progress
        if not 0 < self.parents <= self.population:
            raise ValueError(f"parents must be in 1..population ({self.population}), "
                             f"got {self.parents}")
        if self.mutants < 0 or self.crossovers < 0 or self.mutants + self.crossovers == 0:
            raise ValueError("need mutants + crossovers > 0 children per generation")
        self.ops = IndexOps(space)

    @property
    def budget(self) -> int:
        """Candidates scored by :meth:`run`: initial population + children of every gen."""
        return self.population + self.generations * (self.mutants + self.crossovers)

    def settings(self) -> dict:
        return {k: getattr(self, k) for k in ("population", "parents", "mutants", "crossovers",
                                               "mutation_prob", "generations", "max_tries",
                                               "unique")}

    def run(self, generations: Optional[int] = None, seed: Optional[int] = None) -> SearchResult:
        G = self.generations if generations is None else int(generations)
        seed = self.seed if seed is None else seed
        rng = stream_rng(seed, "search", "evolution")
        t0 = time.perf_counter()
        ops, P = self.ops, self.parents
        smp = _Sampler(ops, self.constraints, self.max_batch)
        pop, costs, filled = smp.initial(rng, self.population, self.max_tries, self.mutation_prob)
        scores = score_batch(self.score_fn, pop)
        n_scored = pop.shape[0]
        history = [self._record(0, n_scored, scores, costs, filled)]
        self._callback(0, pop, scores, costs)
        it = range(1, G + 1)
        if self.progress:
            it = tqdm(it, desc="evolution", leave=False)
        for g in it:
            order = select(pop, scores, P, self.unique)
            par, par_s = pop[order], scores[order]
            par_c = {k: v[order] for k, v in costs.items()}
            kids, kc, fb = [], [], 0
            for need, op in ((self.mutants, "mutate"), (self.crossovers, "crossover")):
                if need == 0:
                    continue
                if op == "mutate":
                    make = lambda m: ops.mutate(rng, par[rng.integers(0, P, m)],  # noqa: E731
                                                self.mutation_prob)
                else:
                    make = lambda m: ops.crossover(rng, par[rng.integers(0, P, m)],  # noqa: E731
                                                   par[rng.integers(0, P, m)])
                c_idx, c_cost = smp.draw(make, need, self.max_tries, op)
                short = need - c_idx.shape[0]
                if short:                          # no feasible child found: copy a parent
                    rep = rng.integers(0, P, short)
                    c_idx = np.concatenate([c_idx, par[rep]])
                    c_cost = {k: np.concatenate([v, par_c[k][rep]]) for k, v in c_cost.items()}
                    fb += short
                kids.append(c_idx)
                kc.append(c_cost)
            kids = np.concatenate(kids)
            kid_s = score_batch(self.score_fn, kids)          # mutants AND crossovers
            n_scored += kids.shape[0]
            pop = np.concatenate([par, kids])
            scores = np.concatenate([par_s, kid_s])
            costs = {k: np.concatenate([par_c[k], *[c[k] for c in kc]]) for k in par_c}
            history.append(self._record(g, n_scored, scores, costs, fb))
            self._callback(g, pop, scores, costs)
        final = select(pop, scores, P, self.unique)
        b = final[0]
        return SearchResult(
            method="evolution", best_index=pop[b].copy(), best_score=float(scores[b]),
            best_costs={k: float(v[b]) for k, v in costs.items()},
            best_config=self.space.from_index_array(pop[b:b + 1])[0].to_dict(),
            limits={c.name: c.limit for c in self.constraints}, history=history,
            n_scored=n_scored, n_cost_evals=smp.n_cost_evals,
            seconds=time.perf_counter() - t0, seed=seed, settings=self.settings(),
            population=pop[final].copy(), population_scores=scores[final].copy())

    def _record(self, g: int, n_scored: int, scores: np.ndarray, costs: dict,
                fallback: int) -> dict:
        b = int(np.argmax(scores))
        fin = scores[np.isfinite(scores)]
        row = {"generation": g, "n_scored": n_scored, "best_score": float(scores[b]),
               "mean_score": float(fin.mean()) if fin.size else float("nan"),
               "fallback": int(fallback)}
        row.update({f"cost_{k}": float(v[b]) for k, v in costs.items()})
        return row

    def _callback(self, g, pop, scores, costs):
        if self.on_generation is not None:
            self.on_generation(g, pop, scores, costs)
