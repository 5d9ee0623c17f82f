r"""The one forward simulation every consumer shares: forecasting, free-running checks, generation.

From a starting state (the model's carry ``s``, the feature recursion's state ``f`` and the last
value ``x_prev`` it has seen), each step runs the protocol (``DESIGN.md``)::

    f_t, c_t = ssm.feature_step(f_{t-1}, x_{t-1}, observed_{t-1}, u_t)
    z_t ~ ssm.prior(s_{t-1}, c_t)
    x_t ~ ssm.likelihood(s_{t-1}, z_t, c_t)                 # sampled, never the mean
    s_t = ssm.update(s_{t-1}, z_t, x_t, c_t)

and the *sampled* ``x_t`` is fed back. What differs between consumers is only the starting state:
:meth:`RolloutState.prior` (generation: ``initial``), the particle filter's state at the end of a
history resampled to ``S`` equally weighted particles (forecasting, free-running checks, continuing
a chorale), or the Kalman filter's Gaussian for the exact models (see :mod:`deepstate.forecasting`).

With ``observations`` the same loop becomes a **bootstrap particle filter** continued from the
starting state: ``x_t`` is drawn from the one-step predictive ``p(x_t | x_{<t})`` (kept as the
replicate, e.g. for PIT values), then the observed value is fed back instead, the particles are
weighted by its likelihood and resampled (multinomial, every step). The log of the mean weight at
each step is an unbiased-in-``exp`` estimate of ``log p(x_t | x_{<t})``, so their sum estimates the
conditional predictive log-likelihood ``log p(x_{T+1:T+H} | x_{1:T})`` (Gordon et al. 1993; Doucet &
Johansen 2009). The prior is the proposal there on purpose: the guide's encodings of a future
stretch would read the values being scored.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import torch

from .base import Carry, StateSpaceModel

__all__ = ["RolloutState", "RolloutResult", "rollout", "gather_leading"]


def gather_leading(tree: Carry, idx: torch.Tensor) -> Carry:
    """Select along dim 0 of every ``[N, B, ...]`` tensor by ``idx [S, B]`` -> ``[S, B, ...]`` (resampling)."""
    out = {}
    for k, v in tree.items():
        v = v.expand(v.shape[0], idx.shape[1], *v.shape[2:])
        i = idx.reshape(*idx.shape, *([1] * (v.dim() - 2))).expand(idx.shape[0], *v.shape[1:])
        out[k] = torch.gather(v, 0, i)
    return out


@dataclasses.dataclass
class RolloutState:
    """Where a forward simulation starts: ``S`` equally weighted particles for ``B`` sequences.

    Attributes:
        s: the model's carry, a dict of ``[S, B, ...]`` tensors (after the last step seen).
        f: the feature recursion's state (``feature_step``), a dict of ``[S, B, ...]`` tensors.
        x_prev: ``[S, B, D]`` last value seen (zeros before the first step).
        observed_prev: ``[S, B, D]`` bool mask of ``x_prev`` (all False before the first step).
    """

    s: Carry
    f: Carry
    x_prev: torch.Tensor
    observed_prev: torch.Tensor

    @property
    def num_samples(self) -> int:
        return self.x_prev.shape[0]

    @classmethod
    def prior(cls, ssm: StateSpaceModel, num_samples: int, batch_size: int = 1, dtype=None, device=None,
              start: Optional[torch.Tensor] = None) -> "RolloutState":
        """The generative model's own start (``initial``): a rollout from it samples the prior.

        ``start``: optional ``[B]`` absolute positions of the first step (for models whose features
        depend on the position, e.g. a season; default 0).
        """
        ref = next(ssm.parameters(), torch.zeros(()))
        dtype = dtype or ref.dtype
        device = device or ref.device
        shape = (num_samples, batch_size)
        f = ssm.feature_initial(shape, start=0 if start is None else start)
        x = torch.zeros(*shape, ssm.x_dim, dtype=dtype, device=device)
        return cls(s=ssm.initial(shape), f=f, x_prev=x, observed_prev=torch.zeros_like(x, dtype=torch.bool))


@dataclasses.dataclass
class RolloutResult:
    """Output of :func:`rollout`.

    Attributes:
        z: ``[S, B, H, Z]`` latent draws.
        x: ``[S, B, H, D]`` sampled observations: the forecast paths, or with ``observations`` the
            one-step-ahead predictive draws ``x_t ~ p(x_t | x_{<t})``.
        mean: ``[S, B, H, D]`` the emission means ``E[x_t | z_t, past]`` of the same steps (e.g. note
            probabilities of a piano roll); never fed back.
        log_predictive: ``[B, H]`` estimates of ``log p(x_t | x_{<t})`` in nats (0 where nothing was
            observed), only with ``observations``.
        state: the :class:`RolloutState` after the last step (to continue).
    """

    z: torch.Tensor
    x: torch.Tensor
    mean: torch.Tensor
    log_predictive: Optional[torch.Tensor]
    state: RolloutState


@torch.no_grad()
def rollout(
    ssm: StateSpaceModel,
    state: RolloutState,
    horizon: int,
    u: Optional[torch.Tensor] = None,
    observations: Optional[torch.Tensor] = None,
    observed: Optional[torch.Tensor] = None,
) -> RolloutResult:
    """Simulate ``horizon`` steps forward from ``state``, feeding back sampled values.

    Args:
        ssm: a :class:`~deepstate.models.base.StateSpaceModel`.
        state: the start, ``S`` particles (equally weighted) for ``B`` sequences.
        horizon: ``H >= 1`` steps.
        u: optional ``[B, H, U]`` covariates of the simulated steps (required by models with covariates).
        observations: optional ``[B, H, D]`` values to condition on (bootstrap filter, see the module
            docstring); ``observed [B, H, D]`` masks them (default: all observed).

    Returns:
        :class:`RolloutResult`. Draws use torch's global RNG (seed it, or fork it, for reproducibility).
    """
    if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
        raise ValueError(f"horizon: expected a positive int, got {horizon!r}")
    S, B = state.x_prev.shape[:2]
    if u is not None and (u.dim() != 3 or u.shape[0] != B or u.shape[1] < horizon):
        raise ValueError(f"u: expected covariates of shape [{B}, {horizon}, U], got {tuple(u.shape)}")
    if observations is not None:
        if observations.shape[:2] != (B, horizon) or observations.shape[-1] != ssm.x_dim:
            raise ValueError(f"observations: expected shape [{B}, {horizon}, {ssm.x_dim}], got {tuple(observations.shape)}")
        observed = torch.ones_like(observations, dtype=torch.bool) if observed is None else observed
    s, f, x_prev, obs_prev = state.s, state.f, state.x_prev, state.observed_prev
    zs, xs, means, log_pred = [], [], [], []
    for t in range(horizon):
        f, c = ssm.feature_step(f, x_prev, obs_prev, None if u is None else u[:, t])
        z = ssm.prior(s, c).sample()
        lik = ssm.likelihood(s, z, c)
        x = lik.sample()
        zs.append(z)
        xs.append(x)
        means.append(lik.mean)
        if observations is None:
            s = ssm.update(s, z, x, c)
            x_prev, obs_prev = x, torch.ones_like(x, dtype=torch.bool)
            continue
        x_obs, o = observations[:, t].expand(S, B, -1), observed[:, t].expand(S, B, -1)
        logw = (lik.log_prob(torch.where(o, x_obs, x)) * o).sum(-1)  # [S, B]
        log_pred.append(torch.logsumexp(logw, 0) - math.log(S))
        s = ssm.update(s, z, x_obs, c, o)
        x_prev, obs_prev = torch.where(o, x_obs, torch.zeros_like(x_obs)), o
        # resample every step, so the next step's predictive draws are equally weighted
        idx = torch.multinomial(torch.softmax(logw, 0).T, S, replacement=True).T  # [S, B]
        s, f = gather_leading(s, idx), gather_leading(f, idx)
    z, x = torch.stack(zs, -2), torch.stack(xs, -2)
    return RolloutResult(
        z=z, x=x, mean=torch.stack(means, -2),
        log_predictive=torch.stack(log_pred, -1) if log_pred else None,
        state=RolloutState(s=s, f=f, x_prev=x_prev, observed_prev=obs_prev),
    )
