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
