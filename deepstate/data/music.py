"""Polyphonic music benchmarks (Boulanger-Lewandowski et al., 2012) as 88-key piano rolls.

The pickle ``jsb_chorales.pickle`` is a dict with keys ``train``/``valid``/``test``; each value is
a list of sequences, each sequence a list of frames, each frame a tuple of MIDI pitches in
``21..108`` (numpy int64 scalars). Pitch ``p`` becomes column ``p - 21`` of a binary roll, so
``D = 88`` and ``x`` is in ``{0, 1}``.

Splits of JSB chorales: 229 / 76 / 77 sequences, 13807 / 4602 / 4725 frames.

The file is found in ``data_dir``, ``$DEEPSTATE_DATA`` or the user cache (see
:func:`deepstate.data.files.find_data_file`), its sha256 is checked before unpickling, and it is
unpickled with an allow-list of the two numpy globals it needs.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .batch import SequenceBatch
from .files import find_data_file, numpy_scalar_globals, restricted_loads

__all__ = ["POLYPHONIC_DATASETS", "load_polyphonic", "notes_to_piano_roll", "piano_roll_to_notes"]

#: Lowest MIDI pitch of an 88-key piano (A0); pitch p is column p - MIN_PITCH.
MIN_PITCH = 21
#: Highest MIDI pitch (C8).
MAX_PITCH = 108
NUM_KEYS = MAX_PITCH - MIN_PITCH + 1

#: name -> (file name, sha256, download URL)
POLYPHONIC_DATASETS = {
    "jsb_chorales": (
        "jsb_chorales.pickle",
        "69dc4c3e52800959ac0ab3b82aa3e5f55285ce64f1705acb3e3a8ef77a5c051c",
        "https://d2hg8soec8ck9v.cloudfront.net/datasets/polyphonic/jsb_chorales.pickle",
    ),
}

SPLITS = ("train", "valid", "test")


def notes_to_piano_roll(frames: Sequence[Sequence[int]], name: str = "frames") -> np.ndarray:
    """A list of ``T`` frames (each an iterable of MIDI pitches in 21..108) -> ``[T, 88]`` 0/1 array."""
    T = len(frames)
    roll = np.zeros((T, NUM_KEYS), dtype=np.float32)
    for t, frame in enumerate(frames):
        pitches = np.asarray(list(frame), dtype=np.int64) if len(frame) else np.zeros(0, dtype=np.int64)
        if pitches.size and (pitches.min() < MIN_PITCH or pitches.max() > MAX_PITCH):
            raise ValueError(f"{name}[{t}]: pitches must be in {MIN_PITCH}..{MAX_PITCH}, got {sorted(pitches.tolist())}")
        roll[t, pitches - MIN_PITCH] = 1.0
    return roll


def piano_roll_to_notes(roll: Any, threshold: float = 0.5) -> List[Tuple[int, ...]]:
    """Inverse of the piano-roll encoding.

    Args:
        roll: ``[T, 88]`` array or tensor (values above ``threshold`` are "on"), or a
            one-sequence :class:`SequenceBatch` (its valid steps).
        threshold: activation threshold.

    Returns:
        list of ``T`` tuples of sorted MIDI pitches (an empty tuple for a silent frame).
    """
    if isinstance(roll, SequenceBatch):
        if roll.batch_size != 1:
            raise ValueError(f"roll: expected a single sequence, got a batch of {roll.batch_size}; index it first")
        roll = roll.x[0, : int(roll.lengths[0])]
    if isinstance(roll, torch.Tensor):
        roll = roll.detach().cpu().numpy()
    arr = np.asarray(roll)
    if not np.issubdtype(arr.dtype, np.number) and arr.dtype != bool:
        raise TypeError(f"roll: expected numeric values, got dtype {arr.dtype}")
    if arr.ndim != 2 or arr.shape[1] != NUM_KEYS:
        raise ValueError(f"roll: expected shape [T, {NUM_KEYS}], got {arr.shape}")
    on = arr > threshold
    return [tuple(int(k) + MIN_PITCH for k in np.flatnonzero(row)) for row in on]


def load_polyphonic(
    name: str = "jsb_chorales",
    data_dir: Optional[Any] = None,
    download: bool = True,
    dtype: Optional[torch.dtype] = None,
) -> dict:
    """Load a polyphonic music dataset as ``{"train", "valid", "test"} -> SequenceBatch``.

    Each batch has ``x [B, T_max, 88]`` in ``{0, 1}``, ``observed = valid`` broadcast over keys,
    and ``names = ["<split>/<i>", ...]``.

    Args:
        name: dataset name; one of :data:`POLYPHONIC_DATASETS` (``"jsb_chorales"``).
        data_dir: folder to look in first (then ``$DEEPSTATE_DATA``, then the user cache).
        download: if absent everywhere, download into the user cache (never under pytest, never
            into ``data_dir`` / ``$DEEPSTATE_DATA``).
        dtype: float dtype of ``x`` (default: torch's default dtype).

    Raises:
        ValueError: unknown ``name``; :class:`~deepstate.data.files.ChecksumError` (a ValueError)
            on a sha256 mismatch, raised before unpickling.
        FileNotFoundError: the file is nowhere and was not downloaded (the message names the options).
    """
    if not isinstance(name, str) or name not in POLYPHONIC_DATASETS:
        raise ValueError(f"name: expected one of {sorted(POLYPHONIC_DATASETS)}, got {name!r}")
    dtype = torch.get_default_dtype() if dtype is None else dtype
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype: expected a floating torch.dtype, got {dtype!r}")
    filename, sha, url = POLYPHONIC_DATASETS[name]
    path, raw = find_data_file(filename, data_dir=data_dir, sha256=sha, url=url, download=download)
    # Python 2 pickle: its byte strings (numpy scalar payloads) need latin1.
    data = restricted_loads(raw, numpy_scalar_globals(), encoding="latin1")
    if not isinstance(data, dict) or not set(SPLITS) <= set(data):
        raise ValueError(f"{path}: expected a dict with keys {SPLITS}, got {type(data).__name__}")
    out = {}
    for split in SPLITS:
        seqs = data[split]
        if not isinstance(seqs, list) or len(seqs) == 0:
            raise ValueError(f"{path}: split {split!r} is not a non-empty list of sequences")
        rolls = [notes_to_piano_roll(s, name=f"{split}[{i}]") for i, s in enumerate(seqs)]
        out[split] = SequenceBatch.from_sequences(rolls, names=[f"{split}/{i}" for i in range(len(rolls))], dtype=dtype)
    return out
