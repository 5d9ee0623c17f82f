"""The one figure-saving helper every plot module uses: atomic, folders created, umask honoured."""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Any, Union

__all__ = ["save_figure"]


def save_figure(fig: Any, path: Union[str, os.PathLike], dpi: int = 120) -> Path:
    """Save ``fig`` atomically: write a temp file next to ``path``, then ``os.replace`` it.

    Parent folders are created. The format follows the suffix (PNG without one). The file gets the
    usual permissions (``0o666`` less the umask), and a failure leaves neither ``path`` nor a
    temporary file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = path.suffix[1:].lower() or "png"
    # Not tempfile.mkstemp: its files are mode 0600; os.open with 0o666 honours the umask like
    # an ordinary savefig would.
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            fig.savefig(fh, format=fmt, dpi=dpi, bbox_inches="tight")
        os.replace(tmp, path)  # atomic on POSIX and Windows (same folder, same filesystem)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path
