r"""A vectorised particle filter over the step protocol: the engine of IWAE, FIVO and the N=1 ELBO.

For ``N`` particles and ``B`` sequences, carries have leading dims ``[N, B]``; per-sequence tensors
(features ``c_t``, encodings ``e_t``, observations ``x_t``) broadcast against the particle dim. Only
protocol steps are called, so every model and guide gets every objective for free. No Pyro sites
are involved: this is the fast path.

The estimator (``DESIGN.md``)::

    log Z = 0; lw = 0                                        # lw: [N, B]
    for t: z ~ q_t;  lw += valid_t * (log p_t(z) + log l_t(x_t)[observed] - log q_t(z))
           if resample_t:  log Z += logmeanexp_N(lw); lw = 0; carries <- carries[ancestors]
    log Z += logmeanexp_N(lw)

``exp(log Z)`` is an unbiased estimate of ``p(x_{1:T})`` so ``E[log Z] <= log p(x_{1:T})`` (Jensen):
with ``resample="never"`` this is the IWAE bound (Burda et al. 2016), with ESS-adaptive resampling
the FIVO bound (Maddison et al. 2017; Le et al. 2018 "AESMC"; Naesseth et al. 2018 "VSMC"), with
``N = 1`` the ELBO.

Resampling happens at step ``t`` only if step ``t + 1`` exists for that sequence (never on padded
steps, never after the last step), so padding changes no number.

**Gradient bias.** Ancestor indices are drawn from detached weights and no score-function term is
added for them, as in the FIVO and AESMC reference code. The gradient therefore ignores the
dependence of the resampling distribution on the parameters; it is biased, but the dropped term has
high variance and the papers found it hurts in practice. Gradients do flow through the log-weights
and through ``logmeanexp`` at each resampling step, and through the gathered carries.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional

import pyro
import torch
from torch.nn.utils import parametrize

from ..data import SequenceBatch
from ..models.base import Guide, LatentSequenceModel, unbind_time
from .resampling import RESAMPLERS, effective_sample_size

__all__ = ["ParticleFilterResult", "particle_filter", "gather_particles", "logmeanexp", "reparameterized_sample"]

RESAMPLE_POLICIES = ("never", "always", "ess")


@dataclasses.dataclass
class ParticleFilterResult:
    """Output of :func:`particle_filter`.

    Attributes:
        log_z: ``[B]`` log of the likelihood estimate per sequence (nats); its expectation is the bound.
        frames: ``[B]`` number of valid steps per sequence.
        num_resamples: ``[B]`` how many times each sequence's particles were resampled.
        log_weights: ``[N, B]`` log-weights accumulated since the last resampling step.
        increments: ``[N, B, T]`` per-step log-weight increments (only with ``record=True``).
        ess: ``[B, T]`` effective sample size before each resampling decision (``record=True``).
        state: the filter's state after the last step (carries ``s``, ``g`` and log-weights ``lw``),
            to continue on the next chunk of the same sequences (truncated BPTT, streaming).
    """

    log_z: torch.Tensor
    frames: torch.Tensor
    num_resamples: torch.Tensor
    log_weights: torch.Tensor
    increments: Optional[torch.Tensor] = None
    ess: Optional[torch.Tensor] = None
    state: Optional[dict] = None

    @property
    def nats_per_frame(self) -> torch.Tensor:
        """Total bound over the batch divided by its total number of frames."""
        return self.log_z.sum() / self.frames.sum()


def logmeanexp(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    return torch.logsumexp(x, dim) - math.log(x.shape[dim])


def gather_particles(carry: dict, ancestors: torch.Tensor) -> dict:
    """Reorder every ``[N, B, ...]`` carry tensor by ``ancestors [N, B]`` (a differentiable gather)."""
    out = {}
    for k, v in carry.items():
        idx = ancestors.reshape(*ancestors.shape, *([1] * (v.dim() - 2))).expand_as(v)
        out[k] = torch.gather(v, 0, idx)
    return out


def _default_sampler(t: int, q, shape: torch.Size) -> torch.Tensor:
    if q.batch_shape != shape:
        q = q.expand(shape)
    return q.rsample() if q.has_rsample else q.sample()


def particle_filter(
    lsm: LatentSequenceModel,
    batch: SequenceBatch,
    num_particles: int = 1,
    resample: str = "ess",
    scheme: str = "multinomial",
    ess_threshold: float = 0.5,
    sampler: Optional[Callable] = None,
    uniforms: Optional[torch.Tensor] = None,
    record: bool = False,
    initial_state: Optional[dict] = None,
    validate: bool = False,
) -> ParticleFilterResult:
    """Run a particle filter with the guide as proposal; return the log-likelihood estimate.

    Args:
        lsm: a :class:`~deepstate.models.base.LatentSequenceModel` (model and guide steps).
        batch: a :class:`~deepstate.data.SequenceBatch` of ``B`` sequences.
        num_particles: ``N >= 1``.
        resample: ``"never"`` (IWAE), ``"always"`` or ``"ess"`` (when ESS < ``ess_threshold * N``: FIVO).
        scheme: ``"multinomial"`` or ``"systematic"``.
        ess_threshold: fraction of ``N`` below which ``resample="ess"`` resamples.
        sampler: optional ``sampler(t, q, shape) -> z [N, B, Z]`` replacing ``q.rsample()`` (inject noise
            or replay a trajectory).
        uniforms: optional ``[T, N, B]`` uniforms for the resampling draws.
        record: keep per-step increments and ESS (for diagnostics and tests).
        initial_state: ``result.state`` of a previous call on the preceding chunk of the same
            sequences: carries and log-weights continue from it (detach them for truncated BPTT).
            ``log_z`` then covers this chunk only, so the chunks' ``log_z`` add up to the whole.
            Features and encodings are computed from this chunk alone.
        validate: check distribution arguments and supports (off by default: on the hot path the
            checks cost about as much as the model; the Pyro path validates).

    Returns:
        :class:`ParticleFilterResult`; ``log_z`` is differentiable in the model and guide parameters.
    """
    if not isinstance(num_particles, int) or num_particles < 1:
        raise ValueError(f"num_particles: expected a positive int, got {num_particles!r}")
    if resample not in RESAMPLE_POLICIES:
        raise ValueError(f"resample: expected one of {RESAMPLE_POLICIES}, got {resample!r}")
    if scheme not in RESAMPLERS:
        raise ValueError(f"scheme: expected one of {tuple(RESAMPLERS)}, got {scheme!r}")
    if not 0.0 < ess_threshold <= 1.0:
        raise ValueError(f"ess_threshold: expected a fraction in (0, 1], got {ess_threshold}")
    # parametrised weights (orthogonal RNNs) are computed once per pass, not once per step
    with pyro.validation_enabled(validate), parametrize.cached():
        if resample == "never":
            return _filter_without_resampling(lsm, batch, num_particles, sampler, record, initial_state)
        return _filter(lsm, batch, num_particles, resample, RESAMPLERS[scheme], ess_threshold, sampler or _default_sampler,
                       uniforms, record, initial_state)


def _start(lsm, batch, N, initial_state):
    ssm, guide = lsm.ssm, lsm.guide_steps
    B, T = batch.valid.shape
    c = ssm.features(batch)
    e = guide.encode(batch, c)
    if initial_state is None:
        s, g = ssm.initial((N, B)), guide.initial((N, B))
        lw = batch.x.new_zeros(N, B)
    else:
        s, g, lw = initial_state["s"], initial_state["g"], initial_state["lw"]
    # the previous chunk already counted logmeanexp of its final weights: count only the change
    log_z = batch.x.new_zeros(B) if initial_state is None else -logmeanexp(lw, 0)
    return c, e, s, g, lw, log_z


def _filter(lsm, batch, N, resample, resampler, ess_threshold, sampler, uniforms, record, initial_state):
    """The general loop: weights every step, resampling by policy."""
    ssm, guide = lsm.ssm, lsm.guide_steps
    B, T = batch.valid.shape
    shape = torch.Size([N, B])
    c, e, s, g, lw, log_z = _start(lsm, batch, N, initial_state)
    cs, es = unbind_time(c, T), unbind_time(e, T)
    valid = batch.valid.to(batch.x.dtype)
    obs = batch.observed.to(batch.x.dtype)
    n_resample = torch.zeros(B, dtype=torch.long, device=batch.x.device)
    increments, ess_hist = [], []
    arange = torch.arange(N, device=batch.x.device)[:, None].expand(N, B)
    for t in range(T):
        c_t, e_t = cs[t], es[t]
        x_t = batch.x[:, t]
        p = ssm.prior(s, c_t)
        q = guide.proposal(g, s, e_t, c_t, p)
        z = sampler(t, q, shape)
        lik = ssm.likelihood(s, z, c_t)
        inc = p.log_prob(z) - q.log_prob(z) + (lik.log_prob(x_t) * obs[:, t]).sum(-1)
        inc = inc * valid[:, t]
        lw = lw + inc
        if record:
            increments.append(inc)
        s = ssm.update(s, z, x_t, c_t, batch.observed[:, t])
        g = guide.update(g, z, e_t)
        if t == T - 1:
            continue
        ess = effective_sample_size(lw)
        if record:
            ess_hist.append(ess)
        flag = batch.valid[:, t + 1]
        if resample == "ess":
            flag = flag & (ess < ess_threshold * N)
        if not bool(flag.any()):
            continue
        log_z = log_z + torch.where(flag, logmeanexp(lw, 0), torch.zeros_like(log_z))
        ancestors = resampler(lw, None if uniforms is None else uniforms[t])
        ancestors = torch.where(flag, ancestors, arange)
        lw = torch.where(flag, torch.zeros_like(lw), lw)
        s = gather_particles(s, ancestors)
        g = gather_particles(g, ancestors)
        n_resample = n_resample + flag.long()
    log_z = log_z + logmeanexp(lw, 0)
    return ParticleFilterResult(
        log_z=log_z,
        frames=batch.valid.sum(1),
        num_resamples=n_resample,
        log_weights=lw,
        increments=torch.stack(increments, -1) if record else None,
        ess=torch.stack(ess_hist, -1) if record and ess_hist else None,
        state={"s": s, "g": g, "lw": lw},
    )


def _filter_without_resampling(lsm, batch, N, sampler, record, initial_state):
    """Importance sampling along whole trajectories (IWAE, ELBO), with the model evaluated in parallel.

    Without resampling, weights are only needed at the end. The sequential loop therefore runs only
    what the trajectory needs (proposal, sample, carry updates) and keeps each step's carry; the
    prior and the emission, which do not feed back into the trajectory, are then evaluated once
    over all steps with leading dims ``[T, N, B]`` (steps accept any leading dims). One large
    matrix product per layer replaces ``T`` small ones: the same numbers, much less overhead.
    Guides whose proposal reads the prior (``uses_prior``, e.g. SRNN's Resq) get it in the loop.
    """
    ssm, guide = lsm.ssm, lsm.guide_steps
    B, T = batch.valid.shape
    shape = torch.Size([N, B])
    c, e, s, g, lw, log_z = _start(lsm, batch, N, initial_state)
    cs = unbind_time(c, T)
    rolled = None
    if sampler is None and not guide.uses_prior and type(guide).rollout is not Guide.rollout:
        # the guide draws its whole trajectory at once (DMM guides: fused backpropagation)
        rolled = guide.rollout(g, e, torch.randn(T, N, B, ssm.z_dim, dtype=batch.x.dtype, device=batch.x.device))
    if rolled is not None:
        Z, log_q, g = rolled
        carries = []
        for t, z in enumerate(Z.unbind(0)):
            carries.append(s)
            s = ssm.update(s, z, batch.x[:, t], cs[t], batch.observed[:, t])
        log_p = []
    else:
        Z, log_q, g, s, carries, log_p = _guide_loop(ssm, guide, batch, shape, cs, unbind_time(e, T), s, g,
                                                     sampler or _default_sampler)
    S = {k: torch.stack([cr[k].expand(shape + cr[k].shape[2:]) for cr in carries]) for k in carries[0]}
    C = {k: v.transpose(0, 1).unsqueeze(1) for k, v in c.items()}  # [T, 1, B, ...]
    X = batch.x.transpose(0, 1).unsqueeze(1)
    O = batch.observed.transpose(0, 1).unsqueeze(1).to(batch.x.dtype)
    lp = torch.stack(log_p) if log_p else ssm.prior(S, C).log_prob(Z)
    inc = lp - log_q + (ssm.likelihood(S, Z, C).log_prob(X) * O).sum(-1)
    inc = inc * batch.valid.transpose(0, 1).unsqueeze(1).to(inc.dtype)  # [T, N, B]
    lw = lw + inc.sum(0)
    log_z = log_z + logmeanexp(lw, 0)
    return ParticleFilterResult(
        log_z=log_z,
        frames=batch.valid.sum(1),
        num_resamples=torch.zeros(B, dtype=torch.long, device=batch.x.device),
        log_weights=lw,
        increments=inc.permute(1, 2, 0) if record else None,
        state={"s": s, "g": g, "lw": lw},
    )


def _guide_loop(ssm, guide, batch, shape, cs, es, s, g, sampler):
    """Step-by-step proposals: ``(Z [T, N, B, Z], log_q [T, N, B], g, s, carries, log_p)``."""
    carries, zs, qs, log_p = [], [], [], []
    for t in range(len(cs)):
        p = ssm.prior(s, cs[t]) if guide.uses_prior else None
        q = guide.proposal(g, s, es[t], cs[t], p)
        z = sampler(t, q, shape)
        qs.append(q)
        if p is not None:
            log_p.append(p.log_prob(z))
        carries.append(s)
        zs.append(z)
        s = ssm.update(s, z, batch.x[:, t], cs[t], batch.observed[:, t])
        g = guide.update(g, z, es[t])
    Z = torch.stack(zs)  # [T, N, B, Z]
    return Z, _stacked_log_prob(qs, Z), g, s, carries, log_p


def _stacked_log_prob(qs, Z: torch.Tensor) -> torch.Tensor:
    """``[T, N, B]`` log-densities of ``Z [T, N, B, Z]`` under the per-step proposals ``qs``.

    Diagonal-Normal proposals (every deep guide) are stacked and evaluated in one call; any other
    family is evaluated step by step.
    """
    import torch.distributions as td

    def diag_normal(q):
        return isinstance(q, td.Independent) and type(q.base_dist) is td.Normal and q.reinterpreted_batch_ndims == 1

    shape = Z.shape[1:]
    if all(diag_normal(q) for q in qs):
        loc = torch.stack([q.base_dist.loc.expand(shape) for q in qs])
        scale = torch.stack([q.base_dist.scale.expand(shape) for q in qs])
        return td.Normal(loc, scale, validate_args=False).log_prob(Z).sum(-1)
    return torch.stack([q.log_prob(z) for q, z in zip(qs, Z.unbind(0))])


def reparameterized_sample(q, eps: torch.Tensor) -> torch.Tensor:
    """A draw from ``q`` built from injected standard-normal noise ``eps`` (same shape as a sample).

    Supports ``Normal`` (optionally wrapped in ``Independent``) and ``MultivariateNormal``:
    ``loc + scale * eps`` and ``loc + L eps``. Used to give every particle filter run the same
    noise (common random numbers) in invariance tests and comparisons.
    """
    import torch.distributions as td

    base = q.base_dist if isinstance(q, td.Independent) else q
    if isinstance(base, td.MultivariateNormal):
        return base.loc + (base.scale_tril @ eps[..., None])[..., 0]
    if isinstance(base, td.Normal):
        return base.loc + base.scale * eps
    raise TypeError(f"q: cannot inject noise into {type(base).__name__}; expected Normal or MultivariateNormal")
