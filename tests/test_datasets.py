"""Datasets: JSB chorales piano rolls, sunspots / co2 / lynx_hare, and the file rules
(sha256 before unpickling, no writes into the data folder, no downloads in tests)."""

from __future__ import annotations

import io
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import deepstate.data.files as files
import deepstate.data.music as music
from deepstate.data import (
    ChecksumError,
    extend_index,
    list_datasets,
    load_dataset,
    load_polyphonic,
    notes_to_piano_roll,
    piano_roll_to_notes,
)

JSB = "jsb_chorales.pickle"


def _snapshot(folder: Path) -> dict:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """No DEEPSTATE_DATA, an empty cache redirected into tmp, and any network access is an error."""
    monkeypatch.delenv("DEEPSTATE_DATA", raising=False)
    cache = tmp_path / "cache"
    monkeypatch.setenv("DEEPSTATE_CACHE", str(cache))

    def no_network(*args, **kwargs):
        raise AssertionError("a test tried to download")

    monkeypatch.setattr(files.urllib.request, "urlopen", no_network)
    return cache


@pytest.fixture(scope="module")
def jsb():
    from conftest import get_data_dir

    folder = get_data_dir()
    before = _snapshot(folder)
    splits = load_polyphonic("jsb_chorales", data_dir=folder)
    assert _snapshot(folder) == before, "loading wrote into the data folder"
    return splits


# ---------------------------------------------------------------------------- JSB chorales
@pytest.mark.data
def test_jsb_counts_and_piano_roll(jsb):
    counts = {k: (len(b), b.num_frames) for k, b in jsb.items()}
    assert counts == {"train": (229, 13807), "valid": (76, 4602), "test": (77, 4725)}
    for b in jsb.values():
        assert b.dim == 88
        assert set(b.x.unique().tolist()) == {0.0, 1.0}
        assert torch.equal(b.observed, b.valid[..., None].expand_as(b.observed))
        assert (b.x[~b.valid] == 0).all()
    # lowest/highest keys used by JSB (MIDI 43..96) map to columns 22..75
    used = torch.nonzero(jsb["train"].x.sum((0, 1))).flatten()
    assert int(used.min()) >= 0 and int(used.max()) <= 87


@pytest.mark.data
def test_jsb_first_chord_roundtrip(jsb, data_dir):
    first = piano_roll_to_notes(jsb["train"][0])
    assert first[0] == (60, 72, 79, 88)  # the first chord of the first training chorale
    roll = notes_to_piano_roll(first)
    assert np.array_equal(roll, jsb["train"].x[0, : len(first)].numpy())


@pytest.mark.data
def test_jsb_env_var_lookup(data_dir, isolated, monkeypatch):
    monkeypatch.setenv("DEEPSTATE_DATA", str(data_dir))
    splits = load_polyphonic()
    assert len(splits["valid"]) == 76
    assert not isolated.exists(), "nothing may be written to the cache when the file is found"


@pytest.mark.data
def test_jsb_corrupted_copy_fails_before_unpickling(data_dir, isolated, tmp_path, monkeypatch):
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    raw = bytearray((data_dir / JSB).read_bytes())
    raw[len(raw) // 2] ^= 0x01
    (bad_dir / JSB).write_bytes(bytes(raw))

    def must_not_unpickle(*args, **kwargs):
        raise AssertionError("unpickled before the checksum was checked")

    monkeypatch.setattr(music, "restricted_loads", must_not_unpickle)
    monkeypatch.setattr(files.RestrictedUnpickler, "load", must_not_unpickle)
    monkeypatch.setattr(pickle, "loads", must_not_unpickle)
    with pytest.raises(ChecksumError, match="sha256"):
        load_polyphonic(data_dir=bad_dir)
    assert isinstance(ChecksumError("x"), ValueError)


def test_missing_file_names_the_options(isolated, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError) as err:
        load_polyphonic(data_dir=empty, download=True)
    msg = str(err.value)
    for option in ("data_dir", "DEEPSTATE_DATA", str(isolated / JSB), "download=True", "under pytest"):
        assert option in msg, option
    assert list(empty.iterdir()) == [] and not isolated.exists()
    with pytest.raises(FileNotFoundError, match="download=False"):
        load_polyphonic(data_dir=empty, download=False)
    with pytest.raises(FileNotFoundError, match="DEEPSTATE_DATA"):
        load_dataset("lynx_hare", data_dir=empty)


@pytest.mark.data
def test_download_goes_to_cache_verified(data_dir, isolated, tmp_path, monkeypatch):
    """The download path (faked, no network): temp file in the cache, checksum, rename."""
    good = (data_dir / JSB).read_bytes()
    monkeypatch.delenv("PYTEST_CURRENT_TEST", raising=False)
    empty = tmp_path / "empty"
    empty.mkdir()

    monkeypatch.setattr(files.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(good[:-1] + b"\x00"))
    with pytest.raises(ChecksumError):
        load_polyphonic(data_dir=empty)
    assert list(isolated.iterdir()) == [], "a failed download must leave nothing behind"

    seen = {}

    def fake(url, timeout):
        seen.update(url=url, timeout=timeout)
        return io.BytesIO(good)

    monkeypatch.setattr(files.urllib.request, "urlopen", fake)
    splits = load_polyphonic(data_dir=empty)
    assert len(splits["test"]) == 77
    assert seen["url"].endswith(JSB) and seen["timeout"] > 0
    assert [p.name for p in isolated.iterdir()] == [JSB] and list(empty.iterdir()) == []


def test_restricted_unpickler_refuses_other_globals():
    evil = pickle.dumps(os.getcwd)  # a global outside the allow-list
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        files.restricted_loads(evil, files.numpy_scalar_globals())
    ok = pickle.dumps({"train": [[(np.int64(60),)]]}, protocol=4)
    assert files.restricted_loads(ok, files.numpy_scalar_globals())["train"][0][0][0] == 60


def test_polyphonic_bad_input(tmp_path):
    with pytest.raises(ValueError, match="name"):
        load_polyphonic("nottingham", data_dir=tmp_path)
    with pytest.raises(TypeError, match="data_dir"):
        load_polyphonic(data_dir=3)
    with pytest.raises(TypeError, match="dtype"):
        load_polyphonic(dtype=torch.int64)
    with pytest.raises(ValueError, match="roll"):
        piano_roll_to_notes(np.zeros((4, 87)))
    with pytest.raises(ValueError, match=r"frames\[1\]"):
        notes_to_piano_roll([(60,), (20,)])


# ---------------------------------------------------------------------------- built-in series
def test_list_datasets():
    assert list_datasets() == ["co2", "lynx_hare", "sunspots"]
    with pytest.raises(ValueError, match="name.*load_polyphonic"):
        load_dataset("jsb_chorales")
    with pytest.raises(ValueError, match="name"):
        load_dataset("airline")
    with pytest.raises(TypeError, match="name"):
        load_dataset(3)


def test_sunspots():
    ds = load_dataset("sunspots")
    assert ds.frequency == "yearly" and ds.columns == ["SUNACTIVITY"]
    assert ds.batch.x.shape == (1, 309, 1) and ds.batch.observed.all()
    assert ds.data.index[0] == 1700 and ds.data.index[-1] == 2008
    assert float(ds.batch.x[0, 0, 0]) == 5.0
    assert list(extend_index(ds.batch.index[0], 2)) == [2009, 2010]
    assert ds.series.name == "SUNACTIVITY"


def test_co2_missing_values():
    ds = load_dataset("co2", dtype=torch.float64)
    b = ds.batch
    assert ds.frequency == "weekly" and b.x.shape == (1, 2284, 1)
    assert int((~b.observed).sum()) == 59 == int(ds.data["co2"].isna().sum())
    assert torch.isfinite(b.x).all() and (b.x[~b.observed] == 0).all()
    assert b.valid.all()
    np.testing.assert_allclose(b.x[0, :, 0][b.observed[0, :, 0]].numpy(), ds.data["co2"].dropna().to_numpy())
    nxt = extend_index(b.index[0], 1)[0]
    assert (nxt - ds.data.index[-1]).days == 7


@pytest.mark.data
def test_lynx_hare(data_dir, isolated):
    before = _snapshot(data_dir)
    ds = load_dataset("lynx_hare", data_dir=data_dir)
    assert _snapshot(data_dir) == before
    assert ds.data.shape == (91, 2) and ds.columns == ["hare", "lynx"]
    assert ds.batch.x.shape == (1, 91, 2) and ds.batch.observed.all()
    assert ds.data.index[0] == 1845 and ds.data.index[-1] == 1935
    assert ds.data.iloc[0].tolist() == [19.58, 30.09]
    with pytest.raises(ValueError, match="columns"):
        ds.series


@pytest.mark.data
def test_lynx_hare_checksum(data_dir, isolated, tmp_path):
    shutil.copy(data_dir / "LynxHare.txt", tmp_path / "LynxHare.txt")
    os.chmod(tmp_path / "LynxHare.txt", 0o644)
    with open(tmp_path / "LynxHare.txt", "ab") as f:
        f.write(b"1936 1.0 1.0\n")
    with pytest.raises(ChecksumError, match="LynxHare.txt"):
        load_dataset("lynx_hare", data_dir=tmp_path)
