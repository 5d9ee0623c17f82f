"""Locating, verifying, downloading and safely unpickling data files.

Rules (see DESIGN.md, "Conventions"):

* A data file is looked up in ``data_dir`` (argument), then ``$DEEPSTATE_DATA``, then the user
  cache directory (:func:`cache_dir`).
* Its sha256 is checked **before** it is parsed or unpickled; a mismatch raises
  :class:`ChecksumError` (it never silently falls through to another copy).
* Nothing is ever written into ``data_dir`` or ``$DEEPSTATE_DATA``. A download (only when allowed
  and never under pytest) goes to the user cache through a temporary file that is verified and
  then renamed, so no half-written file is left behind.
* Pickles are read with :class:`RestrictedUnpickler`, which resolves only an explicit allow-list
  of globals.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tempfile
import urllib.request
from pathlib import Path
from typing import Optional, Union

__all__ = [
    "ChecksumError",
    "RestrictedUnpickler",
    "cache_dir",
    "data_file_candidates",
    "find_data_file",
    "numpy_scalar_globals",
    "restricted_loads",
    "sha256_bytes",
    "sha256_file",
]

PathLike = Union[str, "os.PathLike[str]"]

#: Environment variable naming the shared data folder.
DATA_ENV = "DEEPSTATE_DATA"
#: Environment variable overriding the user cache folder.
CACHE_ENV = "DEEPSTATE_CACHE"


class ChecksumError(ValueError):
    """A data file's sha256 does not match the expected value (corrupt or wrong file)."""


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 digest of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 digest of the file at ``path`` (read in chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_dir() -> Path:
    """The user cache folder for downloaded data (not created here).

    ``$DEEPSTATE_CACHE`` if set, else ``$XDG_CACHE_HOME/deepstate``, else ``~/.cache/deepstate``.
    """
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "deepstate"


def _under_pytest() -> bool:
    return "PYTEST_CURRENT_TEST" in os.environ


def _check_sha(data: bytes, expected: Optional[str], path: Path) -> None:
    if expected is None:
        return
    got = sha256_bytes(data)
    if got != expected:
        raise ChecksumError(
            f"{path}: sha256 mismatch (expected {expected}, got {got}); the file is corrupt or not "
            f"the expected one. Replace it with a good copy (or delete it from the cache to download again)."
        )


def _candidates(filename: str, data_dir: Optional[PathLike]) -> list:
    out = []
    if data_dir is not None:
        out.append(("data_dir argument", Path(data_dir).expanduser() / filename))
    env = os.environ.get(DATA_ENV)
    if env:
        out.append((f"${DATA_ENV}", Path(env).expanduser() / filename))
    out.append(("user cache", cache_dir() / filename))
    return out


def data_file_candidates(filename: str, data_dir: Optional[PathLike] = None) -> list:
    """Where :func:`find_data_file` looks for ``filename``, in order: ``[(label, Path), ...]``
    (``data_dir``, ``$DEEPSTATE_DATA`` when set, the user cache)."""
    return _candidates(filename, data_dir)


def _download(url: str, dest: Path, sha256: Optional[str], timeout: float) -> None:
    """Download ``url`` into ``dest`` via a verified temporary file in the same folder."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=timeout) as resp:
            h = hashlib.sha256()
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                h.update(chunk)
                f.write(chunk)
        got = h.hexdigest()
        if sha256 is not None and got != sha256:
            raise ChecksumError(f"download of {url}: sha256 mismatch (expected {sha256}, got {got})")
        os.replace(tmp, dest)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def find_data_file(
    filename: str,
    data_dir: Optional[PathLike] = None,
    sha256: Optional[str] = None,
    url: Optional[str] = None,
    download: bool = True,
    timeout: float = 60.0,
) -> tuple:
    """Find ``filename``, verify it, and return ``(path, contents)``.

    Looks in ``data_dir``, then ``$DEEPSTATE_DATA``, then :func:`cache_dir`. The first existing copy
    is read and its sha256 compared with ``sha256`` (when given) before the bytes are returned, so
    callers parse exactly the bytes that were verified.

    If no copy exists and ``download`` is true and ``url`` is given and we are not running under
    pytest, the file is downloaded into the user cache (temporary file, checksum, rename).

    Args:
        filename: file name (no directories), e.g. ``"jsb_chorales.pickle"``.
        data_dir: optional folder to look in first.
        sha256: expected hex digest, or ``None`` to skip the check.
        url: where to download from when absent everywhere.
        download: allow downloading (never done under pytest).
        timeout: network timeout in seconds.

    Returns:
        ``(pathlib.Path, bytes)``.

    Raises:
        ChecksumError: the first copy found (or the download) has the wrong sha256.
        FileNotFoundError: no copy, and no download was allowed or possible; the message names the
            options (``data_dir``, ``$DEEPSTATE_DATA``, the cache path, ``download=True``).
    """
    if not isinstance(filename, str) or not filename or os.path.basename(filename) != filename:
        raise ValueError(f"filename: expected a plain file name, got {filename!r}")
    if data_dir is not None and not isinstance(data_dir, (str, os.PathLike)):
        raise TypeError(f"data_dir: expected a path (str or os.PathLike) or None, got {type(data_dir).__name__}")
    candidates = _candidates(filename, data_dir)
    for _, path in candidates:
        if path.is_file():
            data = path.read_bytes()
            _check_sha(data, sha256, path)
            return path, data

    cache_path = cache_dir() / filename
    why = ""
    if url is None:
        why = "no download source is known for this file"
    elif not download:
        why = "download=False"
    elif _under_pytest():
        why = "downloads are disabled under pytest"
    else:
        _download(url, cache_path, sha256, timeout)
        data = cache_path.read_bytes()
        _check_sha(data, sha256, cache_path)
        return cache_path, data

    looked = "\n".join(f"  - {label}: {p}" for label, p in candidates)
    raise FileNotFoundError(
        f"{filename} not found. Looked in:\n{looked}\n"
        f"Options: pass data_dir=<folder containing {filename}>, set ${DATA_ENV} to such a folder, "
        f"put the file at {cache_path} (user cache; override with ${CACHE_ENV})"
        + (f", or call with download=True to fetch it from {url}" if url else "")
        + f". Not downloaded: {why}."
    )


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only allow-listed globals and refuses everything else.

    Args:
        file: binary file object.
        allowed: mapping ``(module, name) -> object`` of the only globals the pickle may reference.
        **kwargs: passed to :class:`pickle.Unpickler` (e.g. ``encoding="latin1"`` for Python 2 pickles).
    """

    def __init__(self, file, allowed: dict, **kwargs):
        super().__init__(file, **kwargs)
        self._allowed = dict(allowed)

    def find_class(self, module: str, name: str):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: not in the allow-list of this data file"
            ) from None


def restricted_loads(data: bytes, allowed: dict, **kwargs):
    """Unpickle ``data`` with :class:`RestrictedUnpickler` (see there)."""
    return RestrictedUnpickler(io.BytesIO(data), allowed, **kwargs).load()


def numpy_scalar_globals() -> dict:
    """Allow-list for pickles of numpy scalars: ``numpy.core.multiarray.scalar`` and ``numpy.dtype``.

    The pickle names ``numpy.core.*`` (numpy 1); on numpy 2 the function lives in ``numpy._core``.
    """
    import numpy as np

    try:
        from numpy._core.multiarray import scalar  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import scalar
    return {
        ("numpy.core.multiarray", "scalar"): scalar,
        ("numpy._core.multiarray", "scalar"): scalar,
        ("numpy", "dtype"): np.dtype,
    }
