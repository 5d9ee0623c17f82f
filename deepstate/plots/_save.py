"""The one figure-saving helper every plot module uses: atomic, folders created, umask honoured."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Union

from ..atomic import atomic_path

__all__ = ["save_figure"]


def save_figure(fig: Any, path: Union[str, os.PathLike], dpi: int = 120) -> Path:
    """Save ``fig`` atomically: write a temp file next to ``path``, then ``os.replace`` it.

    Parent folders are created. The format follows the suffix (PNG without one). The file gets the
    usual permissions (``0o666`` less the umask), and a failure leaves neither ``path`` nor a
    temporary file behind.
    """
    path = Path(path)
    fmt = path.suffix[1:].lower() or "png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight")
    return path
