"""Tests for deepstate.plots.forecast (headless, Agg backend)."""

from __future__ import annotations

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from deepstate.plots import fan_chart, latent_trajectories, pit_histogram, score_table  # noqa: E402
from deepstate.plots.forecast import _coverage_target  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _assert_png(path):
    assert path.is_file() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == PNG_MAGIC
    leftovers = [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def _legend_texts(ax):
    leg = ax.get_legend()
    assert leg is not None
    return [t.get_text() for t in leg.get_texts()]


def _forecast_inputs(T=48, H=12, D=2, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(T + H)
    y = np.stack([np.sin(2 * np.pi * t / 12) + d for d in range(D)], 1) + 0.1 * rng.normal(size=(T + H, D))
    samples = y[T:] + 0.2 * rng.normal(size=(200, H, D))
    q = lambda a: np.quantile(samples, a, axis=0)  # noqa: E731
    intervals = {0.5: (q(0.25), q(0.75)), 0.8: (q(0.1), q(0.9)), 0.95: (q(0.025), q(0.975))}
    return y[:T], np.arange(T, T + H), q(0.5), intervals, y[T:]


# ----------------------------------------------------------------------------------- fan_chart
def test_fan_chart_multidim_writes_png_with_labels_and_legend(tmp_path):
    history, fidx, med, ints, actual = _forecast_inputs()
    path = tmp_path / "sub" / "dir" / "fan.png"  # parent folders are created
    fig = fan_chart(history, fidx, med, ints, actual=actual, title="Test forecast", ylabel="load [MW]",
                    dim_names=["a", "b"], path=path)
    assert isinstance(fig, Figure)
    _assert_png(path)
    axes = fig.axes
    assert len(axes) == 2
    assert axes[-1].get_xlabel() == "time"
    assert all(ax.get_ylabel() == "load [MW]" for ax in axes)
    assert [ax.get_title(loc="left") for ax in axes] == ["a", "b"]
    texts = _legend_texts(axes[0])
    for label in ("history", "median forecast", "50% interval", "80% interval", "95% interval", "actual (held out)"):
        assert label in texts
    assert fig._suptitle.get_text() == "Test forecast"


def test_fan_chart_bands_darker_for_narrower():
    history, fidx, med, ints, _ = _forecast_inputs(D=1)
    fig = fan_chart(history[:, 0], fidx, med[:, 0], {k: (lo[:, 0], hi[:, 0]) for k, (lo, hi) in ints.items()})
    ax = fig.axes[0]
    bands = {c.get_label(): c.get_facecolor()[0] for c in ax.collections if "interval" in c.get_label()}
    lum = {k: sum(v[:3]) for k, v in bands.items()}
    assert lum["50% interval"] < lum["80% interval"] < lum["95% interval"]
    assert ax.get_ylabel() == "value"


def test_fan_chart_datetime_index_and_torch_inputs(tmp_path):
    history, _, med, ints, actual = _forecast_inputs(D=1)
    fidx = pd.date_range("2024-03-01", periods=12, freq="D", name="date")
    fig = fan_chart(torch.as_tensor(history), fidx, torch.as_tensor(med), ints, actual=actual,
                    path=tmp_path / "fan_dt.png")
    _assert_png(tmp_path / "fan_dt.png")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "date"
    # Default history index continues the daily spacing backwards from the first forecast date.
    hist_line = next(line for line in ax.get_lines() if line.get_label() == "history")
    xs = pd.to_datetime(np.asarray(hist_line.get_xdata()))
    assert xs[-1] == pd.Timestamp("2024-02-29") and len(xs) == len(history)


def test_fan_chart_missing_history_and_empty_intervals():
    history, fidx, med, _, _ = _forecast_inputs(D=1)
    history = history.copy()
    history[-1] = np.nan  # last value missing: the fan is not anchored, but still drawn
    fig = fan_chart(history, fidx, med, {})
    assert "median forecast" in _legend_texts(fig.axes[0])


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"future_index": np.arange(11)}, "median"),
        ({"median": np.zeros((12, 3))}, "median"),
        ({"actual": np.zeros((10, 2))}, "actual"),
        ({"history_index": np.arange(5)}, "history_index"),
        ({"dim_names": ["only one"]}, "dim_names"),
        ({"intervals": {0.8: (np.zeros((12, 2)), np.zeros((11, 2)))}}, "intervals"),
        ({"intervals": {80: (np.zeros((12, 2)), np.zeros((12, 2)))}}, "intervals"),
        ({"intervals": {0.8: np.zeros((12, 2))}}, "intervals"),
        ({"history": np.zeros((4, 2, 2))}, "history"),
        ({"future_index": np.array(["a", "b"] * 6)}, "history_index"),
    ],
)
def test_fan_chart_bad_input_names_argument(kwargs, name):
    history, fidx, med, ints, actual = _forecast_inputs()
    args = dict(history=history, future_index=fidx, median=med, intervals=ints, actual=actual)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        fan_chart(**args)


def test_fan_chart_intervals_must_be_mapping():
    history, fidx, med, _, _ = _forecast_inputs()
    with pytest.raises(TypeError, match="intervals"):
        fan_chart(history, fidx, med, [(0.8, med, med)])


# ------------------------------------------------------------------------- latent_trajectories
def test_latent_trajectories_png_labels_legend_and_cap(tmp_path):
    T, Z = 50, 9
    rng = np.random.default_rng(1)
    mean = np.cumsum(rng.normal(size=(T, Z)), 0)
    path = tmp_path / "latent.png"
    fig = latent_trajectories(np.arange(T), mean, mean - 1, mean + 1, observed=rng.normal(size=T),
                              title="Latents", path=path)
    assert isinstance(fig, Figure)
    _assert_png(path)
    axes = fig.axes
    assert len(axes) == 1 + 6  # observed panel + capped latent panels
    assert axes[0].get_ylabel() == "observed"
    assert [ax.get_ylabel() for ax in axes[1:]] == [f"z[{k}]" for k in range(6)]
    assert axes[-1].get_xlabel() == "time"
    assert "posterior mean" in _legend_texts(axes[1])
    assert "first 6 of 9" in fig._suptitle.get_text()


def test_latent_trajectories_without_observed_and_names():
    T = 30
    idx = pd.date_range("2024-01-01", periods=T, freq="h", name="hour")
    m = np.zeros((T, 2))
    fig = latent_trajectories(idx, m, m - 1, m + 1, latent_names=["level", "trend"], band_label="90% CI")
    assert [ax.get_ylabel() for ax in fig.axes] == ["level", "trend"]
    assert fig.axes[-1].get_xlabel() == "hour"
    assert "90% CI" in _legend_texts(fig.axes[0])


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"index": np.arange(9)}, "index"),
        ({"lower": np.zeros((10, 3))}, "lower"),
        ({"upper": np.zeros((9, 2))}, "upper"),
        ({"observed": np.zeros(7)}, "observed"),
        ({"max_panels": 0}, "max_panels"),
        ({"latent_names": ["a"]}, "latent_names"),
    ],
)
def test_latent_trajectories_bad_input_names_argument(kwargs, name):
    args = dict(index=np.arange(10), mean=np.zeros((10, 2)), lower=np.zeros((10, 2)), upper=np.ones((10, 2)))
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        latent_trajectories(**args)


# ------------------------------------------------------------------------------ pit_histogram
def test_pit_histogram_png_labels_legend_and_pvalue(tmp_path):
    pit = np.random.default_rng(2).uniform(size=500)
    pit[:5] = np.nan
    path = tmp_path / "pit.png"
    fig = pit_histogram(pit, bins=10, title="PIT", path=path)
    assert isinstance(fig, Figure)
    _assert_png(path)
    ax = fig.axes[0]
    assert ax.get_xlabel() and ax.get_ylabel()
    assert "n = 495" in ax.get_ylabel()
    assert "KS" in ax.get_title() and "p =" in ax.get_title()
    texts = _legend_texts(ax)
    assert any("±2 s.e." in t for t in texts) and any("uniform" in t for t in texts)
    counts = [p.get_height() for p in ax.patches if p.get_label() != "uniform ±2 s.e."][:10]
    assert sum(counts) == 495


@pytest.mark.parametrize(
    "pit,bins,name",
    [([0.1, 1.5], 10, "pit"), ([np.nan], 10, "pit"), ([0.2, 0.3], 0, "bins"), ([0.2, 0.3], 2.5, "bins")],
)
def test_pit_histogram_bad_input_names_argument(pit, bins, name):
    with pytest.raises(ValueError, match=name):
        pit_histogram(pit, bins=bins)


# -------------------------------------------------------------------------------- score_table
def _score_df():
    return pd.DataFrame(
        {
            "crps": [0.5, 0.4, 0.7],
            "coverage80": [0.78, 0.6, 0.95],
            "width80": [2.0, 1.5, 4.0],
            "skill": [0.1, -0.2, np.nan],
            "comment": ["x", "y", "z"],  # non-numeric: ignored
        },
        index=["DeepState", "DKF", "naive"],
    )


def test_score_table_png_labels_best_and_numbers(tmp_path):
    path = tmp_path / "scores.png"
    fig = score_table(_score_df(), title="Backtest", path=path, higher_is_better=["skill"])
    assert isinstance(fig, Figure)
    _assert_png(path)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["crps", "coverage80", "width80", "skill"]
    assert all(ax.get_xlabel() for ax in axes)
    assert axes[0].get_ylabel() == "model"
    assert [t.get_text() for t in axes[0].get_yticklabels()] == ["DeepState", "DKF", "naive"]
    assert fig.legends, "figure legend explains the highlight"

    def best_row(ax):
        colors = [tuple(p.get_facecolor()) for p in ax.patches]
        odd = [i for i, c in enumerate(colors) if colors.count(c) == 1]
        assert len(odd) == 1
        return odd[0]

    assert best_row(axes[0]) == 1  # lowest crps: DKF
    assert best_row(axes[1]) == 0  # coverage closest to 0.8: DeepState
    assert best_row(axes[3]) == 0  # higher is better, NaN ignored
    texts = [t.get_text() for t in axes[0].texts]
    assert texts == ["0.5", "0.4", "0.7"]
    assert "n/a" in [t.get_text() for t in axes[3].texts]


def test_coverage_target_parsing():
    assert _coverage_target("coverage80") == pytest.approx(0.8)
    assert _coverage_target("coverage_0.9") == pytest.approx(0.9)
    assert _coverage_target("cov95") == pytest.approx(0.95)
    assert _coverage_target("crps") is None and _coverage_target("width80") is None


def test_score_table_bad_input():
    with pytest.raises(TypeError, match="df"):
        score_table({"crps": [1.0]})
    with pytest.raises(ValueError, match="df"):
        score_table(pd.DataFrame({"name": ["a"]}))
    with pytest.raises(ValueError, match="df"):
        score_table(pd.DataFrame({"crps": pd.Series([], dtype=float)}))
    with pytest.raises(ValueError, match="higher_is_better"):
        score_table(_score_df(), higher_is_better=["nope"])
    with pytest.raises(ValueError, match="targets"):
        score_table(_score_df(), targets={"nope": 1.0})


def test_save_failure_leaves_no_partial_file(tmp_path, monkeypatch):
    fig = pit_histogram(np.linspace(0.01, 0.99, 50))

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(fig, "savefig", boom)
    from deepstate.plots.forecast import _save_figure

    with pytest.raises(RuntimeError):
        _save_figure(fig, tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []
