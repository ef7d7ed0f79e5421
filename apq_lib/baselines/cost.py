"""Search cost, one definition for APQ and every baseline (APQ §4, Table 1/2 "design
cost"): the seconds a method actually spends, measured per stage.

* Every stage is timed with ``time.perf_counter`` (wall) and ``time.process_time`` (CPU
  seconds of this process, all threads), on a named device (``cpu`` or the GPU's name).
* A stage is either ``shared`` (done once and reused by every later search: supernet
  training, predictor data collection, training the fixed model) or ``per_search``
  (repeated for every new constraint / hardware target).
* The cost of one search is ``Σ per_search + Σ shared / N`` for N searches; the table
  shows both N = 1 (first search) and the amortised value for a given N.
* GPU-hours of the paper = wall seconds on the GPU / 3600; on CPU the unit is
  CPU-wall-seconds, reported as such (``device`` column).
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Optional

from ..artifacts import MissingInputError
from ..results import read_summary

__all__ = ["StageCost", "CostMeter", "device_name", "apq_cost_from_results",
           "stages_from_results", "APQ_STAGES", "MULTISTAGE_NAS", "COST_KINDS", "cost_curve"]

COST_KINDS = ("shared", "per_search")


def device_name(device=None) -> str:
    """``cpu`` or the CUDA device's name."""
    import torch
    dev = torch.device(device) if device is not None else (
        torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return "cpu"


@dataclass
class StageCost:
    method: str
    stage: str
    kind: str                      # shared | per_search
    wall_s: float
    cpu_s: Optional[float] = None  # process CPU seconds (None when read from elsewhere)
    device: str = "cpu"
    source: str = "measured"       # measured | results/data/<file> | manifest
    search: str = ""               # which search a per_search stage belongs to (target)


class CostMeter:
    """Collects :class:`StageCost` records; ``with meter.stage("HAQ", "episodes"):``."""

    def __init__(self, device=None):
        self.records: list[StageCost] = []
        self.device = device_name(device)

    @contextmanager
    def stage(self, method: str, stage: str, kind: str = "per_search",
              search: str = "") -> Iterator[dict]:
        """Time a block; the yielded dict gets ``wall_s`` / ``cpu_s`` when it ends.
        ``search`` names the search (e.g. its target) a per-search stage belongs to."""
        if kind not in COST_KINDS:
            raise ValueError(f"kind={kind!r}; use one of {COST_KINDS}")
        out: dict = {}
        w0, c0 = time.perf_counter(), time.process_time()
        try:
            yield out
        finally:
            out["wall_s"] = time.perf_counter() - w0
            out["cpu_s"] = time.process_time() - c0
            self.records.append(StageCost(method, stage, kind, out["wall_s"], out["cpu_s"],
                                          self.device, search=search))

    def add(self, method: str, stage: str, wall_s: float, kind: str = "per_search",
            cpu_s: Optional[float] = None, device: Optional[str] = None,
            source: str = "measured", search: str = "") -> StageCost:
        """Record a stage timed elsewhere (e.g. read from an earlier notebook's summary)."""
        if kind not in COST_KINDS:
            raise ValueError(f"kind={kind!r}; use one of {COST_KINDS}")
        rec = StageCost(method, stage, kind, float(wall_s), cpu_s, device or self.device,
                        source, search)
        self.records.append(rec)
        return rec

    def frame(self):
        """One row per stage."""
        import pandas as pd
        return pd.DataFrame([asdict(r) for r in self.records],
                            columns=list(StageCost.__dataclass_fields__))

    def seconds(self, method: str) -> dict:
        """``{stage: wall seconds}`` of one method."""
        out: dict = {}
        for r in self.records:
            if r.method == method:
                out[r.stage] = out.get(r.stage, 0.0) + r.wall_s
        return out

    def table(self, n_searches: int = 1):
        """Per method: shared seconds, seconds per search (the per-search stages summed, then
        averaged over the searches actually run, told apart by ``search``), the cost of the
        first search and the amortised cost per search over ``n_searches`` searches."""
        import pandas as pd
        if n_searches < 1:
            raise ValueError("n_searches must be >= 1")
        rows = []
        for m in dict.fromkeys(r.method for r in self.records):
            recs = [r for r in self.records if r.method == m]
            sh = sum(r.wall_s for r in recs if r.kind == "shared")
            per = [r for r in recs if r.kind == "per_search"]
            n_run = max(1, len({r.search for r in per}))
            ps = sum(r.wall_s for r in per) / n_run
            cpu = [r.cpu_s for r in recs if r.cpu_s is not None]
            rows.append({"method": m, "shared_s": sh, "per_search_s": ps,
                         "searches_run": n_run if per else 0,
                         "first_search_s": sh + ps,
                         f"amortised_s_N{n_searches}": ps + sh / n_searches,
                         "cpu_s": sum(cpu) if cpu else None,
                         "device": ",".join(sorted({r.device for r in recs})),
                         "stages": "; ".join(f"{r.stage}={r.wall_s:.1f}s" for r in recs
                                             if r.kind == "shared" or r.search in
                                             ("", per[0].search))})
        return pd.DataFrame(rows)

    def to_json(self) -> list[dict]:
        return [asdict(r) for r in self.records]


# --------------------------------------------------------------------------- APQ
# (notebook, stage name, kind, seconds field of the notebook's summary, divide-by field)
APQ_STAGES = (
    ("01_supernet", "supernet training", "shared", "train_seconds", None),
    ("03_predictor", "FP32 pairs", "shared", "collection_seconds_fp32", None),
    ("03_predictor", "quantized pairs", "shared", "collection_seconds_quant", None),
    ("03_predictor", "predictor training", "shared", "train_seconds", None),
    ("04_search", "evolution search", "per_search", "search_seconds_total", "n_searches"),
)
# The multi-stage pipeline's NAS stage pays, for every deployment, for an FP32 supernet and
# the data of its FP32 accuracy predictor (ProxylessNAS-style NAS trains per target; APQ
# trains once and searches per target). In this suite it runs on the weights of APQ's
# supernet, so it is charged their measured seconds, per search (no free reuse).
MULTISTAGE_NAS = tuple((nb, f"NAS: {stage}", "per_search", key, None)
                       for nb, stage, _kind, key, _div in APQ_STAGES[:2])


def stages_from_results(meter: CostMeter, results_dir: Path | str, method: str,
                        stages=APQ_STAGES) -> list[StageCost]:
    """Add stages timed by earlier notebooks, read from their typed summaries
    (:func:`apq_lib.results.read_summary`; a missing one names the notebook to run). A
    per-search stage is divided by the summary's count of searches. Returns the records."""
    added = []
    for nb, stage, kind, key, div in stages:
        summ = read_summary(results_dir, nb)
        secs = float(summ[key]) if key in summ.data else None
        if secs is None:
            raise MissingInputError(f"results/data/{nb[:2]}_summary.json has no {key!r}: "
                                    f"rerun notebook {nb}")
        source = f"results/data/{nb[:2]}_summary.json:{key}"
        if div:
            secs /= max(1.0, float(summ[div]))
            source += f" (/{div}={summ[div]})"
        added.append(meter.add(method, stage, secs, kind, source=source))
    return added


def apq_cost_from_results(meter: CostMeter, results_dir: Path | str,
                          method: str = "APQ") -> list[StageCost]:
    """APQ's stages: supernet training (01), FP32 and quantized pairs and predictor
    training (03) — shared — and the evolution search (04) per search."""
    return stages_from_results(meter, results_dir, method, APQ_STAGES)


def cost_curve(shared_s: float, per_search_s: float, ns) -> list[float]:
    """Total seconds for ``N`` deployment scenarios: shared stages once, the rest N times."""
    return [float(shared_s) + int(n) * float(per_search_s) for n in ns]
