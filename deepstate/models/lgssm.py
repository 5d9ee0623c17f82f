r"""The linear-Gaussian state-space model: the exact oracle that keeps every approximation honest.

.. math::

    z_1 \sim N(m_0, P_0), \quad
    z_t = A z_{t-1} + B u_t + w_t,\ w_t \sim N(0, Q), \quad
    x_t = C z_t + D u_t + v_t,\ v_t \sim N(0, R)

Written as protocol steps (:class:`LinearGaussianSSM`), so Pyro's SVI and the particle filter run on
it like on any deep model, and with an exact Kalman log-likelihood
(:meth:`LinearGaussianSSM.log_likelihood`) and RTS smoother to check them against. Guides:

* :class:`~deepstate.models.base.PriorGuide`: the bootstrap proposal;
* :class:`LinearFilteringGuide`: a learnable ``q(z_t | z_{t-1}, x_t)`` with a diagonal covariance,
  which can represent the locally optimal proposal exactly only for a one-dimensional state;
* :class:`ExactPosteriorGuide`: ``p(z_t | z_{t-1}, x_{1:T})`` from the smoother's pairwise
  marginals; with it every importance weight equals the Kalman likelihood.
"""

from __future__ import annotations

import math

from typing import Optional

import pyro.distributions as dist
import torch
from torch import nn

from ..data import SequenceBatch
from ..kalman import KalmanResult, SmootherResult, kalman_filter, rts_smoother
from .base import Guide, LatentSequenceModel, StateSpaceModel

__all__ = [
    "ExactLikelihoodFitMixin",
    "TriangularParameter",
    "LinearGaussianSSM",
    "LinearFilteringGuide",
    "ExactPosteriorGuide",
]


def _as_tensor(v, dtype):
    return torch.as_tensor(v, dtype=dtype).clone()


class TriangularParameter(nn.Module):
    """A lower-triangular Cholesky factor with a positive diagonal: ``L = tril(W, -1) + diag(exp(w))``.

    ``L @ L.T`` is a covariance that cannot lose positive definiteness during training. A floor on
    the diagonal (``min_scale``) stops variances collapsing.
    """

    def __init__(self, dim: int, init: Optional[torch.Tensor] = None, min_scale: float = 0.0, dtype=None):
        super().__init__()
        dtype = dtype or torch.get_default_dtype()
        self.min_scale = min_scale
        L = torch.eye(dim, dtype=dtype) if init is None else torch.linalg.cholesky(_as_tensor(init, dtype))
        diag = torch.diagonal(L).clamp_min(min_scale + 1e-12) - min_scale
        self.off = nn.Parameter(torch.tril(L, -1))
        self.log_diag = nn.Parameter(torch.log(diag.clamp_min(1e-12)))

    def forward(self) -> torch.Tensor:
        return torch.tril(self.off, -1) + torch.diag_embed(self.log_diag.exp() + self.min_scale)

    def covariance(self) -> torch.Tensor:
        L = self()
        return L @ L.T


class ExactLikelihoodFitMixin:
    """Maximum-likelihood fitting for models with an exact ``log_likelihood(batch) -> [B]``."""

    def fit(self, batch: SequenceBatch, num_steps: int = 100, lr: Optional[float] = None, optimizer: str = "lbfgs",
            progress: bool = False, tol: float = 1e-9, holdout: int = 0, valid: Optional[SequenceBatch] = None,
            patience: Optional[int] = None) -> list:
        """Maximum likelihood on the exact (Kalman) log-likelihood, optionally early-stopped on held-out data.

        Args:
            batch: training sequences.
            num_steps: optimiser iterations.
            lr: learning rate (default 1 for L-BFGS, 0.05 for Adam).
            optimizer: ``"lbfgs"`` (strong-Wolfe line search; converges in tens of iterations on these
                small problems, as statsmodels' quasi-Newton fits do) or ``"adam"``.
            progress: show a tqdm bar.
            tol: L-BFGS stops early once an iteration changes the log-likelihood by less than ``tol``
                nats per frame (relative to ``max(1, |value|)``) twice in a row, or the line search
                makes no progress: at that point it has converged, and further iterations would only
                re-evaluate the same point (0: always run ``num_steps``; Adam always does).
            holdout: hold out the last ``holdout`` steps of every sequence: the fit sees them as
                missing values, and each iteration's parameters are scored by the **conditional
                predictive log-likelihood** of the held-out steps given the rest,
                ``log p(x_{T-k+1:T} | x_{1:T-k}) = log p(x_{1:T}) - log p(x_{1:T-k})`` (the Kalman filter
                simply continues through them) -- the honest score of a forecaster. The parameters
                with the best score are returned: early stopping for a maximum-likelihood fit that
                would otherwise overfit one short series.
            valid: validation sequences scored as fresh sequences, ``log p(valid)`` (instead of, or
                besides -- then summed -- ``holdout``); the best-scoring parameters are returned.
            patience: stop after this many iterations without a better held-out score (``None``:
                run until ``num_steps`` or convergence, then return the best).

        Returns:
            The training log-likelihood in nats per fitted frame (the held-out steps not counted) at
            the parameters before each iteration, then at the returned ones (shorter than ``num_steps + 1`` when it stopped early). With
            ``holdout`` or ``valid``, ``self.valid_history_`` holds the held-out score (nats per
            held-out frame) at the same parameters, and ``self.best_iteration_`` the index chosen.
        """
        if optimizer not in ("lbfgs", "adam"):
            raise ValueError(f"optimizer: expected 'lbfgs' or 'adam', got {optimizer!r}")
        if not tol >= 0:
            raise ValueError(f"tol: expected a non-negative number, got {tol!r}")
        if isinstance(holdout, bool) or not isinstance(holdout, int) or holdout < 0:
            raise ValueError(f"holdout: expected a non-negative int (steps), got {holdout!r}")
        if patience is not None and (isinstance(patience, bool) or not isinstance(patience, int) or patience < 1):
            raise ValueError(f"patience: expected a positive int or None, got {patience!r}")
        if valid is not None and not isinstance(valid, SequenceBatch):
            raise TypeError(f"valid: expected a SequenceBatch or None, got {type(valid).__name__}")
        full = batch
        if holdout:
            shortest = int(batch.lengths.min())
            if holdout >= shortest:
                raise ValueError(f"holdout: {holdout} steps leave nothing to fit in the shortest training sequence "
                                 f"({shortest} steps)")
            batch = held_out_end(batch, holdout)
            if not bool(batch.observed.any()):
                raise ValueError(f"holdout: no observed value is left to fit before the last {holdout} steps")
        scored = holdout > 0 or valid is not None
        if patience is not None and not scored:
            raise ValueError("patience: early stopping needs a held-out score (holdout= or valid=)")

        def held_out_score() -> float:
            """nats per held-out frame: conditional on the rest for ``holdout``, fresh for ``valid``."""
            with torch.no_grad():
                total, frames = 0.0, 0
                if holdout:
                    total += float((self.log_likelihood(full) - self.log_likelihood(batch)).sum())
                    frames += holdout * full.batch_size
                if valid is not None:
                    total += float(self.log_likelihood(valid).sum())
                    frames += valid.num_frames
                return total / frames

        frames = batch.num_frames  # the objective's normaliser (L-BFGS's first step depends on its scale)
        fitted = frames - holdout * batch.batch_size  # the frames the fit sees: the history is per fitted frame
        params = list(self.parameters())
        if optimizer == "lbfgs":
            # one iteration per step (for the history and the stopping rule), but a full line search:
            # torch's default max_eval (max_iter * 5 // 4 = 1) leaves the strong-Wolfe search no
            # evaluation beyond the unit step, so one rejected unit step (t = 0) stalled the fit for good
            opt = torch.optim.LBFGS(params, lr=lr or 1.0, max_iter=1, max_eval=25, line_search_fn="strong_wolfe")
        else:
            opt = torch.optim.Adam(params, lr=lr or 0.05)

        def closure():
            opt.zero_grad()
            loss = -self.log_likelihood(batch).sum() / frames
            loss.backward()
            return loss

        history, valid_history = [], []
        best, best_score, best_at = None, -math.inf, 0
        steps = range(num_steps)
        if progress:
            from tqdm.auto import tqdm

            steps = tqdm(steps, desc="lgssm mle")
        small = 0
        # the latest parameters whose objective is known to be finite: a full line search can step to
        # where it is not (a degenerate series, e.g. a constant one, lets a variance collapse), and then
        # the fit goes back there and stops instead of returning NaN parameters
        good = [p.detach().clone() for p in params]
        for _ in steps:
            before = [p.detach().clone() for p in params]
            score = held_out_score() if scored else None  # at `before`, where the objective is evaluated too
            if scored and not score > best_score and patience is not None and len(history) - best_at >= patience:
                break
            loss = opt.step(closure)  # the objective at `before`
            if not torch.isfinite(loss):
                _assign(params, good)
                break
            good = before
            if scored:  # only parameters whose training objective is finite can be the best
                if score > best_score:
                    best, best_score, best_at = before, score, len(history)
                valid_history.append(score)
            history.append(-float(loss.detach()) * frames / fitted)
            if optimizer == "lbfgs" and tol > 0 and len(history) > 1:
                change = abs(history[-1] - history[-2]) / max(1.0, abs(history[-1]))
                small = small + 1 if change < tol else 0
                if small >= 2:
                    break
        with torch.no_grad():
            if not math.isfinite(float(self.log_likelihood(batch).sum())):
                _assign(params, good)
            if scored:
                score = held_out_score()
                if score > best_score or best is None:
                    best_at = len(history)
                else:
                    _assign(params, best)  # back to the best held-out score
                    score = best_score
                valid_history.append(score)
                self.valid_history_, self.best_iteration_ = valid_history, best_at
            history.append(float(self.log_likelihood(batch).sum() / fitted))
        return history


def held_out_end(batch: SequenceBatch, steps: int) -> SequenceBatch:
    """``batch`` with the last ``steps`` valid steps of every sequence marked missing (a forecaster's
    held-out end: the Kalman filter runs through them without an observation)."""
    import dataclasses

    t = torch.arange(batch.max_length, device=batch.lengths.device)
    tail = t[None, :] >= (batch.lengths[:, None] - steps)
    observed = batch.observed & ~tail.unsqueeze(-1).to(batch.observed.device)
    return dataclasses.replace(batch, x=batch.x.masked_fill(~observed, 0.0), observed=observed)


def _assign(params, values) -> None:
    with torch.no_grad():
        for p, v in zip(params, values):
            p.copy_(v)


class LinearGaussianSSM(ExactLikelihoodFitMixin, StateSpaceModel):
    """Linear-Gaussian SSM as protocol steps, with exact Kalman inference.

    Carry: ``{"z": [*bs, Z] previous state, "first": [*bs] bool (no previous state yet)}``.

    Args:
        z_dim: state dimension ``Z``. x_dim: observation dimension ``D``.
        u_dim: number of covariates ``U`` (0: none). Their terms are ``B u_t`` in the transition
            (``t > 1``) and ``D u_t`` in the emission.
        A, Q, C, R, m0, P0, B, D: optional initial values (``R`` a ``[D]`` vector of variances or a
            ``[D, D]`` covariance). Defaults: ``A = 0.9 I``, ``Q = 0.1 I``, ``C`` small random,
            ``R = 0.1 I``, ``m0 = 0``, ``P0 = I``.
        dtype: parameter dtype (use ``torch.float64`` for exactness checks).
        full_R: learn a full (correlated) observation covariance ``R = L L^T`` through a Cholesky
            parameter instead of independent variances. Implied by a non-diagonal ``R``. The
            exact methods (:meth:`kalman`, :meth:`log_likelihood`, :meth:`smooth`, :meth:`fit`)
            support it, missing values included; the protocol's :meth:`likelihood` needs
            independent dimensions (one factor per dimension, so that single dimensions can be
            masked) and refuses a full ``R`` with a ``ValueError``.

    Example:
        >>> ssm = LinearGaussianSSM(2, 1)
        >>> ll = ssm.log_likelihood(batch)        # [B] exact log p(x), nats  # doctest: +SKIP
    """

    def __init__(self, z_dim: int, x_dim: int, u_dim: int = 0, A=None, Q=None, C=None, R=None, m0=None, P0=None,
                 B=None, D=None, dtype=None, full_R: bool = False):
        super().__init__()
        if z_dim < 1 or x_dim < 1 or u_dim < 0:
            raise ValueError(f"z_dim, x_dim, u_dim: expected positive dims, got {z_dim}, {x_dim}, {u_dim}")
        dtype = dtype or torch.get_default_dtype()
        self.z_dim, self.x_dim, self.u_dim = z_dim, x_dim, u_dim
        self.A = nn.Parameter(_as_tensor(A, dtype) if A is not None else 0.9 * torch.eye(z_dim, dtype=dtype))
        self.C = nn.Parameter(_as_tensor(C, dtype) if C is not None else 0.5 * torch.randn(x_dim, z_dim, dtype=dtype))
        Q0 = _as_tensor(Q, dtype) if Q is not None else 0.1 * torch.eye(z_dim, dtype=dtype)
        self.Q_tril = TriangularParameter(z_dim, Q0, dtype=dtype)
        self.P0_tril = TriangularParameter(z_dim, None if P0 is None else _as_tensor(P0, dtype), dtype=dtype)
        R0 = None if R is None else _as_tensor(R, dtype)
        if R0 is not None and R0.dim() == 2:
            if R0.shape != (x_dim, x_dim) or not torch.allclose(R0, R0.T):
                raise ValueError(f"R: expected a symmetric [{x_dim}, {x_dim}] covariance, got {R0}")
            if (R0 - torch.diag(torch.diagonal(R0))).abs().max() > 0:
                full_R = True  # a correlated R is kept as given, never reduced to its diagonal
        self.full_R = bool(full_R)
        if self.full_R:
            R_full = 0.1 * torch.eye(x_dim, dtype=dtype) if R0 is None else (torch.diag(R0) if R0.dim() == 1 else R0)
            if R_full.shape != (x_dim, x_dim) or not bool(torch.linalg.eigvalsh(R_full).min() > 0):
                raise ValueError(f"R: expected a positive-definite [{x_dim}, {x_dim}] covariance, got {R_full}")
            self.R_tril = TriangularParameter(x_dim, R_full, dtype=dtype)
        else:
            r = torch.full((x_dim,), 0.1, dtype=dtype) if R0 is None else (torch.diagonal(R0) if R0.dim() == 2 else R0)
            if r.shape != (x_dim,) or (r <= 0).any():
                raise ValueError(f"R: expected {x_dim} positive variances, got {r}")
            self.log_r = nn.Parameter(r.log())
        self.m0 = nn.Parameter(_as_tensor(m0, dtype) if m0 is not None else torch.zeros(z_dim, dtype=dtype))
        for name, value, shape in (("A", self.A, (z_dim, z_dim)), ("C", self.C, (x_dim, z_dim)), ("m0", self.m0, (z_dim,))):
            if value.shape != shape:
                raise ValueError(f"{name}: expected shape {shape}, got {tuple(value.shape)}")
        if u_dim:
            self.B = nn.Parameter(_as_tensor(B, dtype) if B is not None else torch.zeros(z_dim, u_dim, dtype=dtype))
            self.D = nn.Parameter(_as_tensor(D, dtype) if D is not None else torch.zeros(x_dim, u_dim, dtype=dtype))

    # ------------------------------------------------------------------ matrices
    @property
    def r(self) -> torch.Tensor:
        """``[D]`` observation noise variances (the diagonal of ``R``)."""
        return torch.diagonal(self.R_tril.covariance()) if self.full_R else self.log_r.exp()

    @property
    def R(self) -> torch.Tensor:
        """``[D, D]`` observation noise covariance."""
        return self.R_tril.covariance() if self.full_R else torch.diag(self.log_r.exp())

    def matrices(self) -> dict:
        """The model's matrices ``A, Q, C, r, m0, P0`` (and ``B, D`` with covariates).

        ``r`` is the ``[D]`` vector of variances, or the full ``[D, D]`` covariance when ``full_R``
        (the form :func:`deepstate.kalman.kalman_filter` takes).
        """
        r = self.R if self.full_R else self.r
        out = dict(A=self.A, Q=self.Q_tril.covariance(), C=self.C, r=r, m0=self.m0, P0=self.P0_tril.covariance())
        if self.u_dim:
            out.update(B=self.B, D=self.D)
        return out

    def _offsets(self, u):
        if not self.u_dim:
            return None, None
        if u is None:
            raise ValueError(f"batch.u: this model expects {self.u_dim} covariates, got none")
        return u @ self.B.T, u @ self.D.T

    # ------------------------------------------------------------------ exact inference
    def kalman(self, batch: SequenceBatch) -> KalmanResult:
        """Kalman filter over a batch (see :func:`deepstate.kalman.kalman_filter`)."""
        M = self.matrices()
        b, d = self._offsets(batch.u)
        return kalman_filter(batch.x, batch.observed, batch.valid, M["A"], M["Q"], M["C"], M["r"], M["m0"], M["P0"], b=b, d=d)

    def log_likelihood(self, batch: SequenceBatch) -> torch.Tensor:
        """Exact ``log p(x_{1:T})`` per sequence, ``[B]`` nats (observed values only)."""
        return self.kalman(batch).log_likelihood

    def smooth(self, batch: SequenceBatch) -> SmootherResult:
        """RTS-smoothed moments ``p(z_t | x_{1:T})`` and pairwise cross-covariances."""
        return rts_smoother(self.kalman(batch))

    # ------------------------------------------------------------------ protocol steps
    def initial(self, batch_shape):
        return {
            "z": torch.zeros(*batch_shape, self.z_dim, dtype=self.A.dtype, device=self.A.device),
            "first": torch.ones(batch_shape, dtype=torch.bool, device=self.A.device),
        }

    def prior(self, s, c):
        first = s["first"][..., None]
        mean = (s["z"][..., None, :] @ self.A.T)[..., 0, :]
        if self.u_dim:
            mean = mean + c["u"] @ self.B.T
        mean = torch.where(first, self.m0, mean)
        tril = torch.where(first[..., None], self.P0_tril(), self.Q_tril())
        return dist.MultivariateNormal(mean, scale_tril=tril)

    def likelihood(self, s, z, c):
        if self.full_R:
            raise ValueError("R: the protocol steps need a diagonal observation covariance (one factor per "
                             "dimension); with full_R use the exact methods (kalman, log_likelihood, smooth, fit)")
        loc = z @ self.C.T
        if self.u_dim:
            loc = loc + c["u"] @ self.D.T
        return dist.Normal(loc, self.r.sqrt().expand(loc.shape))

    def update(self, s, z, x, c, observed=None):
        return {"z": z, "first": torch.zeros_like(s["first"])}

    def as_latent_sequence_model(self, guide: Optional[Guide] = None) -> LatentSequenceModel:
        """Wrap with a guide (default: the bootstrap proposal)."""
        return LatentSequenceModel(self, guide, name="lgssm")


class LinearFilteringGuide(Guide):
    """Learnable filtering proposal ``q(z_t | z_{t-1}, x_t) = N(W [z_{t-1}, x_t, o_t, 1_{t=1}] + b, diag)``.

    ``o_t`` is the observed mask (``x_t`` is 0 where unobserved). For the linear-Gaussian model the
    locally optimal proposal ``p(z_t | z_{t-1}, x_t)`` (Doucet et al. 2000) has a mean linear in
    ``(z_{t-1}, x_t)``, which this guide can represent, but a full covariance
    ``(Q^{-1} + C^T R^{-1} C)^{-1}``, while this guide's covariance is diagonal. So it can learn the
    optimal proposal exactly only when ``z_dim = 1`` (and everything is observed; with missing
    dimensions the optimal covariance also depends on which are missing, which a single bias
    cannot express for every pattern). For ``z_dim > 1`` it learns the best diagonal
    approximation.
    """

    uses_prior = False

    def __init__(self, z_dim: int, x_dim: int, min_scale: float = 1e-3):
        super().__init__()
        self.min_scale = min_scale
        self.net = nn.Linear(z_dim + 2 * x_dim + 1, 2 * z_dim)
        nn.init.zeros_(self.net.weight)
        nn.init.zeros_(self.net.bias)

    def encode(self, batch, c):
        o = batch.observed.to(batch.x.dtype)
        return {"xo": torch.cat([batch.x * o, o], -1)}

    def proposal(self, g, s, e, c, p):
        z_prev = s["z"]
        xo = e["xo"].expand(*z_prev.shape[:-1], e["xo"].shape[-1])
        first = s["first"][..., None].to(z_prev.dtype)
        loc, raw = self.net(torch.cat([z_prev, xo, first], -1)).chunk(2, -1)
        return dist.Normal(loc, nn.functional.softplus(raw + 0.5413) + self.min_scale).to_event(1)


class ExactPosteriorGuide(Guide):
    """The exact posterior of a :class:`LinearGaussianSSM` as a recurrent proposal.

    ``q(z_t | z_{t-1}) = p(z_t | z_{t-1}, x_{1:T}) = N(m_t + G_t (z_{t-1} - m_{t-1}), P_t - G_t P_{t,t-1}^T)``
    with smoothed means ``m``, covariances ``P``, cross-covariances ``P_{t,t-1}`` and gain
    ``G_t = P_{t,t-1} P_{t-1}^{-1}``. With this proposal ``log p(x, z) - log q(z) = log p(x)`` for every
    sample ``z``: the variance of every estimator is zero, which makes the estimators checkable.

    The model is referenced, not registered as a submodule (it is registered once, as ``ssm``).
    """

    uses_prior = False

    def __init__(self, ssm: LinearGaussianSSM):
        super().__init__()
        object.__setattr__(self, "_ssm", ssm)

    def encode(self, batch, c):
        r"""Gains, offsets and Cholesky factors of ``p(z_t | z_{t-1}, x_{1:T})`` for every step.

        The conditional covariance is the Schur complement read off the Cholesky factor of the joint
        ``2Z x 2Z`` smoothed covariance of ``(z_{t-1}, z_t)``:

        .. math::

            \begin{pmatrix} P_{t-1} & P_{t,t-1}^T \\ P_{t,t-1} & P_t \end{pmatrix}
            = L L^T, \quad L = \begin{pmatrix} L_{11} & 0 \\ L_{21} & L_{22} \end{pmatrix}
            \;\Rightarrow\; G_t = L_{21} L_{11}^{-1}, \quad P_t - G_t P_{t,t-1}^T = L_{22} L_{22}^T,

        so ``L_22`` is the proposal's ``scale_tril`` without forming the difference
        ``P_t - G_t P_{t,t-1}^T``, which cancels to a non-positive-definite matrix in float32 when
        ``z_t`` is nearly determined by ``z_{t-1}``. At ``t = 1`` and on padded steps (where the
        filter holds the state, so the joint is singular) the gain is 0 and the proposal is the
        marginal ``N(m_t, P_t)``.
        """
        sm = self._ssm.smooth(batch)
        m, P, X = sm.mean, sm.cov, sm.cross_cov  # X[t] = Cov(z_t, z_{t-1})
        B, T, Z = m.shape
        linked = batch.valid.clone()
        linked[:, 0] = False  # no z_{t-1} at t = 1
        X = torch.where(linked[..., None, None], X, torch.zeros((), dtype=X.dtype, device=X.device))
        P_prev = torch.cat([P[:, :1], P[:, :-1]], 1)
        joint = torch.cat([torch.cat([P_prev, X.transpose(-1, -2)], -1), torch.cat([X, P], -1)], -2)
        L = torch.linalg.cholesky(joint)  # [B, T, 2Z, 2Z]
        L11, L21, L22 = L[..., :Z, :Z], L[..., Z:, :Z], L[..., Z:, Z:]
        G = torch.linalg.solve_triangular(L11, L21, upper=False, left=False)  # G L11 = L21
        m_prev = torch.cat([m[:, :1], m[:, :-1]], 1)
        offset = m - (G @ m_prev[..., None])[..., 0]
        return {"gain": G, "offset": offset, "scale_tril": L22}

    def proposal(self, g, s, e, c, p):
        # s["z"] is z_{t-1} (zero at t = 1, where the gain is zero)
        loc = e["offset"] + (e["gain"] @ s["z"][..., None])[..., 0]
        return dist.MultivariateNormal(loc, scale_tril=e["scale_tril"].expand(*loc.shape, loc.shape[-1]))
