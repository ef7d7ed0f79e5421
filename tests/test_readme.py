"""The README's results block is the one ``make readme`` writes from the committed results:
a number edited by hand in the README, or results rerun without ``make readme``, fail here."""
from pathlib import Path

from apq_lib.readme import BEGIN, END, render_results, update_readme

ROOT = Path(__file__).resolve().parent.parent


def test_readme_results_block_is_written_from_results():
    assert update_readme(ROOT / "README.md", ROOT / "results", check=True), \
        "README.md's results block differs from results/: run `make readme` and commit"


def test_a_hand_edit_in_the_block_is_caught(tmp_path):
    block = render_results(ROOT / "results")
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{BEGIN}\n{block}{END}\nafter\n")
    assert update_readme(readme, ROOT / "results", check=True)
    first = next(line for line in block.splitlines() if "|" in line and any(
        ch.isdigit() for ch in line))
    i = next(k for k, ch in enumerate(first) if ch.isdigit())
    edited = first[:i] + str((int(first[i]) + 1) % 10) + first[i + 1:]
    readme.write_text(readme.read_text().replace(first, edited, 1))
    assert not update_readme(readme, ROOT / "results", check=True)


def test_bench_block_counts_from_the_csvs(tmp_path):
    """The Speed block's numbers are the CSVs' own: median and range of aten/ours, how many
    cases ours wins, and the least-squares seconds per QAT step of the pair timing."""
    import pandas as pd

    from apq_lib.readme import render_bench
    b = tmp_path / "bench"
    b.mkdir()
    pd.DataFrame({"speedup": [0.5, 2.0, 1.5, 0.25], "ours_impl": ["triton"] * 4,
                  "machine": ["GPU X"] * 4, "torch": ["2.11"] * 4}).to_csv(
        b / "fake_quant_cuda-x.csv", index=False)
    rows = [("fp32", 0, 4.0), ("fp32", 0, 6.0), ("quant", 5, 2.0), ("quant", 5, 2.0),
            ("quant", 25, 6.0), ("quant", 25, 6.0)]
    pd.DataFrame([{"kind": k, "steps": s, "seconds": t, "batch_size": 64, "recal_images": 8,
                   "eval_images": 16, "machine": "GPU X", "torch": "2.11", "workers": 2}
                  for k, s, t in rows]).to_csv(b / "pair_collection_cuda-x.csv", index=False)
    text = render_bench(tmp_path)
    assert "median x1.00 (x0.25-x2.00); ours faster in 2 of 4 cases" in text
    assert "FP32 pair 5.00 s" in text and "0.200 s per QAT step" in text
