"""Plots of predictive checks, piano rolls and training curves: each returns a Figure and writes a PNG."""

import json

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from deepstate.checks.statistics import predictive_check  # noqa: E402
from deepstate.plots.checks import ppc_panels  # noqa: E402
from deepstate.plots.music import note_name, piano_roll  # noqa: E402
from deepstate.plots.training import read_metrics, training_curves  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def _png_ok(path):
    assert path.is_file() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(path.parent.glob("*.tmp"))


def _labelled(fig):
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert axes
    for ax in axes:
        assert ax.get_xlabel()  # y labels are checked per plot (shared y axes label only the first)
    return axes


def _rolls(rng, shape, density=0.05):
    return (rng.random(shape) < density).astype(float)


def test_ppc_panels_from_table(tmp_path):
    rng = np.random.default_rng(0)
    B, T = 4, 16
    valid = np.arange(T)[None] < np.array([16, 12, 9, 5])[:, None]
    table = predictive_check(_rolls(rng, (B, T, 88)), _rolls(rng, (50, B, T, 88)), valid,
                             statistics=("notes_per_frame", "note_on_rate", "mean_note_duration", "longest_run"))
    fig = ppc_panels(table, path=tmp_path / "a" / "ppc.png", ncols=2, title="one-step")
    assert isinstance(fig, Figure)
    _png_ok(tmp_path / "a" / "ppc.png")
    axes = _labelled(fig)
    assert len(axes) == 4
    for ax, name in zip(axes, table.index):
        assert name in ax.get_title() and "p = " in ax.get_title()
        assert ax.get_ylabel() == "replicates"
        assert any(len(line.get_xdata()) == 2 for line in ax.lines)  # the observed value line


def test_ppc_panels_from_arrays_and_subset(tmp_path):
    rng = np.random.default_rng(1)
    data = {"mean": (0.1, rng.normal(size=200)), "max": (3.5, rng.normal(2, 0.3, size=200))}
    fig = ppc_panels(data, statistics=["max"], path=tmp_path / "p.png")
    _png_ok(tmp_path / "p.png")
    (ax,) = _labelled(fig)
    assert "max" in ax.get_title() and "p = 0.000" in ax.get_title()


def test_ppc_panels_bad_input():
    import pandas as pd

    with pytest.raises(ValueError, match="table_or_arrays"):
        ppc_panels(pd.DataFrame({"observed": [1.0], "p_value": [0.5]}, index=["mean"]))
    with pytest.raises(TypeError, match="table_or_arrays"):
        ppc_panels(3)
    with pytest.raises(ValueError, match="statistics"):
        ppc_panels({"mean": (0.0, np.zeros(3))}, statistics=["max"])


def test_note_names():
    assert note_name(60) == "C4" and note_name(21) == "A0" and note_name(108) == "C8" and note_name(61) == "C#4"


def test_piano_roll_side_by_side(tmp_path):
    rng = np.random.default_rng(2)
    data = np.zeros((40, 88))
    data[:, 39] = 1  # C4 throughout
    data[::4, 51] = 1  # C5 every 4 frames
    gen = _rolls(rng, (30, 88))
    fig = piano_roll([data, gen], titles=["data", "generated"], path=tmp_path / "roll.png")
    assert isinstance(fig, Figure)
    _png_ok(tmp_path / "roll.png")
    axes = _labelled(fig)
    assert len(axes) == 2 and [ax.get_title() for ax in axes] == ["data", "generated"]
    assert axes[0].get_xlabel() == "frame" and axes[0].get_ylabel() == "pitch"
    labels = [t.get_text() for t in axes[0].get_yticklabels()]
    assert "C4" in labels and all(lab.startswith("C") for lab in labels)
    image = axes[0].images[0]
    assert image.origin == "lower"


def test_piano_roll_crop_seconds_and_single(tmp_path):
    roll = np.zeros((8, 88))
    roll[2:5, 39] = 1  # only C4 used: the crop is C4 +- 2 keys
    fig = piano_roll(roll, path=tmp_path / "one.png", frame_seconds=0.5)
    _png_ok(tmp_path / "one.png")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "time (s)"
    lo, hi = ax.get_ylim()
    assert (lo, hi) == (37 - 0.5, 41 + 0.5)
    assert ax.get_xlim() == (0, 4.0)
    piano_roll(np.zeros((5, 88)))  # silent: still draws
    with pytest.raises(ValueError, match="rolls"):
        piano_roll(np.zeros((5, 12)))
    with pytest.raises(ValueError, match="titles"):
        piano_roll([roll, roll], titles=["a"])


def _metrics_log(path, epochs=4, steps=5, resume_at=2):
    rng = np.random.default_rng(3)
    lines = []
    for e in range(epochs):
        for s in range(steps):
            bound = -10 + e + s / steps + 0.1 * rng.normal()
            lines.append({"kind": "step", "epoch": e, "step": s, "global_step": e * steps + s + 1,
                          "loss": -bound, "bound_per_frame": bound, "annealing": 1.0, "lr": 1e-3,
                          "grad_norm": 1.0, "skipped": False})
        lines.append({"kind": "epoch", "epoch": e + 1, "train_loss": 9.5 - e, "train_bound": -9.5 + e,
                      "valid_bound": None if e == 0 else -9.8 + e, "lr": 1e-3, "annealing": 1.0,
                      "steps": steps, "skipped": 0, "seconds": 2.0, "stopped_early": False})
        if e + 1 == resume_at:  # a resumed run repeats the last epoch's steps
            lines.extend(lines[-steps - 1 : -1])
    with open(path, "w") as f:
        for rec in lines:
            f.write(json.dumps(rec) + "\n")
    return lines


def test_training_curves_from_file(tmp_path):
    log = tmp_path / "metrics.jsonl"
    _metrics_log(log)
    data = read_metrics(log)
    assert len(data["epoch"]) == 4 and len(data["step"]) == 20  # duplicates from the resume dropped
    fig = training_curves(log, path=tmp_path / "out" / "curves.png")
    assert isinstance(fig, Figure)
    _png_ok(tmp_path / "out" / "curves.png")
    axes = _labelled(fig)
    assert len(axes) == 3
    assert "nats per frame" in axes[0].get_ylabel() and axes[0].get_xlabel() == "epoch"
    assert "time" in axes[2].get_xlabel()
    labels = [line.get_label() for line in axes[0].lines]
    assert "validation" in labels and "train (epoch)" in labels


def test_training_curves_from_history_records(tmp_path):
    history = [{"epoch": 1, "train_loss": 5.0, "train_bound": -5.0, "valid_bound": -5.5},
               {"epoch": 2, "train_loss": 4.0, "train_bound": -4.0, "valid_bound": -4.4}]
    fig = training_curves(history, path=tmp_path / "h.png")  # no seconds: two panels
    _png_ok(tmp_path / "h.png")
    assert len(_labelled(fig)) == 2
    with pytest.raises(ValueError, match="metrics_path_or_records"):
        training_curves([{"foo": 1}])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"kind": "epoch"}\nnot json\n')
    with pytest.raises(ValueError, match="line 2"):
        training_curves(bad)


def test_training_curves_from_real_trainer(tmp_path):
    import torch
    from deepstate.data import SequenceBatch
    from deepstate.inference.trainer import Trainer
    from deepstate.models import build

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    data = SequenceBatch.from_sequences([torch.randn(n, 2, generator=g, dtype=torch.float64) for n in (6, 4, 5, 3)],
                                        dtype=torch.float64)
    lsm = build("dkf", 2, "gaussian", z_dim=2, rnn_dim=4, transition_dim=4, emission_dim=4).double()
    log = tmp_path / "m.jsonl"
    Trainer(lsm, batch_size=2, progress=False, metrics_path=log, seed=0).fit(data, epochs=2, valid=data)
    fig = training_curves(log, path=tmp_path / "t.png")
    _png_ok(tmp_path / "t.png")
    assert len(read_metrics(log)["epoch"]) == 2
    assert len(fig.axes) == 3
