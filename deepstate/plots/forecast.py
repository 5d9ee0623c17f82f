"""Forecast plots: fan charts, latent trajectories, PIT histograms and backtest score tables.

Every function builds a matplotlib ``Figure`` and returns it; none calls ``plt.show()`` (so they
run headless, e.g. under ``MPLBACKEND=Agg``, and the caller decides what to do with the figure).
Pass ``path`` to also save it (PNG unless the suffix names another matplotlib format): the parent
folder is created and the file is written to a temporary name in the same folder and renamed, so
a crash never leaves a half-written image behind. ``pyplot`` is imported inside the functions so
that importing :mod:`deepstate.plots` does not pick a backend. Figures are created through
pyplot, so in a loop close them (``plt.close(fig)``) once saved.

Array arguments may be numpy arrays, anything ``np.asarray`` accepts, or torch tensors.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from deepstate.plots._save import save_figure as _save_figure
from deepstate.scores import _as_array, pit_uniformity

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from matplotlib.figure import Figure

__all__ = ["fan_chart", "latent_trajectories", "pit_histogram", "score_table"]

_HISTORY_COLOR = "#222222"
_MEDIAN_COLOR = "#08306b"
_ACTUAL_COLOR = "#d95f02"
_BEST_COLOR = "#1b9e77"
_OTHER_COLOR = "#9ecae1"


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def _as_2d(x: Any, name: str) -> np.ndarray:
    """``[T]`` -> ``[T, 1]``; ``[T, D]`` unchanged; anything else is a ValueError naming ``name``."""
    arr = _as_array(x, name)
    if arr.ndim == 1:
        return arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"{name} must be [T] or [T, D], got shape {arr.shape}")
    return arr


def _check_shape(arr: np.ndarray, shape: tuple[int, ...], name: str, what: str) -> None:
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape} ({what}), got {arr.shape}")


def _as_index(x: Any, name: str) -> "pd.Index":
    """A 1-D pandas Index (DatetimeIndex for datetimes) from an array-like or torch tensor."""
    import pandas as pd

    if isinstance(x, pd.Index):
        return x
    if isinstance(x, pd.Series):
        return pd.Index(x.to_numpy(), name=x.name)
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    return pd.Index(arr)


def _index_kind(idx: "pd.Index") -> str:
    import pandas as pd

    if isinstance(idx, pd.DatetimeIndex):
        return "datetime"
    if pd.api.types.is_numeric_dtype(idx.dtype) and not pd.api.types.is_bool_dtype(idx.dtype):
        return "numeric"
    return "other"


def _default_history_index(future: "pd.Index", T: int) -> "pd.Index":
    """Index of the T steps before ``future[0]``, continuing the spacing of ``future``."""
    import pandas as pd

    kind = _index_kind(future)
    if kind == "datetime":
        step = future.freq
        if step is None and len(future) >= 3:
            freq = pd.infer_freq(future)
            step = pd.tseries.frequencies.to_offset(freq) if freq else None
        if step is None and len(future) >= 2:
            step = future[1] - future[0]
        if step is None:
            raise ValueError(
                "history_index is required when future_index is a single timestamp without freq"
            )
        return pd.DatetimeIndex([future[0] - step * k for k in range(T, 0, -1)])
    if kind == "numeric":
        step = float(future[1] - future[0]) if len(future) >= 2 else 1.0
        return pd.Index(float(future[0]) - step * np.arange(T, 0, -1))
    raise ValueError(
        "history_index is required when future_index is neither numeric nor datetime "
        f"(got dtype {future.dtype})"
    )


def _xlabel(*indexes: "pd.Index") -> str:
    for idx in indexes:
        if idx is not None and idx.name:
            return str(idx.name)
    return "time"


def _date_axis(ax: Any, idx: "pd.Index") -> None:
    """Concise date tick labels: short, non-overlapping, without rotating them."""
    if _index_kind(idx) == "datetime":
        import matplotlib.dates as mdates

        locator = mdates.AutoDateLocator(minticks=3, maxticks=8)
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))


def _level_label(level: float) -> str:
    pct = 100.0 * level
    return f"{pct:.0f}% interval" if abs(pct - round(pct)) < 1e-9 else f"{pct:g}% interval"


def _band_colors(n: int) -> list:
    """``n`` blues from light (widest band) to dark (narrowest): nested bands stay distinct."""
    from matplotlib import colormaps

    cmap = colormaps["Blues"]
    if n == 1:
        return [cmap(0.45)]
    return [cmap(0.2 + 0.45 * k / (n - 1)) for k in range(n)]


# ----------------------------------------------------------------------------------------------
# fan chart
# ----------------------------------------------------------------------------------------------
def fan_chart(
    history: Any,
    future_index: Any,
    median: Any,
    intervals: Mapping[float, tuple[Any, Any]],
    actual: Any = None,
    history_index: Any = None,
    title: str | None = None,
    ylabel: str | None = None,
    dim_names: Sequence[str] | None = None,
    path: str | os.PathLike | None = None,
) -> "Figure":
    """Fan chart of a probabilistic forecast: history, median and nested prediction intervals.

    One panel per observed dimension. The intervals are drawn as nested shaded bands, the
    widest lightest and the narrowest darkest, labelled "95% interval" etc.; the median is a
    dark line and the optional held-out truth is drawn as orange points. Median and bands start
    at the last observed history value (where the forecast is certain), so the fan opens from the
    forecast origin, which is also marked by a dotted vertical line.

    Args:
        history: ``[T, D]`` or ``[T]`` observed series (NaN = missing), units of the data.
        future_index: length-H array-like of forecast times (numbers or datetimes; a pandas
            Index's ``name`` becomes the x label).
        median: ``[H, D]`` (or ``[H]``) forecast median.
        intervals: ``{level: (lower, upper)}`` with levels in (0, 1), e.g.
            ``{0.5: (q25, q75), 0.8: (q10, q90), 0.95: (q025, q975)}``; each bound ``[H, D]``.
            May be empty.
        actual: optional ``[H, D]`` held-out observations.
        history_index: length-T times of ``history``; by default the T steps before
            ``future_index[0]`` with the spacing of ``future_index``.
        title: figure title (default "Forecast").
        ylabel: y-axis label, ideally with units (default "value").
        dim_names: D names, used as panel titles (default "dimension d" when D > 1).
        path: optional file to save the figure to (PNG).

    Returns:
        The matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    hist = _as_2d(history, "history")
    T, D = hist.shape
    fut = _as_index(future_index, "future_index")
    H = len(fut)
    if H == 0:
        raise ValueError("future_index must not be empty")
    med = _as_2d(median, "median")
    _check_shape(med, (H, D), "median", "len(future_index), history's D")
    if not isinstance(intervals, Mapping):
        raise TypeError(f"intervals must be a dict {{level: (lower, upper)}}, got {type(intervals).__name__}")
    bands = []
    for level, bounds in intervals.items():
        try:
            lev = float(level)
        except (TypeError, ValueError):
            raise ValueError(f"intervals keys must be levels in (0, 1), got {level!r}") from None
        if not 0.0 < lev < 1.0:
            raise ValueError(f"intervals keys must be levels in (0, 1), got {level!r}")
        if not isinstance(bounds, (tuple, list)) or len(bounds) != 2:
            raise ValueError(f"intervals[{level!r}] must be a pair (lower, upper)")
        lo = _as_2d(bounds[0], f"intervals[{level!r}] lower")
        hi = _as_2d(bounds[1], f"intervals[{level!r}] upper")
        _check_shape(lo, (H, D), f"intervals[{level!r}] lower", "len(future_index), D")
        _check_shape(hi, (H, D), f"intervals[{level!r}] upper", "len(future_index), D")
        bands.append((lev, lo, hi))
    bands.sort(key=lambda b: -b[0])  # widest first, so narrower bands are painted on top
    act = None
    if actual is not None:
        act = _as_2d(actual, "actual")
        _check_shape(act, (H, D), "actual", "len(future_index), D")
    if history_index is None:
        hidx = _default_history_index(fut, T)
    else:
        hidx = _as_index(history_index, "history_index")
        if len(hidx) != T:
            raise ValueError(f"history_index must have length T={T} (len(history)), got {len(hidx)}")
    if dim_names is not None:
        dim_names = [str(n) for n in dim_names]
        if len(dim_names) != D:
            raise ValueError(f"dim_names must have D={D} entries, got {len(dim_names)}")

    fig, axes = plt.subplots(
        D, 1, figsize=(10, 1.2 + 2.6 * D), sharex=True, squeeze=False, layout="constrained"
    )
    axes = axes[:, 0]
    hx = hidx.to_numpy()
    fx = fut.to_numpy()
    colors = _band_colors(len(bands))
    for d, ax in enumerate(axes):
        ax.plot(hx, hist[:, d], color=_HISTORY_COLOR, lw=1.3, label="history")
        # Anchor the fan at the last observed value so it opens from the forecast origin.
        last = hist[-1, d] if T else np.nan
        anchor = T > 0 and np.isfinite(last)
        x = np.concatenate([hx[-1:], fx]) if anchor else fx

        def _ext(v: np.ndarray, last: float = last, anchor: bool = anchor) -> np.ndarray:
            return np.concatenate([[last], v]) if anchor else v

        for (lev, lo, hi), color in zip(bands, colors):
            ax.fill_between(x, _ext(lo[:, d]), _ext(hi[:, d]), color=color, lw=0, label=_level_label(lev))
        ax.plot(x, _ext(med[:, d]), color=_MEDIAN_COLOR, lw=1.8, label="median forecast")
        if act is not None:
            ax.plot(fx, act[:, d], "o", color=_ACTUAL_COLOR, ms=3.5, mec="white", mew=0.4,
                    label="actual (held out)")
        if T:
            ax.axvline(hx[-1], color="grey", ls=":", lw=1)
        ax.set_ylabel(ylabel or "value")
        if dim_names is not None:
            ax.set_title(dim_names[d], loc="left", fontsize="medium")
        elif D > 1:
            ax.set_title(f"dimension {d}", loc="left", fontsize="medium")
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel(_xlabel(fut, hidx))
    _date_axis(axes[-1], fut)
    # Outside the axes so it never covers data; constrained layout makes room for it.
    axes[0].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize="small")
    fig.suptitle(title or "Forecast")
    if path is not None:
        _save_figure(fig, path)
    return fig


# ----------------------------------------------------------------------------------------------
# latent trajectories
# ----------------------------------------------------------------------------------------------
def latent_trajectories(
    index: Any,
    mean: Any,
    lower: Any,
    upper: Any,
    observed: Any = None,
    title: str | None = None,
    path: str | os.PathLike | None = None,
    *,
    band_label: str = "posterior interval",
    latent_names: Sequence[str] | None = None,
    observed_label: str = "observed",
    max_panels: int = 6,
) -> "Figure":
    """Posterior (smoothed / filtered) latent state trajectories with uncertainty bands.

    One panel per latent dimension (the first ``max_panels`` only; the title says how many are
    shown), each with the posterior mean as a line and ``[lower, upper]`` as a shaded band. With
    ``observed`` an extra top panel shows the observed series on the same time axis, so latent
    movements can be read against the data.

    Args:
        index: length-T times (numbers or datetimes), or None for 0..T-1.
        mean, lower, upper: ``[T, Z]`` (or ``[T]``) latent mean and band bounds.
        observed: optional ``[T]`` or ``[T, D]`` observed series (NaN = missing).
        title: figure title (default "Latent state trajectories").
        path: optional file to save the figure to (PNG).
        band_label: legend label of the band, e.g. "90% credible interval".
        latent_names: Z names for the panel y labels (default "z[k]").
        observed_label: y label of the observed panel (put units here).
        max_panels: most latent panels drawn (>= 1).

    Returns:
        The matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    m = _as_2d(mean, "mean")
    T, Z = m.shape
    lo = _as_2d(lower, "lower")
    hi = _as_2d(upper, "upper")
    _check_shape(lo, (T, Z), "lower", "same as mean")
    _check_shape(hi, (T, Z), "upper", "same as mean")
    if index is None:
        import pandas as pd

        idx = pd.Index(np.arange(T))
    else:
        idx = _as_index(index, "index")
        if len(idx) != T:
            raise ValueError(f"index must have length T={T} (len(mean)), got {len(idx)}")
    obs = None
    if observed is not None:
        obs = _as_2d(observed, "observed")
        if obs.shape[0] != T:
            raise ValueError(f"observed must have T={T} rows (len(mean)), got shape {obs.shape}")
    if isinstance(max_panels, bool) or not isinstance(max_panels, (int, np.integer)) or max_panels < 1:
        raise ValueError(f"max_panels must be an integer >= 1, got {max_panels!r}")
    if latent_names is not None:
        latent_names = [str(n) for n in latent_names]
        if len(latent_names) != Z:
            raise ValueError(f"latent_names must have Z={Z} entries, got {len(latent_names)}")

    n_lat = min(Z, int(max_panels))
    n_rows = n_lat + (obs is not None)
    fig, axes = plt.subplots(
        n_rows, 1, figsize=(10, 1.0 + 2.0 * n_rows), sharex=True, squeeze=False, layout="constrained"
    )
    axes = list(axes[:, 0])
    x = idx.to_numpy()
    if obs is not None:
        ax = axes.pop(0)
        D = obs.shape[1]
        for d in range(D):
            ax.plot(x, obs[:, d], lw=1.0, label=f"dim {d}" if 1 < D <= 6 else None,
                    color=_HISTORY_COLOR if D == 1 else None)
        ax.set_ylabel(observed_label)
        ax.set_title("observed series", loc="left", fontsize="medium")
        if 1 < D <= 6:
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize="small")
        ax.grid(alpha=0.3)
    band_color = _band_colors(1)[0]
    for k, ax in enumerate(axes):
        ax.fill_between(x, lo[:, k], hi[:, k], color=band_color, alpha=0.6, lw=0, label=band_label)
        ax.plot(x, m[:, k], color=_MEDIAN_COLOR, lw=1.4, label="posterior mean")
        ax.set_ylabel(latent_names[k] if latent_names else f"z[{k}]")
        ax.grid(alpha=0.3)
    axes[0].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize="small")
    bottom = axes[-1]
    bottom.set_xlabel(_xlabel(idx))
    _date_axis(bottom, idx)
    head = title or "Latent state trajectories"
    if Z > n_lat:
        head += f" (first {n_lat} of {Z} latent dimensions)"
    fig.suptitle(head)
    if path is not None:
        _save_figure(fig, path)
    return fig


# ----------------------------------------------------------------------------------------------
# PIT histogram
# ----------------------------------------------------------------------------------------------
def pit_histogram(
    pit: Any, bins: int = 10, title: str | None = None, path: str | os.PathLike | None = None
) -> "Figure":
    """Histogram of PIT values with the uniform reference and its +-2 standard-error band.

    Under a calibrated forecast each of the ``bins`` equal bins holds Binomial(n, 1/bins) PIT
    values: the line marks the expected count n/bins and the band +-2 sqrt(n p (1-p)), p = 1/bins
    (pointwise, so with many bins one bar outside the band is no alarm). A U shape means the
    predictive intervals are too narrow, a hump too wide, a slope a biased forecast. The title
    gives the Kolmogorov-Smirnov p-value against U(0, 1) (:func:`deepstate.scores.pit_uniformity`).

    Args:
        pit: PIT values in [0, 1], any shape; NaN (missing observations) are dropped.
        bins: number of equal-width bins on [0, 1].
        title: title prefix (default "PIT histogram").
        path: optional file to save the figure to (PNG).

    Returns:
        The matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"bins must be an integer >= 1, got {bins!r}")
    u = _as_array(pit, "pit").ravel()
    u = u[~np.isnan(u)]
    if u.size == 0:
        raise ValueError("pit contains no non-NaN values")
    if np.any((u < 0) | (u > 1)):
        raise ValueError("pit values must lie in [0, 1]")
    n = u.size
    pval = pit_uniformity(u)
    p = 1.0 / bins
    expected = n * p
    se = math.sqrt(n * p * (1.0 - p))

    fig, ax = plt.subplots(figsize=(6.5, 4.2), layout="constrained")
    ax.hist(u, bins=bins, range=(0.0, 1.0), color=_OTHER_COLOR, edgecolor="white", label="PIT values")
    ax.axhspan(max(expected - 2 * se, 0.0), expected + 2 * se, color="grey", alpha=0.2, lw=0,
               label="uniform ±2 s.e.")
    ax.axhline(expected, color="black", ls="--", lw=1.2, label=f"uniform (n/bins = {expected:.3g})")
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("PIT value (predictive CDF at the observation)")
    ax.set_ylabel(f"count (of n = {n})")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, fontsize="small", frameon=False)
    ax.set_title(f"{title or 'PIT histogram'}\nKS test vs uniform: p = {pval:.3g}", fontsize="medium")
    if path is not None:
        _save_figure(fig, path)
    return fig


# ----------------------------------------------------------------------------------------------
# score table
# ----------------------------------------------------------------------------------------------
_COVERAGE_RE = re.compile(r"^cov(?:erage)?[_\s-]?(\d+(?:\.\d+)?)$", re.IGNORECASE)


def _coverage_target(metric: str) -> float | None:
    """Nominal level from a name like "coverage80", "coverage_0.9" or "cov95"; else None."""
    mt = _COVERAGE_RE.match(metric.strip())
    if not mt:
        return None
    v = float(mt.group(1))
    v = v / 100.0 if v > 1.0 else v
    return v if 0.0 < v < 1.0 else None


def _fmt(v: float) -> str:
    if not np.isfinite(v):
        return "n/a"
    return f"{v:.3g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"


def score_table(
    df: "pd.DataFrame",
    title: str | None = None,
    path: str | os.PathLike | None = None,
    *,
    targets: Mapping[str, float] | None = None,
    higher_is_better: Iterable[str] = (),
) -> "Figure":
    """Backtest score table as one horizontal bar panel per metric, models on the y axis.

    The best model per metric is highlighted and every bar carries its value. "Best" is the
    smallest value, except for metrics with a target (closest to it wins, drawn as a dashed
    line) and metrics listed in ``higher_is_better``. Coverage columns named like
    ``coverage80`` / ``coverage_0.9`` / ``cov95`` get their nominal level as target
    automatically. NaN entries get no bar and the label "n/a".

    Args:
        df: DataFrame with one row per model (the index holds the model names) and numeric
            metric columns (e.g. crps, coverage80, width80, mase, mae); other columns are ignored.
        title: figure title (default "Backtest scores").
        path: optional file to save the figure to (PNG).
        targets: ``{column: target value}``, overriding the automatic coverage targets.
        higher_is_better: columns where larger is better.

    Returns:
        The matplotlib Figure.
    """
    import matplotlib.pyplot as plt
    import pandas as pd
    from matplotlib.patches import Patch

    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"df must be a pandas DataFrame, got {type(df).__name__}")
    num = df.select_dtypes(include="number")
    if num.shape[1] == 0:
        raise ValueError("df has no numeric metric columns")
    if num.shape[0] == 0:
        raise ValueError("df has no rows (models)")
    targets = dict(targets or {})
    unknown = [c for c in targets if c not in num.columns]
    if unknown:
        raise ValueError(f"targets names columns not in df's numeric columns: {unknown}")
    higher = set(higher_is_better)
    unknown = [c for c in higher if c not in num.columns]
    if unknown:
        raise ValueError(f"higher_is_better names columns not in df's numeric columns: {unknown}")

    metrics = [str(c) for c in num.columns]
    models = [str(i) for i in num.index]
    n_met, n_mod = len(metrics), len(models)
    ncols = min(n_met, 3)
    nrows = math.ceil(n_met / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(4.2 * ncols, nrows * (1.1 + 0.42 * n_mod)), sharey=True,
        squeeze=False, layout="constrained",
    )
    flat = axes.ravel()
    y = np.arange(n_mod)
    for ax, col, name in zip(flat, num.columns, metrics):
        vals = num[col].to_numpy(dtype=np.float64)
        target = targets.get(col, _coverage_target(name))
        finite = np.isfinite(vals)
        best = None
        if finite.any():
            if target is not None:
                score = np.where(finite, np.abs(vals - target), np.inf)
                best = int(np.argmin(score))
                hint = f"closer to {target:g} is better"
            elif col in higher:
                best = int(np.nanargmax(np.where(finite, vals, np.nan)))
                hint = "higher is better"
            else:
                best = int(np.nanargmin(np.where(finite, vals, np.nan)))
                hint = "lower is better"
        else:
            hint = "no values"
        colors = [_BEST_COLOR if i == best else _OTHER_COLOR for i in range(n_mod)]
        ax.barh(y, np.where(finite, vals, 0.0), color=colors, height=0.7)
        # Room for the value labels beyond the longest bar (both signs).
        lo = min(0.0, np.nanmin(np.where(finite, vals, np.nan))) if finite.any() else 0.0
        hi = max(0.0, np.nanmax(np.where(finite, vals, np.nan))) if finite.any() else 1.0
        if target is not None:
            lo, hi = min(lo, target), max(hi, target)
            ax.axvline(target, color="black", ls="--", lw=1)
        span = (hi - lo) or 1.0
        ax.set_xlim(lo - (0.3 * span if lo < 0 else 0.0), hi + (0.3 * span if hi > 0 else 0.05 * span))
        for yi, v, ok in zip(y, vals, finite):
            xpos = v if ok else 0.0
            ha = "right" if ok and v < 0 else "left"
            pad = -0.02 * span if ha == "right" else 0.02 * span
            # White backing keeps the digits legible where they cross the target line.
            ax.text(xpos + pad, yi, _fmt(v), va="center", ha=ha, fontsize="small",
                    fontweight="bold" if yi == best else "normal",
                    bbox=dict(facecolor="white", edgecolor="none", alpha=0.8, pad=1.0))
        ax.set_title(name, fontsize="medium")
        ax.set_xlabel(hint, fontsize="small")
        ax.grid(axis="x", alpha=0.3)
    for ax in flat[n_met:]:
        ax.set_visible(False)
    flat[0].set_yticks(y, models)
    flat[0].invert_yaxis()  # first model on top, as in the table (shared y: all panels follow)
    for r in range(nrows):
        axes[r, 0].set_ylabel(str(num.index.name or "model"))
    handles = [Patch(color=_BEST_COLOR, label="best per metric"), Patch(color=_OTHER_COLOR, label="other models")]
    if any(targets.get(c, _coverage_target(str(c))) is not None for c in num.columns):
        from matplotlib.lines import Line2D

        handles.append(Line2D([], [], color="black", ls="--", lw=1, label="target (nominal level)"))
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize="small", frameon=False)
    fig.suptitle(title or "Backtest scores")
    if path is not None:
        _save_figure(fig, path)
    return fig
