"""Progress bars for the long loops (DESIGN.md, conventions): tqdm's widget bars when a
person runs a notebook in JupyterLab, plain text bars when the notebook is executed
headless (``make reproduce`` and ``make test`` set ``APQ_PROGRESS=text``) or in a terminal.

Headless runs have no frontend to draw widgets, so a widget bar would be stored in the
executed notebook as its 0 % placeholder; a text bar is stored as the final line instead.
"""
from __future__ import annotations

import os

__all__ = ["text_mode", "tqdm"]


def text_mode() -> bool:
    """True when ``APQ_PROGRESS=text`` asks for plain text bars."""
    return os.environ.get("APQ_PROGRESS", "").strip().lower() == "text"


def tqdm(*args, **kwargs):
    """``tqdm.auto.tqdm`` (widgets in Jupyter) unless :func:`text_mode`; same arguments."""
    if text_mode():
        from tqdm.std import tqdm as bar
    else:
        from tqdm.auto import tqdm as bar
    return bar(*args, **kwargs)
