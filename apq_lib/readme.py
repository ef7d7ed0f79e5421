"""The README's results block, written from ``results/`` (summaries, tables, manifest), so
the numbers a reader cites are the ones the run wrote. ``python -m apq_lib.readme`` (``make
readme``) rewrites the block between the markers; a test fails when README and results
disagree.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from .artifacts import REPO_ROOT
from .results import read_summary

__all__ = ["render_results", "render_bench", "update_readme", "BEGIN", "END", "BENCH_BEGIN",
           "BENCH_END"]

BEGIN = "<!-- results:begin (written by `make readme` from results/; do not edit) -->"
END = "<!-- results:end -->"
BENCH_BEGIN = "<!-- bench:begin (written by `make readme` from results/bench/; do not edit) -->"
BENCH_END = "<!-- bench:end -->"


def _f(v, nd: int = 2) -> str:
    return "n/a" if v is None or pd.isna(v) else f"{v:.{nd}f}"


def _ci(v, ci, nd: int = 2) -> str:
    if v is None:
        return "n/a"
    if not ci or None in ci:
        return _f(v, nd)
    return f"{v:.{nd}f} [{ci[0]:.{nd}f}, {ci[1]:.{nd}f}]"


def _ratio(v, censored) -> str:
    """A cost ratio; ``≥`` when censored (APQ's cheapest model already as accurate)."""
    if pd.isna(v):
        return "n/a"
    return f"≥ {v:.2f}" if censored in (True, "True") else f"{v:.2f}"


def _table_rows(t: pd.DataFrame) -> list[str]:
    out = []
    for _, r in t.iterrows():
        gain = _ci(r.get("top-1 gain"), [r.get("ci_low"), r.get("ci_high")])
        ratio = r.get("ratio at equal top-1 (baseline/APQ)")
        out.append(f"| {r['matched']} | {r['baseline']} ({r['network']}) | "
                   f"{_f(r.get('baseline top-1'))} | {_f(r.get('APQ top-1'))} | "
                   f"{int(r.get('seeds', 0))} / {int(r.get('baseline seeds', 0))} | {gain} | "
                   f"{_ratio(ratio, r.get('ratio censored'))} | {r['verdict']} |")
    return out


def render_results(results_dir: Path) -> str:
    """The markdown block (without markers) from the results in ``results_dir``."""
    d = Path(results_dir)
    man = json.loads((d / "manifest.json").read_text())
    s01, s03, s04, s05 = (read_summary(d, nb).data for nb in
                          ("01_supernet", "03_predictor", "04_search", "05_baselines"))
    nbs = man.get("notebooks", {})
    chain = man.get("chain", {})
    evo_ci = s04.get("evolution_minus_random_test_ci")
    secs = ", ".join(f"{k[:2]} {v.get('seconds', 0):,.0f} s" for k, v in sorted(nbs.items()))
    lines = [
        f"Run: profile `{man.get('profile')}`, device `{man.get('device')}`, commit "
        f"`{str(man.get('git_commit'))[:7]}`, from scratch: {chain.get('from_scratch')}; "
        f"notebooks {chain.get('seconds', sum(v.get('seconds', 0) for v in nbs.values())):,.0f}"
        f" s ({secs}).", "",
        "| quantity | value [95 % CI] |", "| --- | --- |",
        f"| supernet largest / smallest subnet top-1 (%) | {_f(s01.get('largest_top1'))} / "
        f"{_f(s01.get('smallest_top1'))} |",
        "| quantized labels: variance shares architecture / bits / noise | "
        + " / ".join(_f((s03.get("label_variance_shares") or {}).get(k), 3)
                     for k in ("architecture", "bits", "noise"))
        + f" (bits / noise variance {_f(s03.get('bit_to_noise_variance'))}) |",
        f"| quantized pairs at ≥ 0.8 × MobileNetV2 W8A8 latency | "
        f"{_f(s03.get('pairs_at_baseline_cost_fraction'), 3)} |",
        f"| quantized predictor (transfer) Kendall τ, held-out architectures | "
        f"{_ci(s03.get('quant_kendall_tau_transfer'), s03.get('quant_kendall_tau_transfer_ci'))}"
        f" |",
        f"| τ(transfer) − τ(FP32 predictor) | "
        f"{_ci(s03.get('tau_transfer_minus_fp32'), s03.get('tau_transfer_minus_fp32_ci'))} "
        f"({s03.get('tau_transfer_vs_fp32_verdict', 'n/a')}) |",
        f"| predicted − measured top-1, raw (points) | "
        f"{_ci(s04.get('predicted_minus_test_raw'), s04.get('predicted_minus_test_mean_ci'))}"
        f" (offset: {s04.get('offset_source')}) |",
        f"| Spearman(predicted, measured) / Spearman(latency, measured), APQ models | "
        f"{_ci(s04.get('predicted_test_spearman'), s04.get('predicted_test_spearman_ci'))} / "
        f"{_f((s04.get('cost_test_spearman') or {}).get('latency'))} |",
        f"| evolution − random search, test top-1 (points) | "
        f"{_ci(s04.get('evolution_minus_random_test_mean'), evo_ci)}"
        f" ({s04.get('evolution_minus_random_verdict')}) |", "",
        "Containment (APQ searched at MobileNetV2's cost, same realisation path, "
        f"{s04.get('search_seeds', 1)} searches × {s04.get('finetune_seeds')} finetune "
        "seeds against the network's finetune seeds; ok when the lower bound of APQ − "
        "baseline is ≥ −0.3 points):", "",
        "| baseline | cost | budget | APQ − baseline [95 % CI] | ok | verdict |",
        "| --- | --- | --- | --- | --- | --- |"]
    for c in s04.get("containment", []):
        lines.append(f"| {c['baseline']} | {c['constraint']} | {c['budget']:.4g} | "
                     f"{_ci(c['apq_minus_baseline'], [c['ci_low'], c['ci_high']])} | "
                     f"{c['ok']} | {c['verdict']} |")
    vc = d / "tables" / "04_apq_vs_best_corner.csv"
    if vc.exists():
        lines += ["", "APQ against the best corner its budget affords (smallest, MobileNetV2, "
                      "largest at W4A4 / W6A6 / W8A8, the corner chosen by its test top-1, "
                      "which favours it), `results/tables/04_apq_vs_best_corner.csv`:", "",
                  "| cost | budget | budget from | APQ top-1 | best affordable corner | "
                  "corner top-1 | APQ − corner [95 % CI] | verdict (Holm) |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for _, r in pd.read_csv(vc).iterrows():
            corner = "none" if pd.isna(r["corner"]) else r["corner"]
            lines.append(f"| {r['constraint']} | {r['limit']:.4g} | {r['budget_from']} | "
                         f"{_f(r['apq_test_acc'])} | {corner} | {_f(r['corner_test_acc'])} | "
                         f"{_ci(r['apq_minus_corner'], [r['ci_low'], r['ci_high']])} | "
                         f"{r['verdict']} |")
    head = ["| cost | baseline | baseline top-1 | APQ top-1 at its cost | seeds APQ / base | "
            "APQ − baseline [95 % CI] | cost ratio at equal top-1 | verdict (Holm) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, title in (("06_table1_joint_vs_haq", "Table 1 (latency, energy)"),
                        ("06_table3_limited_bitops", "Table 3 (BitOps)")):
        f = d / "tables" / f"{name}.csv"
        if f.exists():
            lines += ["", f"{title}, `results/tables/{name}.csv` (a ratio marked ≥ is a lower "
                      "bound: APQ's cheapest model is already as accurate):", "", *head,
                      *_table_rows(pd.read_csv(f))]
    t2 = d / "tables" / "06_table2_joint_vs_multistage.csv"
    if t2.exists():
        lines += ["", "Table 2 (APQ − multi-stage at the same budget):", ""]
        for _, r in pd.read_csv(t2).iterrows():
            lines.append(f"- {r['budget']}: {_f(r['APQ top-1'])} vs {_f(r['multi-stage top-1'])}"
                         f" %, {_ci(r['top-1 gain'], [r['ci_low'], r['ci_high']])} points, "
                         f"{r['verdict']}")
    trend = s05.get("haq_reward_trend") or {}
    if trend:
        flat = sum(bool(t["flat"]) for t in trend.values())
        lines += ["", f"HAQ's reward curves flat over the last third of their episodes (drift "
                      f"within one reward's standard error): {flat} of {len(trend)} ("
                      + ", ".join(f"{k}: {t['drift']:+.2f} vs ±{t['reward_se']:.2f} points"
                                  for k, t in trend.items()) + ")."]
    sa = s05.get("mbv2_standalone")
    if sa:
        lines += ["", f"MobileNetV2 trained standalone ({sa['epochs']} epochs, "
                      f"{sa['seconds']:.0f} s): FP32 test top-1 {_f(sa['fp32_test_acc'])} %, "
                      f"against {_f(s05.get('mbv2_fp32_test_acc'))} % inherited from the "
                      f"supernet."]
    skipped = s05.get("skipped_targets") or []
    if skipped:
        lines += ["", f"Baseline targets below MobileNetV2's lowest-bit cost, skipped: "
                      f"{len(skipped)}."]
    return "\n".join(lines) + "\n"


def render_bench(results_dir: Path) -> str:
    """The benchmarks' block: fake quant (ours against aten, per device) and the seconds
    per predictor pair, from ``results_dir/bench/*.csv``."""
    d = Path(results_dir) / "bench"
    lines = []
    for f in sorted(d.glob("fake_quant_*.csv")):
        t = pd.read_csv(f)
        r = t["speedup"]
        impl = "/".join(sorted(t["ours_impl"].unique()))
        lines.append(f"- `{f.name}` ({t['machine'].iloc[0]}, torch {t['torch'].iloc[0]}, "
                     f"ours = {impl}): aten time / ours, forward + backward, median "
                     f"x{r.median():.2f} (x{r.min():.2f}-x{r.max():.2f}); ours faster in "
                     f"{int((r > 1).sum())} of {len(t)} cases.")
    for f in sorted(d.glob("pair_collection_*.csv")):
        t = pd.read_csv(f)
        q = t[t["kind"] == "quant"]
        per_steps = ", ".join(f"{int(k)} QAT steps {v:.2f} s" for k, v in
                              q.groupby("steps")["seconds"].median().items())
        slope = (np.polyfit(q["steps"].astype(float), q["seconds"].astype(float), 1)[0]
                 if q["steps"].nunique() > 1 else float("nan"))
        fp32 = t[t["kind"] == "fp32"]["seconds"]
        lines.append(f"- `{f.name}` ({t['machine'].iloc[0]}, torch {t['torch'].iloc[0]}, "
                     f"{int(t['workers'].iloc[0])} loader workers; {int(t['recal_images'].iloc[0])}"
                     f" recal + {int(t['eval_images'].iloc[0])} eval images per pair, QAT batch "
                     f"{int(t['batch_size'].iloc[0])}; median of {len(fp32)}"
                     f" pairs each): FP32 pair {fp32.median():.2f} s; quantized pair {per_steps}; "
                     f"{_f(slope, 3)} s per QAT step (least squares).")
    f = d / "train_step_cpu.csv"
    if f.exists():
        t = pd.read_csv(f)
        lines.append("- `train_step_cpu.csv`: " + "; ".join(
            f"{r['variant']} {r['median_step_ms']:.0f} ms (x{r['speedup_vs_static']:.2f})"
            for _, r in t.iterrows()) + ".")
    return "\n".join(lines) + "\n"


def _replace_block(text: str, begin: str, end: str, body: str, readme: Path) -> str:
    if begin not in text or end not in text:
        raise ValueError(f"{readme}: no block {begin} … {end}")
    pre, rest = text.split(begin, 1)
    _, post = rest.split(end, 1)
    return f"{pre}{begin}\n{body}{end}{post}"


def update_readme(readme: Path, results_dir: Path, check: bool = False) -> bool:
    """Rewrite the blocks between :data:`BEGIN` and :data:`END` (results) and, where the
    README has them, :data:`BENCH_BEGIN` and :data:`BENCH_END` (benchmarks); with ``check``
    only report whether they are current. Returns True when the README holds them."""
    text = readme.read_text()
    new = _replace_block(text, BEGIN, END, render_results(results_dir), readme)
    if BENCH_BEGIN in new:
        new = _replace_block(new, BENCH_BEGIN, BENCH_END, render_bench(results_dir), readme)
    if check:
        return new == text
    readme.write_text(new)
    return True


def main(argv: Optional[list] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--results", default=str(REPO_ROOT / "results"))
    ap.add_argument("--readme", default=str(REPO_ROOT / "README.md"))
    ap.add_argument("--check", action="store_true")
    a = ap.parse_args(argv)
    ok = update_readme(Path(a.readme), Path(a.results), a.check)
    if a.check and not ok:
        print(f"{a.readme}: results block differs from {a.results}: run `make readme`")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
