"""The scripts under ``benchmarks/`` import and expose ``main`` (a rename in ``apq_lib`` must not
leave ``make bench`` or the GPU check broken until someone runs them)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script", sorted((ROOT / "benchmarks").glob("bench_*.py")),
                         ids=lambda p: p.stem)
def test_benchmark_script_imports(script):
    spec = importlib.util.spec_from_file_location(f"_bench_{script.stem}", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert callable(getattr(mod, "main", None))
