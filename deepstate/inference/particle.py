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

**How it is computed** (same numbers as the loop above, much less per-step work): the sequential
pass runs only what the trajectory needs (proposals, draws, carries, resampling) and weighs the
particles *without gradient* for the resampling decisions; the differentiable increments are then
one batched evaluation of the model's ``prior``/``likelihood`` over all valid steps. Guides that
implement :meth:`~deepstate.models.base.Guide.rollout` (the DMM's) draw their whole trajectory in
one call with a hand-written backward pass, on the batch sorted by length and trimmed to its longest
sequence so that sequences that have ended are skipped; outputs are returned in the caller's order
and at the caller's length.
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
from ..models.fused import noise_log_prob
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
        increments: ``[N, B, T]`` per-step log-weight increments (only with ``record=True``); 0 on
            padded steps.
        ess: ``[B, T]`` effective sample size of the log-weights after step ``t``'s increment, i.e.
            before the resampling decision after step ``t`` (only with ``record=True``, for every
            policy including ``"never"``). At a sequence's last step it is the ESS of its final
            weights; on padded steps it is ``N`` (a fill: no weights exist there).
        state: the filter's state after the last step (carries ``s``, ``g`` and log-weights ``lw``),
            to continue on the next chunk of the same sequences (truncated BPTT, streaming). The carries
            of sequences that ended before the chunk's last step are unspecified (they never continue).
        latent_log_weights: ``[N, B]`` the latent part ``sum_t (log p(z_t | .) - log q(z_t | .))`` of
            this call's log-weights, differentiable (only with ``split_latent=True``, which needs
            ``resample="never"``); ``log_weights - latent_log_weights`` is the likelihood part. KL
            annealing of the single-sample ELBO scales this part.
    """

    log_z: torch.Tensor
    frames: torch.Tensor
    num_resamples: torch.Tensor
    log_weights: torch.Tensor
    increments: Optional[torch.Tensor] = None
    ess: Optional[torch.Tensor] = None
    state: Optional[dict] = None
    latent_log_weights: Optional[torch.Tensor] = None

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
    split_latent: bool = False,
    analytic_kl: bool = False,
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
        record: keep per-step increments and ESS (for diagnostics and tests; with ``analytic_kl`` they
            are built from ELBO terms, not importance weights).
        initial_state: ``result.state`` of a previous call on the preceding chunk of the same
            sequences: carries and log-weights continue from it (detach them for truncated BPTT).
            ``log_z`` then covers this chunk only, so the chunks' ``log_z`` add up to the whole.
            Features and encodings are computed from this chunk alone.
        validate: check distribution arguments and supports (off by default: on the hot path the
            checks cost about as much as the model; the Pyro path validates).
        split_latent: also return ``latent_log_weights`` (the ``log p(z) - log q(z)`` part of the
            log-weights); only without resampling, where the log-weights are whole-path sums.
        analytic_kl: replace each step's sampled ``log p(z_t | .) - log q(z_t | .)`` by its expectation
            under the proposal, ``-KL(q_t || p_t)`` in closed form (given the sampled past): the
            single-sample ELBO of Krishnan et al. (2017) and Pyro's ``TraceMeanField_ELBO``, an
            estimator of the same ELBO with less variance. The per-particle "log-weights" are then ELBO
            terms, not importance weights, so this needs ``resample="never"``, and ``log_z`` is their
            mean over particles (the ELBO estimate). Needs diagonal-Normal proposals and priors.

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
    if split_latent and resample != "never":
        raise ValueError(f"split_latent: the latent part of the log-weights is only defined without resampling, "
                         f"got resample={resample!r}")
    if analytic_kl and resample != "never":
        raise ValueError(f"analytic_kl: a closed-form KL term is no importance weight, so it needs resample='never' "
                         f"(the ELBO), got resample={resample!r}")
    guide = lsm.guide_steps
    fused = sampler is None and not guide.uses_prior and type(guide).rollout is not Guide.rollout
    # parametrised weights (orthogonal RNNs) are computed once per pass, not once per step
    with pyro.validation_enabled(validate), parametrize.cached():
        if not fused:
            return _filter(lsm, batch, num_particles, resample, RESAMPLERS[scheme], ess_threshold, sampler, uniforms,
                           record, initial_state, split_latent=split_latent, analytic_kl=analytic_kl)
        # the guide draws whole trajectories; with the batch sorted by decreasing length, the sequences
        # still running at step t are a prefix, and steps skip the ones that have ended. Steps where no
        # sequence runs (a padded tail, from pad_to or concat_batches) would have width 0, which the
        # model's distributions cannot take: they are trimmed, whether or not the batch needed sorting
        T_in = batch.valid.shape[1]
        order = torch.argsort(batch.lengths, descending=True, stable=True)
        permuted = not bool((order == torch.arange(len(order), device=order.device)).all())
        if permuted or int(batch.lengths.max()) < T_in:
            batch = batch[order]  # sorts and trims T to the longest sequence
        if permuted:
            uniforms = None if uniforms is None else uniforms[:, :, order.to(uniforms.device)]
            initial_state = None if initial_state is None else _permute_state(initial_state, order)
        running = batch.valid.sum(0)  # [T]
        prefix = torch.arange(batch.batch_size, device=running.device)[:, None] < running
        widths = running.tolist() if bool((prefix == batch.valid).all()) else None
        result = _filter(lsm, batch, num_particles, resample, RESAMPLERS[scheme], ess_threshold, None, uniforms, record,
                         initial_state, fused=True, widths=widths, split_latent=split_latent, analytic_kl=analytic_kl)
        return _caller_layout(result, order if permuted else None, T_in, num_particles)


def _permute_state(state: dict, order: torch.Tensor) -> dict:
    """Reorder a filter state's sequences (dim 1 of every ``[N, B, ...]`` tensor) by ``order``."""
    return {
        "s": {k: v.index_select(1, order) for k, v in state["s"].items()},
        "g": {k: v.index_select(1, order) for k, v in state["g"].items()},
        "lw": state["lw"].index_select(1, order),
    }


def _caller_layout(result: ParticleFilterResult, order: Optional[torch.Tensor], T: int, N: int) -> ParticleFilterResult:
    """Undo the fused path's sorting (``order``, or ``None`` if it kept the order) and trimming to fewer
    than ``T`` steps in every output of :func:`particle_filter`: the recorded ``[.., B, T']`` outputs are
    padded back to ``T`` steps (increments 0, ESS ``N``: the fills of padded steps)."""
    increments, ess = result.increments, result.ess
    if increments is not None and increments.shape[-1] < T:
        increments = torch.nn.functional.pad(increments, (0, T - increments.shape[-1]))
    if ess is not None and ess.shape[-1] < T:
        ess = torch.nn.functional.pad(ess, (0, T - ess.shape[-1]), value=float(N))
    if order is None:
        return dataclasses.replace(result, increments=increments, ess=ess)
    inv = torch.argsort(order)
    return ParticleFilterResult(
        log_z=result.log_z[inv],
        frames=result.frames[inv],
        num_resamples=result.num_resamples[inv],
        log_weights=result.log_weights[:, inv],
        increments=None if increments is None else increments[:, inv],
        ess=None if ess is None else ess[inv],
        state=_permute_state(result.state, inv),
        latent_log_weights=None if result.latent_log_weights is None else result.latent_log_weights[:, inv],
    )


def _filter(lsm, batch, N, resample, resampler, ess_threshold, sampler, uniforms, record, initial_state, fused=False,
            widths=None, split_latent=False, analytic_kl=False):
    """One sequential pass for the trajectory and the resampling decisions; the weights in parallel.

    The model's prior and emission never feed back into the particles' trajectory: they only weigh
    it. So the sequential loop runs what the trajectory needs (proposal, sample, carry updates,
    resampling with its gathers), evaluating the weights for the resampling decisions **without
    gradient**; afterwards the differentiable increments are evaluated once over all steps with
    leading dims ``[T, N, B]`` (steps accept any leading dims), from the carries each step saw. One
    large matrix product per layer replaces ``T`` small ones in the forward *and* the backward pass.
    ``log Z`` is then the sum over the stretches between resampling steps of ``logmeanexp`` of the
    increments summed over the stretch (a scatter-add: no cumulative-sum cancellation).

    Without resampling (IWAE, ELBO) no weight is needed inside the loop at all, and guides that can
    draw their whole trajectory at once (:meth:`~deepstate.models.base.Guide.rollout`) skip it.
    Guides whose proposal reads the prior (``uses_prior``, e.g. SRNN's Resq) get it in the loop,
    where its log-density is kept.
    """
    ssm, guide = lsm.ssm, lsm.guide_steps
    B, T = batch.valid.shape
    shape = torch.Size([N, B])
    c = ssm.features(batch)
    e = guide.encode(batch, c)
    if initial_state is None:
        s, g = ssm.initial(shape), guide.initial(shape)
        lw0 = batch.x.new_zeros(N, B)
    else:
        s, g, lw0 = initial_state["s"], initial_state["g"], initial_state["lw"]
    cs = unbind_time(c, T)
    decisions = _ResamplingDecisions(ssm, batch, cs, lw0, resample, resampler, ess_threshold, uniforms)
    weigh = resample != "never"
    if fused:
        Z, q, p, carries, s, g = _fused_trajectory(lsm, batch, cs, e, s, g, decisions, weigh, widths, analytic_kl)
    else:
        Z, q, p, carries, s, g = _stepwise_trajectory(lsm, batch, cs, e, s, g, decisions, weigh,
                                                      sampler or _default_sampler)
    inc, latent = _parallel_increments(ssm, batch, c, carries, Z, q, p, shape, analytic_kl)
    log_z, lw = _log_z(inc, decisions.resets, lw0)
    if analytic_kl:  # ELBO terms, not weights: their mean is the estimate (resample="never": lw is the total)
        log_z = (lw - lw0).mean(0)
    elif initial_state is not None:  # the previous chunk already counted logmeanexp of its final weights
        log_z = log_z - logmeanexp(lw0, 0)
    return ParticleFilterResult(
        log_z=log_z,
        frames=batch.valid.sum(1),
        num_resamples=decisions.resets.sum(0),
        log_weights=lw,
        increments=inc.permute(1, 2, 0) if record else None,
        ess=_recorded_ess(inc, decisions.resets, lw0, batch.valid) if record else None,
        state={"s": s, "g": g, "lw": lw},
        latent_log_weights=latent.sum(0) if split_latent else None,
    )


@torch.no_grad()
def _recorded_ess(inc: torch.Tensor, resets: torch.Tensor, lw0: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` ESS of the log-weights after each step, from the increments ``[T, N, B]``, the resampling
    flags ``[T, B]`` and the starting log-weights ``lw0 [N, B]``; ``N`` on padded steps.

    Rebuilt from the increments rather than taken from the in-loop weights: the loop only weighs the
    steps it decides after (not the last one) and, on the fused path, only the sequences that go on,
    so a sequence's ESS at its last step would be missing or stale there.
    """
    T, N, B = inc.shape
    lw = lw0.detach()
    out = []
    for t in range(T):
        lw = lw + inc[t].detach()
        out.append(effective_sample_size(lw))
        lw = lw.masked_fill(resets[t], 0.0)  # resampling after step t resets the weights
    ess = torch.stack(out, -1) if out else lw.new_zeros(B, 0)
    return ess.masked_fill(~valid, float(N))


def _fused_trajectory(lsm, batch, cs, e, s, g, decisions, weigh, widths, need_loc=False):
    """The guide draws the whole trajectory in one call (:meth:`~deepstate.models.base.Guide.rollout`).

    The weights for the resampling decisions follow the draws step by step without gradient (``on_step``),
    for the sequences still running only. The model's carries with gradient are then replayed from the
    draws and the recorded ancestors. Returns ``(Z, q, None, carries, s, g)`` like the step loop.
    """
    ssm, guide = lsm.ssm, lsm.guide_steps
    B, T = batch.valid.shape
    N = decisions.lw.shape[0]
    s_free = s  # the model's carry without gradient, for the weights

    def on_step(t, z, log_q):
        nonlocal s_free
        if t == T - 1:  # no decision after the last step
            return None
        w = B if widths is None else widths[t + 1]  # only the sequences that go on matter
        s_free = _first(s_free, w)
        anc = decisions.step(t, s_free, z[:, :w], log_q[:, :w], width=w)
        c_t = {k: v[:w] for k, v in cs[t].items()}
        s_free = ssm.update(s_free, z[:, :w], batch.x[:w, t], c_t, batch.observed[:w, t])
        if anc is not None:
            s_free = gather_particles(s_free, anc[:, :w])
        return anc

    eps = torch.randn(T, N, B, ssm.z_dim, dtype=batch.x.dtype, device=batch.x.device)
    Z, scale, g = guide.rollout(g, e, eps, on_step if weigh else None, widths)
    # the proposals' means only for a closed-form KL: off the hot path of the sampled objectives
    q = _Densities(noise_log_prob(eps, scale), Z - scale * eps if need_loc else None, scale)
    carries = []
    for t, z in enumerate(Z.unbind(0)):
        carries.append(s)
        s = ssm.update(s, z, batch.x[:, t], cs[t], batch.observed[:, t])
        if decisions.ancestors[t] is not None:
            s = gather_particles(s, decisions.ancestors[t])
    return Z, q, None, carries, s, g


def _stepwise_trajectory(lsm, batch, cs, e, s, g, decisions, weigh, sampler):
    """Proposal, draw, weights without gradient, resampling and carry updates, one step at a time.

    Returns ``(Z [T, N, B, Z], q, p, carries, s, g)``: the proposals' :class:`_Densities`, the prior's
    when the guide reads it (``uses_prior``; else None), and ``carries[t]``, the model's carry step ``t``
    saw (after any resampling).
    """
    ssm, guide = lsm.ssm, lsm.guide_steps
    T = batch.valid.shape[1]
    shape = decisions.lw.shape
    es = unbind_time(e, T)
    carries, zs, qs, ps = [], [], [], []
    for t in range(T):
        c_t = cs[t]
        p = ssm.prior(s, c_t) if guide.uses_prior else None
        q = guide.proposal(g, s, es[t], c_t, p)
        z = sampler(t, q, shape)
        qs.append(q)
        zs.append(z)
        carries.append(s)
        if p is not None:
            ps.append(p)
        anc = decisions.step(t, s, z, q.log_prob(z).detach(), p) if weigh else None
        s = ssm.update(s, z, batch.x[:, t], c_t, batch.observed[:, t])
        g = guide.update(g, z, es[t])
        if anc is not None:
            s = gather_particles(s, anc)
            g = gather_particles(g, anc)
    Z = torch.stack(zs)
    return Z, _stacked_densities(qs, Z), _stacked_densities(ps, Z) if ps else None, carries, s, g


def _log_z(inc: torch.Tensor, resets: torch.Tensor, lw0: torch.Tensor):
    """``log Z [B]`` and the final log-weights ``[N, B]`` from increments ``[T, N, B]`` and resampling flags ``[T, B]``.

    Each stretch between resampling steps contributes ``logmeanexp`` over particles of its summed
    increments (a scatter-add per stretch: no cumulative-sum cancellation); ``lw0`` starts the first.
    """
    T, N, B = inc.shape
    n_resample = resets.sum(0)
    stretch = resets.long().cumsum(0) - resets.long()  # [T, B] index of the stretch step t belongs to
    K = int(n_resample.max()) + 1
    lw = inc.new_zeros(K, N, B).scatter_add(0, stretch[:, None, :].expand(T, N, B), inc)
    lw = torch.cat([lw[:1] + lw0, lw[1:]])
    present = torch.arange(K, device=inc.device)[:, None] <= n_resample  # [K, B]
    log_z = (logmeanexp(lw, 1) * present).sum(0)
    return log_z, lw.gather(0, n_resample.view(1, 1, B).expand(1, N, B))[0]


class _ResamplingDecisions:
    """The filter's log-weights without gradient, step by step, and the resampling decisions taken on them.

    ``step`` weighs step ``t``'s draws (the carry ``s`` the step saw, the draws ``z``, their proposal
    log-density) and returns the ancestors ``[N, B]`` if any sequence resamples after step ``t``
    (identity for those that do not), else ``None``. Decisions are recorded in ``resets [T, B]``
    and ``ancestors``.
    """

    def __init__(self, ssm, batch, cs, lw0, resample, resampler, ess_threshold, uniforms):
        self.ssm, self.batch, self.cs = ssm, batch, cs
        self.resample, self.resampler, self.ess_threshold, self.uniforms = resample, resampler, ess_threshold, uniforms
        N, B = lw0.shape
        T = batch.valid.shape[1]
        self.lw = lw0.detach().clone()  # updated in place
        self.valid = batch.valid.to(batch.x.dtype)
        self.obs = batch.observed.to(batch.x.dtype)
        self.resets = torch.zeros(T, B, dtype=torch.bool, device=lw0.device)  # resampled after step t
        self.ancestors = [None] * T
        self.identity = torch.arange(N, device=lw0.device)[:, None].expand(N, B)

    @torch.no_grad()
    def step(self, t, s, z, log_q, p=None, width=None):
        """Weigh step ``t`` and decide; ``width``: only the first ``width`` sequences go on to step ``t + 1``
        (``s``, ``z``, ``log_q`` narrowed to them; the others' weights are never used again)."""
        ssm, batch = self.ssm, self.batch
        if t == len(self.ancestors) - 1:  # no decision after the last step (log Z is computed afterwards)
            return None
        w = batch.batch_size if width is None else width
        c_t = self.cs[t] if width is None else {k: v[:w] for k, v in self.cs[t].items()}
        p = ssm.prior(s, c_t) if p is None else p
        log_lik = (ssm.likelihood(s, z, c_t).log_prob(batch.x[:w, t]) * self.obs[:w, t]).sum(-1)
        self.lw[:, :w] += (p.log_prob(z) - log_q + log_lik) * self.valid[:w, t]
        weights = torch.softmax(self.lw, 0)  # shared by the ESS and the resampler
        flag = batch.valid[:w, t + 1]  # never after a sequence's last step
        if self.resample == "ess":
            ess = effective_sample_size(self.lw, weights)
            flag = flag & (ess[:w] < self.ess_threshold * self.lw.shape[0])
        if not bool(flag.any()):
            return None
        u = None if self.uniforms is None else self.uniforms[t][:, :w]
        drawn = self.resampler(self.lw[:, :w], u, weights=weights[:, :w])
        if w < batch.batch_size:  # the ended sequences keep their particles
            flag = torch.cat([flag, flag.new_zeros(batch.batch_size - w)])
            drawn = torch.cat([drawn, self.identity[:, w:]], 1)
        ancestors = torch.where(flag, drawn, self.identity)
        self.lw.masked_fill_(flag, 0.0)
        self.resets[t] = flag
        self.ancestors[t] = ancestors
        return ancestors


def _first(carry: dict, width: int) -> dict:
    """The first ``width`` sequences of every ``[N, B, ...]`` carry tensor (a view; no-op when already that wide)."""
    return {k: v if v.shape[1] == width else v[:, :width] for k, v in carry.items()}


def _parallel_increments(ssm, batch, c, carries, Z, q, p, shape, analytic_kl=False):
    """``[T, N, B]`` log-weight increments ``log p(z_t | s_t) + log l(x_t | s_t, z_t) - log q(z_t)``, masked,
    and their latent part ``log p(z_t | s_t) - log q(z_t)`` (``[T, N, B]``; ``-KL(q_t || p_t)`` with
    ``analytic_kl``). ``q`` and ``p`` are :class:`_Densities` (``p`` only for guides that read the prior,
    whose prior densities were kept in the loop; otherwise the prior is evaluated here, in parallel).

    The model is evaluated on the valid ``(t, b)`` rows only (padding can be half of a batch of
    sequences of mixed lengths), with leading dims ``[V, N]``.
    """
    T, N, B = Z.shape[:3]
    valid = batch.valid.t()  # [T, B]
    rows = valid.reshape(-1).nonzero().squeeze(1)  # the valid (t, b) pairs

    def select(v):  # [T, N or 1, B, ...] -> [V, N or 1, ...]
        v = v.transpose(1, 2)
        return v.reshape(T * B, *v.shape[2:]).index_select(0, rows)

    S = {k: select(torch.stack([cr[k].expand(shape + cr[k].shape[2:]) for cr in carries])) for k in carries[0]}
    C = {k: select(v.transpose(0, 1).unsqueeze(1)) for k, v in c.items()}
    X = select(batch.x.transpose(0, 1).unsqueeze(1))
    O = select(batch.observed.transpose(0, 1).unsqueeze(1)).to(batch.x.dtype)
    Zv = select(Z)
    def scatter(v):  # [V, N] -> [T, N, B], 0 on padding
        return Z.new_zeros(T * B, N).index_copy(0, rows, v).view(T, B, N).transpose(1, 2)

    lik = scatter((ssm.likelihood(S, Zv, C).log_prob(X) * O).sum(-1))
    if analytic_kl:
        if p is not None:  # the prior the guide read in the loop
            prior = None if p.loc is None else (select(p.loc), select(p.scale))
        else:
            prior = _diag_normal(ssm.prior(S, C))
        if q.loc is None or prior is None:
            raise ValueError("analytic_kl: the closed-form KL needs diagonal-Normal proposals and priors")
        latent = scatter(-_diag_normal_kl(select(q.loc), select(q.scale), *prior))
        return lik + latent, latent
    own = p.log_prob - q.log_prob if p is not None else -q.log_prob  # the proposal's (and a Resq prior's)
    latent = own * valid.unsqueeze(1).to(own.dtype)
    if p is None:
        latent = latent + scatter(ssm.prior(S, C).log_prob(Zv))
    return lik + latent, latent


@dataclasses.dataclass
class _Densities:
    """A trajectory's per-step distributions: ``log_prob [T, N, B]`` at the draws, and ``loc``, ``scale``
    ``[T, N, B, Z]`` when every step's distribution is a diagonal Normal (else None)."""

    log_prob: torch.Tensor
    loc: Optional[torch.Tensor] = None
    scale: Optional[torch.Tensor] = None


def _diag_normal(d):
    """``(loc, scale)`` of a diagonal Normal (``Independent(Normal, 1)``), else None."""
    import torch.distributions as td

    if isinstance(d, td.Independent) and isinstance(d.base_dist, td.Normal) and d.reinterpreted_batch_ndims == 1:
        return d.base_dist.loc, d.base_dist.scale
    return None


def _diag_normal_kl(loc_q, scale_q, loc_p, scale_p) -> torch.Tensor:
    r"""``KL(N(loc_q, diag scale_q^2) || N(loc_p, diag scale_p^2))`` summed over the last dim:
    :math:`\sum_i \log(\sigma_{p,i}/\sigma_{q,i}) + (\sigma_{q,i}^2 + (\mu_{q,i} - \mu_{p,i})^2) / (2\sigma_{p,i}^2) - 1/2`."""
    var_ratio = (scale_q / scale_p).pow(2)
    return 0.5 * (var_ratio + ((loc_q - loc_p) / scale_p).pow(2) - 1.0 - var_ratio.log()).sum(-1)


def _stacked_densities(dists, Z: torch.Tensor) -> _Densities:
    """The per-step distributions ``dists`` at the draws ``Z [T, N, B, Z]``.

    Diagonal Normals (every deep guide) are stacked and evaluated in one call; any other family is
    evaluated step by step.
    """
    import torch.distributions as td

    params = [_diag_normal(d) for d in dists]
    if all(pr is not None for pr in params):
        shape = Z.shape[1:]
        loc = torch.stack([pr[0].expand(shape) for pr in params])
        scale = torch.stack([pr[1].expand(shape) for pr in params])
        return _Densities(td.Normal(loc, scale, validate_args=False).log_prob(Z).sum(-1), loc, scale)
    return _Densities(torch.stack([d.log_prob(z) for d, z in zip(dists, Z.unbind(0))]))


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
