"""Gradual pruning schedule of Zhu & Gupta (2017), "To prune, or not to prune" §3:
``s_t = s_f + (s_i − s_f)(1 − (t − t0)/(nΔt))³`` for ``t ∈ {t0, t0+Δt, …, t0+nΔt}``.

The sparsity is updated every ``Δt`` steps (between updates it holds the last value), so
it reaches ``s_f`` exactly at ``t0 + nΔt``. ``torch.ao.pruning.CubicSL`` implements the
same curve (evaluated continuously); :func:`gradual_sparsity` agrees with it on every
update step (checked in the tests).
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["gradual_sparsity", "GradualSchedule"]


def gradual_sparsity(t: int, s_f: float, s_i: float = 0.0, t0: int = 0, n: int = 10,
                     dt: int = 1) -> float:
    """Sparsity at step ``t``: ``s_i`` before ``t0``, ``s_f`` from ``t0 + n·dt`` on, the
    cubic curve in between (held constant between the update steps ``t0 + k·dt``)."""
    if n <= 0 or dt <= 0:
        raise ValueError(f"n={n} and dt={dt} must be positive")
    if not (0.0 <= s_i <= 1.0 and 0.0 <= s_f <= 1.0):
        raise ValueError(f"sparsities must be in [0, 1], got s_i={s_i}, s_f={s_f}")
    if t < t0:
        return float(s_i)
    k = min((t - t0) // dt, n)                     # update steps done so far
    return float(s_f + (s_i - s_f) * (1.0 - k / n) ** 3)


@dataclass
class GradualSchedule:
    """A Zhu & Gupta schedule; ``is_update(t)`` says whether step ``t`` re-prunes."""
    s_f: float
    s_i: float = 0.0
    t0: int = 0
    n: int = 10
    dt: int = 1

    def __call__(self, t: int) -> float:
        return gradual_sparsity(t, self.s_f, self.s_i, self.t0, self.n, self.dt)

    @property
    def end(self) -> int:
        """The step at which the final sparsity is reached."""
        return self.t0 + self.n * self.dt

    def is_update(self, t: int) -> bool:
        return self.t0 <= t <= self.end and (t - self.t0) % self.dt == 0

    @classmethod
    def over(cls, steps: int, s_f: float, n_updates: int = 10, s_i: float = 0.0,
             start_frac: float = 0.0, end_frac: float = 0.75) -> "GradualSchedule":
        """A schedule spread over a finetune of ``steps`` steps: updates from
        ``start_frac·steps`` to ``end_frac·steps`` (the rest recovers at ``s_f``)."""
        t0 = int(start_frac * steps)
        span = max(1, int(end_frac * steps) - t0)
        n = max(1, min(n_updates, span))
        return cls(s_f=s_f, s_i=s_i, t0=t0, n=n, dt=max(1, span // n))
