r"""The state at the end of a history: the particle filter's weighted particles, ready to roll forward.

:func:`filter_history` runs the particle filter that training uses (:func:`~deepstate.inference.particle.particle_filter`,
the guide as proposal, ESS-adaptive resampling) through each sequence of a batch and keeps what a
forward simulation needs to continue it (:class:`FilteredState`):

* the model's carry after the last observed step, per particle (``[N, B, ...]``), and the
  particles' log-weights ``[N, B]``: a weighted sample from the filtering distribution
  ``p(z_T, s_T | x_{1:T})``;
* the feature recursion's state (``feature_step``; e.g. SRNN's ``d_T``) and the last value, which
  are deterministic given the history, so they are computed once per sequence.

:meth:`FilteredState.resample` turns it into ``S`` equally weighted particles
(:class:`~deepstate.models.rollout.RolloutState`), the start of :func:`~deepstate.models.rollout.rollout`.

Sequences of different lengths are filtered in groups of equal length: the filter's carries after a
sequence's last step are only defined for sequences that end at the batch's last step.
"""

from __future__ import annotations

import dataclasses

import torch

from ..data import SequenceBatch
from ..inference.particle import particle_filter
from ..models.base import Carry, LatentSequenceModel, StateSpaceModel
from ..inference.evaluation import _pos_int
from ..models.rollout import RolloutState, gather_leading

__all__ = ["FilteredState", "filter_history", "feature_state"]


@dataclasses.dataclass
class FilteredState:
    """Weighted particles at the end of ``B`` histories.

    Attributes:
        s: the model's carry, dict of ``[N, B, ...]`` tensors.
        log_weights: ``[N, B]`` unnormalised log-weights.
        f: the feature recursion's state, dict of ``[B, ...]`` tensors.
        x_last, observed_last: ``[B, D]`` the last step's values and mask.
        lengths: ``[B]`` history lengths (the next step's absolute position).
        log_likelihood: ``[B]`` the filter's estimate of ``log p(x_{1:T})`` (nats).
    """

    s: Carry
    log_weights: torch.Tensor
    f: Carry
    x_last: torch.Tensor
    observed_last: torch.Tensor
    lengths: torch.Tensor
    log_likelihood: torch.Tensor

    @property
    def ess(self) -> torch.Tensor:
        """``[B]`` effective sample size of the final weights."""
        w = torch.softmax(self.log_weights, 0)
        return 1.0 / w.pow(2).sum(0)

    def resample(self, num_samples: int) -> RolloutState:
        """``S = num_samples`` particles drawn with replacement in proportion to the weights (multinomial).

        Draws use torch's global RNG.
        """
        S = _pos_int(num_samples, "num_samples")
        idx = torch.multinomial(torch.softmax(self.log_weights, 0).T, S, replacement=True).T  # [S, B]
        s = gather_leading(self.s, idx)
        B = self.x_last.shape[0]
        f = {k: v.expand(S, *v.shape).contiguous() for k, v in self.f.items()}
        return RolloutState(s=s, f=f, x_prev=self.x_last.expand(S, B, -1), observed_prev=self.observed_last.expand(S, B, -1))


def feature_state(ssm: StateSpaceModel, batch: SequenceBatch):
    """The feature recursion run through each history: ``(f [B, ...], x_last [B, D], observed_last [B, D])``.

    ``f`` is the state after step ``T_b - 1`` of sequence ``b`` (each sequence's own last step), so
    ``ssm.feature_step(f, x_last, observed_last, u_T)`` gives the context of the first new step.
    Models without a feature recursion (an empty ``feature_initial``) skip the loop.
    """
    B, T = batch.valid.shape
    b = torch.arange(B, device=batch.x.device)
    last = (batch.lengths - 1).to(batch.x.device)
    x_last, obs_last = batch.x[b, last], batch.observed[b, last]
    # a history that starts mid-series (a window, a chunk) starts its features at its absolute position
    f = ssm.feature_initial((B,), start=0 if batch.offset is None else batch.offset)
    if not f:
        return {}, x_last, obs_last
    x_prev = torch.zeros_like(batch.x[:, 0])
    obs_prev = torch.zeros_like(batch.observed[:, 0])
    for t in range(T):
        f_new, _ = ssm.feature_step(f, x_prev, obs_prev, None if batch.u is None else batch.u[:, t])
        keep = batch.valid[:, t]
        f = {k: torch.where(keep.reshape(B, *([1] * (v.dim() - 1))), f_new[k], v) for k, v in f.items()}
        x_prev, obs_prev = batch.x[:, t], batch.observed[:, t]
    return f, x_last, obs_last


@torch.no_grad()
def filter_history(
    lsm: LatentSequenceModel,
    batch: SequenceBatch,
    num_particles: int = 100,
    resample: str = "ess",
) -> FilteredState:
    """Filter each history to its end with the guide as proposal (see the module docstring).

    Args:
        lsm: a fitted :class:`~deepstate.models.base.LatentSequenceModel`.
        batch: ``B`` histories (moved to the model's dtype and device).
        num_particles: ``N``.
        resample: the filter's policy (``"ess"``: FIVO's adaptive resampling; ``"never"``: IWAE's).

    Returns:
        :class:`FilteredState`. Draws use torch's global RNG.
    """
    num_particles = _pos_int(num_particles, "num_particles")
    ref = next(lsm.parameters())
    batch = batch.to(device=ref.device, dtype=ref.dtype)
    B = batch.batch_size
    N = num_particles
    s_parts, lw, ll = {}, batch.x.new_zeros(N, B), batch.x.new_zeros(B)
    for L in torch.unique(batch.lengths).tolist():
        rows = (batch.lengths == L).nonzero().squeeze(1)
        res = particle_filter(lsm, batch[rows], N, resample=resample)
        s_parts[L] = (rows, res.state["s"])
        lw[:, rows] = res.state["lw"]
        ll[rows] = res.log_z
    # assemble [N, B, ...] carries from the groups
    s = {}
    for rows, part in s_parts.values():
        for k, v in part.items():
            if k not in s:
                s[k] = v.new_zeros(N, B, *v.shape[2:])
            s[k][:, rows] = v.expand(N, len(rows), *v.shape[2:])
    f, x_last, obs_last = feature_state(lsm.ssm, batch)
    return FilteredState(s=s, log_weights=lw, f=f, x_last=x_last, observed_last=obs_last,
                         lengths=batch.lengths.clone(), log_likelihood=ll)
