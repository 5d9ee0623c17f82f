r"""Particle objectives: the ELBO, IWAE and FIVO as one particle filter with three settings.

=============  ============  ===================================================  ========================
objective      resampling    bound per sequence                                    paper
=============  ============  ===================================================  ========================
``ELBO``       never         ``mean_N  sum_t (log p + log l - log q)``              Kingma & Welling 2014
``IWAE``       never         ``logmeanexp_N sum_t (...)``                           Burda et al. 2016
``FIVO``       ESS < N/2     particle-filter ``log Z`` (see :mod:`.particle`)        Maddison et al. 2017
=============  ============  ===================================================  ========================

All three satisfy ``bound <= log p(x)`` in expectation; IWAE and FIVO tighten with ``N``. Each returns a
:class:`~deepstate.inference.particle.ParticleFilterResult` from :meth:`bound`; :meth:`loss` is the
negative total bound divided by a fixed normaliser (frames per epoch / batches, not each
minibatch's own frame count, so minibatches are weighted as the full objective weights them).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch

from ..data import SequenceBatch
from ..models.base import LatentSequenceModel
from .particle import ParticleFilterResult, particle_filter

__all__ = ["ParticleObjective", "ParticleELBO", "IWAE", "FIVO", "get_objective"]


class ParticleObjective:
    """Base class: a particle filter configuration whose ``E[log Z]`` is a lower bound.

    Args:
        num_particles: ``N``.
        scheme: resampling scheme (``"multinomial"`` | ``"systematic"``).
        ess_threshold: resample when ESS < ``ess_threshold * N`` (FIVO only).
    """

    resample = "never"
    name = "particle"

    def __init__(self, num_particles: int = 1, scheme: str = "multinomial", ess_threshold: float = 0.5):
        if not isinstance(num_particles, int) or num_particles < 1:
            raise ValueError(f"num_particles: expected a positive int, got {num_particles!r}")
        self.num_particles = num_particles
        self.scheme = scheme
        self.ess_threshold = ess_threshold

    def bound(self, lsm: LatentSequenceModel, batch: SequenceBatch, **kwargs) -> ParticleFilterResult:
        """Per-sequence bound estimate (``result.log_z [B]``, nats) and frame counts."""
        return particle_filter(
            lsm, batch, self.num_particles, resample=self.resample, scheme=self.scheme,
            ess_threshold=self.ess_threshold, **kwargs,
        )

    def loss(self, lsm: LatentSequenceModel, batch: SequenceBatch, normalizer: Optional[float] = None,
             weights: Optional[torch.Tensor] = None, **kwargs):
        """``-sum_b w_b bound_b / normalizer`` (default normaliser: the batch's frame count; default
        weights: 1). ``weights [B]`` weigh the sequences, e.g. ``1 / T_b`` for FIVO's per-sequence loss.

        Returns ``(loss, result)``.
        """
        result = self.bound(lsm, batch, **kwargs)
        return _weighted_loss(result.log_z, batch, normalizer, weights), result

    def __repr__(self):
        extra = ", analytic_kl=True" if getattr(self, "analytic_kl", False) else ""
        return f"{type(self).__name__}(num_particles={self.num_particles}{extra})"


def _weighted_loss(bound: torch.Tensor, batch: SequenceBatch, normalizer: Optional[float],
                   weights: Optional[torch.Tensor]) -> torch.Tensor:
    """``-sum_b w_b bound_b / normalizer`` (``bound [B]`` nats; defaults: the batch's frames, ``w = 1``)."""
    norm = float(batch.num_frames) if normalizer is None else float(normalizer)
    if weights is None:
        return -bound.sum() / norm
    if weights.shape != bound.shape:
        raise ValueError(f"weights: expected shape {tuple(bound.shape)} (one per sequence), got {tuple(weights.shape)}")
    return -(weights.to(bound) * bound).sum() / norm


class ParticleELBO(ParticleObjective):
    r"""The evidence lower bound on the particle path (average of ``N`` independent single-sample ELBOs).

    **KL annealing** (``loss(..., kl_scale=beta)``): the training loss becomes minus

    .. math:: \frac1N \sum_n \sum_t \Big[\log p(x_t \mid \cdot) + \beta \big(\log p(z^n_t \mid \cdot)
              - \log q(z^n_t \mid \cdot)\big)\Big],

    the annealed objective of Krishnan et al. (2017) and Pyro's ``examples/dmm.py`` (there by
    ``poutine.scale`` on the ``z`` sites of model and guide), with the same draws; the returned
    ``result.log_z`` stays the unannealed bound. Well defined here because no importance weight is
    ever normalised: each particle is its own single-sample ELBO. (IWAE/FIVO with ``N > 1`` would
    rescale the weights they normalise, so they do not take ``kl_scale``.)

    **Closed-form KL** (``analytic_kl=True``): each step's ``log p(z_t | .) - log q(z_t | .)`` is replaced
    by ``-KL(q_t || p_t)`` given the sampled past, as in Krishnan et al.'s code and Pyro's
    ``TraceMeanField_ELBO``: the same ELBO with a lower-variance estimate and gradient (diagonal-Normal
    proposals and priors, which every deep model here has).
    """

    name = "elbo"

    def __init__(self, num_particles: int = 1, scheme: str = "multinomial", ess_threshold: float = 0.5, *,
                 analytic_kl: bool = False):
        super().__init__(num_particles, scheme, ess_threshold)
        if not isinstance(analytic_kl, bool):
            raise TypeError(f"analytic_kl: expected a bool, got {type(analytic_kl).__name__}")
        self.analytic_kl = analytic_kl

    def bound(self, lsm, batch, **kwargs):
        kwargs.setdefault("analytic_kl", self.analytic_kl)
        result = particle_filter(lsm, batch, self.num_particles, resample="never", **kwargs)
        # With no resampling, log_weights holds each particle's whole-sequence log-weight
        # (since the start of the sequence when continuing from a previous chunk's state).
        log_z = result.log_weights.mean(0)
        if kwargs.get("initial_state") is not None:
            log_z = log_z - kwargs["initial_state"]["lw"].mean(0)
        return dataclasses.replace(result, log_z=log_z)

    def loss(self, lsm, batch, normalizer=None, weights=None, kl_scale: float = 1.0, **kwargs):
        """``-sum_b w_b annealed_bound_b / normalizer`` and the (unannealed) result; see the class docstring."""
        if kl_scale == 1.0:
            return super().loss(lsm, batch, normalizer, weights, **kwargs)
        if not 0.0 <= float(kl_scale) <= 1.0:
            raise ValueError(f"kl_scale: expected a factor in [0, 1], got {kl_scale!r}")
        result = self.bound(lsm, batch, split_latent=True, **kwargs)
        annealed = result.log_z - (1.0 - float(kl_scale)) * result.latent_log_weights.mean(0)
        return _weighted_loss(annealed, batch, normalizer, weights), result


class IWAE(ParticleObjective):
    """Importance-weighted bound (Burda et al. 2016): ``logmeanexp`` of ``N`` sequence weights."""

    resample = "never"
    name = "iwae"


class FIVO(ParticleObjective):
    """Filtering variational objective (Maddison et al. 2017): ESS-adaptive resampling."""

    resample = "ess"
    name = "fivo"


_OBJECTIVES = {"elbo": ParticleELBO, "iwae": IWAE, "fivo": FIVO}


def get_objective(name: str, num_particles: int = 1, **kwargs) -> ParticleObjective:
    """Objective by name: ``"elbo"``, ``"iwae"`` or ``"fivo"``."""
    if name not in _OBJECTIVES:
        raise ValueError(f"objective: expected one of {tuple(_OBJECTIVES)}, got {name!r}")
    return _OBJECTIVES[name](num_particles, **kwargs)
