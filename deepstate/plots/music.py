"""Piano-roll pictures: observed and generated ``[T, 88]`` rolls side by side.

Time runs left to right, pitch upward, C's labelled with their note names (C4 = middle C, MIDI 60).
Takes arrays, never models; returns the Figure, ``path`` also saves a PNG.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence, Union

import numpy as np

from ._save import save_figure

__all__ = ["piano_roll", "note_name"]

_MIN_PITCH = 21
_NUM_KEYS = 88
_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


def note_name(pitch: int) -> str:
    """MIDI pitch -> scientific pitch name (60 -> ``"C4"``, 21 -> ``"A0"``)."""
    return f"{_NAMES[pitch % 12]}{pitch // 12 - 1}"


def _as_roll(roll: Any, i: int) -> np.ndarray:
    if hasattr(roll, "detach") and hasattr(roll, "cpu"):
        roll = roll.detach().cpu().numpy()
    arr = np.asarray(roll, dtype=float)
    if arr.ndim != 2 or arr.shape[1] != _NUM_KEYS or arr.shape[0] == 0:
        raise ValueError(f"rolls: expected [T, {_NUM_KEYS}] arrays, got shape {arr.shape} for roll {i}")
    return arr


def piano_roll(
    rolls: Any,
    titles: Optional[Sequence[str]] = None,
    path: Union[None, str, os.PathLike] = None,
    frame_seconds: Optional[float] = None,
    margin: int = 2,
):
    """Draw one or several piano rolls side by side (e.g. data vs generated).

    Args:
        rolls: a ``[T, 88]`` array/tensor or a list of them (lengths may differ). Values in
            ``[0, 1]``: 0/1 notes, or probabilities drawn as shades of grey.
        titles: one title per roll.
        path: optional PNG path (parent folders created, written atomically).
        frame_seconds: if given, the x axis is in seconds, else in frames.
        margin: keys of padding around the used pitch range (all panels share the crop).

    Returns:
        the Figure. x axis: "frame" (or "time (s)"), y axis: "pitch" with the C's labelled by name;
        the pitch range is cropped to the keys used in any roll (C3..C6 if every roll is silent).
    """
    import matplotlib.pyplot as plt

    if isinstance(rolls, (list, tuple)):
        arrs = [_as_roll(r, i) for i, r in enumerate(rolls)]
    else:
        arr = rolls.detach().cpu().numpy() if hasattr(rolls, "detach") else np.asarray(rolls)
        arrs = [_as_roll(r, i) for i, r in enumerate(arr)] if arr.ndim == 3 else [_as_roll(arr, 0)]
    if not arrs:
        raise ValueError("rolls: expected at least one roll")
    if titles is not None and len(titles) != len(arrs):
        raise ValueError(f"titles: expected {len(arrs)} titles, one per roll, got {len(titles)}")
    if frame_seconds is not None and not (np.isfinite(frame_seconds) and frame_seconds > 0):
        raise ValueError(f"frame_seconds: expected a positive number of seconds, got {frame_seconds!r}")

    used = np.flatnonzero(np.any([(a > 0).any(axis=0) for a in arrs], axis=0))
    if used.size:
        lo, hi = max(int(used[0]) - margin, 0), min(int(used[-1]) + margin, _NUM_KEYS - 1)
    else:
        lo, hi = 48 - _MIN_PITCH, 84 - _MIN_PITCH  # C3..C6
    keys = np.arange(lo, hi + 1)
    c_keys = keys[(keys + _MIN_PITCH) % 12 == 0]
    scale = 1.0 if frame_seconds is None else float(frame_seconds)

    widths = [max(a.shape[0], 8) for a in arrs]
    height = max(2.5, min(8.0, 0.09 * len(keys) + 1.2))
    fig, axes = plt.subplots(
        1, len(arrs), figsize=(min(4 + 0.06 * sum(widths), 18), height), sharey=True, squeeze=False,
        gridspec_kw={"width_ratios": widths},
    )
    for i, (ax, a) in enumerate(zip(axes[0], arrs)):
        T = a.shape[0]
        ax.imshow(
            a[:, lo : hi + 1].T, origin="lower", aspect="auto", cmap="Greys", vmin=0, vmax=1,
            interpolation="nearest", extent=(0, T * scale, lo - 0.5, hi + 0.5),
        )
        # faint lines at every C (octave boundaries) so pitches can be read across the picture
        for k in c_keys:
            ax.axhline(k - 0.5, color="C0", lw=0.4, alpha=0.35)
        ax.set_xlabel("time (s)" if frame_seconds is not None else "frame")
        if titles is not None:
            ax.set_title(titles[i])
    axes[0, 0].set_yticks(c_keys)
    axes[0, 0].set_yticklabels([note_name(int(k) + _MIN_PITCH) for k in c_keys])
    axes[0, 0].set_ylabel("pitch")
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig
