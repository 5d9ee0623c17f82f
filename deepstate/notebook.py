"""What every example notebook (``examples/*_notebook.py``) sets up first, in one place.

:func:`notebook_setup` picks matplotlib's file backend when run as a plain script (so it writes PNGs
and opens no window), reads the fast mode (``DEEPSTATE_FAST=1``, what the test suite runs) and the
output folder (``DEEPSTATE_OUT``, default ``notebook-out/<name>``), and returns a ``display`` that
renders tables in Jupyter and prints them in a terminal, and a ``show`` that saves and shows a figure.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["notebook_setup"]


def notebook_setup(name: str, single_thread: bool = True):
    """``(FAST, OUT, display, show)`` for the notebook ``name``; call it before importing ``matplotlib.pyplot``.

    ``show(fig, filename)`` saves a figure under ``OUT`` and shows it (inline in a notebook; nothing
    to show when run as a script), then closes it.

    Args:
        name: the notebook's name (the default output folder is ``notebook-out/<name>``).
        single_thread: ``torch.set_num_threads(1)``: these notebooks run small tensors, for which extra
            intra-op threads only add overhead on a few cores.
    """
    import matplotlib
    import pandas as pd

    try:
        from IPython import get_ipython as _get

        interactive = _get() is not None
    except ImportError:
        interactive = False
    if not interactive:
        matplotlib.use("Agg")  # a plain script: write the files, open no window
    try:
        from IPython.display import display
    except ImportError:  # plain python without IPython
        display = print
    if not interactive:
        display = print
    pd.set_option("display.width", 160, "display.max_columns", 20)  # whole tables when run as a script
    fast = os.environ.get("DEEPSTATE_FAST", "") not in ("", "0")
    out = Path(os.environ.get("DEEPSTATE_OUT", f"notebook-out/{name}"))
    out.mkdir(parents=True, exist_ok=True)
    if single_thread:
        import torch

        torch.set_num_threads(1)

    def show(fig, filename):
        import matplotlib.pyplot as plt

        fig.savefig(out / filename, dpi=110, bbox_inches="tight")
        if matplotlib.get_backend().lower() != "agg":
            plt.show()
        plt.close(fig)

    return fast, out, display, show
