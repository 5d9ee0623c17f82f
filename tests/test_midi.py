"""MIDI export/import of piano rolls and the sine-synth WAV renderer (deepstate.data.midi)."""

import wave

import numpy as np
import pytest

import mido

from deepstate.data.midi import midi_to_piano_roll, piano_roll_to_midi, render_wav, roll_to_notes  # noqa: E402


def _roll():
    """A roll with the awkward cases: repeats split by a silent frame, held notes, chords, a fully
    silent frame, a note active at the last frame, and random material."""
    rng = np.random.default_rng(0)
    T = 24
    roll = np.zeros((T, 88), dtype=np.float32)
    roll[0:3, 39] = 1  # C4 held 3 frames
    roll[4:6, 39] = 1  # C4 again after a silent frame (for that key)
    roll[0, [43, 46]] = 1  # chord with the first C4
    roll[8:10] = 0  # (stays silent) whole silent frames 8-9
    roll[10:14, rng.choice(88, size=4, replace=False)] = 1  # a held 4-note chord
    roll[14:23] = (rng.random((9, 88)) < 0.05)  # random material
    roll[23, [0, 87]] = 1  # lowest and highest key, active at the last frame
    roll[22, 87] = 1
    return roll


def test_roll_to_notes():
    roll = np.zeros((6, 88))
    roll[0:3, 39] = 1
    roll[4:6, 39] = 1
    roll[1, 43] = 1
    assert roll_to_notes(roll) == [(60, 0, 3), (64, 1, 2), (60, 4, 6)]


@pytest.mark.parametrize("frame_seconds", [0.5, 0.25, 0.125])
def test_round_trip_exact(tmp_path, frame_seconds):
    roll = _roll()
    path = piano_roll_to_midi(roll, tmp_path / "sub" / "x.mid", frame_seconds=frame_seconds)
    assert path.is_file() and not list(path.parent.glob("*.tmp"))
    back = midi_to_piano_roll(path, frame_seconds=frame_seconds)
    assert back.shape == roll.shape
    np.testing.assert_array_equal(back, roll)


def test_trailing_silence_survives(tmp_path):
    roll = np.zeros((5, 88))
    roll[0, 40] = 1  # frames 1-4 silent
    back = midi_to_piano_roll(piano_roll_to_midi(roll, tmp_path / "x.mid"), frame_seconds=0.5)
    np.testing.assert_array_equal(back, roll)


def test_note_timings_are_frame_boundaries(tmp_path):
    roll = _roll()
    fs = 0.25
    path = piano_roll_to_midi(roll, tmp_path / "x.mid", frame_seconds=fs, velocity=64, program=19)
    mid = mido.MidiFile(path)
    now, ons, offs, metas = 0.0, [], [], []
    for msg in mid:
        now += msg.time
        if msg.type == "note_on" and msg.velocity > 0:
            ons.append((round(now, 9), msg.note))
            assert msg.velocity == 64
        elif msg.type in ("note_on", "note_off"):
            offs.append((round(now, 9), msg.note))
        elif msg.type == "program_change":
            assert msg.program == 19
        elif msg.is_meta:
            metas.append(msg.type)
    assert "set_tempo" in metas
    notes = roll_to_notes(roll)
    assert sorted(ons) == sorted((round(start * fs, 9), p) for p, start, _ in notes)
    assert sorted(offs) == sorted((round(end * fs, 9), p) for p, _, end in notes)
    assert mid.length == pytest.approx(roll.shape[0] * fs)


def test_wav_duration_and_sound(tmp_path):
    roll = _roll()
    path = render_wav(roll, tmp_path / "x.wav", sample_rate=8000, frame_seconds=0.25)
    with wave.open(str(path), "rb") as w:
        assert w.getnchannels() == 1 and w.getsampwidth() == 2 and w.getframerate() == 8000
        n = w.getnframes()
        audio = np.frombuffer(w.readframes(n), dtype="<i2").astype(float)
    assert n / 8000 == pytest.approx(roll.shape[0] * 0.25, abs=1 / 8000)
    assert np.sqrt(np.mean(audio**2)) > 1000  # audible
    assert np.abs(audio).max() <= 32767 * 0.9 + 1  # normalised, no clipping
    # the silent frames 8-9 are silent
    assert np.abs(audio[int(8 * 0.25 * 8000) : int(10 * 0.25 * 8000)]).max() == 0
    silent = render_wav(np.zeros((3, 88)), tmp_path / "s.wav", sample_rate=8000, frame_seconds=0.25)
    with wave.open(str(silent), "rb") as w:
        assert w.getnframes() == 6000


def test_bad_input(tmp_path):
    good = np.zeros((4, 88))
    with pytest.raises(ValueError, match="roll"):
        piano_roll_to_midi(np.zeros((4, 87)), tmp_path / "x.mid")
    with pytest.raises(ValueError, match="roll"):
        piano_roll_to_midi(np.zeros(88), tmp_path / "x.mid")
    with pytest.raises(ValueError, match="roll"):
        piano_roll_to_midi(np.full((4, 88), 0.5), tmp_path / "x.mid")
    with pytest.raises(ValueError, match="frame_seconds"):
        piano_roll_to_midi(good, tmp_path / "x.mid", frame_seconds=0)
    with pytest.raises(ValueError, match="frame_seconds"):
        piano_roll_to_midi(good, tmp_path / "x.mid", frame_seconds=-1.0)
    with pytest.raises(ValueError, match="velocity"):
        piano_roll_to_midi(good, tmp_path / "x.mid", velocity=0)
    with pytest.raises(ValueError, match="program"):
        piano_roll_to_midi(good, tmp_path / "x.mid", program=128)
    with pytest.raises(ValueError, match="frame_seconds"):
        midi_to_piano_roll(tmp_path / "x.mid", frame_seconds=0)
    with pytest.raises(ValueError, match="roll"):
        render_wav(np.ones((3, 12)), tmp_path / "x.wav")
    with pytest.raises(ValueError, match="sample_rate"):
        render_wav(good, tmp_path / "x.wav", sample_rate=100)
    assert not list(tmp_path.iterdir())  # nothing written by failed calls


def test_torch_and_bool_rolls(tmp_path):
    import torch
    roll = _roll()
    a = midi_to_piano_roll(piano_roll_to_midi(torch.from_numpy(roll), tmp_path / "a.mid"))
    b = midi_to_piano_roll(piano_roll_to_midi(roll.astype(bool), tmp_path / "b.mid"))
    np.testing.assert_array_equal(a, roll)
    np.testing.assert_array_equal(b, roll)
