r"""Deep Kalman filter / Deep Markov Model (Krishnan, Shalit & Sontag 2015 "Deep Kalman Filters";
2017 "Structured Inference Networks for Nonlinear State Space Models").

Generative model (gated transition, MLP emitter)::

    z_t ~ N(mu_G(z_{t-1}, u_t), sigma_G(z_{t-1}, u_t))          z_0 a learned vector
    x_t ~ Emission(MLP(z_t [, x_{t-1}] [, u_t]))                  DMM-Aug: also x_{t-1}

Guides (the paper's structured inference networks)::

    ST-R  (the paper's DKS):  q(z_t | z_{t-1}, x_{t:T})   backward RNN + combiner
    ST-L:                     q(z_t | z_{t-1}, x_{1:t})   forward (filtering) RNN + combiner
    ST-LR:                    q(z_t | z_{t-1}, x_{1:T})   both directions + combiner
    MF-LR:                    q(z_t | x_{1:T})            both directions, mean field
    MF-L:                     q(z_t | x_{1:t})            forward RNN, mean field

Defaults follow the paper and Pyro's ``examples/dmm.py``: z 100, transition 200, emitter 100, RNN 600.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

from .base import Guide, StateSpaceModel
from .fused import combiner_rollout, noise_log_prob
from .nn import MLP, GatedTransition, cat_broadcast, get_emission, make_rnn, masked_input, positive, run_rnn, shift_right

__all__ = ["DeepMarkovModel", "StructuredInferenceGuide", "GUIDE_KINDS"]


class DeepMarkovModel(StateSpaceModel):
    """The DMM's generative steps. Carry: ``{"z": [*bs, Z]}`` (the previous latent).

    Args:
        x_dim: observation size ``D`` (88 for piano rolls).
        z_dim: latent size (100).
        transition_dim: gated-transition width (200).
        emission_dim: emitter width (100; two hidden layers as in the paper).
        likelihood: emission family name (``"bernoulli"``, ``"gaussian"``, ``"studentt"``, ``"poisson"``).
        augmented: DMM-Aug: the emission also sees ``x_{t-1}`` (the paper's best JSB row).
        u_dim: covariates fed to the transition and emitter (the paper's interventions).
        data_offsets: the emission starts at the training mean once
            :meth:`~.base.StateSpaceModel.init_from_data` is called (default ``False``).
        min_scale: floor of every predicted scale.

    Example:
        >>> ssm = DeepMarkovModel(88)
        >>> lsm = LatentSequenceModel(ssm, StructuredInferenceGuide(88, 100))   # doctest: +SKIP
    """

    def __init__(self, x_dim: int, z_dim: int = 100, transition_dim: int = 200, emission_dim: int = 100,
                 likelihood: str = "bernoulli", augmented: bool = False, u_dim: int = 0, min_scale: float = 1e-3,
                 data_offsets: bool = False):
        super().__init__()
        self.x_dim, self.z_dim, self.u_dim = x_dim, z_dim, u_dim
        self.augmented = augmented
        self.min_scale = min_scale
        self.emission = get_emission(likelihood)
        self.z_0 = nn.Parameter(torch.zeros(z_dim))
        self.transition = GatedTransition(z_dim, transition_dim, in_dim=u_dim, min_scale=min_scale)
        in_dim = z_dim + (2 * x_dim if augmented else 0) + u_dim
        self.emitter = MLP([in_dim, emission_dim, emission_dim, x_dim * self.emission.n_params])
        self._register_data_offsets(data_offsets)

    def features(self, batch):
        c = super().features(batch)
        if self.augmented:
            c["x_prev"] = shift_right(masked_input(batch.x, batch.observed))
        return c

    def feature_step(self, f, x_prev, observed_prev, u_t=None):
        f, c = super().feature_step(f, x_prev, observed_prev, u_t)
        if self.augmented:
            c["x_prev"] = masked_input(x_prev, observed_prev)
        return f, c

    def initial(self, batch_shape):
        return {"z": self.z_0.expand(*batch_shape, self.z_dim)}

    def prior(self, s, c):
        loc, scale = self.transition(s["z"], c.get("u"))
        return dist.Normal(loc, scale).to_event(1)

    def likelihood(self, s, z, c):
        h = cat_broadcast([z, c.get("x_prev"), c.get("u")]) if (self.augmented or self.u_dim) else z
        return self.emit(self.emitter(h))

    def update(self, s, z, x, c, observed=None):
        return {"z": z}


GUIDE_KINDS = {
    # name: (directions, structured (conditions on z_{t-1}))
    "st-r": (("backward",), True),
    "st-l": (("forward",), True),
    "st-lr": (("forward", "backward"), True),
    "mf-lr": (("forward", "backward"), False),
    "mf-l": (("forward",), False),
}


class StructuredInferenceGuide(Guide):
    r"""Krishnan et al.'s structured inference networks as guide steps.

    ``encode`` runs one RNN per direction over ``[x * observed, observed (, u)]`` in parallel; the
    combiner is ``h = (tanh(W z_{t-1} + b) + \sum_k h^k_t) / (K + 1)`` for structured guides and
    ``h = \frac{1}{K} \sum_k h^k_t`` for mean field, then ``loc = W_\mu h``,
    ``scale = softplus(W_\sigma h) + floor``.

    Args:
        x_dim, z_dim: sizes of the model. rnn_dim: encoder width (600).
        kind: one of ``GUIDE_KINDS`` (``"st-r"`` default, the paper's DKS).
        rnn: ``"gru"`` | ``"lstm"`` | ``"rnn"`` (tanh) | ``"rnn_relu"`` (Pyro's DMM guide). u_dim: covariates given to the encoder.
        orthogonal: ``True`` (orthogonal init), ``"parametrize"`` (kept orthogonal) or ``False``
            (PyTorch's default initialisation, as Pyro's DMM).
        observed_channel: give the encoder the observed mask beside ``x * observed`` (``True``, the
            default: a missing value is then distinguishable from a zero). ``False`` feeds ``x`` alone,
            with missing values as zeros, as Pyro's DMM does (its data have none).
        learn_h0: learn the encoder RNNs' initial state (Pyro's DMM does) instead of starting at zeros.
    """

    uses_prior = False

    def __init__(self, x_dim: int, z_dim: int = 100, rnn_dim: int = 600, kind: str = "st-r", rnn: str = "gru",
                 u_dim: int = 0, min_scale: float = 1e-3, orthogonal=True, observed_channel: bool = True,
                 learn_h0: bool = False):
        super().__init__()
        if kind not in GUIDE_KINDS:
            raise ValueError(f"guide: expected one of {tuple(GUIDE_KINDS)}, got {kind!r}")
        self.kind, self.min_scale, self.z_dim = kind, min_scale, z_dim
        self.directions, self.structured = GUIDE_KINDS[kind]
        self.observed_channel = bool(observed_channel)
        in_dim = (2 if self.observed_channel else 1) * x_dim + u_dim
        # ModuleDict keys cannot be "forward" (an nn.Module attribute): key by the first three letters
        self.rnns = nn.ModuleDict({d[:3]: make_rnn(rnn, in_dim, rnn_dim, orthogonal) for d in self.directions})
        self.h0 = nn.ParameterDict({d[:3]: nn.Parameter(torch.zeros(rnn_dim)) for d in self.directions}) \
            if learn_h0 else None
        if self.structured:
            self.z_q_0 = nn.Parameter(torch.zeros(z_dim))
            self.z_to_hidden = nn.Linear(z_dim, rnn_dim)
        # loc and scale heads as one Linear: one matrix product per step instead of two
        self.head = nn.Linear(rnn_dim, 2 * z_dim)

    def encode(self, batch, c):
        if self.observed_channel:
            inp = masked_input(batch.x, batch.observed)
        else:
            inp = torch.where(batch.observed, batch.x, torch.zeros((), dtype=batch.x.dtype, device=batch.x.device))
        if batch.u is not None:
            inp = torch.cat([inp, batch.u], -1)
        hs = [run_rnn(self.rnns[d[:3]], inp, batch.lengths, d, None if self.h0 is None else self.h0[d[:3]])
              for d in self.directions]
        return {"h": hs[0] if len(hs) == 1 else sum(hs)}

    def initial(self, batch_shape):
        if not self.structured:
            return {}
        return {"z": self.z_q_0.expand(*batch_shape, self.z_dim)}

    def proposal(self, g, s, e, c, p):
        K = len(self.directions)
        if self.structured:
            h = (torch.tanh(self.z_to_hidden(g["z"])) + e["h"]) / (K + 1)
        else:
            h = e["h"] / K
        loc, raw = self.head(h).chunk(2, -1)
        return dist.Normal(loc, positive(raw, self.min_scale)).to_event(1)

    def update(self, g, z, e):
        return {"z": z} if self.structured else g

    def rollout(self, g, e, eps, on_step=None, widths=None):
        """All ``T`` proposals at once (the guide reads neither the model's carry nor its prior).

        Structured guides run the combiner recurrence with hand-written backpropagation
        (:func:`~deepstate.models.fused.combiner_rollout`); mean-field guides have no recurrence at all.
        The encoder's share of the heads, ``W_o sum_k h^k_t + b_o``, is one matrix product over all steps.
        """
        K = len(self.directions)
        h = e["h"].transpose(0, 1)  # [T, B, H]
        if not self.structured:
            loc, raw = self.head(h / K).unsqueeze(1).chunk(2, -1)
            scale = positive(raw, self.min_scale)
            z = loc + scale * eps
            if on_step is not None:  # no carry to reorder: resampling only concerns the model's carries
                log_q = noise_log_prob(eps, scale)
                with torch.no_grad():
                    for t in range(z.shape[0]):
                        on_step(t, z[t], log_q[t])
            return z, scale, g
        w_o = self.head.weight / (K + 1)
        c = F.linear(h, w_o, self.head.bias)
        z, scale = combiner_rollout(c, eps, g["z"].expand(eps.shape[1:]), self.z_to_hidden.weight, self.z_to_hidden.bias,
                                    w_o, self.min_scale, on_step, widths)
        return z, scale, {"z": z[-1]}
