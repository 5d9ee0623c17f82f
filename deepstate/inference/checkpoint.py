"""Atomic checkpoint files, and capturing / restoring every random number generator.

A checkpoint is a plain ``dict`` of tensors, numbers, strings and lists saved with :func:`torch.save`
and read back with ``torch.load(..., weights_only=True)`` (no arbitrary unpickling). It is written
**atomically**: to a temporary file in the destination folder, flushed and ``fsync``-ed, then
renamed over the destination with :func:`os.replace`. A crash at any point leaves either the old
file or the new one, never a half-written file; a failed write removes its temporary file.

Example:
    >>> atomic_save({"step": 3, "w": torch.zeros(2)}, "run/checkpoint.pt")    # doctest: +SKIP
    >>> load_checkpoint("run/checkpoint.pt")["step"]                             # doctest: +SKIP
    3
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

__all__ = ["atomic_save", "load_checkpoint", "get_rng_state", "set_rng_state", "CHECKPOINT_NAME"]

PathLike = Union[str, os.PathLike]

#: File name of the rolling checkpoint inside a trainer's ``checkpoint_dir``.
CHECKPOINT_NAME = "checkpoint.pt"


def _check_path(path: Any, name: str = "path") -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name}: expected a file path (str or os.PathLike), got {type(path).__name__}")
    p = Path(path)
    if str(path) == "" or p.is_dir():
        raise ValueError(f"{name}: expected a file path, got the directory {str(path)!r}")
    return p


def atomic_save(obj: Any, path: PathLike) -> Path:
    """Save ``obj`` with :func:`torch.save` to ``path`` atomically (temp file, fsync, ``os.replace``).

    The parent folder is created if needed. Returns the path written.
    """
    path = _check_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    # make the rename itself durable (best effort: not every platform can fsync a directory)
    try:
        dfd = os.open(str(path.parent), os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return path


def load_checkpoint(path: PathLike, map_location: Any = None, kind: Optional[str] = None) -> dict:
    """Load a file written by :func:`atomic_save` with ``weights_only=True``.

    Args:
        path: the file.
        map_location: as in :func:`torch.load` (e.g. ``"cpu"`` to load a GPU checkpoint on a CPU machine).
        kind: if given, the file's ``"format"`` entry must equal it.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is corrupted, truncated, not a torch file, not a dict, or of another kind.
    """
    path = _check_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: no file at {str(path)!r}")
    try:
        obj = torch.load(str(path), map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError, zipfile errors...
        raise ValueError(
            f"path: {str(path)!r} is not a readable deepstate checkpoint (corrupted, truncated or another "
            f"kind of file): {type(err).__name__}: {err}"
        ) from err
    if not isinstance(obj, dict):
        raise ValueError(f"path: {str(path)!r} holds a {type(obj).__name__}, not a deepstate checkpoint dict")
    if kind is not None and obj.get("format") != kind:
        raise ValueError(f"path: {str(path)!r} is not a {kind!r} file (format {obj.get('format')!r})")
    return obj


# ---------------------------------------------------------------------------- random number generators
def get_rng_state(device: Optional[Union[str, torch.device]] = None) -> dict:
    """Every global RNG state as weights-only-loadable values: torch (CPU and, for a CUDA ``device``,
    that device's generator), numpy's legacy global generator and Python's :mod:`random`."""
    np_state = np.random.get_state(legacy=False)
    state = {
        "torch": torch.random.get_rng_state(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np.asarray(np_state["state"]["key"], dtype=np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "python": _python_state_to_list(random.getstate()),
        "cuda": None,
    }
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda" and torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: Optional[Union[str, torch.device]] = None) -> None:
    """Restore what :func:`get_rng_state` captured."""
    torch.random.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state({
        "bit_generator": n["bit_generator"],
        "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
        "has_gauss": n["has_gauss"],
        "gauss": n["gauss"],
    })
    random.setstate(_python_state_from_list(state["python"]))
    device = torch.device(device) if device is not None else None
    if state.get("cuda") is not None and device is not None and device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def _python_state_to_list(st) -> list:
    version, internal, gauss = st
    return [int(version), list(internal), gauss]


def _python_state_from_list(lst) -> tuple:
    version, internal, gauss = lst
    return (int(version), tuple(int(i) for i in internal), gauss)
