r"""A DeepState-style model (Rangapuram, Seeger, Gasthaus, Stella, Wang & Januschowski 2018, "Deep State
Space Models for Time Series Forecasting").

An RNN over covariates (and calendar features) emits, at every step, the parameters of a
linear-Gaussian *innovation* state-space model; the likelihood is exact, through the Kalman filter::

    h_t = RNN(h_{t-1}, [u_t, season_onehot_t])                       (never reads the target)
    Theta_t = (sigma_level_t, sigma_slope_t, gamma_t, sigma_cycle_t, sigma_obs_t, b_t) = Psi(h_t)
    state  z_t = [level, slope, s_1..s_S, c, c*]
    z_1 ~ N(m0, diag(p0));   z_t = A z_{t-1} + N(0, diag(q_t))   A = [[1, 1], [0, 1]] (+) I_S (+) rho R(lambda)
    x_t = a_t^T z_t + b_t + N(0, sigma_obs_t^2)                  a_t = [1, 0, onehot(season_t), 1, 0]

with ``q_t = [sigma_level_t^2, sigma_slope_t^2, gamma_t^2 * onehot(season_t), sigma_cycle_t^2 (x2)] + floor``.

The optional damped stochastic cycle (Harvey 1989, *Forecasting, Structural Time Series Models and
the Kalman Filter*, section 2.3; statsmodels' ``UnobservedComponents(cycle=True, damped_cycle=True)``)
rotates ``(c, c*)`` by the learned frequency ``lambda = 2 pi / period`` and damps it by ``rho`` in
(0, 1): a quasi-periodic component whose period is learned rather than fixed, for cycles whose
length varies (sunspots' 9-14 years), where a seasonal block of fixed length drifts out of phase. The floor (a
tiny variance on every state dimension) keeps ``p(z_t | z_{t-1})`` a proper density, so the same model
also runs as protocol steps under Pyro's SVI and the particle filter (the paper's exact seasonal
ISSM puts zero noise on inactive seasons).

Training maximises the exact log-likelihood (:meth:`DeepStateModel.fit`); the exact posterior guide
(:class:`~deepstate.models.lgssm.ExactPosteriorGuide`) works unchanged because it only needs
:meth:`DeepStateModel.smooth`.
"""

from __future__ import annotations

import torch
from torch import nn

import pyro.distributions as dist

from ..data import SequenceBatch
from ..kalman import KalmanResult, kalman_filter, rts_smoother
from .base import StateSpaceModel
from .lgssm import ExactLikelihoodFitMixin
from .nn import MLP, make_rnn, positive, rnn_initial, rnn_step, run_rnn

__all__ = ["DeepStateModel"]


class DeepStateModel(ExactLikelihoodFitMixin, StateSpaceModel):
    """DeepState-style model for univariate series (``x_dim = 1``), as protocol steps + exact Kalman.

    Args:
        x_dim: must be 1 (one target per sequence; the RNN is shared across sequences).
        u_dim: number of covariates (known in the future when forecasting).
        season_length: ``S`` (0: no seasonal component), e.g. 12 for monthly, 52 for weekly data.
        trend: include a slope component (local linear trend) besides the level.
        rnn_dim: RNN width (40), hidden_dim: width of the parameter head (40).
        rnn: ``"lstm"`` (the paper's) | ``"gru"`` | ``"rnn"``.
        min_variance: floor on every state variance (``1e-4``) and on the observation variance.
        cycle_period: 0 (no cycle) or the initial period, in steps (> 2), of a damped stochastic cycle;
            the period and the damping (initially 0.9) are learned.

    Features ``c_t``: ``{"q": [B, Z] state noise variances, "a": [B, Z] emission vector,
    "obs_scale": [B, 1], "obs_offset": [B, 1]}``. Carry: ``{"z": [*bs, Z], "first": [*bs]}``.

    Example:
        >>> m = DeepStateModel(season_length=12)
        >>> history = m.fit(batch, num_steps=200, optimizer="adam", lr=0.01)   # doctest: +SKIP
    """

    def __init__(self, x_dim: int = 1, u_dim: int = 0, season_length: int = 0, trend: bool = True,
                 rnn_dim: int = 40, hidden_dim: int = 40, rnn: str = "lstm", min_variance: float = 1e-4,
                 orthogonal=True, cycle_period: float = 0.0):
        super().__init__()
        if x_dim != 1:
            raise ValueError(f"x_dim: the DeepState model is univariate (x_dim=1), got {x_dim}")
        if season_length < 0 or season_length == 1:
            raise ValueError(f"season_length: expected 0 (none) or >= 2, got {season_length}")
        if isinstance(cycle_period, bool) or not isinstance(cycle_period, (int, float)) or not (
                cycle_period == 0 or cycle_period > 2):
            raise ValueError(f"cycle_period: expected 0 (no cycle) or a period > 2 steps, got {cycle_period!r}")
        self.x_dim, self.u_dim, self.season_length, self.trend = 1, u_dim, season_length, trend
        self.min_variance = min_variance
        self.cycle = cycle_period > 0
        n_trend = 2 if trend else 1
        self.z_dim = n_trend + season_length + (2 if self.cycle else 0)
        A = torch.eye(self.z_dim)
        if trend:
            A[0, 1] = 1.0
        if self.cycle:
            A[-2:, -2:] = 0.0  # the cycle's block comes from its learned period and damping
            # period = 2 + softplus(raw): any period above 2 steps (the Nyquist limit)
            self.cycle_period_raw = nn.Parameter(torch.tensor(float(cycle_period) - 2.0).expm1().log())
            self.cycle_damping_raw = nn.Parameter(torch.logit(torch.tensor(0.9)))
        self.register_buffer("A", A)
        self.rnn = make_rnn(rnn, max(u_dim + season_length, 1), rnn_dim, orthogonal)
        # per step: level, (slope), (seasonal gamma), (cycle), obs scale, obs offset
        self.n_noise = n_trend + (1 if season_length else 0) + (1 if self.cycle else 0)
        self.head = MLP([rnn_dim, hidden_dim, self.n_noise + 2])
        self.m0 = nn.Parameter(torch.zeros(self.z_dim))
        self.log_p0 = nn.Parameter(torch.zeros(self.z_dim))

    @property
    def cycle_period(self) -> torch.Tensor:
        """The cycle's period in steps (a scalar tensor; only with ``cycle_period > 0``)."""
        return 2.0 + nn.functional.softplus(self.cycle_period_raw)

    @property
    def cycle_damping(self) -> torch.Tensor:
        """The cycle's damping ``rho`` in (0, 1) (only with ``cycle_period > 0``)."""
        return torch.sigmoid(self.cycle_damping_raw)

    def transition_matrix(self) -> torch.Tensor:
        """``A [Z, Z]``: the fixed trend and seasonal blocks, and the damped rotation of the cycle."""
        if not self.cycle:
            return self.A
        lam = 2 * torch.pi / self.cycle_period
        cos, sin = torch.cos(lam), torch.sin(lam)
        block = self.cycle_damping * torch.stack([torch.stack([cos, sin]), torch.stack([-sin, cos])])
        A = self.A.to(block.dtype).clone()
        A[-2:, -2:] = block
        return A

    # ------------------------------------------------------------------ features
    def _season_onehot(self, t: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(t % self.season_length, self.season_length).to(self.m0.dtype)

    def _rnn_input(self, u, season, lead):
        """RNN input ``[*lead, max(U + S, 1)]``: covariates and the season one-hot, or a constant 1."""
        parts = [p for p in (u, season) if p is not None]
        if not parts:
            return self.m0.new_ones(*lead, 1)
        return torch.cat([p.expand(*lead, p.shape[-1]) for p in parts], -1)

    def _params(self, h, season):
        raw = self.head(h)
        noise = positive(raw[..., : self.n_noise], 0.0) ** 2  # variances
        obs_scale = positive(raw[..., self.n_noise : self.n_noise + 1], self.min_variance**0.5)
        obs_offset = raw[..., self.n_noise + 1 :]
        n_trend = 2 if self.trend else 1
        q = noise[..., :n_trend]
        a = torch.zeros(*h.shape[:-1], n_trend, dtype=h.dtype, device=h.device)
        a[..., 0] = 1.0
        if self.season_length:
            q = torch.cat([q, noise[..., n_trend : n_trend + 1] * season], -1)
            a = torch.cat([a, season], -1)
        if self.cycle:
            q = torch.cat([q, noise[..., -1:].expand(*h.shape[:-1], 2)], -1)
            a = torch.cat([a, torch.ones_like(a[..., :1]), torch.zeros_like(a[..., :1])], -1)
        return {"q": q + self.min_variance, "a": a, "obs_scale": obs_scale, "obs_offset": obs_offset}

    def features(self, batch: SequenceBatch):
        """Per-step parameters ``c`` (see the class docstring) for a whole batch, in parallel.

        The season of step ``t`` of sequence ``b`` is ``(batch.offset[b] + t) % S``: its absolute
        position in the original series (``offset`` is ``None``, i.e. 0, for whole series; truncated-
        BPTT chunks and windows set it), so a chunk or a window sees the same phase as the whole.
        """
        B, T = batch.valid.shape
        season = None
        if self.season_length:
            t = torch.arange(T, device=batch.x.device).expand(B, T)
            if batch.offset is not None:
                t = t + batch.offset.to(batch.x.device)[:, None]
            season = self._season_onehot(t)
        inp = self._rnn_input(batch.u, season, (B, T))
        h = run_rnn(self.rnn, inp, batch.lengths, "forward")
        return self._params(h, season)

    def feature_initial(self, batch_shape, start=0):
        """State of the step-by-step feature recursion: the RNN state and ``"t"``, the absolute
        position (0-based) of the next step, which sets its season ``t % S``.

        Args:
            batch_shape: leading shape of the carries.
            start: absolute position of the first step that :meth:`feature_step` will produce: an
                int or an int64 tensor broadcastable to ``batch_shape`` (default 0, the start of the
                series). To continue the features of a history of ``T`` steps, either run
                :meth:`feature_step` through the history from ``start=0`` (``"t"`` counts the steps,
                and the RNN state is the history's), or set ``start = T`` (or ``offset + T`` for a
                chunk) when only the phase matters. ``f["t"]`` may also be assigned directly.
        """
        f = rnn_initial(self.rnn, batch_shape, self.m0)
        start = torch.as_tensor(start, dtype=torch.long, device=self.m0.device)
        if start.is_floating_point() or start.dtype == torch.bool:
            raise ValueError(f"start: expected an int or an integer tensor, got dtype {start.dtype}")
        f["t"] = start.expand(batch_shape).clone()
        return f

    def feature_step(self, f, x_prev, observed_prev, u_t=None):
        """One step of :meth:`features`: the step at absolute position ``f["t"]``; returns ``(f', c_t)``
        with ``f'["t"] = f["t"] + 1``."""
        season = self._season_onehot(f["t"]) if self.season_length else None
        inp = self._rnn_input(u_t, season, f["t"].shape)
        state = rnn_step(self.rnn, inp, {k: v for k, v in f.items() if k != "t"})
        state["t"] = f["t"] + 1
        return state, self._params(state["h"], season)

    # ------------------------------------------------------------------ protocol steps
    def initial(self, batch_shape):
        return {
            "z": self.m0.new_zeros(*batch_shape, self.z_dim),
            "first": torch.ones(batch_shape, dtype=torch.bool, device=self.m0.device),
        }

    def prior(self, s, c):
        first = s["first"][..., None]
        loc = torch.where(first, self.m0, s["z"] @ self.transition_matrix().T)
        var = torch.where(first, self.log_p0.exp(), c["q"])
        return dist.Normal(loc, var.sqrt()).to_event(1)

    def likelihood(self, s, z, c):
        loc = (z * c["a"]).sum(-1, keepdim=True) + c["obs_offset"]
        return dist.Normal(loc, c["obs_scale"].expand(loc.shape))

    def update(self, s, z, x, c, observed=None):
        return {"z": z, "first": torch.zeros_like(s["first"])}

    # ------------------------------------------------------------------ exact inference
    def kalman(self, batch: SequenceBatch) -> KalmanResult:
        """Kalman filter with the RNN's time-varying parameters (see :func:`~deepstate.kalman.kalman_filter`)."""
        c = self.features(batch)
        Q = torch.diag_embed(c["q"])  # [B, T, Z, Z]
        C = c["a"][..., None, :]  # [B, T, 1, Z]
        r = c["obs_scale"] ** 2  # [B, T, 1]
        return kalman_filter(batch.x, batch.observed, batch.valid, self.transition_matrix(), Q, C, r, self.m0,
                             torch.diag(self.log_p0.exp()), d=c["obs_offset"])

    def log_likelihood(self, batch: SequenceBatch) -> torch.Tensor:
        """Exact ``log p(x_{1:T})`` per sequence ``[B]`` (nats)."""
        return self.kalman(batch).log_likelihood

    def smooth(self, batch: SequenceBatch):
        return rts_smoother(self.kalman(batch))
