r"""Forecasts with uncertainty intervals: filter the history, then roll the model forward.

:func:`forecast` is the low-level entry point (a :class:`~deepstate.models.base.LatentSequenceModel`
and a :class:`~deepstate.data.SequenceBatch` of histories); :meth:`deepstate.estimator.Estimator.forecast`
wraps it with the estimator's standardisation and input conversion.

Two methods, one result type (:class:`Forecast`):

* ``"particles"`` (every model): :func:`~deepstate.forecasting.filtering.filter_history` gives
  weighted particles at the end of each history; ``S`` of them are drawn in proportion to their
  weights and :func:`~deepstate.models.rollout.rollout` simulates ``H`` steps from each, feeding
  back sampled values. The forecast is the ``S`` sample paths ``[S, B, H, D]``; quantiles are
  empirical.
* ``"exact"`` (models with a Kalman filter: ``lgssm``, ``deepstate``): the history is extended by
  ``H`` unobserved steps and the Kalman filter's one-step predictions at those steps are the exact
  ``H``-step-ahead Gaussian predictive distributions ``N(C m_{t|T} + d_t, C P_{t|T} C^T + R_t)``
  (Durbin & Koopman 2012, sec. 4.11), so quantiles need no sampling. Sample paths (for scores that
  need them) are drawn from the joint Gaussian by the same rollout, started from the filtered
  Gaussian of the last step.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence

import numpy as np
import torch

from ..data import SequenceBatch
from ..data.convert import extend_index
from ..inference.evaluation import _pos_int
from ..models.base import LatentSequenceModel
from ..models.rollout import RolloutState, rollout
from .filtering import feature_state, filter_history

__all__ = ["Forecast", "forecast", "check_levels", "FORECAST_METHODS"]

FORECAST_METHODS = ("auto", "particles", "exact")


def check_levels(levels, name: str = "levels") -> tuple:
    """``levels`` as a sorted tuple of floats strictly inside (0, 1); ValueError naming ``name`` otherwise."""
    if isinstance(levels, (int, float)) and not isinstance(levels, bool):
        levels = (levels,)
    try:
        out = tuple(float(v) for v in levels)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected numbers in (0, 1), got {levels!r}") from None
    if not out or any(not (0.0 < v < 1.0) or math.isnan(v) for v in out):
        raise ValueError(f"{name}: expected numbers strictly between 0 and 1, got {levels!r}")
    return tuple(sorted(set(out)))


def _norm_ppf(p: np.ndarray) -> np.ndarray:
    return np.asarray(torch.special.ndtri(torch.as_tensor(p, dtype=torch.float64)).numpy())


@dataclasses.dataclass
class Forecast:
    """``H``-step forecasts of ``B`` series on the original scale of the data.

    Attributes:
        samples: ``[S, B, H, D]`` sample paths (numpy float64), or ``None`` for an exact forecast
            made without paths.
        gaussian_mean, gaussian_std: ``[B, H, D]`` exact Gaussian marginal predictive moments
            (``"exact"`` method), else ``None``.
        index: optional list of ``B`` ``pandas.Index`` of length ``H`` continuing each history's index.
        history: list of ``B`` ``[T_b, D]`` arrays, the histories on the original scale (NaN = missing).
        history_index: optional list of ``B`` indices of the histories.
        names: optional list of ``D`` dimension (column) names.
        method: ``"particles"`` or ``"exact"``.
        levels: the default quantile levels of :meth:`to_frame`.
    """

    samples: Optional[np.ndarray]
    gaussian_mean: Optional[np.ndarray] = None
    gaussian_std: Optional[np.ndarray] = None
    index: Optional[list] = None
    history: Optional[list] = None
    history_index: Optional[list] = None
    names: Optional[list] = None
    method: str = "particles"
    levels: tuple = (0.1, 0.5, 0.9)

    @property
    def is_gaussian(self) -> bool:
        return self.gaussian_mean is not None

    @property
    def shape(self) -> tuple:
        """``(B, H, D)``."""
        return tuple(self.gaussian_mean.shape) if self.is_gaussian else tuple(self.samples.shape[1:])

    @property
    def horizon(self) -> int:
        return self.shape[1]

    @property
    def mean(self) -> np.ndarray:
        """``[B, H, D]`` predictive means."""
        return self.gaussian_mean if self.is_gaussian else self.samples.mean(0)

    @property
    def median(self) -> np.ndarray:
        return self.quantiles([0.5])[0]

    def quantiles(self, levels: Sequence[float]) -> np.ndarray:
        """``[L, B, H, D]`` predictive quantiles at ``levels`` (in the order given; each in (0, 1))."""
        check_levels(levels)
        levels = [float(v) for v in (levels if not isinstance(levels, (int, float)) else [levels])]
        if self.is_gaussian:
            z = _norm_ppf(np.asarray(levels))
            return self.gaussian_mean[None] + z[:, None, None, None] * self.gaussian_std[None]
        return np.quantile(self.samples, levels, axis=0)

    def interval(self, level: float = 0.8):
        """Central ``level`` predictive interval: ``(lower, upper)``, each ``[B, H, D]``."""
        (level,) = check_levels(level, "level")
        q = self.quantiles([(1 - level) / 2, (1 + level) / 2])
        return q[0], q[1]

    def to_frame(self, levels: Optional[Sequence[float]] = None, series: int = 0):
        """One series' forecast as a ``pandas.DataFrame`` indexed by the continued time index.

        Columns: ``mean`` and ``q0.1``, ``q0.5``, ... (the predictive quantile at that level) for a
        univariate series; ``{name}:mean``, ``{name}:q0.1``, ... per dimension otherwise.
        """
        import pandas as pd

        levels = check_levels(self.levels if levels is None else levels)
        B, H, D = self.shape
        if isinstance(series, bool) or not isinstance(series, (int, np.integer)) or not 0 <= series < B:
            raise ValueError(f"series: expected an int in [0, {B}), got {series!r}")
        q = self.quantiles(levels)[:, series]  # [L, H, D]
        names = self.names or ([None] if D == 1 else [f"x{d}" for d in range(D)])
        cols = {}
        for d, name in enumerate(names):
            prefix = "" if D == 1 else f"{name}:"
            cols[f"{prefix}mean"] = self.mean[series, :, d]
            for i, lv in enumerate(levels):
                cols[f"{prefix}q{lv:g}"] = q[i, :, d]
        index = self.index[series] if self.index is not None else pd.RangeIndex(H, name="step")
        return pd.DataFrame(cols, index=index)

    def plot(self, series: int = 0, levels: Sequence[float] = (0.5, 0.8, 0.95), actual=None, title=None,
             ylabel=None, path=None, max_history: Optional[int] = None):
        """Fan chart of one series (history, median, shaded intervals, ``actual`` ``[H, D]`` if known)."""
        from ..plots import fan_chart

        levels = check_levels(levels)
        hist = self.history[series] if self.history is not None else np.zeros((0, self.shape[2]))
        hidx = self.history_index[series] if self.history_index is not None else np.arange(len(hist))
        fidx = self.index[series] if self.index is not None else np.arange(len(hist), len(hist) + self.horizon)
        if max_history is not None:
            hist, hidx = hist[-max_history:], hidx[-max_history:]
        intervals = {lv: tuple(a[series] for a in self.interval(lv)) for lv in levels}
        return fan_chart(hist, fidx, self.median[series], intervals, actual=actual, history_index=hidx, title=title,
                         ylabel=ylabel, dim_names=self.names, path=path)


def _has_exact(lsm: LatentSequenceModel) -> bool:
    return hasattr(lsm.ssm, "kalman")


def use_exact(lsm: LatentSequenceModel, method: str) -> bool:
    """Whether ``method`` (``"auto"``, ``"particles"``, ``"exact"``) takes the Kalman path for this model;
    ValueError naming ``method`` for an unknown one or ``"exact"`` on a model without a Kalman filter."""
    if method not in FORECAST_METHODS:
        raise ValueError(f"method: expected one of {FORECAST_METHODS}, got {method!r}")
    if method == "exact" and not _has_exact(lsm):
        raise ValueError("method: 'exact' needs a model with a Kalman filter (lgssm, deepstate)")
    return method == "exact" or (method == "auto" and _has_exact(lsm))


def _extend(batch: SequenceBatch, horizon: int, u_future: Optional[torch.Tensor]) -> SequenceBatch:
    """Each history followed by ``horizon`` unobserved steps (with the future covariates)."""
    B, T, D = batch.x.shape
    L = batch.lengths
    T2 = int(L.max()) + horizon
    x = batch.x.new_zeros(B, T2, D)
    observed = torch.zeros(B, T2, D, dtype=torch.bool, device=batch.x.device)
    x[:, :T], observed[:, :T] = batch.x, batch.observed
    pos = torch.arange(T2, device=batch.x.device)
    valid = pos < (L + horizon)[:, None].to(pos.device)
    u = None
    if batch.u is not None:
        u = batch.u.new_zeros(B, T2, batch.u.shape[-1])
        u[:, :T] = batch.u
        for b in range(B):
            u[b, int(L[b]): int(L[b]) + horizon] = u_future[b]
    return SequenceBatch(x=x, valid=valid, observed=observed, lengths=L + horizon, u=u, offset=batch.offset)


def _check_covariates(lsm, batch: SequenceBatch, covariates, horizon: int):
    """Future covariates ``[B, H, U]`` as a tensor, or None; errors name ``covariates``."""
    u_dim = int(getattr(lsm.ssm, "u_dim", 0) or 0)
    if batch.u is None and u_dim == 0:
        if covariates is not None:
            raise ValueError("covariates: this model takes no covariates")
        return None
    if covariates is None:
        raise ValueError(f"covariates: the model uses {u_dim or batch.u.shape[-1]} covariate(s); "
                         f"give their known future values, shape [B, {horizon}, U]")
    u = torch.as_tensor(np.asarray(covariates, dtype=np.float64) if not isinstance(covariates, torch.Tensor) else covariates)
    if u.dim() == 1:
        u = u[None, :, None]
    elif u.dim() == 2:
        u = u[None]
    U = batch.u.shape[-1] if batch.u is not None else u_dim
    if u.shape[0] not in (1, batch.batch_size) or u.shape[1] < horizon or u.shape[2] != U:
        raise ValueError(f"covariates: expected shape [{batch.batch_size}, {horizon}, {U}], got {tuple(u.shape)}")
    if not torch.isfinite(u[:, :horizon]).all():
        raise ValueError("covariates: future covariates must be finite")
    return u[:, :horizon].expand(batch.batch_size, horizon, U).to(batch.x.device, batch.x.dtype)


@torch.no_grad()
def forecast(
    lsm: LatentSequenceModel,
    history: SequenceBatch,
    horizon: int,
    num_samples: int = 500,
    num_particles: int = 200,
    covariates=None,
    method: str = "auto",
    standardizer=None,
    seed: Optional[int] = None,
) -> Forecast:
    """Forecast ``horizon`` steps beyond the end of each history.

    Args:
        lsm: a fitted model.
        history: ``B`` histories (on the model's scale; ``standardizer`` maps results back).
        horizon: ``H >= 1``.
        num_samples: ``S`` sample paths.
        num_particles: particles of the filter through the history (``"particles"`` method).
        covariates: ``[B, H, U]`` (or ``[H, U]`` / ``[H]``) known future covariates, required exactly
            when the model uses covariates.
        method: ``"auto"`` (exact for models with a Kalman filter, else particles), ``"particles"``,
            ``"exact"``.
        standardizer: a fitted :class:`~deepstate.data.Standardizer` whose inverse maps the model's
            scale back to the data's, or ``None``.
        seed: seed for the draws (``None``: torch's global RNG).

    Returns:
        :class:`Forecast` on the original scale.
    """
    horizon, num_samples, num_particles = (_pos_int(v, name) for v, name in (
        (horizon, "horizon"), (num_samples, "num_samples"), (num_particles, "num_particles")))
    exact = use_exact(lsm, method)
    if not isinstance(history, SequenceBatch):
        raise TypeError(f"history: expected a SequenceBatch, got {type(history).__name__}")
    if history.dim != lsm.x_dim:
        raise ValueError(f"history: expected {lsm.x_dim} dimension(s) per step (as fitted), got {history.dim}")
    empty = (~(history.observed & history.valid[..., None]).any(-1).any(-1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"history: sequence(s) {empty} have no observed value; a forecast needs at least one")
    horizon, S = int(horizon), int(num_samples)
    ref = next(lsm.parameters())
    batch = history.to(device=ref.device, dtype=ref.dtype)
    u_future = _check_covariates(lsm, batch, covariates, horizon)
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(int(seed))
        if exact:
            mean, std, samples = _exact(lsm, batch, horizon, S, u_future)
        else:
            state = filter_history(lsm, batch, int(num_particles)).resample(S)
            samples = rollout(lsm.ssm, state, horizon, u=u_future).x
            mean = std = None
    to_np = lambda t: None if t is None else t.detach().to("cpu", torch.float64)  # noqa: E731
    samples, mean, std = to_np(samples), to_np(mean), to_np(std)
    hist = [h.to("cpu", torch.float64) for h in history.sequences()]
    if standardizer is not None:
        samples = None if samples is None else standardizer.inverse_transform(samples)
        mean = None if mean is None else standardizer.inverse_transform(mean)
        std = None if std is None else standardizer.inverse_transform_scale(std)
        hist = [standardizer.inverse_transform(h) for h in hist]
    index = None
    if history.index is not None:
        index = [extend_index(ix, horizon) for ix in history.index]
    np_ = lambda t: None if t is None else t.numpy()  # noqa: E731
    return Forecast(samples=np_(samples), gaussian_mean=np_(mean), gaussian_std=np_(std), index=index,
                    history=[h.numpy() for h in hist], history_index=history.index, names=None,
                    method="exact" if exact else "particles")


def _exact(lsm, batch: SequenceBatch, horizon: int, S: int, u_future):
    """Exact Gaussian marginals ``[B, H, D]`` and ``S`` joint sample paths ``[S, B, H, D]``.

    The marginals are the Kalman filter's observation predictions at ``H`` appended unobserved
    steps. The paths come from the filtered Gaussian of the last history step, rolled forward by the
    model's own steps (which, for a linear-Gaussian model, is exact joint sampling).
    """
    ssm = lsm.ssm
    ext = _extend(batch, horizon, u_future)
    kf = ssm.kalman(ext)
    B = batch.batch_size
    b = torch.arange(B, device=batch.x.device)[:, None]
    steps = batch.lengths.to(b.device)[:, None] + torch.arange(horizon, device=b.device)  # [B, H]
    mean = kf.predicted_obs_mean[b, steps]  # [B, H, D]
    var = torch.diagonal(kf.predicted_obs_cov[b, steps], dim1=-2, dim2=-1)
    # sample paths: z_T ~ N(filtered mean, filtered cov) at each history's last step, then roll forward
    last = (batch.lengths - 1).to(b.device)
    m, P = kf.filtered_mean[b[:, 0], last], kf.filtered_cov[b[:, 0], last]
    L = torch.linalg.cholesky(P + 1e-12 * torch.eye(P.shape[-1], dtype=P.dtype, device=P.device))
    z = m + (L @ torch.randn(S, B, P.shape[-1], 1, dtype=P.dtype, device=P.device))[..., 0]  # [S, B, Z]
    s = ssm.update(ssm.initial((S, B)), z, batch.x[b[:, 0], last].expand(S, B, -1), {},
                   batch.observed[b[:, 0], last].expand(S, B, -1))
    f, x_last, obs_last = feature_state(ssm, batch)
    state = RolloutState(s=s, f={k: v.expand(S, *v.shape).contiguous() for k, v in f.items()},
                         x_prev=x_last.expand(S, B, -1), observed_prev=obs_last.expand(S, B, -1))
    samples = rollout(ssm, state, horizon, u=u_future).x
    return mean, var.clamp_min(0).sqrt(), samples
