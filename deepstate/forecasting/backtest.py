r"""Rolling-origin backtests: a fitted model and classical baselines scored on exactly the same origins.

For every origin ``o`` (the number of steps seen), each forecaster gets the history ``y_{1:o}`` and
forecasts ``y_{o+1:o+H}``; its predictive distribution is scored against what happened
(:mod:`deepstate.scores`): CRPS, coverage and mean width of central intervals, pinball loss of their
bounds, MAE of the median, RMSE of the mean and MASE (scaled by the in-sample naive error of the
training part, seasonal when a season is given). Scores are averaged over the ``H`` steps and the
``D`` dimensions of each origin, ignoring missing values, and then over origins.

The model is fitted once (before the backtest, on the training part) and reused as the history
grows: at each origin the history is filtered afresh (particle filter or Kalman filter) and the
model rolled forward. ``refit_every=k`` refits a copy on the history at every ``k``-th origin.

Baselines (each a Gaussian predictive distribution, so CRPS is exact):

* ``persistence``: the last observed value; variance ``h sigma^2`` with ``sigma^2`` the variance of
  the training part's one-step differences (the naive method's random-walk intervals;
  Hyndman & Athanasopoulos, *Forecasting: Principles and Practice*, sec. 5.5).
* ``seasonal_naive``: the value one season earlier; variance ``(floor((h-1)/m) + 1) sigma_m^2`` from the
  seasonal differences.
* ``local_level``, ``local_linear_trend``: statsmodels' ``UnobservedComponents``.
* ``sarimax``: statsmodels' ``SARIMAX`` with the given ``order`` (and ``seasonal_order``).

The statsmodels models are fitted by maximum likelihood on the training part once per dimension
(univariate), then re-filtered on each history with the fitted parameters (``results.apply``) -- the
same protocol as the deep model.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from typing import Any, Dict, Optional, Sequence

import numpy as np

from .. import scores
from .forecast import check_levels

__all__ = ["BacktestResult", "backtest", "BASELINES", "gaussian_baseline_forecasts"]

BASELINES = ("persistence", "seasonal_naive", "local_level", "local_linear_trend", "sarimax")


@dataclasses.dataclass
class BacktestResult:
    """Scores of a rolling-origin backtest.

    Attributes:
        per_origin: ``pandas.DataFrame``, one row per (model, origin): ``model``, ``origin`` (the
            position of the first forecast step), ``origin_label`` (its index label) and one
            column per score.
        summary: ``pandas.DataFrame`` indexed by model: the mean of each score over origins, sorted by CRPS.
        horizon: ``H``; levels: the interval levels; origins: the origin positions.
    """

    per_origin: Any
    summary: Any
    horizon: int
    levels: tuple
    origins: list

    def plot(self, title: Optional[str] = None, path=None):
        """The summary as a bar chart per score (see :func:`deepstate.plots.score_table`)."""
        from ..plots import score_table

        title = title or f"Rolling-origin backtest: {len(self.origins)} origins, horizon {self.horizon}"
        return score_table(self.summary, title=title, path=path)


def _as_2d(series) -> tuple:
    """``(values [T, D] float64 with NaN, index, names)`` of a Series / DataFrame / array."""
    import pandas as pd

    if isinstance(series, pd.Series):
        return series.to_numpy(dtype=np.float64)[:, None], series.index, [str(series.name or "y")]
    if isinstance(series, pd.DataFrame):
        return series.to_numpy(dtype=np.float64), series.index, [str(c) for c in series.columns]
    arr = np.asarray(series, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"series: expected one series [T] or [T, D], got shape {arr.shape}")
    return arr, pd.RangeIndex(len(arr)), [f"x{d}" for d in range(arr.shape[1])]


def _naive_sigma(train: np.ndarray, lag: int) -> np.ndarray:
    """``[D]`` root mean square of the training part's lag-``lag`` differences (observed pairs only)."""
    diff = train[lag:] - train[:-lag]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.sqrt(np.nanmean(diff ** 2, axis=0))


def _last_observed(hist: np.ndarray) -> np.ndarray:
    """``[D]`` the last non-NaN value of each column of ``hist [T, D]``."""
    out = np.full(hist.shape[1], np.nan)
    for d in range(hist.shape[1]):
        obs = np.flatnonzero(~np.isnan(hist[:, d]))
        if obs.size:
            out[d] = hist[obs[-1], d]
    return out


def gaussian_baseline_forecasts(y: np.ndarray, train_end: int, origins: Sequence[int], horizon: int, name: str,
                                season: Optional[int] = None, order=(2, 0, 0), seasonal_order=(0, 0, 0, 0)):
    """Gaussian forecasts ``(mean, std)``, each ``[K, H, D]``, of one baseline at ``K`` origins.

    Args:
        y: ``[T, D]`` the whole series (NaN = missing).
        train_end: the baselines are fitted on ``y[:train_end]``.
        origins: positions ``o``: forecasts of ``y[o:o + H]`` from ``y[:o]``.
        name: one of :data:`BASELINES`.
    """
    K, D = len(origins), y.shape[1]
    mean, std = np.zeros((K, horizon, D)), np.zeros((K, horizon, D))
    train = y[:train_end]
    h = np.arange(1, horizon + 1)
    if name == "persistence":
        sigma = _naive_sigma(train, 1)
        for k, o in enumerate(origins):
            mean[k] = _last_observed(y[:o])
            std[k] = np.sqrt(h)[:, None] * sigma
        return mean, std
    if name == "seasonal_naive":
        if not season or season < 2:
            raise ValueError(f"season: the seasonal naive baseline needs a season length >= 2, got {season!r}")
        sigma = _naive_sigma(train, season)
        for k, o in enumerate(origins):
            idx = o - season + (h - 1) % season  # the same phase, one season earlier
            mean[k] = y[idx]
            std[k] = np.sqrt((h - 1) // season + 1)[:, None] * sigma
        # a missing value one season earlier: fall back to persistence's level
        bad = np.isnan(mean)
        if bad.any():
            for k, o in enumerate(origins):
                mean[k] = np.where(np.isnan(mean[k]), _last_observed(y[:o]), mean[k])
        return mean, std
    import statsmodels.api as sm

    for d in range(D):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence chatter of the ML fit
            if name == "local_level":
                model = sm.tsa.UnobservedComponents(train[:, d], level="local level")
            elif name == "local_linear_trend":
                model = sm.tsa.UnobservedComponents(train[:, d], level="local linear trend")
            elif name == "sarimax":
                model = sm.tsa.SARIMAX(train[:, d], order=tuple(order), seasonal_order=tuple(seasonal_order), trend="c")
            else:
                raise ValueError(f"baselines: unknown baseline {name!r}; expected some of {BASELINES}")
            fitted = model.fit(disp=False)
            for k, o in enumerate(origins):
                res = fitted.apply(y[:o, d])
                fc = res.get_forecast(horizon)
                mean[k, :, d] = fc.predicted_mean
                std[k, :, d] = np.sqrt(np.maximum(fc.var_pred_mean, 0))
    return mean, std


def _score(name, k, o, label, actual, insample, season, levels, samples=None, mean=None, std=None) -> dict:
    """One row of scores for one forecaster at one origin: ``actual [H, D]``; samples ``[S, H, D]`` or
    Gaussian ``mean``/``std`` ``[H, D]``."""
    row = {"model": name, "origin": o, "origin_label": label}
    if samples is not None:
        row["crps"] = np.nanmean(scores.crps_ensemble(samples, actual))
        point_mean = samples.mean(0)
        qs = np.quantile(samples, [0.5] + [q for lv in levels for q in ((1 - lv) / 2, (1 + lv) / 2)], axis=0)
    else:
        row["crps"] = np.nanmean(scores.crps_normal(mean, std, actual))
        point_mean = mean
        from .forecast import _norm_ppf

        zq = _norm_ppf(np.array([0.5] + [q for lv in levels for q in ((1 - lv) / 2, (1 + lv) / 2)]))
        qs = mean[None] + zq[:, None, None] * std[None]
    median = qs[0]
    for i, lv in enumerate(levels):
        lo, hi = qs[1 + 2 * i], qs[2 + 2 * i]
        tag = f"{round(lv * 100):d}"
        row[f"coverage{tag}"] = scores.coverage(lo, hi, actual)
        row[f"width{tag}"] = float(np.nanmean(np.where(np.isnan(actual), np.nan, hi - lo)))
        row[f"pinball{tag}"] = float(np.nanmean(0.5 * (scores.pinball_loss(lo, actual, (1 - lv) / 2)
                                                       + scores.pinball_loss(hi, actual, (1 + lv) / 2))))
    row["mae"] = scores.mae(median, actual)
    row["rmse"] = scores.rmse(point_mean, actual)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        row["mase"] = scores.mase(median, actual, insample, season=season or 1)
    return row


def backtest(
    estimator,
    series,
    horizon: int,
    test_size: Optional[int] = None,
    origins: Optional[Sequence[int]] = None,
    stride: int = 1,
    levels: Sequence[float] = (0.5, 0.8, 0.95),
    num_samples: int = 500,
    num_particles: int = 200,
    baselines: Sequence[str] = BASELINES,
    season: Optional[int] = None,
    order=(2, 0, 0),
    seasonal_order=(0, 0, 0, 0),
    refit_every: Optional[int] = None,
    fit_kwargs: Optional[Dict[str, Any]] = None,
    model_name: Optional[str] = None,
    seed: Optional[int] = None,
    progress: bool = False,
) -> BacktestResult:
    """Rolling-origin backtest of a fitted :class:`~deepstate.estimator.Estimator` and the baselines.

    Args:
        estimator: a fitted Estimator (fitted on data up to the first origin -- the caller's
            responsibility; see the module docstring), a list of them (an ensemble: its forecast is
            the equal mixture of the members' sample paths, e.g. the same model from several seeds --
            "deep ensembles", Lakshminarayanan et al. 2017), or ``None`` to score the baselines only.
        series: the whole series: a ``pandas.Series`` / ``DataFrame`` (index kept for labels) or an
            array ``[T]`` / ``[T, D]``; NaN = missing (masked in histories, skipped in scores).
        horizon: ``H >= 1``.
        test_size: the held-out tail: origins run from ``T - test_size`` to ``T - H`` every ``stride``.
        origins: explicit origin positions instead (each in ``[1, T - H]``).
        levels: central interval levels scored (coverage, width, pinball).
        num_samples, num_particles: of the model's forecasts.
        baselines: which of :data:`BASELINES` to run.
        season: season length (seasonal naive, seasonal MASE), e.g. 11 for yearly sunspots.
        order, seasonal_order: of the SARIMAX baseline.
        refit_every: refit a copy of the estimator on the history every ``k`` origins (``None``: never).
        fit_kwargs: arguments of :meth:`Estimator.fit` for refits.
        model_name: the model's row label (default: the estimator's model name).
        seed: seed of the model's draws.
        progress: a tqdm bar over origins.

    Returns:
        :class:`BacktestResult`.
    """
    import pandas as pd

    for member in (estimator if isinstance(estimator, (list, tuple)) else [estimator]):
        if member is not None and not (hasattr(member, "forecast") and hasattr(member, "is_fitted")):
            raise TypeError(f"estimator: expected a fitted deepstate Estimator (or a list of them) or None "
                            f"(baselines only), got {type(member).__name__}")
    y, index, names = _as_2d(series)
    T, D = y.shape
    if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)) or horizon < 1:
        raise ValueError(f"horizon: expected a positive int, got {horizon!r}")
    if origins is None:
        if test_size is None:
            raise ValueError("test_size: give the held-out tail's length (or explicit origins)")
        if isinstance(test_size, bool) or not isinstance(test_size, (int, np.integer)) or not horizon <= test_size < T:
            raise ValueError(f"test_size: expected an int in [{horizon}, {T}), got {test_size!r}")
        if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride < 1:
            raise ValueError(f"stride: expected a positive int, got {stride!r}")
        origins = list(range(T - test_size, T - horizon + 1, stride))
    else:
        origins = [int(o) for o in origins]
        bad = [o for o in origins if not 1 <= o <= T - horizon]
        if not origins or bad:
            raise ValueError(f"origins: expected positions in [1, {T - horizon}], got {bad or origins}")
    levels = check_levels(levels)
    for b in baselines:
        if b not in BASELINES:
            raise ValueError(f"baselines: unknown baseline {b!r}; expected some of {BASELINES}")
    train_end = min(origins)
    if "seasonal_naive" in baselines and season and train_end <= season:
        raise ValueError(f"origins: the seasonal naive baseline needs more than one season ({season} steps) of "
                         f"history; the first origin is {train_end}")
    if train_end < 2:
        raise ValueError(f"origins: the baselines need at least 2 steps of history before the first origin, got {train_end}")
    insample = y[:train_end]
    actual = np.stack([y[o:o + horizon] for o in origins])  # [K, H, D]
    labels = [index[o] for o in origins]
    rows = []
    if estimator is not None:
        members = list(estimator) if isinstance(estimator, (list, tuple)) else [estimator]
        if not members:
            raise ValueError("estimator: expected a fitted Estimator or a non-empty list of them")
        name = model_name or (members[0].model if len(members) == 1 else f"{members[0].model} x{len(members)}")
        # an ensemble's forecast is the equal mixture of its members' (num_samples // K paths each)
        per = max(1, num_samples // len(members))
        samples = np.concatenate([_model_forecasts(m, series, y, index, origins, horizon, per, num_particles, seed,
                                                   refit_every, fit_kwargs, progress) for m in members])
        for k, o in enumerate(origins):
            rows.append(_score(name, k, o, labels[k], actual[k], insample, season, levels, samples=samples[:, k]))
    for b in baselines:
        if b == "seasonal_naive" and not season:
            continue  # needs a season; silently meaningless otherwise
        mean, std = gaussian_baseline_forecasts(y, train_end, origins, horizon, b, season, order, seasonal_order)
        label = f"sarimax{tuple(order)}" if b == "sarimax" else b
        for k, o in enumerate(origins):
            rows.append(_score(label, k, o, labels[k], actual[k], insample, season, levels, mean=mean[k], std=std[k]))
    per_origin = pd.DataFrame(rows)
    summary = per_origin.drop(columns=["origin", "origin_label"]).groupby("model", sort=False).mean()
    summary = summary.sort_values("crps")
    return BacktestResult(per_origin=per_origin, summary=summary, horizon=int(horizon), levels=levels, origins=origins)


def _history(series, o: int):
    """The first ``o`` steps of ``series`` (same kind, index kept)."""
    import pandas as pd

    if isinstance(series, (pd.Series, pd.DataFrame)):
        return series.iloc[:o]
    return np.asarray(series, dtype=np.float64)[:o]


def _model_forecasts(estimator, series, y, index, origins, horizon, S, N, seed, refit_every, fit_kwargs, progress):
    """``[S, K, H, D]`` sample paths of the model at every origin (Gaussian draws for exact models)."""
    import torch
    from tqdm.auto import tqdm

    from ..data import SequenceBatch

    if not estimator.is_fitted:
        raise ValueError("estimator: expected a fitted Estimator (fit it on the training part first)")
    if refit_every is not None and (isinstance(refit_every, bool) or not isinstance(refit_every, (int, np.integer))
                                    or refit_every < 1):
        raise ValueError(f"refit_every: expected a positive int or None, got {refit_every!r}")
    out = []
    current = estimator
    groups = [origins] if refit_every is None else [origins[i:i + refit_every] for i in range(0, len(origins), refit_every)]
    bar = tqdm(total=len(origins), desc="backtest", disable=not progress)
    for g, group in enumerate(groups):
        if refit_every is not None and g > 0:
            current = copy.deepcopy(estimator)
            current.fit(_history(series, group[0]), progress=False, **(fit_kwargs or {}))
        hists = [y[:o] for o in group]
        batch = SequenceBatch.from_sequences(hists, dtype=torch.float64)
        fc = current.forecast(batch, horizon, num_samples=S, num_particles=N, seed=seed)
        samples = fc.samples if fc.samples is not None else None
        out.append(samples)
        bar.update(len(group))
    bar.close()
    return np.concatenate(out, axis=1)
