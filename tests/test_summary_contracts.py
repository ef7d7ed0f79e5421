"""Every summary field read downstream (the paper's tables, the README block) is declared in
its notebook's contract (:data:`apq_lib.results.CONTRACTS`), so a renamed field fails when
its notebook writes it, not as a silent "n/a" in a table."""
from __future__ import annotations

import re
from pathlib import Path

from apq_lib.results import CONTRACTS

ROOT = Path(__file__).resolve().parents[1]
READERS = ("apq_lib/paper_tables.py", "apq_lib/readme.py")
NB = {f"s{c.notebook[:2]}": c.notebook for c in CONTRACTS.values()}
# s03.get("key") / s03["key"] / r.s03.get('key') / _with_ci(r.s03, "key"[, "key2"])
GET = re.compile(r"\b(s0[1-5])(?:\.get\(|\[)\s*['\"]([a-z0-9_]+)['\"]")
WITH_CI = re.compile(r"_with_ci\(r\.(s0[1-5]),\s*\"([a-z0-9_]+)\"(?:,\s*\"([a-z0-9_]+)\")?\)")


def reads() -> set[tuple[str, str]]:
    out = set()
    for f in READERS:
        text = (ROOT / f).read_text()
        out |= {(NB[s], k) for s, k in GET.findall(text)}
        for s, k, ci in WITH_CI.findall(text):
            out |= {(NB[s], k), (NB[s], ci or f"{k}_ci")}
    return out


def test_the_scan_finds_the_reads():
    found = reads()
    assert ("01_supernet", "largest_top1") in found           # s01.get("largest_top1")
    assert ("03_predictor", "quant_kendall_tau_transfer_ci") in found   # via _with_ci
    assert ("04_search", "containment") in found
    assert len(found) >= 25


def test_every_field_read_downstream_is_in_its_contract():
    missing = sorted((nb, k) for nb, k in reads()
                     if k not in CONTRACTS[nb].required and k not in CONTRACTS[nb].optional)
    assert not missing, f"summary fields read downstream but not in a contract: {missing}"
