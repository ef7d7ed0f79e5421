"""Typed notebook summaries (apq_lib.results): one writer, one reader, strict JSON."""
import json
from types import SimpleNamespace

import numpy as np
import pytest

from apq_lib.artifacts import MissingInputError
from apq_lib.results import SummaryError, read_summary, to_strict_json, write_summary

GOOD01 = {"largest_top1": 92.0, "smallest_top1": 86.5, "random_macs_spearman": 0.71,
          "train_seconds": 700.0, "extra": [1, 2]}


class _Ctx(SimpleNamespace):
    def write_json(self, name, obj):
        p = self.root / "data" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(obj, allow_nan=False))
        return p


def test_roundtrip_and_numpy_values(tmp_path):
    ctx = _Ctx(notebook="01_supernet", root=tmp_path)
    write_summary(ctx, {**GOOD01, "largest_top1": np.float32(92.0), "n": np.int64(3)})
    s = read_summary(tmp_path, "01_supernet")
    assert s["largest_top1"] == 92.0 and s["n"] == 3 and s.get("missing", 5) == 5


def test_writer_refuses_nan_and_missing_fields(tmp_path):
    ctx = _Ctx(notebook="01_supernet", root=tmp_path)
    with pytest.raises(SummaryError, match="largest_top1"):
        write_summary(ctx, {**GOOD01, "largest_top1": float("nan")})
    with pytest.raises(SummaryError, match="random_macs_spearman"):
        write_summary(ctx, {k: v for k, v in GOOD01.items() if k != "random_macs_spearman"})
    with pytest.raises(SummaryError, match=r"extra\[1\]"):
        to_strict_json({"extra": [1.0, float("inf")]})
    # an optional field may be NaN: it becomes null
    ctx3 = _Ctx(notebook="03_predictor", root=tmp_path)
    write_summary(ctx3, {"fp32_pairs": 4, "quant_pairs": 2, "collection_seconds_fp32": 1.0,
                         "collection_seconds_quant": 2.0, "train_seconds": 0.5,
                         "predictor_artifact": "predictor/k",
                         "label_sd": float("nan")})
    assert json.loads((tmp_path / "data" / "03_summary.json").read_text())["label_sd"] is None


def test_reader_names_the_notebook_to_rerun(tmp_path):
    with pytest.raises(MissingInputError, match="run notebook 04_search"):
        read_summary(tmp_path, "04_search")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "01_summary.json").write_text('{"largest_top1": 9')
    with pytest.raises(MissingInputError, match="rerun notebook 01_supernet"):
        read_summary(tmp_path, "01_supernet")
    (tmp_path / "data" / "01_summary.json").write_text("[1, 2]")
    with pytest.raises(MissingInputError, match="not a JSON object"):
        read_summary(tmp_path, "01_supernet")
    renamed = {("largest_acc" if k == "largest_top1" else k): v for k, v in GOOD01.items()}
    (tmp_path / "data" / "01_summary.json").write_text(json.dumps(renamed))
    with pytest.raises(MissingInputError, match="'largest_top1' is missing.*01_supernet"):
        read_summary(tmp_path, "01_supernet")


def test_record_file_vouches_for_a_bench_file(tmp_path):
    """A file written outside the notebooks (benchmarks/) is recorded by its writer: the
    manifest's hash follows the new bytes, so readers verify it; without a manifest,
    nothing is written."""
    from apq_lib.artifacts import file_sha256, record_file, verified_bytes
    bench = tmp_path / "bench" / "x_cpu.csv"
    bench.parent.mkdir()
    bench.write_text("a\n1\n")
    record_file(bench, tmp_path)                          # no manifest: no-op
    assert not (tmp_path / "manifest.json").exists()
    (tmp_path / "manifest.json").write_text(json.dumps({"files": {"bench/x_cpu.csv": "0" * 64}}))
    with pytest.raises(Exception, match="x_cpu.csv"):
        verified_bytes(bench, tmp_path)                   # stale hash: refused
    record_file(bench, tmp_path)
    files = json.loads((tmp_path / "manifest.json").read_text())["files"]
    assert files["bench/x_cpu.csv"] == file_sha256(bench)
    assert verified_bytes(bench, tmp_path) == b"a\n1\n"
