"""The inputs of the paper's tables (notebook 06): every summary, table and per-image
correctness file notebooks 01–05 wrote, each checked against the hash its notebook recorded
in ``results/manifest.json``; a missing or edited file names the notebook to rerun.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import yaml

from .artifacts import MissingInputError, verified_bytes
from .config import ENV_DIR
from .realize import seed_id
from .results import read_summary

__all__ = ["Results", "load_results", "SOURCES"]

SOURCES = {
    "01_summary.json": "01_supernet", "02_summary.json": "02_hardware",
    "03_summary.json": "03_predictor", "03_sample_efficiency.csv": "03_predictor",
    "04_search.csv": "04_search", "04_summary.json": "04_search",
    "05_baselines.csv": "05_baselines", "05_summary.json": "05_baselines",
    "05_pruning_sweep.csv": "05_baselines",
    "04_correct.npz": "04_search", "05_correct.npz": "05_baselines",
    "03_predictor_baselines.csv": "03_predictor",
}


@dataclass
class Results:
    """Everything notebooks 01–05 wrote that the tables use."""
    s01: dict
    s02: dict
    s03: dict
    s04: dict
    s05: dict
    efficiency: pd.DataFrame
    search: pd.DataFrame
    baselines: pd.DataFrame
    pruning: pd.DataFrame
    manifest: dict
    paper: dict
    correct: dict            # model / row id -> per-image correctness on the test split
    seed: int = 0
    predictor_controls: Optional[pd.DataFrame] = None   # 03: transfer vs its controls

    def hits(self, ids) -> np.ndarray:
        """``[len(ids), n_images]`` correctness of the models ``ids`` (a missing id names
        the notebook that should have written it)."""
        miss = [i for i in ids if i not in self.correct]
        if miss:
            raise MissingInputError(f"no per-image correctness for {miss[:3]}: rerun notebooks "
                                    f"04_search and 05_baselines (results/data/0[45]_correct"
                                    f".npz)")
        return np.stack([self.correct[i] for i in ids])

    def seeds(self, model_id: str) -> np.ndarray:
        """``[seeds, n_images]`` correctness of one model: finetune seeds ``0, 1, …``
        (:func:`~apq_lib.realize.seed_id`) as long as they are stored."""
        out, k = [self.hits([model_id])[0]], 1
        while seed_id(model_id, k) in self.correct:
            out.append(self.correct[seed_id(model_id, k)])
            k += 1
        return np.stack(out)

    def numbers(self) -> np.ndarray:
        """Every number in the inputs (for the provenance check)."""
        vals: list[float] = []

        def walk(o):
            if isinstance(o, bool) or o is None:
                return
            if isinstance(o, (int, float)):
                vals.append(float(o))
            elif isinstance(o, dict):
                for v in o.values():
                    walk(v)
            elif isinstance(o, (list, tuple)):
                for v in o:
                    walk(v)

        for d in (self.s01, self.s02, self.s03, self.s04, self.s05):
            walk(d)
        for df in (self.efficiency, self.search, self.baselines, self.pruning):
            walk(df.select_dtypes("number").to_numpy().ravel().tolist())
        arr = np.asarray(vals, float)
        return arr[np.isfinite(arr)]


def _csv(path: Path) -> pd.DataFrame:
    """A results CSV as its notebook recorded it in the manifest (see ``verified_bytes``)."""
    return pd.read_csv(io.BytesIO(verified_bytes(path)))


def _load_correct(data: Path) -> dict:
    out = {}
    for name in ("04_correct.npz", "05_correct.npz"):
        with np.load(io.BytesIO(verified_bytes(data / name)), allow_pickle=False) as z:
            out.update({k: z[k].astype(bool) for k in z.files})
    sizes = {v.size for v in out.values()}
    if len(sizes) > 1:
        raise MissingInputError(f"per-image correctness of notebooks 04 and 05 covers different "
                                f"test sets ({sorted(sizes)} images): rerun 04_search and "
                                f"05_baselines with the same profile")
    return out


def load_results(results_dir: Path, paper_file: Optional[Path] = None,
                 seed: int = 0) -> Results:
    """Read the inputs; a missing one names the notebook that writes it, and one that
    differs from the hash its notebook recorded in ``manifest.json`` (edited by hand) is an
    error naming the notebook to rerun (:func:`apq_lib.artifacts.verified_bytes`)."""
    data = Path(results_dir) / "data"
    for name, nb in SOURCES.items():
        if not (data / name).exists():
            raise MissingInputError(f"results/data/{name} is missing: run notebook {nb} first "
                                    f"(make reproduce runs them in order)")
    man = Path(results_dir) / "manifest.json"
    paper = yaml.safe_load((paper_file or ENV_DIR / "paper_reference.yaml").read_text())
    sums = [read_summary(results_dir, nb).data for nb in ("01_supernet", "02_hardware",
                                                          "03_predictor", "04_search",
                                                          "05_baselines")]
    return Results(*sums,
                   _csv(data / "03_sample_efficiency.csv"),
                   _csv(data / "04_search.csv"), _csv(data / "05_baselines.csv"),
                   _csv(data / "05_pruning_sweep.csv"),
                   json.loads(man.read_text()) if man.exists() else {}, paper,
                   _load_correct(data), seed,
                   _csv(data / "03_predictor_baselines.csv"))
