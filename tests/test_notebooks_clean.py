"""Tracked notebooks are committed clean: no outputs, no execution counts, no papermill
leftovers, the canonical ``parameters`` cell and the ``apq`` kernel. Cells marked
``# NBVAL_CHECK_OUTPUT`` keep the reference output nbval compares against. Interactive runs (make
lab) save outputs and edited parameters into notebooks/*.ipynb; this check stops them."""
import subprocess
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
PARAMETERS = 'profile = "default"\noverrides = {}\nforce = False'


def tracked_notebooks() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "notebooks/*.ipynb"], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout.split()
        return [ROOT / p for p in out]
    except (OSError, subprocess.CalledProcessError):   # not a git checkout
        return sorted((ROOT / "notebooks").glob("*.ipynb"))


def problems(nb) -> list[str]:
    """What is not clean in one notebook (empty list: clean)."""
    bad = []
    code = [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    for i, c in code:
        if "NBVAL_CHECK_OUTPUT" in c.source:
            continue   # holds the reference output nbval compares (env/bless_nbval.py)
        if c.get("outputs"):
            bad.append(f"cell {i} has {len(c.outputs)} output(s)")
        if c.get("execution_count") is not None:
            bad.append(f"cell {i} has execution_count {c.execution_count}")
        if "injected-parameters" in c.metadata.get("tags", []):
            bad.append(f"cell {i} is a papermill injected-parameters cell")
    if not code or "parameters" not in code[0][1].metadata.get("tags", []):
        bad.append("the first code cell is not tagged 'parameters'")
    elif code[0][1].source.strip() != PARAMETERS:
        bad.append(f"the parameters cell was edited: {code[0][1].source.strip()!r} "
                   f"(expected {PARAMETERS!r}; set values with overrides or a profile)")
    if "papermill" in nb.metadata:
        bad.append("notebook metadata has a 'papermill' section (an executed copy?)")
    if nb.metadata.get("kernelspec", {}).get("name") != "apq":
        bad.append(f"kernel is {nb.metadata.get('kernelspec', {}).get('name')!r}, not 'apq'")
    return bad


def test_notebooks_are_tracked():
    assert len(tracked_notebooks()) >= 6


@pytest.mark.parametrize("path", tracked_notebooks(), ids=lambda p: p.stem)
def test_tracked_notebook_is_clean(path):
    bad = problems(nbformat.read(path, as_version=4))
    assert not bad, (f"{path.relative_to(ROOT)} is not clean: " + "; ".join(bad) +
                     ". Clear outputs (JupyterLab: Edit > Clear Outputs of All Cells, or "
                     "`jupyter nbconvert --clear-output --inplace`) and restore the parameters "
                     "cell before committing.")


def test_check_catches_outputs_and_edited_parameters():
    nb = nbformat.read(ROOT / "notebooks" / "02_hardware.ipynb", as_version=4)
    assert problems(nb) == []
    code = [c for c in nb.cells if c.cell_type == "code"]
    code[1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="x\n")]
    code[1].execution_count = 2
    code[0].source = 'profile = "smoke"\noverrides = {}\nforce = False'
    nb.metadata["papermill"] = {}
    found = "\n".join(problems(nb))
    for what in ("cell 2 has 1 output(s)", "execution_count 2", "parameters cell was edited",
                 "papermill"):
        assert what in found


def test_nbval_reference_output_is_allowed():
    nb = nbformat.read(ROOT / "notebooks" / "02_hardware.ipynb", as_version=4)
    cell = nbformat.v4.new_code_cell("# NBVAL_CHECK_OUTPUT\nprint('ok')", execution_count=1,
                                     outputs=[nbformat.v4.new_output("stream", text="ok\n")])
    nb.cells.append(cell)
    assert problems(nb) == []
    cell.source = "print('ok')"
    assert problems(nb) == [f"cell {len(nb.cells) - 1} has 1 output(s)",
                            f"cell {len(nb.cells) - 1} has execution_count 1"]


MAX_CODE_LINES = 150      # narrative, parameters, library calls and plots; logic in apq_lib


def thinness(nb) -> list[str]:
    """What makes a notebook more than a thin driver: over ``MAX_CODE_LINES`` code lines,
    or a function / class defined in a cell."""
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    n = sum(len(s.splitlines()) for s in code)
    bad = [f"{n} code lines (limit {MAX_CODE_LINES})"] if n > MAX_CODE_LINES else []
    bad += [f"defines {line.split('(')[0].split(':')[0]!r}" for s in code
            for line in s.splitlines() if line.startswith(("def ", "class ", "async def "))]
    return bad


def test_thinness_check_catches_long_notebooks_and_definitions():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1\n" * 151),
                nbformat.v4.new_code_cell("def helper(a):\n    return a")]
    assert thinness(nb) == ["153 code lines (limit 150)", "defines 'def helper'"]


@pytest.mark.parametrize("path", tracked_notebooks(), ids=lambda p: p.stem)
def test_notebook_is_thin(path):
    bad = thinness(nbformat.read(path, as_version=4))
    assert not bad, f"{path.relative_to(ROOT)}: " + "; ".join(bad) + " (move logic to apq_lib)"
