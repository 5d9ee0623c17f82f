r"""Filtered and smoothed latent trajectories with uncertainty.

* Exact models (Kalman): ``p(z_t | x_{1:t})`` from the filter, ``p(z_t | x_{1:T})`` from the RTS
  smoother; Gaussian bands.
* Every model, with the guide as proposal (a guide that factorises forward in time is a valid
  proposal for ``p(z_{1:t} | x_{1:t})``):

  - ``"filtered"``: the particle filter resamples after every step, so at step ``t`` the particles
    are equally weighted draws from the previous filtering distribution moved by the proposal, and
    their incremental weights ``p(z_t, x_t | s_{t-1}) / q(z_t | ...)`` alone weigh them: the weighted
    particles of step ``t`` approximate ``p(z_t | x_{1:t})`` without degenerating over time.
  - ``"smoothed"``: self-normalised importance sampling of whole paths: no resampling, weights of the
    whole trajectory ``w \propto p(x, z) / q(z | x)``. Exact as ``N`` grows, but over long sequences
    the weights degenerate (the returned effective sample size then approaches 1 and the band shows
    one path).
  - ``"guide"``: the amortised posterior ``q(z | x)`` itself, unweighted -- what a variational fit
    believes; it does not degenerate, but it is only as good as the guide.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
import torch

from ..data import SequenceBatch
from ..inference.particle import _default_sampler, particle_filter
from ..models.base import LatentSequenceModel
from ..inference.evaluation import _pos_int
from .forecast import _norm_ppf, check_levels, use_exact

__all__ = ["LatentTrajectories", "latent_trajectories"]


@dataclasses.dataclass
class LatentTrajectories:
    """Posterior summaries of ``z_t`` for ``B`` sequences (numpy, float64).

    Attributes:
        mean, std: ``[B, T, Z]``.
        lower, upper: ``[B, T, Z]`` the central ``level`` band.
        level: the band's probability.
        valid: ``[B, T]`` bool.
        kind: ``"filtered"`` or ``"smoothed"``.
        ess: ``[B]`` effective sample size of the importance weights (``None`` for exact models).
        index: optional list of ``B`` time indices.
    """

    mean: np.ndarray
    std: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    level: float
    valid: np.ndarray
    kind: str
    ess: Optional[np.ndarray] = None
    index: Optional[list] = None

    def plot(self, series: int = 0, title: Optional[str] = None, path=None):
        """Latent paths of one sequence with their band (see :func:`deepstate.plots.latent_trajectories`)."""
        from ..plots import latent_trajectories as plot_latent

        L = int(self.valid[series].sum())
        index = self.index[series] if self.index is not None else np.arange(L)
        title = title or f"{self.kind.capitalize()} latent states, mean and {self.level:.0%} band"
        return plot_latent(index, self.mean[series, :L], self.lower[series, :L], self.upper[series, :L], title=title,
                           path=path)


def _weighted_quantile(values: torch.Tensor, weights: torch.Tensor, q: float) -> torch.Tensor:
    """Quantile ``q`` over dim 0 of ``values [N, ...]`` with normalised ``weights [N, ...]``."""
    v, order = values.sort(0)
    w = weights.gather(0, order)
    cdf = w.cumsum(0) - 0.5 * w  # midpoint rule: the weighted analogue of (i + 0.5) / N
    idx = torch.searchsorted(cdf.movedim(0, -1).contiguous(), torch.full((*cdf.shape[1:], 1), q, dtype=cdf.dtype))
    idx = idx.clamp_max(values.shape[0] - 1)
    return v.movedim(0, -1).gather(-1, idx)[..., 0]


@torch.no_grad()
def latent_trajectories(
    lsm: LatentSequenceModel,
    batch: SequenceBatch,
    kind: str = "smoothed",
    num_particles: int = 500,
    level: float = 0.9,
    method: str = "auto",
    seed: Optional[int] = None,
) -> LatentTrajectories:
    """Filtered or smoothed latent states of each sequence (see the module docstring).

    Args:
        lsm: a fitted model.
        batch: ``B`` sequences on the model's scale.
        kind: ``"smoothed"`` (``p(z_t | x_{1:T})``), ``"filtered"`` (``p(z_t | x_{1:t})``) or ``"guide"``
            (``q(z_t | x)``; particle method only).
        num_particles: importance samples per sequence (particle method).
        level: probability of the central band.
        method: ``"auto"`` (exact for models with a Kalman filter), ``"particles"`` or ``"exact"``.
        seed: seed of the draws.
    """
    if kind not in ("smoothed", "filtered", "guide"):
        raise ValueError(f"kind: expected 'smoothed', 'filtered' or 'guide', got {kind!r}")
    (level,) = check_levels(level, "level")
    exact = use_exact(lsm, method)
    num_particles = _pos_int(num_particles, "num_particles")
    ref = next(lsm.parameters())
    batch = batch.to(device=ref.device, dtype=ref.dtype)
    lo_q, hi_q = (1 - level) / 2, (1 + level) / 2
    valid = batch.valid.cpu().numpy()
    to_np = lambda t: t.detach().to("cpu", torch.float64).numpy()  # noqa: E731
    if kind == "guide" and method == "exact":
        raise ValueError("method: kind='guide' summarises the guide's draws; use method='particles'")
    if exact and kind != "guide":
        kf = lsm.ssm.kalman(batch)
        if kind == "filtered":
            mean, cov = kf.filtered_mean, kf.filtered_cov
        else:
            sm = lsm.ssm.smooth(batch)
            mean, cov = sm.mean, sm.cov
        std = torch.diagonal(cov, dim1=-2, dim2=-1).clamp_min(0).sqrt()
        z = float(_norm_ppf(np.array([hi_q]))[0])
        return LatentTrajectories(mean=to_np(mean), std=to_np(std), lower=to_np(mean - z * std),
                                  upper=to_np(mean + z * std), level=level, valid=valid, kind=kind, index=batch.index)
    draws = []

    def recording_sampler(t, q, shape):
        z = _default_sampler(t, q, shape)
        draws.append(z)
        return z

    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(int(seed))
        res = particle_filter(lsm, batch, int(num_particles), resample="always" if kind == "filtered" else "never",
                              sampler=recording_sampler, record=True)
    Z = torch.stack(draws)  # [T, N, B, Z]
    inc = res.increments.permute(2, 0, 1)  # [T, N, B]
    if kind == "filtered":  # resampled after every step: step t's own increment weighs its particles
        logw = inc
    elif kind == "smoothed":  # whole-path importance weights
        logw = inc.sum(0, keepdim=True).expand_as(inc)
    else:
        logw = torch.zeros_like(inc)
    w = torch.softmax(logw, 1)[..., None]  # [T, N, B, 1]
    mean = (w * Z).sum(1)
    var = (w * (Z - mean[:, None]).pow(2)).sum(1)
    wq = w.expand_as(Z)
    lower = _weighted_quantile(Z.movedim(1, 0), wq.movedim(1, 0), lo_q)
    upper = _weighted_quantile(Z.movedim(1, 0), wq.movedim(1, 0), hi_q)
    # effective sample size: of the whole-path weights (smoothed), the smallest over steps (filtered), N (guide)
    ess_t = 1.0 / torch.softmax(logw, 1).pow(2).sum(1)  # [T, B]
    ess = torch.where(batch.valid.t(), ess_t, torch.full_like(ess_t, float("inf"))).min(0).values
    tb = lambda t: to_np(t.transpose(0, 1))  # [T, B, Z] -> [B, T, Z]  # noqa: E731
    return LatentTrajectories(mean=tb(mean), std=tb(var.sqrt()), lower=tb(lower), upper=tb(upper), level=level,
                              valid=valid, kind=kind, ess=to_np(ess), index=batch.index)
