r"""Held-out scores that condition on the past: ``log p(x_{T+1:T+H} | x_{1:T})`` and one-step-ahead draws.

Scoring a held-out stretch as if it were a new sequence (``log p(x_{T+1:T+H})``, what
:func:`~deepstate.inference.evaluation.evaluate` does) ignores everything the history says about
the state; for forecasting the honest score is the **conditional predictive log-likelihood**

.. math:: \log p(x_{T+1:T+H} \mid x_{1:T}) = \sum_{t=T+1}^{T+H} \log p(x_t \mid x_{1:t-1}).

* Exact models: the Kalman filter over history and future together; the future steps' one-step
  log-likelihoods are the terms of the sum.
* Every model: the particle filter through the history (guide proposal), then the same particle
  system continued over the future stretch as a bootstrap filter
  (:func:`~deepstate.models.rollout.rollout` with ``observations``): each step's log mean weight
  estimates ``log p(x_t | x_{1:t-1})``. Given the filtered particles, the product of the mean
  weights is an unbiased estimate of the particle approximation of ``p(x_{T+1:T+H} | x_{1:T})``; the
  approximation of the filtering distribution itself adds an error of either sign, so the result is
  a consistent estimate (as ``N`` grows), not a bound.

The same continuation yields, at no extra cost, draws from each one-step-ahead predictive
``p(x_t | x_{1:t-1})`` (the replicates of a one-step-ahead predictive check) and so PIT values.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch

from ..data import SequenceBatch
from ..models.base import LatentSequenceModel
from ..models.rollout import rollout
from ..inference.evaluation import _pos_int
from .filtering import filter_history
from .forecast import use_exact

__all__ = ["OneStepAhead", "one_step_ahead", "predictive_log_likelihood", "join_histories"]


def join_histories(history: SequenceBatch, future: SequenceBatch) -> SequenceBatch:
    """Each history followed by its future stretch: ``[B, T_b + F_b, D]`` (covariates too)."""
    if history.batch_size != future.batch_size:
        raise ValueError(f"future: expected {history.batch_size} sequences like history, got {future.batch_size}")
    if history.dim != future.dim:
        raise ValueError(f"future: expected {history.dim} dimension(s) like history, got {future.dim}")
    if (history.u is None) != (future.u is None):
        raise ValueError("future: either both history and future have covariates or neither has")
    xs, us = [], []
    for b in range(history.batch_size):
        Lh, Lf = int(history.lengths[b]), int(future.lengths[b])
        x = torch.cat([history.x[b, :Lh], future.x[b, :Lf].to(history.x)])
        o = torch.cat([history.observed[b, :Lh], future.observed[b, :Lf]])
        xs.append(torch.where(o, x, torch.full_like(x, float("nan"))))
        if history.u is not None:
            us.append(torch.cat([history.u[b, :Lh], future.u[b, :Lf].to(history.u)]))
    joined = SequenceBatch.from_sequences(xs, covariates=us or None, dtype=history.x.dtype)
    return dataclasses.replace(joined, offset=history.offset)


@dataclasses.dataclass
class OneStepAhead:
    """Conditional predictive scores and one-step-ahead draws over ``B`` future stretches of ``H`` steps.

    Attributes:
        log_predictive: ``[B, H]`` ``log p(x_t | x_{1:t-1})`` per step (nats; 0 where nothing is observed
            or past a stretch's end), on the scale the model sees (the Estimator corrects for
            standardisation).
        draws: ``[S, B, H, D]`` draws ``x_t ~ p(x_t | x_{1:t-1})`` (particle method), or ``None``.
        gaussian_mean, gaussian_std: ``[B, H, D]`` exact one-step predictive moments (exact method).
        valid: ``[B, H]`` steps that exist.
    """

    log_predictive: torch.Tensor
    draws: Optional[torch.Tensor]
    gaussian_mean: Optional[torch.Tensor]
    gaussian_std: Optional[torch.Tensor]
    valid: torch.Tensor

    @property
    def total(self) -> torch.Tensor:
        """``[B]`` ``log p(x_{T+1:T+H} | x_{1:T})`` (nats)."""
        return self.log_predictive.sum(-1)


@torch.no_grad()
def one_step_ahead(
    lsm: LatentSequenceModel,
    history: Optional[SequenceBatch],
    future: SequenceBatch,
    num_particles: int = 500,
    method: str = "auto",
    seed: Optional[int] = None,
) -> OneStepAhead:
    """Filter ``history``, then score ``future`` one step at a time (see the module docstring).

    Args:
        lsm: a fitted model.
        history: ``B`` histories, or ``None`` to start from the model's initial state (then
            the particle method is a bootstrap filter over ``future`` alone).
        future: ``B`` stretches following them (same ``D``; NaN / unobserved values are skipped).
        num_particles: ``N`` particles (particle method).
        method: ``"auto"`` (exact for models with a Kalman filter), ``"particles"`` or ``"exact"``.
        seed: seed of the draws (``None``: torch's global RNG).
    """
    exact = use_exact(lsm, method)
    num_particles = _pos_int(num_particles, "num_particles")
    if future.dim != lsm.x_dim:
        raise ValueError(f"future: expected {lsm.x_dim} dimension(s) per step (as fitted), got {future.dim}")
    ref = next(lsm.parameters())
    future = future.to(device=ref.device, dtype=ref.dtype)
    history = None if history is None else history.to(device=ref.device, dtype=ref.dtype)
    B, H = future.valid.shape
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(int(seed))
        if exact:
            joined = future if history is None else join_histories(history, future)
            kf = lsm.ssm.kalman(joined)
            start = torch.zeros(B, dtype=torch.long) if history is None else history.lengths
            b = torch.arange(B, device=ref.device)[:, None]
            steps = (start.to(ref.device)[:, None] + torch.arange(H, device=ref.device)).clamp_max(joined.max_length - 1)
            valid = future.valid
            lp = kf.step_log_likelihood[b, steps] * valid
            mean = kf.predicted_obs_mean[b, steps]
            std = torch.diagonal(kf.predicted_obs_cov[b, steps], dim1=-2, dim2=-1).clamp_min(0).sqrt()
            return OneStepAhead(log_predictive=lp, draws=None, gaussian_mean=mean, gaussian_std=std, valid=valid)
        N = int(num_particles)
        if history is None:
            from ..models.rollout import RolloutState

            state = RolloutState.prior(lsm.ssm, N, B, dtype=ref.dtype, device=ref.device)
        else:
            state = filter_history(lsm, history, N).resample(N)
        u = future.u
        obs = future.observed & future.valid[..., None]
        res = rollout(lsm.ssm, state, H, u=u, observations=future.x, observed=obs)
        return OneStepAhead(log_predictive=res.log_predictive * future.valid, draws=res.x, gaussian_mean=None,
                            gaussian_std=None, valid=future.valid)


def predictive_log_likelihood(lsm: LatentSequenceModel, history: SequenceBatch, future: SequenceBatch,
                              num_particles: int = 500, method: str = "auto", seed: Optional[int] = None) -> torch.Tensor:
    """``[B]`` ``log p(future | history)`` in nats (see :func:`one_step_ahead`)."""
    return one_step_ahead(lsm, history, future, num_particles, method, seed).total
