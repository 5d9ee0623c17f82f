"""Writing a file so that readers see the old file or the complete new one, never half of it.

:func:`atomic_path` hands a writer a temporary path next to the destination and renames it over the
destination only when the writer finished; a failure (or a kill) leaves the old file and removes the
temporary one. Writers open the temporary path themselves, so the file gets the usual permissions
(``0o666`` less the umask), which ``tempfile.mkstemp``'s 0600 files would not.
Checkpoints use :func:`deepstate.inference.checkpoint.atomic_save`, which also fsyncs.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Iterator, Union

__all__ = ["atomic_path", "write_text_atomic"]


@contextlib.contextmanager
def atomic_path(path: Union[str, os.PathLike]) -> Iterator[Path]:
    """``with atomic_path(dest) as tmp: write(tmp)``: ``tmp`` replaces ``dest`` when the block succeeds.

    Parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        yield tmp
        os.replace(tmp, path)  # atomic on POSIX and Windows (same folder, same filesystem)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: Union[str, os.PathLike], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
