"""Forecast scores: plain functions of predictive samples / quantiles and observations.

No model is involved: every function takes arrays (numpy arrays, anything ``np.asarray`` accepts,
or torch tensors, which are detached and copied to the CPU) and returns numpy arrays or floats.
All arithmetic is done in float64.

Missing observations
--------------------
Observations may contain NaN for missing values.

* **Elementwise** scores (:func:`crps_ensemble`, :func:`crps_normal`, :func:`interval_score`,
  :func:`pinball_loss`, :func:`quantile_loss`, :func:`pit_from_samples`, :func:`pit_normal`) return
  NaN exactly where ``obs`` is NaN, so the output keeps the shape of the input.
* **Aggregates** (:func:`coverage`, :func:`mae`, :func:`rmse`, :func:`mase`,
  :func:`pit_uniformity`) ignore those entries, i.e. they average over the observed entries only
  (``nanmean``). To aggregate an elementwise score yourself use ``np.nanmean(score)``.
  An aggregate over no observed entry is NaN (without numpy's "mean of empty slice" warning).

Orientation: CRPS, interval score, pinball loss, MAE, RMSE and MASE are negatively oriented
(smaller is better) and in the units of the observations (MASE is unit-free). Coverage should be
close to the nominal level of the interval; PIT values of a calibrated forecast are U(0, 1).

The normal cdf is ``torch.special.ndtr`` (torch is a core dependency) and the pdf is numpy, so
this module needs neither scipy nor any other extra at runtime; :func:`pit_uniformity` uses
``scipy.stats.kstest`` when scipy is importable and otherwise its own Kolmogorov-Smirnov test.

References
----------
Gneiting, T. & Raftery, A. E. (2007). Strictly proper scoring rules, prediction, and estimation.
JASA 102(477), 359-378.
Ferro, C. A. T. (2014). Fair scores for ensemble forecasts. QJRMS 140, 1917-1923.
Hyndman, R. J. & Koehler, A. B. (2006). Another look at measures of forecast accuracy.
IJF 22(4), 679-688.
Czado, C., Gneiting, T. & Held, L. (2009). Predictive model assessment for count data.
Biometrics 65, 1254-1261.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

__all__ = [
    "crps_ensemble",
    "crps_normal",
    "coverage",
    "interval_width",
    "interval_score",
    "pinball_loss",
    "quantile_loss",
    "mae",
    "rmse",
    "mase",
    "pit_from_samples",
    "pit_normal",
    "pit_uniformity",
]

_SQRT_PI = math.sqrt(math.pi)
_SQRT_2PI = math.sqrt(2.0 * math.pi)


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def _as_array(x: Any, name: str) -> np.ndarray:
    """``x`` as a float64 numpy array; torch tensors are detached and moved to the CPU."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor without importing torch here
        x = x.detach().cpu().numpy()
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be numeric array-like, got {type(x).__name__}") from exc
    return arr


def _broadcast(arrays: dict[str, np.ndarray]) -> tuple[int, ...]:
    """The common broadcast shape of the named arrays, or ValueError naming the odd one out."""
    shape: tuple[int, ...] = ()
    first = None
    for name, arr in arrays.items():
        try:
            shape = np.broadcast_shapes(shape, arr.shape)
        except ValueError:
            raise ValueError(
                f"{name} has shape {arr.shape}, which does not broadcast with {first} "
                f"(shape so far {shape})"
            ) from None
        first = name if first is None else f"{first}, {name}" if len(first) < 40 else first
    return shape


def _check_level(level: Any, name: str = "level") -> np.ndarray:
    lev = _as_array(level, name)
    if lev.size == 0 or not np.all((lev > 0.0) & (lev < 1.0)):
        raise ValueError(f"{name} must lie strictly inside (0, 1), got {level!r}")
    return lev


def _check_std(std: np.ndarray) -> None:
    if np.any(std < 0):  # NaN compares False: a NaN std gives a NaN score, not an error
        raise ValueError("std must be non-negative")


def _check_interval(lower: np.ndarray, upper: np.ndarray) -> None:
    if np.any(lower > upper):
        raise ValueError("lower must not exceed upper (got lower > upper in some entries)")


def _nanmean(x: np.ndarray, axis: Any = None) -> Any:
    """``np.nanmean`` that returns NaN for an all-NaN slice without a RuntimeWarning."""
    valid = ~np.isnan(x)
    total = np.where(valid, x, 0.0).sum(axis=axis)
    count = valid.sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return float(out) if np.ndim(out) == 0 else out


def _normal_cdf(z: np.ndarray) -> np.ndarray:
    """Standard normal cdf Phi(z), accurate in both tails (torch.special.ndtr, float64)."""
    import torch  # core dependency; imported lazily so ``import deepstate.scores`` stays light

    return torch.special.ndtr(torch.as_tensor(np.asarray(z, dtype=np.float64))).numpy()


def _normal_pdf(z: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * np.square(z)) / _SQRT_2PI


# ----------------------------------------------------------------------------------------------
# CRPS
# ----------------------------------------------------------------------------------------------
def crps_ensemble(samples: Any, obs: Any, axis: int = 0, fair: bool = False) -> np.ndarray:
    r"""Continuous ranked probability score of an ensemble (sample) forecast, elementwise.

    For the empirical distribution of the samples :math:`x_1..x_S` (Gneiting & Raftery 2007,
    eq. 21)

    .. math::  \mathrm{CRPS} = \frac1S\sum_i |x_i - y| - \frac1{2S^2}\sum_{i,j} |x_i - x_j| .

    With ``fair=True`` the second term is divided by :math:`S(S-1)` instead of :math:`S^2`
    (the "fair" / unbiased CRPS of Ferro 2014): its expectation over ensembles of S iid draws
    equals the CRPS of the distribution they are drawn from. The two are related by
    ``crps_fair = crps_std - spread / (2 (S-1))`` with ``spread = (1/S^2) sum_ij |x_i - x_j|``;
    the standard form is biased upwards by that amount, which matters for small ensembles.

    The pairwise term is computed in O(S log S) time and O(S) memory per element by sorting:
    :math:`\sum_{i,j}|x_i-x_j| = 2\sum_k (2k - S - 1)\, x_{(k)}` with :math:`x_{(k)}` the k-th
    smallest sample (k = 1..S).

    Args:
        samples: ``[S, ...]`` predictive samples (the sample axis is ``axis``).
        obs: ``[...]`` observations, broadcastable to the samples' other axes; NaN = missing.
        axis: the sample axis of ``samples``.
        fair: use the fair (unbiased) estimator instead of the empirical-distribution CRPS.

    Returns:
        ``[...]`` CRPS in the units of ``obs``; NaN where ``obs`` (or any sample) is NaN.
    """
    x = _as_array(samples, "samples")
    y = _as_array(obs, "obs")
    if x.ndim == 0:
        raise ValueError("samples must have a sample axis (got a scalar)")
    try:
        x = np.moveaxis(x, axis, 0)
    except IndexError:  # numpy's AxisError subclasses IndexError (and ValueError)
        raise ValueError(f"axis={axis} is out of range for samples of shape {x.shape}") from None
    S = x.shape[0]
    if S == 0:
        raise ValueError("samples must contain at least one sample along axis")
    if fair and S < 2:
        raise ValueError("samples must contain at least two samples for fair=True")
    try:
        np.broadcast_shapes(x.shape[1:], y.shape)
    except ValueError:
        raise ValueError(
            f"obs has shape {y.shape}, which does not broadcast with samples' non-sample "
            f"shape {x.shape[1:]}"
        ) from None

    abs_err = np.mean(np.abs(x - y), axis=0)
    xs = np.sort(x, axis=0)  # NaN sorts last; any NaN sample makes the sum NaN, as it should
    k = np.arange(1, S + 1, dtype=np.float64).reshape((S,) + (1,) * (x.ndim - 1))
    half_pair_sum = np.sum((2.0 * k - S - 1.0) * xs, axis=0)  # = 0.5 * sum_ij |x_i - x_j|
    denom = S * (S - 1.0) if fair else float(S) * S
    return abs_err - half_pair_sum / denom


def crps_normal(mean: Any, std: Any, obs: Any) -> np.ndarray:
    r"""CRPS of a Normal(mean, std) predictive distribution, closed form, elementwise.

    .. math::  \mathrm{CRPS}(N(\mu,\sigma^2), y) = \sigma\left[z(2\Phi(z)-1) + 2\varphi(z)
               - \tfrac{1}{\sqrt\pi}\right],\quad z = (y-\mu)/\sigma

    (Gneiting & Raftery 2007, eq. 5; Gneiting et al. 2005). For ``std == 0`` it is the
    absolute error ``|y - mean|``.

    Args:
        mean, std, obs: broadcastable arrays; ``std >= 0``; NaN obs = missing.

    Returns:
        Broadcast-shape CRPS in the units of ``obs``; NaN where ``obs`` is NaN.
    """
    mu = _as_array(mean, "mean")
    sd = _as_array(std, "std")
    y = _as_array(obs, "obs")
    _broadcast({"mean": mu, "std": sd, "obs": y})
    _check_std(sd)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (y - mu) / sd
        out = sd * (z * (2.0 * _normal_cdf(z) - 1.0) + 2.0 * _normal_pdf(z) - 1.0 / _SQRT_PI)
    return np.where(sd == 0, np.abs(y - mu), out)


# ----------------------------------------------------------------------------------------------
# intervals and quantiles
# ----------------------------------------------------------------------------------------------
def coverage(lower: Any, upper: Any, obs: Any, axis: Any = None) -> Any:
    """Empirical coverage: fraction of observed entries with ``lower <= obs <= upper``.

    Args:
        lower, upper: interval bounds, broadcastable with ``obs``; ``lower <= upper``.
        obs: observations; NaN entries (missing) are left out of numerator and denominator.
        axis: axis/axes to average over (None: all, returning a float).

    Returns:
        Fraction in [0, 1] (float, or array when ``axis`` is given); NaN if nothing is observed.
        Compare with the nominal level of the interval (e.g. 0.8 for a 10%-90% interval).
    """
    lo = _as_array(lower, "lower")
    hi = _as_array(upper, "upper")
    y = _as_array(obs, "obs")
    shape = _broadcast({"lower": lo, "upper": hi, "obs": y})
    _check_interval(lo, hi)
    inside = ((lo <= y) & (y <= hi)).astype(np.float64)
    inside = np.where(np.isnan(np.broadcast_to(y, shape)), np.nan, inside)
    return _nanmean(inside, axis=axis)


def interval_width(lower: Any, upper: Any) -> np.ndarray:
    """Elementwise interval width ``upper - lower`` (units of the data); aggregate with nanmean.

    Raises ValueError if the shapes do not broadcast or ``lower > upper`` somewhere.
    """
    lo = _as_array(lower, "lower")
    hi = _as_array(upper, "upper")
    _broadcast({"lower": lo, "upper": hi})
    _check_interval(lo, hi)
    return hi - lo


def interval_score(lower: Any, upper: Any, obs: Any, level: Any) -> np.ndarray:
    r"""Interval (Winkler) score of a central ``level`` prediction interval, elementwise.

    With :math:`\alpha = 1 - \text{level}` (Gneiting & Raftery 2007, eq. 43)

    .. math::  S = (u - l) + \frac2\alpha (l - y)\,1\{y < l\} + \frac2\alpha (y - u)\,1\{y > u\} .

    The interval is meant to have bounds at the :math:`\alpha/2` and :math:`1-\alpha/2`
    quantiles, e.g. level 0.8 for a 10%-90% interval. Smaller is better; units of ``obs``.

    Args:
        lower, upper, obs: broadcastable arrays; NaN obs = missing.
        level: nominal coverage in (0, 1) (scalar or broadcastable array).

    Returns:
        Broadcast-shape score; NaN where ``obs`` is NaN.
    """
    lo = _as_array(lower, "lower")
    hi = _as_array(upper, "upper")
    y = _as_array(obs, "obs")
    lev = _check_level(level)
    _broadcast({"lower": lo, "upper": hi, "obs": y, "level": lev})
    _check_interval(lo, hi)
    alpha = 1.0 - lev
    below = np.maximum(lo - y, 0.0)  # NaN obs propagates through maximum
    above = np.maximum(y - hi, 0.0)
    return (hi - lo) + (2.0 / alpha) * (below + above)


def pinball_loss(pred_quantile: Any, obs: Any, level: Any) -> np.ndarray:
    r"""Pinball (quantile) loss of a predicted ``level``-quantile, elementwise.

    .. math::  L_\tau(q, y) = (y - q)\,(\tau - 1\{y < q\}) = \max(\tau (y-q),\ (\tau-1)(y-q))

    It is minimised in expectation by the true :math:`\tau`-quantile of y (Koenker & Bassett 1978;
    Gneiting & Raftery 2007, sec. 9). Units of ``obs``; smaller is better.

    Args:
        pred_quantile: predicted quantiles, broadcastable with ``obs``.
        obs: observations; NaN = missing.
        level: quantile level(s) :math:`\tau` in (0, 1), scalar or broadcastable array.

    Returns:
        Broadcast-shape loss; NaN where ``obs`` is NaN.
    """
    q = _as_array(pred_quantile, "pred_quantile")
    y = _as_array(obs, "obs")
    tau = _check_level(level)
    _broadcast({"pred_quantile": q, "obs": y, "level": tau})
    d = y - q
    return np.maximum(tau * d, (tau - 1.0) * d)


def quantile_loss(pred_quantiles: Any, obs: Any, levels: Any) -> np.ndarray:
    r"""Pinball loss averaged over several quantile levels, elementwise in the data.

    .. math::  QL = \frac1Q \sum_{k=1}^Q L_{\tau_k}(q_k, y)

    Twice this quantity approximates the CRPS when the levels are dense and evenly spaced
    (CRPS = 2 * integral over tau of the pinball loss, Gneiting & Raftery 2007 / Laio & Tamea 2007).

    Args:
        pred_quantiles: ``[Q, ...]`` predicted quantiles, one slice per level.
        obs: ``[...]`` observations; NaN = missing.
        levels: ``[Q]`` quantile levels in (0, 1).

    Returns:
        ``[...]`` mean pinball loss; NaN where ``obs`` is NaN.
    """
    q = _as_array(pred_quantiles, "pred_quantiles")
    taus = _check_level(levels, "levels")
    if taus.ndim != 1:
        raise ValueError(f"levels must be 1-D, got shape {taus.shape}")
    if q.ndim == 0 or q.shape[0] != taus.shape[0]:
        raise ValueError(
            f"pred_quantiles must have a leading axis of length len(levels)={taus.shape[0]}, "
            f"got shape {q.shape}"
        )
    y = _as_array(obs, "obs")
    tau = taus.reshape((-1,) + (1,) * (q.ndim - 1))
    try:
        np.broadcast_shapes(q.shape[1:], y.shape)
    except ValueError:
        raise ValueError(
            f"obs has shape {y.shape}, which does not broadcast with pred_quantiles[k] of shape "
            f"{q.shape[1:]}"
        ) from None
    return np.mean(pinball_loss(q, y, tau), axis=0)


# ----------------------------------------------------------------------------------------------
# point-forecast errors
# ----------------------------------------------------------------------------------------------
def mae(forecast: Any, obs: Any, axis: Any = None) -> Any:
    """Mean absolute error ``nanmean |forecast - obs|`` over observed entries (units of obs).

    Args:
        forecast, obs: broadcastable arrays; NaN obs = missing (ignored).
        axis: axes to average over (None: all, returning a float).
    """
    f = _as_array(forecast, "forecast")
    y = _as_array(obs, "obs")
    _broadcast({"forecast": f, "obs": y})
    return _nanmean(np.abs(f - y), axis=axis)


def rmse(forecast: Any, obs: Any, axis: Any = None) -> Any:
    """Root mean squared error ``sqrt(nanmean (forecast - obs)^2)`` over observed entries.

    Args:
        forecast, obs: broadcastable arrays; NaN obs = missing (ignored).
        axis: axes to average over (None: all, returning a float).
    """
    f = _as_array(forecast, "forecast")
    y = _as_array(obs, "obs")
    _broadcast({"forecast": f, "obs": y})
    out = np.sqrt(_nanmean(np.square(f - y), axis=axis))
    return float(out) if np.ndim(out) == 0 else out


def mase(forecast: Any, obs: Any, insample: Any, season: int = 1, axis: Any = None) -> Any:
    r"""Mean absolute scaled error (Hyndman & Koehler 2006).

    .. math::  \mathrm{MASE}_d = \frac{\operatorname{mean}_h |\hat y_{h,d} - y_{h,d}|}
               {\operatorname{mean}_{t>m} |x_{t,d} - x_{t-m,d}|}

    where x is the in-sample (training) series and m the ``season``: the denominator is the
    in-sample mean absolute error of the (seasonal) naive forecast, computed per dimension d over
    the pairs where both values are observed. MASE < 1 beats the in-sample naive forecast.

    Args:
        forecast, obs: ``[..., D]`` (or ``[...]`` for a 1-D ``insample``) point forecasts and
            observations; NaN obs = missing (ignored).
        insample: ``[T]`` or ``[T, D]`` training series, may contain NaN.
        season: seasonal lag m >= 1 of the naive forecast (1 = random walk).
        axis: axes of the scaled errors to average over (None: all, returning a float; e.g.
            ``axis=0`` on ``[H, D]`` inputs gives the per-dimension MASE ``[D]``).

    Returns:
        Unit-free MASE. A dimension whose in-sample naive error is 0 (a constant series) has an
        undefined scale: its scaled errors are NaN and a RuntimeWarning is issued.
    """
    f = _as_array(forecast, "forecast")
    y = _as_array(obs, "obs")
    x = _as_array(insample, "insample")
    if isinstance(season, bool) or not isinstance(season, (int, np.integer)) or season < 1:
        raise ValueError(f"season must be an integer >= 1, got {season!r}")
    if x.ndim not in (1, 2):
        raise ValueError(f"insample must be [T] or [T, D], got shape {x.shape}")
    if x.shape[0] <= season:
        raise ValueError(f"insample needs more than season={season} time steps, got {x.shape[0]}")
    diffs = np.abs(x[season:] - x[:-season])  # NaN where either end is missing
    scale = _nanmean(diffs, axis=0)  # [D] or scalar
    scale = np.asarray(scale, dtype=np.float64)
    if np.any(np.isnan(scale)):
        raise ValueError(
            f"insample has no pair of observed values {season} step(s) apart in some dimension"
        )
    shape = _broadcast({"forecast": f, "obs": y})
    if x.ndim == 2 and (len(shape) == 0 or shape[-1] != x.shape[1]):
        raise ValueError(
            f"forecast/obs must end in the dimension D={x.shape[1]} of insample, got shape {shape}"
        )
    if np.any(scale == 0):
        warnings.warn(
            "mase: the in-sample naive error is 0 (constant insample) in some dimension; "
            "its scaled errors are NaN",
            RuntimeWarning,
            stacklevel=2,
        )
    safe = np.where(scale == 0, np.nan, scale)
    return _nanmean(np.abs(f - y) / safe, axis=axis)


# ----------------------------------------------------------------------------------------------
# probability integral transform
# ----------------------------------------------------------------------------------------------
def pit_from_samples(
    samples: Any, obs: Any, randomize: bool = False, rng: Any = None, axis: int = 0
) -> np.ndarray:
    r"""Probability integral transform of observations under an ensemble forecast, elementwise.

    With :math:`F(y^-) = P(X < y)` and :math:`P(X = y)` estimated by the sample fractions:

    * ``randomize=False``: the mid-PIT :math:`F(y^-) + \tfrac12 P(X = y)`. For continuous
      samples (no ties with y) this is just the fraction of samples below the observation.
    * ``randomize=True`` (discrete / count likelihoods): the randomised PIT
      :math:`U = F(y^-) + V\,P(X = y)`, :math:`V \sim U(0,1)`, i.e. uniform on
      :math:`[F(y^-), F(y)]` (Czado, Gneiting & Held 2009); it is exactly U(0, 1) under a
      calibrated discrete forecast, where the non-randomised PIT would pile up on few values.

    Args:
        samples: ``[S, ...]`` predictive samples (sample axis ``axis``).
        obs: ``[...]`` observations broadcastable to the other axes; NaN = missing.
        randomize: draw the randomised PIT.
        rng: seed or ``numpy.random.Generator`` for ``randomize=True``.
        axis: the sample axis of ``samples``.

    Returns:
        ``[...]`` PIT values in [0, 1]; NaN where ``obs`` is NaN.
    """
    x = _as_array(samples, "samples")
    y = _as_array(obs, "obs")
    if x.ndim == 0:
        raise ValueError("samples must have a sample axis (got a scalar)")
    try:
        x = np.moveaxis(x, axis, 0)
    except IndexError:  # numpy's AxisError subclasses IndexError (and ValueError)
        raise ValueError(f"axis={axis} is out of range for samples of shape {x.shape}") from None
    if x.shape[0] == 0:
        raise ValueError("samples must contain at least one sample along axis")
    try:
        shape = np.broadcast_shapes(x.shape[1:], y.shape)
    except ValueError:
        raise ValueError(
            f"obs has shape {y.shape}, which does not broadcast with samples' non-sample "
            f"shape {x.shape[1:]}"
        ) from None
    below = np.mean(x < y, axis=0)
    equal = np.mean(x == y, axis=0)
    if randomize:
        v = np.random.default_rng(rng).uniform(size=shape)
    else:
        v = 0.5
    pit = below + v * equal
    return np.where(np.isnan(np.broadcast_to(y, shape)), np.nan, pit)


def pit_normal(mean: Any, std: Any, obs: Any) -> np.ndarray:
    r"""PIT under a Normal(mean, std) forecast: :math:`\Phi((y - \mu)/\sigma)`, elementwise.

    Args:
        mean, std, obs: broadcastable arrays, ``std > 0``; NaN obs = missing.

    Returns:
        Broadcast-shape PIT values in [0, 1]; NaN where ``obs`` is NaN.
    """
    mu = _as_array(mean, "mean")
    sd = _as_array(std, "std")
    y = _as_array(obs, "obs")
    _broadcast({"mean": mu, "std": sd, "obs": y})
    if np.any(sd <= 0):
        raise ValueError("std must be positive")
    return _normal_cdf((y - mu) / sd)


def _kolmogorov_sf(x: float) -> float:
    """P(K > x) for the Kolmogorov distribution K = lim sqrt(n) D_n."""
    if x <= 0:
        return 1.0
    if x < 1.18:
        # Theta-function form converges fast for small x (the alternating series does not).
        s = sum(
            math.exp(-((2 * k - 1) ** 2) * math.pi**2 / (8.0 * x * x)) for k in range(1, 20)
        )
        return max(0.0, min(1.0, 1.0 - math.sqrt(2.0 * math.pi) / x * s))
    s = sum((-1) ** (k - 1) * math.exp(-2.0 * k * k * x * x) for k in range(1, 101))
    return max(0.0, min(1.0, 2.0 * s))


def _ks_uniform_pvalue(u: np.ndarray) -> float:
    """Two-sided one-sample KS p-value against U(0,1): asymptotic Kolmogorov distribution with
    Stephens' (1970) finite-sample correction sqrt(n) -> sqrt(n) + 0.12 + 0.11/sqrt(n)."""
    u = np.sort(u)
    n = u.size
    i = np.arange(1, n + 1)
    d = max(float(np.max(i / n - u)), float(np.max(u - (i - 1) / n)))
    sq = math.sqrt(n)
    return _kolmogorov_sf((sq + 0.12 + 0.11 / sq) * d)


def pit_uniformity(pit: Any) -> float:
    """Kolmogorov-Smirnov test of PIT values against U(0, 1); returns the two-sided p-value.

    Small p-values (e.g. < 0.01) indicate miscalibration; the shape of the PIT histogram says
    which kind (U-shape: intervals too narrow; hump: too wide; slope: biased). NaN values
    (missing observations) are dropped. Uses ``scipy.stats.kstest`` (exact small-sample p-values)
    when scipy is importable, else the asymptotic Kolmogorov distribution with Stephens'
    correction. Note that non-randomised PIT of discrete forecasts is not U(0, 1) even when
    calibrated: use ``pit_from_samples(..., randomize=True)`` there. With PITs from S samples the
    values lie on a 1/S grid, which the KS test tolerates when S is large compared with sqrt(n).

    Args:
        pit: PIT values in [0, 1], any shape.

    Returns:
        p-value in [0, 1] (float).
    """
    u = _as_array(pit, "pit").ravel()
    u = u[~np.isnan(u)]
    if u.size == 0:
        raise ValueError("pit contains no non-NaN values")
    if np.any((u < 0) | (u > 1)):
        raise ValueError("pit values must lie in [0, 1]")
    try:
        from scipy import stats
    except ImportError:  # scipy is only a test extra
        return _ks_uniform_pvalue(u)
    return float(stats.kstest(u, "uniform").pvalue)
