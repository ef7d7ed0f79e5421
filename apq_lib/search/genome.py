"""Vectorised operators on populations of ⟨arch, policy⟩ index arrays (APQ §3.4): random
sampling, per-block mutation, per-gene crossover, validity, constraints and the search
result format shared by :mod:`.evolution` and :mod:`.random_search`.

A population is an int16 array ``[N, n_blocks, 6]`` (columns kernel, mid, pw_w, pw_a,
dw_w, dw_a; ``-1`` for blocks switched off by depth), as in
:meth:`apq_lib.supernet.space.SearchSpace.to_index_array`. Every operator works on the
whole population at once; none loops over candidates in Python.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Sequence, Union

import numpy as np

__all__ = ["IndexOps", "Constraint", "InfeasibleConstraintError", "SearchResult",
           "normalize_constraints", "evaluate_costs", "feasible_mask", "ScoreFn", "CostFn"]

ScoreFn = Callable[[np.ndarray], np.ndarray]      # idx [N, B, 6] -> predicted accuracy [N]
CostFn = Callable[[np.ndarray], np.ndarray]       # idx [N, B, 6] -> cost [N]


class InfeasibleConstraintError(ValueError):
    """No configuration of the space meets a constraint. Carries ``name``, ``limit`` and
    ``min_cost`` (the lowest cost seen: minimal configuration and random samples)."""

    def __init__(self, name: str, limit: float, min_cost: float, detail: str = ""):
        self.name, self.limit, self.min_cost = name, float(limit), float(min_cost)
        super().__init__(
            f"constraint {name!r} <= {limit:g} cannot be met: the minimum reachable cost is "
            f"{min_cost:g} (smallest architecture at the lowest bits, and random samples)"
            f"{'; ' + detail if detail else ''}. Raise the limit above {min_cost:g}.")


@dataclass(frozen=True)
class Constraint:
    """``cost_fn(idx) <= limit`` for every returned candidate."""
    name: str
    cost_fn: CostFn
    limit: float


def normalize_constraints(constraints: Union[None, Mapping, Sequence]) -> list[Constraint]:
    """Accept ``{name: (cost_fn, limit)}``, ``{name: Constraint}`` or a list of
    :class:`Constraint`; returns a list (possibly empty: unconstrained search)."""
    if not constraints:
        return []
    if isinstance(constraints, Mapping):
        out = []
        for name, v in constraints.items():
            if isinstance(v, Constraint):
                out.append(v)
            else:
                fn, limit = v
                if not callable(fn):
                    raise TypeError(f"constraint {name!r}: cost function is not callable")
                out.append(Constraint(str(name), fn, float(limit)))
        return out
    return [c if isinstance(c, Constraint) else Constraint(*c) for c in constraints]


def evaluate_costs(constraints: Sequence[Constraint], idx: np.ndarray) -> dict[str, np.ndarray]:
    """``{name: cost [N] float64}`` — each cost function called once on the whole batch."""
    out = {}
    for c in constraints:
        v = np.asarray(c.cost_fn(idx), dtype=np.float64).reshape(-1)
        if v.shape[0] != idx.shape[0]:
            raise ValueError(f"constraint {c.name!r}: cost function returned {v.shape[0]} "
                             f"values for {idx.shape[0]} candidates")
        out[c.name] = v
    return out


def feasible_mask(constraints: Sequence[Constraint], costs: Mapping[str, np.ndarray],
                  n: int) -> np.ndarray:
    ok = np.ones(n, dtype=bool)
    for c in constraints:
        ok &= costs[c.name] <= c.limit          # NaN costs are infeasible
    return ok


class IndexOps:
    """Vectorised sampling / mutation / crossover over index arrays of one search space.

    ``space.cfg.forbid_k7_a4`` is enforced by every operator: a 7×7 depthwise block never
    gets 4-bit depthwise activations (``dw_a`` is resampled among the other bit choices).
    """

    def __init__(self, space):
        self.space = space
        self.B = space.n_blocks
        self.S = len(space.stage_slices)
        self.stage_of = np.empty(self.B, dtype=np.int64)
        self.pos_in_stage = np.empty(self.B, dtype=np.int64)
        for s, sl in enumerate(space.stage_slices):
            self.stage_of[sl] = s
            self.pos_in_stage[sl] = np.arange(sl.stop - sl.start)
        self.stage_starts = np.array([sl.start for sl in space.stage_slices], dtype=np.int64)
        self.n_kernel = len(space.kernel_choices)
        self.n_mid = np.array([len(b.mid_choices) for b in space.blocks], dtype=np.int64)
        self.n_bits = len(space.bit_choices)
        dmax = max(len(c) for c in space.depth_choices)
        self.depth_table = np.array([list(c) + [c[-1]] * (dmax - len(c))
                                     for c in space.depth_choices], dtype=np.int64)   # [S, D]
        self.n_depth = np.array([len(c) for c in space.depth_choices], dtype=np.int64)
        self.allowed_depth = np.zeros((self.S, self.B + 1), dtype=bool)
        for s, c in enumerate(space.depth_choices):
            self.allowed_depth[s, list(c)] = True
        # forbid_k7_a4: kernel index of 7, bit index of 4, the allowed dw_a indices instead
        kc, bc = list(space.kernel_choices), list(space.bit_choices)
        self.forbid = bool(getattr(space.cfg, "forbid_k7_a4", False)) and 7 in kc and 4 in bc
        self.k7 = kc.index(7) if 7 in kc else -1
        self.a4 = bc.index(4) if 4 in bc else -1
        self.dwa_allowed = np.array([i for i in range(self.n_bits) if i != self.a4]
                                    or [self.a4], dtype=np.int16)

    # ------------------------------------------------------------------ primitives
    def sample_genes(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``[n, B, 6]`` random choices for every block slot (no -1)."""
        g = np.empty((n, self.B, 6), dtype=np.int16)
        g[:, :, 0] = rng.integers(0, self.n_kernel, (n, self.B))
        g[:, :, 1] = (rng.random((n, self.B)) * self.n_mid).astype(np.int16)
        g[:, :, 2:] = rng.integers(0, self.n_bits, (n, self.B, 4))
        return g

    def sample_depths(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``[n, S]`` depths drawn uniformly from each stage's depth choices."""
        j = (rng.random((n, self.S)) * self.n_depth).astype(np.int64)
        return self.depth_table[np.arange(self.S), j]

    def active(self, depths: np.ndarray) -> np.ndarray:
        """``[n, B]`` bool: block on under ``depths [n, S]``."""
        return self.pos_in_stage[None, :] < depths[:, self.stage_of]

    def depths_of(self, idx: np.ndarray) -> np.ndarray:
        """``[n, S]`` depths of a population (count of active blocks per stage)."""
        on = (idx[:, :, 0] >= 0).astype(np.int64)
        return np.add.reduceat(on, self.stage_starts, axis=1)

    def assemble(self, genes: np.ndarray, depths: np.ndarray) -> np.ndarray:
        return np.where(self.active(depths)[:, :, None], genes, np.int16(-1)).astype(np.int16)

    def fix_forbidden(self, rng: np.random.Generator, idx: np.ndarray) -> np.ndarray:
        """Resample ``dw_a`` where a 7×7 depthwise meets 4-bit activations (in place)."""
        repl = self.dwa_allowed[rng.integers(0, len(self.dwa_allowed), idx.shape[:2])]
        if self.forbid:
            bad = (idx[:, :, 0] == self.k7) & (idx[:, :, 5] == self.a4)
            idx[:, :, 5] = np.where(bad, repl, idx[:, :, 5])
        return idx

    # ------------------------------------------------------------------ operators
    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` uniform random ⟨arch, policy⟩ candidates ``[n, B, 6]``."""
        idx = self.assemble(self.sample_genes(rng, n), self.sample_depths(rng, n))
        return self.fix_forbidden(rng, idx)

    def mutate(self, rng: np.random.Generator, parents: np.ndarray, prob: float) -> np.ndarray:
        """Per block with probability ``prob``: kernel, channels and the four bitwidths
        resampled together; per stage with probability ``prob``: depth resampled. Blocks a
        depth increase switches on get fresh random choices."""
        n = parents.shape[0]
        fresh = self.sample_genes(rng, n)
        genes = np.where(parents >= 0, parents, fresh)
        hit = rng.random((n, self.B)) < prob
        genes = np.where(hit[:, :, None], fresh, genes)
        depths = self.depths_of(parents)
        dhit = rng.random((n, self.S)) < prob
        depths = np.where(dhit, self.sample_depths(rng, n), depths)
        return self.fix_forbidden(rng, self.assemble(genes, depths))

    def crossover(self, rng: np.random.Generator, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Uniform crossover: every gene (each column of each block, and each stage's
        depth) taken from parent ``a`` or ``b`` with probability 1/2."""
        n = a.shape[0]
        fresh = self.sample_genes(rng, n)
        ga = np.where(a >= 0, a, fresh)
        gb = np.where(b >= 0, b, fresh)
        genes = np.where(rng.random(a.shape) < 0.5, ga, gb)
        depths = np.where(rng.random((n, self.S)) < 0.5, self.depths_of(a), self.depths_of(b))
        return self.fix_forbidden(rng, self.assemble(genes, depths))

    # ------------------------------------------------------------------ checks
    def valid_mask(self, idx: np.ndarray) -> np.ndarray:
        """``[N]`` bool: shape, ranges, depth pattern and forbid_k7_a4 all respected."""
        idx = np.asarray(idx)
        if idx.ndim != 3 or idx.shape[1:] != (self.B, 6):
            raise ValueError(f"index array must be [N, {self.B}, 6], got {idx.shape}")
        on = idx[:, :, 0] >= 0
        ok = np.all((idx >= 0) == on[:, :, None], axis=(1, 2))          # all-or-none -1
        depths = self.depths_of(idx)
        ok &= np.all(self.active(depths) == on, axis=1)                 # prefix per stage
        ok &= np.all(self.allowed_depth[np.arange(self.S), depths], axis=1)
        hi = np.concatenate([np.full((self.B, 1), self.n_kernel), self.n_mid[:, None],
                             np.full((self.B, 4), self.n_bits)], axis=1)
        ok &= np.all(np.where(on[:, :, None], idx < hi[None], True), axis=(1, 2))
        if self.forbid:
            ok &= ~np.any((idx[:, :, 0] == self.k7) & (idx[:, :, 5] == self.a4), axis=1)
        return ok

    def minimal(self) -> np.ndarray:
        """``[1, B, 6]``: shallowest, smallest kernel, fewest channels, lowest bits — the
        configuration of least cost under any cost that grows with size and bits."""
        kc, bc = list(self.space.kernel_choices), list(self.space.bit_choices)
        genes = np.zeros((1, self.B, 6), dtype=np.int16)
        genes[..., 0] = int(np.argmin(kc))
        genes[..., 2:] = int(np.argmin(bc))
        if self.forbid and genes[0, 0, 0] == self.k7 and genes[0, 0, 5] == self.a4:
            genes[..., 5] = min(self.dwa_allowed, key=lambda i: bc[i])
        depths = np.array([[min(c) for c in self.space.depth_choices]], dtype=np.int64)
        return self.assemble(genes, depths)


@dataclass
class SearchResult:
    """Outcome of one search. ``history`` has one row per generation (generation 0 = the
    initial population): ``generation, n_scored, best_score, mean_score`` and the best
    candidate's cost under every constraint (``cost_<name>``)."""
    method: str
    best_index: np.ndarray                  # [B, 6]
    best_score: float
    best_costs: dict
    best_config: dict                       # SubnetConfig.to_dict()
    limits: dict                            # {constraint name: limit}
    history: list
    n_scored: int
    n_cost_evals: int
    seconds: float
    seed: int
    settings: dict = field(default_factory=dict)
    population: Optional[np.ndarray] = None          # final parents [P, B, 6]
    population_scores: Optional[np.ndarray] = None

    def history_frame(self):
        import pandas as pd
        return pd.DataFrame(self.history)

    def to_dict(self) -> dict:
        """JSON-able summary (no population arrays)."""
        return json.loads(json.dumps({
            "method": self.method, "best_index": self.best_index.tolist(),
            "best_score": self.best_score, "best_costs": self.best_costs,
            "best_config": self.best_config, "limits": self.limits, "n_scored": self.n_scored,
            "n_cost_evals": self.n_cost_evals, "seconds": self.seconds, "seed": self.seed,
            "settings": self.settings, "history": self.history}, default=float))
