"""Each notebook's summary (``results/data/NN_summary.json``) as a typed contract: one
writer (:func:`write_summary`, called by the notebook) and one reader (:func:`read_summary`,
called by every later notebook and the tables). The contract lists the fields later stages
read; a missing or mistyped field is an error that names the notebook to rerun, and the
file is strict JSON (a NaN or infinity is refused unless the field is declared optional,
where it is written as null).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .artifacts import MissingInputError, verified_bytes

__all__ = ["SummaryContract", "CONTRACTS", "Summary", "to_strict_json", "write_summary",
           "read_summary", "SummaryError"]

NUM = (int, float)


class SummaryError(ValueError):
    """A summary that breaks its contract (the message names the field and the notebook)."""


@dataclass(frozen=True)
class SummaryContract:
    notebook: str                       # e.g. "01_supernet"
    required: dict                      # field -> allowed Python type(s)
    optional: dict = field(default_factory=dict)   # may be missing or null

    @property
    def file(self) -> str:
        return f"{self.notebook[:2]}_summary.json"


CONTRACTS = {c.notebook: c for c in (
    SummaryContract("01_supernet", {
        "largest_top1": NUM, "smallest_top1": NUM, "random_macs_spearman": NUM,
        "train_seconds": NUM}, {"largest_minus_smallest": NUM, "random_macs_spearman_ci": list}),
    SummaryContract("02_hardware", {"lut": dict}, {
        "mbv2_w8a8_bitops": NUM, "mbv2_w8a8_bitfusion_ms": NUM}),
    SummaryContract("03_predictor", {
        "fp32_pairs": int, "quant_pairs": int, "collection_seconds_fp32": NUM,
        "collection_seconds_quant": NUM, "train_seconds": NUM, "predictor_artifact": str}, {
        "quant_kendall_tau_transfer": NUM, "quant_kendall_tau_transfer_ci": list,
        "label_noise_se": NUM, "label_sd": NUM, "heldout_architectures": int,
        "label_to_realised_offset": NUM, "seconds_per_fp32_pair": NUM,
        "seconds_per_quant_pair": NUM, "label_variance_shares": dict,
        "bit_to_noise_variance": NUM, "pairs_at_baseline_cost_fraction": NUM,
        "tau_transfer_minus_fp32": NUM, "tau_transfer_minus_fp32_ci": list,
        "offset_source": str, "label_noise_ratio": NUM, "tau_transfer_vs_fp32_verdict": str}),
    SummaryContract("04_search", {
        "n_searches": int, "search_seconds_total": NUM, "predicted_test_spearman": NUM,
        "predicted_minus_test_mean": NUM, "evolution_minus_random_test_mean": NUM,
        "evolution_minus_random_test_ci": list, "predicted_minus_test_raw": NUM,
        "offset_source": str, "baseline_budgets": dict, "containment": list,
        "cost_test_spearman": dict}, {
        "predicted_minus_test_mean_ci": list, "predicted_test_spearman_ci": list,
        "evolution_minus_random_verdict": str, "containment_ok": bool,
        "finetune_seeds": int, "search_seeds": int, "apq_vs_best_corner_verdicts": dict}),
    SummaryContract("05_baselines", {"search_cost": dict}, {
        "skipped_targets": list, "finetune_seeds": int, "haq_reward_images": int,
        "haq_reward_trend": dict, "mbv2_standalone": dict, "mbv2_fp32_test_acc": NUM}),
)}


def to_strict_json(o: Any, where: str = "", nan_to_null: bool = False) -> Any:
    """Numpy scalars/arrays → Python; a non-finite float raises naming its path (or, with
    ``nan_to_null``, becomes an explicit null)."""
    if isinstance(o, dict):
        return {str(k): to_strict_json(v, f"{where}.{k}" if where else str(k), nan_to_null)
                for k, v in o.items()}
    if isinstance(o, (list, tuple, np.ndarray)):
        return [to_strict_json(v, f"{where}[{i}]", nan_to_null) for i, v in enumerate(list(o))]
    if isinstance(o, np.generic):
        o = o.item()
    if isinstance(o, float) and not math.isfinite(o):
        if nan_to_null:
            return None
        raise SummaryError(f"{where or 'value'} is {o}: summaries are strict JSON; write "
                           f"None (null) for a number that does not exist")
    return o


@dataclass
class Summary:
    """A validated summary: ``summary["field"]`` or ``summary.get("field", default)``."""
    notebook: str
    data: dict

    def __getitem__(self, k: str) -> Any:
        return self.data[k]

    def get(self, k: str, default: Any = None) -> Any:
        v = self.data.get(k)
        return default if v is None else v


def _check(contract: SummaryContract, data: dict, action: str) -> None:
    for k, tp in contract.required.items():
        v = data.get(k)
        if v is None or (isinstance(v, bool) and tp is not bool) or not isinstance(v, tp):
            got = "missing" if v is None else type(v).__name__
            raise SummaryError(f"{contract.file}: field {k!r} is {got} (expected "
                               f"{getattr(tp, '__name__', tp)}); {action}")
    for k, tp in contract.optional.items():
        v = data.get(k)
        if v is not None and ((isinstance(v, bool) and tp is not bool)
                              or not isinstance(v, tp)):
            raise SummaryError(f"{contract.file}: field {k!r} is {type(v).__name__} "
                               f"(expected {getattr(tp, '__name__', tp)}); {action}")


def write_summary(ctx, data: dict) -> Path:
    """Validate ``data`` against the notebook's contract and write it as strict JSON: a
    required field must be a finite number (or its declared type); elsewhere a NaN or
    infinity is written as an explicit null."""
    contract = CONTRACTS[ctx.notebook]
    for k in contract.required:
        v = data.get(k)
        if isinstance(v, (float, np.floating)) and not math.isfinite(float(v)):
            raise SummaryError(f"{contract.file}: field {k!r} is {v}; fix notebook "
                               f"{ctx.notebook}")
    clean = to_strict_json(data, nan_to_null=True)
    _check(contract, clean, f"fix notebook {ctx.notebook}")
    return ctx.write_json(contract.file, clean)


def read_summary(results_dir: Path | str, notebook: str) -> Summary:
    """Read and validate a notebook's summary; missing, torn or stale → an error naming the
    notebook to rerun; different from the hash its notebook recorded in the manifest →
    :class:`~apq_lib.artifacts.ResultMismatchError` (no manifest: not checked)."""
    contract = CONTRACTS[notebook]
    p = Path(results_dir) / "data" / contract.file
    rerun = f"run notebook {notebook} first (make reproduce runs them in order)"
    if not p.exists():
        raise MissingInputError(f"results/data/{contract.file} is missing: {rerun}")
    raw = verified_bytes(p, results_dir)     # as its notebook recorded it (if a manifest)
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise MissingInputError(f"{p} is not valid JSON ({e}): rerun notebook {notebook}") from e
    if not isinstance(data, dict):
        raise MissingInputError(f"{p} is not a JSON object: rerun notebook {notebook}")
    try:
        _check(contract, data, f"rerun notebook {notebook} (it was written by older code)")
    except SummaryError as e:
        raise MissingInputError(str(e)) from e
    return Summary(notebook, data)


def optional_float(v: Optional[float]) -> Optional[float]:
    """``None`` for a missing / non-finite number, else ``float(v)``."""
    return None if v is None or not math.isfinite(float(v)) else float(v)
