"""Piano rolls you can hear: MIDI files (via ``mido``) and a plain sine-synth WAV renderer.

A piano roll is a ``[T, 88]`` array of 0/1 values, column ``k`` = MIDI pitch ``k + 21`` (A0..C8), as
in :mod:`deepstate.data.music`. A **note** is a maximal run of consecutive active frames of one key:
a key held for three frames is one note three frames long, and a key repeated after a silent frame
is two notes. (A roll cannot tell a held note from a re-struck one, so neither can the MIDI file.)

Timing: one frame is one beat. The file's tempo is ``frame_seconds`` per beat and its resolution
``ticks_per_frame`` ticks per beat, so every note boundary lies exactly on a tick and
``midi_to_piano_roll(piano_roll_to_midi(roll))`` returns ``roll`` exactly. The JSB chorales are
quantised to quarter notes, so the default ``frame_seconds=0.5`` plays them at 120 quarter notes per
minute.

Files are written atomically (a temporary file in the same folder, then a rename), so a failure
never leaves a half-written file.
"""

from __future__ import annotations

import os
import wave
from pathlib import Path
from typing import Any, Callable, List, Tuple, Union

import numpy as np

from ..atomic import atomic_path

__all__ = ["piano_roll_to_midi", "midi_to_piano_roll", "render_wav", "roll_to_notes"]

MIN_PITCH = 21
NUM_KEYS = 88
#: MIDI tempo is a 24-bit number of microseconds per beat.
_MAX_TEMPO_US = 0xFFFFFF


def _check_roll(roll: Any) -> np.ndarray:
    """Validate a ``[T, 88]`` 0/1 roll (numpy, torch, bool or numeric) -> bool array."""
    if hasattr(roll, "detach") and hasattr(roll, "cpu"):  # torch.Tensor
        roll = roll.detach().cpu().numpy()
    arr = np.asarray(roll)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ValueError(f"roll: expected a numeric [T, {NUM_KEYS}] array of 0/1 values, got dtype {arr.dtype}")
    if arr.ndim != 2 or arr.shape[1] != NUM_KEYS or arr.shape[0] == 0:
        raise ValueError(f"roll: expected shape [T, {NUM_KEYS}] with T >= 1, got {arr.shape}")
    if not np.all((arr == 0) | (arr == 1)):
        raise ValueError("roll: expected only 0/1 values (threshold probabilities or sample first)")
    return arr.astype(bool)


def _check_frame_seconds(frame_seconds: Any) -> float:
    try:
        fs = float(frame_seconds)
    except (TypeError, ValueError):
        raise ValueError(f"frame_seconds: expected a positive number of seconds, got {frame_seconds!r}") from None
    if not np.isfinite(fs) or fs <= 0:
        raise ValueError(f"frame_seconds: expected a positive number of seconds, got {frame_seconds!r}")
    return fs


def roll_to_notes(roll: Any) -> List[Tuple[int, int, int]]:
    """Notes of a ``[T, 88]`` 0/1 roll as ``(pitch, start_frame, end_frame)``, end exclusive.

    Sorted by start frame, then pitch. A note is a maximal run of consecutive active frames of one key.
    """
    on = _check_roll(roll)
    padded = np.zeros((on.shape[0] + 2, NUM_KEYS), dtype=np.int8)
    padded[1:-1] = on
    diff = np.diff(padded, axis=0)  # +1 at a note's first frame, -1 one past its last
    starts_t, starts_k = np.nonzero(diff == 1)
    ends_t, ends_k = np.nonzero(diff == -1)
    # Within one key, starts and ends alternate; sort both by (key, time) to pair them.
    s = np.lexsort((starts_t, starts_k))
    e = np.lexsort((ends_t, ends_k))
    notes = [(int(k) + MIN_PITCH, int(a), int(b)) for k, a, b in zip(starts_k[s], starts_t[s], ends_t[e])]
    return sorted(notes, key=lambda n: (n[1], n[0]))


def _atomic_write(path: Union[str, os.PathLike], write: Callable[[Any], None], suffix: str) -> Path:
    """Write through ``write(file_object)`` into a temp file next to ``path``, then rename."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)
    return Path(path)


def piano_roll_to_midi(
    roll: Any,
    path: Union[str, os.PathLike],
    frame_seconds: float = 0.5,
    velocity: int = 80,
    program: int = 0,
    ticks_per_frame: int = 480,
) -> Path:
    """Write a ``[T, 88]`` 0/1 piano roll as a standard MIDI file (type 0, one track, channel 0).

    Each note (maximal run of active frames of one key) becomes a ``note_on`` at the tick of its
    first frame and a ``note_off`` at the tick just after its last frame; at a tick where notes end
    and others start, the ``note_off``\\ s come first. The file starts with a ``set_tempo`` meta
    message (``frame_seconds`` per beat, one frame per beat) and a ``program_change``, and its
    ``end_of_track`` lies at ``T`` frames, so trailing silent frames survive a round trip.

    Args:
        roll: ``[T, 88]`` array/tensor of 0/1 values (column ``k`` = MIDI pitch ``k + 21``).
        path: output ``.mid`` file; parent folders are created, the write is atomic.
        frame_seconds: duration of one frame in seconds (> 0; at most ~16.7 s, MIDI's slowest tempo).
        velocity: note-on velocity, 1..127.
        program: General MIDI program (instrument), 0..127 (0: acoustic grand piano).
        ticks_per_frame: MIDI resolution, ticks per beat = per frame (1..32767).

    Returns:
        the path written.

    Raises:
        ValueError: bad ``roll`` shape or values, non-positive ``frame_seconds``, out-of-range
            ``velocity``/``program``/``ticks_per_frame`` (each naming the argument).
    """
    import mido

    on = _check_roll(roll)
    fs = _check_frame_seconds(frame_seconds)
    tempo = int(round(fs * 1e6))
    if not 1 <= tempo <= _MAX_TEMPO_US:
        raise ValueError(f"frame_seconds: expected 1e-6 .. {_MAX_TEMPO_US / 1e6:.3f} s (MIDI tempo range), got {fs}")
    for name, value, lo, hi in (("velocity", velocity, 1, 127), ("program", program, 0, 127),
                                ("ticks_per_frame", ticks_per_frame, 1, 32767)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
            raise ValueError(f"{name}: expected an int in {lo}..{hi}, got {value!r}")

    # (tick, order, message): order 0 = note_off before order 1 = note_on at the same tick.
    events = []
    for pitch, start, end in roll_to_notes(on):
        events.append((start * ticks_per_frame, 1, pitch, "note_on"))
        events.append((end * ticks_per_frame, 0, pitch, "note_off"))
    events.sort()

    track = mido.MidiTrack()
    track.append(mido.MetaMessage("set_tempo", tempo=tempo, time=0))
    track.append(mido.Message("program_change", program=int(program), channel=0, time=0))
    now = 0
    for tick, _, pitch, kind in events:
        vel = int(velocity) if kind == "note_on" else 0
        track.append(mido.Message(kind, note=pitch, velocity=vel, channel=0, time=tick - now))
        now = tick
    track.append(mido.MetaMessage("end_of_track", time=on.shape[0] * ticks_per_frame - now))
    mid = mido.MidiFile(type=0, ticks_per_beat=int(ticks_per_frame))
    mid.tracks.append(track)
    return _atomic_write(path, lambda f: mid.save(file=f), ".mid")


def midi_to_piano_roll(path: Union[str, os.PathLike], frame_seconds: float = 0.5) -> np.ndarray:
    """Read a MIDI file back into a ``[T, 88]`` 0/1 ``float32`` piano roll.

    Times are converted to seconds with the file's tempo map (by mido), then to frames of
    ``frame_seconds`` by rounding; a note covers frames ``round(on / fs) .. round(off / fs) - 1``.
    ``T`` is the file's length in frames (its last event, ``end_of_track`` included). Notes outside
    the 88-key range are dropped; a ``note_on`` with velocity 0 counts as a ``note_off``.

    Args:
        path: a ``.mid`` file.
        frame_seconds: frame duration in seconds (> 0); use the value it was written with.

    Raises:
        ValueError: non-positive ``frame_seconds``; FileNotFoundError: no such ``path``.
    """
    import mido

    fs = _check_frame_seconds(frame_seconds)
    mid = mido.MidiFile(os.fspath(path))
    now = 0.0
    sounding = {}  # (channel, pitch) -> start time in seconds
    notes = []
    for msg in mid:  # merged tracks, msg.time = seconds since the previous message
        now += msg.time
        if msg.type == "note_on" and msg.velocity > 0:
            sounding.setdefault((msg.channel, msg.note), now)
        elif msg.type in ("note_on", "note_off"):
            start = sounding.pop((msg.channel, msg.note), None)
            if start is not None:
                notes.append((msg.note, start, now))
    notes.extend((pitch, start, now) for (_, pitch), start in sounding.items())  # never released
    T = max(int(round(now / fs)), 1)
    roll = np.zeros((T, NUM_KEYS), dtype=np.float32)
    for pitch, start, end in notes:
        k = pitch - MIN_PITCH
        if 0 <= k < NUM_KEYS:
            roll[int(round(start / fs)) : int(round(end / fs)), k] = 1.0
    return roll


def render_wav(
    roll: Any,
    path: Union[str, os.PathLike],
    sample_rate: int = 22050,
    frame_seconds: float = 0.5,
    attack_seconds: float = 0.01,
    release_seconds: float = 0.05,
) -> Path:
    """Render a ``[T, 88]`` 0/1 piano roll to a mono 16-bit WAV by additive sine synthesis.

    Each note sounds its fundamental (equal temperament, A4 = 440 Hz) plus two quieter harmonics,
    shaped by a linear attack and release inside the note (so re-struck notes are audible and
    nothing clicks). The mix is scaled so its peak is 0.9 of full scale: no clipping whatever the
    number of simultaneous notes. The file lasts exactly ``T * frame_seconds`` seconds (rounded to
    samples). No external synthesizer is needed: numpy + the stdlib :mod:`wave` module.

    Args:
        roll: ``[T, 88]`` array/tensor of 0/1 values.
        path: output ``.wav`` file; parent folders are created, the write is atomic.
        sample_rate: samples per second (8000..192000).
        frame_seconds: frame duration in seconds (> 0).
        attack_seconds, release_seconds: envelope ramps (>= 0), shortened for short notes.

    Returns:
        the path written.
    """
    on = _check_roll(roll)
    fs = _check_frame_seconds(frame_seconds)
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or not 8000 <= sample_rate <= 192000:
        raise ValueError(f"sample_rate: expected an int in 8000..192000 Hz, got {sample_rate!r}")
    for name, v in (("attack_seconds", attack_seconds), ("release_seconds", release_seconds)):
        if not np.isfinite(v) or v < 0:
            raise ValueError(f"{name}: expected a non-negative number of seconds, got {v!r}")
    n_total = int(round(on.shape[0] * fs * sample_rate))
    audio = np.zeros(n_total, dtype=np.float64)
    for pitch, start, end in roll_to_notes(on):
        a = int(round(start * fs * sample_rate))
        b = min(int(round(end * fs * sample_rate)), n_total)
        n = b - a
        if n <= 0:
            continue
        t = np.arange(n) / sample_rate
        f0 = 440.0 * 2.0 ** ((pitch - 69) / 12.0)
        tone = np.zeros(n)
        for h, amp in ((1, 1.0), (2, 0.4), (3, 0.15)):
            if h * f0 < sample_rate / 2:  # skip harmonics above Nyquist (they would alias)
                tone += amp * np.sin(2 * np.pi * h * f0 * t)
        n_att = min(int(attack_seconds * sample_rate), n // 4)
        n_rel = min(int(release_seconds * sample_rate), n // 4)
        env = np.ones(n)
        if n_att:
            env[:n_att] = np.linspace(0.0, 1.0, n_att, endpoint=False)
        if n_rel:
            env[n - n_rel :] = np.linspace(1.0, 0.0, n_rel)
        audio[a:b] += tone * env
    peak = np.abs(audio).max() if audio.size else 0.0
    if peak > 0:
        audio *= 0.9 / peak
    pcm = np.round(audio * 32767).astype("<i2").tobytes()

    def write(f):
        with wave.open(f, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(int(sample_rate))
            w.writeframes(pcm)

    return _atomic_write(path, write, ".wav")
