"""Copy the outputs of cells marked ``# NBVAL_CHECK_OUTPUT`` from an executed smoke-profile
notebook into the source notebook, so nbval (``make nbcheck``) has the expected outputs.

    python env/bless_nbval.py build/executed/06_paper_tables.ipynb notebooks/06_paper_tables.ipynb
"""
import sys

import nbformat


def bless(executed: str, source: str) -> int:
    ex = nbformat.read(executed, as_version=4)
    src = nbformat.read(source, as_version=4)
    done = {c.source: c.outputs for c in ex.cells
            if c.cell_type == "code" and "NBVAL_CHECK_OUTPUT" in c.source}
    n = 0
    for c in src.cells:
        if c.cell_type == "code":
            if c.source in done:
                c.outputs = [o for o in done[c.source] if o.output_type == "stream"]
                n += 1
                c.execution_count = n          # nbval skips cells marked as never run
            else:
                c.outputs, c.execution_count = [], None
    nbformat.write(src, source)
    return n


if __name__ == "__main__":
    print(f"blessed {bless(sys.argv[1], sys.argv[2])} cell(s)")
