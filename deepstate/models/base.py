r"""The step protocol every deepstate model and guide follows, and the generic code built on it.

A model is a **state-space model with a deterministic carry** written as step functions
(see ``DESIGN.md``)::

    c_{1:T} = ssm.features(batch)                  # parallel, deterministic, from observed x / covariates
    s_0     = ssm.initial(batch_shape)             # carry: a dict of tensors [*batch_shape, ...]
    p_t     = ssm.prior(s_{t-1}, c_t)              # p(z_t | past)             event shape [Z]
    l_t     = ssm.likelihood(s_{t-1}, z_t, c_t)    # p(x_t | z_t, past)        batch shape [..., D]
    s_t     = ssm.update(s_{t-1}, z_t, x_t, c_t, observed_t)   # observed_t None: all observed

and a guide is an **amortised recurrent proposal** written the same way::

    e_{1:T} = guide.encode(batch, c)               # parallel (e.g. a backward RNN)
    g_0     = guide.initial(batch_shape)
    q_t     = guide.proposal(g_{t-1}, s_{t-1}, e_t, c_t, p_t)
    g_t     = guide.update(g_{t-1}, z_t, e_t)

The joint density is

.. math:: p(x_{1:T}, z_{1:T}) = \prod_t p(z_t \mid s_{t-1}, c_t)\, p(x_t \mid z_t, s_{t-1}, c_t)

and :class:`LatentSequenceModel` owns one ``ssm`` and one ``guide``; it turns them into Pyro's
``model(batch)`` / ``guide(batch)`` (used by stock ``SVI``), and into ancestral sampling. The particle
filter in :mod:`deepstate.inference.particle` calls the same steps with ``[N, B]`` leading dims.

**Shapes.** ``c_t`` and ``e_t`` are dicts of ``[B, ...]`` tensors (sliced from ``[B, T, ...]``);
carries are dicts of ``[*batch_shape, ...]`` tensors where ``batch_shape`` is ``(B,)`` for Pyro
and ``(N, B)`` for ``N`` particles. Per-sequence tensors broadcast against the particle dim: steps
must use broadcasting ops, and flatten leading dims around ``nn.GRUCell``-like modules
(:func:`apply_flat`).

**Likelihood convention.** ``likelihood`` returns a distribution with batch shape ``[..., D]`` and
empty event shape (one factor per observed dimension) so that ``observed [B, T, D]`` can mask
individual dimensions: the joint uses ``l_t.mask(observed_t).to_event(1)``.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn
from torch.nn.utils import parametrize

from ..data import SequenceBatch

__all__ = [
    "Carry",
    "StateSpaceModel",
    "Guide",
    "PriorGuide",
    "LatentSequenceModel",
    "slice_time",
    "unbind_time",
    "apply_flat",
]

Carry = Dict[str, torch.Tensor]


def slice_time(tree: Optional[Dict[str, torch.Tensor]], t: int) -> Dict[str, torch.Tensor]:
    """Step ``t`` of a dict of ``[B, T, ...]`` tensors -> dict of ``[B, ...]`` tensors."""
    if not tree:
        return {}
    return {k: v[:, t] for k, v in tree.items()}


def unbind_time(tree: Optional[Dict[str, torch.Tensor]], T: int) -> list:
    """All steps of a dict of ``[B, T, ...]`` tensors as a list of ``T`` dicts of ``[B, ...]`` tensors.

    Prefer this to :func:`slice_time` in loops over ``t``: the backward pass of ``unbind`` is one
    ``stack``, whereas each ``x[:, t]`` slice back-propagates into a fresh zero tensor of the whole
    ``[B, T, ...]`` shape (quadratic in ``T``; it was 30% of a DMM epoch on JSB).
    """
    if not tree:
        return [{} for _ in range(T)]
    cols = {k: v.unbind(1) for k, v in tree.items()}
    return [{k: cols[k][t] for k in cols} for t in range(T)]


def apply_flat(module: Callable, *inputs: torch.Tensor, event_dims: int = 1):
    """Apply a module that takes ``[M, F]`` inputs to ``[*lead, F]`` tensors with any leading dims.

    All inputs are broadcast to common leading dims, flattened to 2-D, passed through ``module``,
    and the output(s) reshaped back. ``nn.GRUCell``/``nn.LSTMCell`` need this for ``[N, B]`` carries.
    """
    lead = torch.broadcast_shapes(*[x.shape[: x.dim() - event_dims] for x in inputs])
    flat = [x.expand(*lead, *x.shape[x.dim() - event_dims :]).reshape(-1, *x.shape[x.dim() - event_dims :]) for x in inputs]
    out = module(*flat)
    if isinstance(out, tuple):
        return tuple(o.reshape(*lead, *o.shape[1:]) for o in out)
    return out.reshape(*lead, *out.shape[1:])


class StateSpaceModel(nn.Module):
    """Generative steps of a state-space model with a deterministic carry (abstract).

    Subclasses set ``z_dim`` and ``x_dim`` and implement :meth:`initial`, :meth:`prior`,
    :meth:`likelihood`, :meth:`update`; models whose emission or transition read past
    observations implement :meth:`features` (parallel, for training) and the matching
    :meth:`feature_step` (sequential, for generation/forecasting).
    """

    z_dim: int
    x_dim: int
    # Data offsets (models built with ``data_offsets=True``): buffers ``emission_offset`` ``[D * n_params]``,
    # added to the emission's raw parameters, and for the VRNN ``x_mean`` ``[D]``, subtracted from its
    # recurrence's inputs; both ``None`` otherwise. Buffers, not class attributes: ``register_buffer``
    # refuses a name the class already has.

    def _register_data_offsets(self, enabled: bool) -> None:
        """Buffers for :meth:`init_from_data` (zeros until it is called; kept in the ``state_dict``)."""
        if not enabled:
            self.emission_offset = self.x_mean = None
            return
        if self.emission.name not in ("bernoulli", "gaussian"):
            raise ValueError(f"data_offsets: supported for the bernoulli and gaussian likelihoods, "
                             f"not {self.emission.name!r}")
        self.register_buffer("emission_offset", torch.zeros(self.x_dim * self.emission.n_params))

    def emit(self, raw: torch.Tensor) -> dist.Distribution:
        """The emission distribution from raw network outputs ``[..., D * n_params]``, shifted by the
        data offset when the model has one."""
        offset = getattr(self, "emission_offset", None)
        return self.emission(raw if offset is None else raw + offset, self.min_scale)

    def init_from_data(self, batch: SequenceBatch) -> "StateSpaceModel":
        """Start the emission at the training data's per-dimension mean (``data_offsets=True``).

        The offset added to the emission's first parameter is ``logit(clip(mean, 1e-4, 1 - 1e-4))``
        for Bernoulli dimensions (FIVO's reference code; an untrained model then scores each piano key
        at its frequency, about 11 nats per frame on JSB instead of 62 at probability 1/2) and the
        mean itself for a Gaussian's location. A model that also centres its recurrence's inputs
        (the VRNN) stores the mean as ``x_mean``. Means are over observed values of valid steps."""
        if getattr(self, "emission_offset", None) is None:
            raise ValueError(f"init_from_data: build the {type(self).__name__} with data_offsets=True")
        w = batch.observed & batch.valid.unsqueeze(-1)
        x = torch.where(w, batch.x, torch.zeros_like(batch.x))
        mean = x.sum((0, 1)) / w.sum((0, 1)).clamp_min(1).to(x.dtype)
        with torch.no_grad():
            if getattr(self, "x_mean", None) is not None:
                self.x_mean.copy_(mean)
            self.emission_offset.zero_()
            first = torch.logit(mean.clamp(1e-4, 1 - 1e-4)) if self.emission.name == "bernoulli" else mean
            self.emission_offset[: self.x_dim].copy_(first)
        return self

    # ---- features: deterministic functions of observed data / covariates
    def features(self, batch: SequenceBatch) -> Dict[str, torch.Tensor]:
        """Per-step context ``c`` as a dict of ``[B, T, ...]`` tensors. Default: covariates only."""
        return {} if batch.u is None else {"u": batch.u}

    def feature_initial(self, batch_shape, start=0) -> Carry:
        """State of the sequential feature recursion (e.g. SRNN's ``d_0``). Default: empty.

        ``start``: absolute position of the first step it will produce (an int or an int64 tensor
        broadcastable to ``batch_shape``); only models whose features depend on the position (a
        season) use it.
        """
        return {}

    def feature_step(self, f: Carry, x_prev: torch.Tensor, observed_prev: torch.Tensor, u_t=None):
        """One step of :meth:`features`: returns ``(f_t, c_t)``.

        Args:
            f: feature state after step ``t-1``.
            x_prev: ``[..., D]`` value at ``t-1`` (zeros at ``t = 0``).
            observed_prev: ``[..., D]`` bool mask of ``x_prev``.
            u_t: optional ``[..., U]`` covariates at ``t``.
        """
        return f, ({} if u_t is None else {"u": u_t})

    # ---- the steps
    def initial(self, batch_shape) -> Carry:
        raise NotImplementedError

    def prior(self, s: Carry, c: Dict[str, torch.Tensor]) -> dist.Distribution:
        raise NotImplementedError

    def likelihood(self, s: Carry, z: torch.Tensor, c: Dict[str, torch.Tensor]) -> dist.Distribution:
        raise NotImplementedError

    def update(self, s: Carry, z: torch.Tensor, x: torch.Tensor, c: Dict[str, torch.Tensor],
               observed: Optional[torch.Tensor] = None) -> Carry:
        """Next carry after ``z_t`` and ``x_t [..., D]``; ``observed`` ``[..., D]`` (None: all observed)."""
        raise NotImplementedError


class Guide(nn.Module):
    """Amortised recurrent proposal steps (abstract).

    ``encode`` runs once per batch over whole sequences (in parallel); ``proposal`` returns
    ``q(z_t | ...)`` with event shape ``[Z]``; it sees the model's carry ``s`` and its prior ``p``
    (so residual parameterisations such as SRNN's Resq are natural).

    ``uses_prior``: whether :meth:`proposal` reads ``p``. Guides that do not (most) set it ``False``,
    and then receive ``p = None`` on the particle path without resampling, where the prior is
    evaluated for all steps at once after the loop.
    """

    uses_prior = True

    def encode(self, batch: SequenceBatch, c: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        return {}

    def initial(self, batch_shape) -> Carry:
        return {}

    def proposal(self, g: Carry, s: Carry, e: Dict[str, torch.Tensor], c: Dict[str, torch.Tensor], p: dist.Distribution) -> dist.Distribution:
        raise NotImplementedError

    def update(self, g: Carry, z: torch.Tensor, e: Dict[str, torch.Tensor]) -> Carry:
        return g

    def rollout(self, g: Carry, e: Dict[str, torch.Tensor], eps: torch.Tensor, on_step: Optional[Callable] = None,
                widths: Optional[list] = None):
        """All ``T`` reparameterised draws at once, for guides whose proposals read neither ``s`` nor ``p``.

        Args:
            g: the guide's carry with leading dims ``[N, B]``.
            e: the encodings (``[B, T, ...]``).
            eps: ``[T, N, B, Z]`` standard-normal noise.
            on_step: optional ``on_step(t, z_t [N, B, Z], log_q_t [N, B]) -> ancestors [N, B] | None``,
                called without gradient after each step's draw; when it returns ancestors (the particle
                filter resampled), the guide's carry into step ``t + 1`` is reordered by them.
            widths: optional ``[T]`` counts: the batch is sorted by decreasing length and at step ``t``
                only the first ``widths[t]`` sequences are running; a guide may skip the others' rows
                (their ``z`` and ``scale`` are masked by the caller).

        Returns:
            ``(z [T, N, B, Z], scale, g_T)``: the draws ``z_t = loc_t + scale_t eps_t`` of the
            diagonal-Normal proposals exactly as step-by-step :meth:`proposal` / :meth:`update` would
            give, and their scales (``[T, N, B, Z]``, or ``[T, 1, B, Z]`` when they do not depend on
            the particle). The caller has ``eps``, so ``log q_t(z_t)`` follows from the scales alone
            (no subtraction of nearly equal numbers) and ``loc_t = z_t - scale_t eps_t`` for a
            closed-form KL. The particle path uses this for
            guides that override it (and have ``uses_prior = False``); the base implementation is never
            called there, and guides that keep it are run step by step.
        """
        return None


class PriorGuide(Guide):
    """The bootstrap proposal ``q_t = p_t``: the particle filter becomes the bootstrap filter."""

    def proposal(self, g, s, e, c, p):
        return p


class LatentSequenceModel(nn.Module):
    """One module owning a generative ``ssm`` and its ``guide``; one set of parameters.

    Provides Pyro's :meth:`model` / :meth:`guide` (register the module with ``pyro.module`` so stock
    ``SVI`` trains every parameter) and ancestral :meth:`sample`.

    Args:
        ssm: a :class:`StateSpaceModel`.
        guide: a :class:`Guide` (default: the prior, i.e. a bootstrap proposal).
        name: prefix of the Pyro sample sites and of the module's registration.

    Example:
        >>> from pyro.infer import SVI, Trace_ELBO
        >>> svi = SVI(lsm.model, lsm.guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
        >>> loss = svi.step(batch)          # doctest: +SKIP
    """

    def __init__(self, ssm: StateSpaceModel, guide: Optional[Guide] = None, name: str = "deepstate"):
        super().__init__()
        self.ssm = ssm
        self.guide_steps = guide if guide is not None else PriorGuide()
        self.name = name

    @property
    def z_dim(self) -> int:
        return self.ssm.z_dim

    @property
    def x_dim(self) -> int:
        return self.ssm.x_dim

    # ------------------------------------------------------------------ Pyro
    def model(self, batch: SequenceBatch, annealing: float = 1.0):
        """Pyro model: ``pyro.sample("z_t")`` and ``pyro.sample("x_t", obs=...)`` per step.

        ``annealing`` scales the latent sites (KL annealing: apply the same in the guide).
        Sites of padded steps are masked by ``batch.valid``; unobserved dims by ``batch.observed``.
        """
        pyro.module(self.name, self)
        with parametrize.cached():  # parametrised weights (e.g. orthogonal RNNs) computed once per pass
            self._model(batch, annealing)

    def _model(self, batch, annealing):
        B, T = batch.valid.shape
        c = unbind_time(self.ssm.features(batch), T)
        s = self.ssm.initial((B,))
        with pyro.plate(f"{self.name}_sequences", B, dim=-1):
            for t in pyro.markov(range(T)):
                c_t = c[t]
                valid_t = batch.valid[:, t]
                p = self.ssm.prior(s, c_t)
                with poutine.mask(mask=valid_t), poutine.scale(scale=annealing):
                    z = pyro.sample(f"z_{t}", p)
                lik = self.ssm.likelihood(s, z, c_t)
                with poutine.mask(mask=valid_t):
                    pyro.sample(f"x_{t}", lik.mask(batch.observed[:, t]).to_event(1), obs=batch.x[:, t])
                s = self.ssm.update(s, z, batch.x[:, t], c_t, batch.observed[:, t])

    def guide(self, batch: SequenceBatch, annealing: float = 1.0):
        """Pyro guide: ``pyro.sample("z_t")`` from the amortised proposal, same masks as the model."""
        pyro.module(self.name, self)
        with parametrize.cached():
            self._guide(batch, annealing)

    def _guide(self, batch, annealing):
        B, T = batch.valid.shape
        c = self.ssm.features(batch)
        e = unbind_time(self.guide_steps.encode(batch, c), T)
        c = unbind_time(c, T)
        s = self.ssm.initial((B,))
        g = self.guide_steps.initial((B,))
        with pyro.plate(f"{self.name}_sequences", B, dim=-1):
            for t in pyro.markov(range(T)):
                c_t, e_t = c[t], e[t]
                p = self.ssm.prior(s, c_t) if self.guide_steps.uses_prior else None
                q = self.guide_steps.proposal(g, s, e_t, c_t, p)
                with poutine.mask(mask=batch.valid[:, t]), poutine.scale(scale=annealing):
                    z = pyro.sample(f"z_{t}", q)
                g = self.guide_steps.update(g, z, e_t)
                s = self.ssm.update(s, z, batch.x[:, t], c_t, batch.observed[:, t])

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def sample(
        self,
        num_sequences: int,
        length: int,
        u: Optional[torch.Tensor] = None,
        generator: Optional[torch.Generator] = None,
        mean_emission: bool = False,
    ):
        """Ancestral samples ``(z [S, T, Z], x [S, T, D])`` from the generative model.

        Observations are *sampled* and fed back (never means) unless ``mean_emission`` is set,
        in which case the emission mean is returned in ``x`` but the sampled value is still fed
        back into the carry.

        Args:
            num_sequences: ``S``.
            length: ``T``.
            u: optional ``[S, T, U]`` covariates.
            generator: optional ``torch.Generator`` (draws use ``torch.manual_seed`` otherwise).
        """
        if num_sequences < 1 or length < 1:
            raise ValueError(f"num_sequences, length: expected positive integers, got {num_sequences}, {length}")
        if generator is not None:
            state = torch.random.get_rng_state()
            torch.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
        try:
            return self._sample(num_sequences, length, u, mean_emission)
        finally:
            if generator is not None:
                torch.random.set_rng_state(state)

    def _sample(self, S, T, u, mean_emission):
        # the one forward simulation (forecasting and checks use it too), started from `initial`;
        # the S draws are S sequences of one particle each, so per-draw covariates u [S, T, U] fit
        from .rollout import RolloutState, rollout

        res = rollout(self.ssm, RolloutState.prior(self.ssm, 1, S), T, u=u)
        return res.z[0], (res.mean if mean_emission else res.x)[0]
