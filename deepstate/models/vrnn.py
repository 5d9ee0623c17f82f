r"""Variational RNN (Chung, Kastner, Dinh, Goel, Courville & Bengio 2015, "A Recurrent Latent Variable
Model for Sequential Data").

Generative steps, with feature extractors ``phi_x``, ``phi_z`` and a deterministic recurrence::

    z_t ~ N(mu_prior(h_{t-1}), sigma_prior(h_{t-1}))
    x_t ~ Emission(dec(phi_z(z_t), h_{t-1}))
    h_t = RNN(h_{t-1}, [phi_x(x_t), phi_z(z_t)])

Guide: ``q(z_t | x_t, h_{t-1}) = N(enc(phi_x(x_t), h_{t-1}))`` (the paper's filtering encoder), or with
``smoothing=True`` also a backward RNN over ``x_{t:T}``. The guide reads the model's carry
``h_{t-1}``: the generic loop computes it once for both, so nothing is run twice.

The FIVO reference implementation (Maddison et al. 2017; tensorflow/models, research/fivo,
``models/vrnn.py`` and ``runners.py``) differs from the defaults here in ways that matter for training
from scratch; each is an option: an LSTM (``rnn="lstm"``, ``orthogonal=False``), two-layer feature
extractors with linear outputs (``linear_features``), scales ``softplus(raw + 0.5)``
(``scale_bias=0.5``), Glorot-uniform weights and zero biases (``glorot``), notes without a
missing-value channel (``observed_channel=False``), the training mean subtracted from the recurrence's
inputs and its logit added to the emission's logits (``data_offsets`` with :meth:`~.base.StateSpaceModel.init_from_data`:
untrained, every key starts at its average frequency instead of 1/2, which on JSB is 62 against
11 nats per frame), and a residual proposal mean ``mu_prior + delta`` (``VRNNGuide(residual=True)``).
"""

from __future__ import annotations

import pyro.distributions as dist
import torch

from .base import Guide, StateSpaceModel
from torch import nn

from .nn import MLP, cat_broadcast, get_emission, make_rnn, masked_input, positive, rnn_initial, rnn_step, run_rnn

__all__ = ["VRNN", "VRNNGuide"]


class VRNN(StateSpaceModel):
    """VRNN generative steps. Carry: the RNN state ``{"h": [*bs, H]}`` (``"c"`` too for an LSTM).

    Args:
        x_dim: observation size. z_dim: latent size (64). rnn_dim: ``H`` (512).
        feature_dim: width of ``phi_x``, ``phi_z``, prior and decoder MLPs (256).
        likelihood: emission family. rnn: ``"gru"`` | ``"lstm"`` | ``"rnn"``.
        orthogonal: ``True`` (orthogonal init), ``"parametrize"`` (kept orthogonal) or ``False``.
        linear_features: ``phi_x`` and ``phi_z`` are two-layer MLPs with linear outputs (FIVO's
            code) instead of ``relu(MLP)`` with a one-layer ``phi_z`` (default ``False``).
        scale_bias: the prior's and proposal's scales are ``softplus(raw + scale_bias) + min_scale``
            (FIVO's code: 0.5, with no floor); a Gaussian emission's scale is not shifted.
        observed_channel: ``phi_x`` also reads the observed mask (``[x * o, o]``; default ``True``).
        glorot: Glorot-uniform weights and zero biases everywhere (LSTM forget-gate bias 1), as
            TensorFlow initialises FIVO's code, instead of PyTorch's defaults (default ``False``); it
            replaces the orthogonal initialisation, so pass ``orthogonal=False``; refused with
            ``"parametrize"``.
        data_offsets: buffers ``x_mean`` (subtracted from the recurrence's inputs) and
            ``emission_offset`` (added to the emission's first parameter), zero until
            :meth:`~.base.StateSpaceModel.init_from_data` sets them from the training data (default ``False``; the
            :class:`~deepstate.estimator.Estimator` calls it, a hand-built model must).

    Where the FIVO options still differ from its code: FIVO's loss is the mean over sequences of
    each bound per step (the Trainer's default divides the minibatch's summed bound by a frame count,
    so long chorales weigh more; ``Trainer(loss_scale="sequences")`` trains with FIVO's weighting, which
    the ``vrnn_*`` rows of ``benchmarks/jsb.py`` predate); FIVO's LSTM first steps on a zero input before the first prior (ours
    starts the prior at ``h_0 = 0``); PyTorch's LSTM has two bias vectors where TensorFlow has one;
    scales keep the ``min_scale`` floor.
    """

    def __init__(self, x_dim: int, z_dim: int = 64, rnn_dim: int = 512, feature_dim: int = 256,
                 likelihood: str = "bernoulli", rnn: str = "gru", min_scale: float = 1e-3, orthogonal=True,
                 linear_features: bool = False, scale_bias: float = 0.0, observed_channel: bool = True,
                 glorot: bool = False, data_offsets: bool = False):
        super().__init__()
        self.x_dim, self.z_dim, self.min_scale = x_dim, z_dim, min_scale
        self.scale_bias, self.observed_channel = float(scale_bias), bool(observed_channel)
        self.emission = get_emission(likelihood)
        F = feature_dim
        x_in = 2 * x_dim if observed_channel else x_dim
        self.feature_act = nn.Identity() if linear_features else nn.ReLU()
        self.phi_x = MLP([x_in, F, F])
        self.phi_z = MLP([z_dim, F, F] if linear_features else [z_dim, F])
        self.prior_net = MLP([rnn_dim, F, 2 * z_dim])
        self.decoder = MLP([rnn_dim + F, F, x_dim * self.emission.n_params])
        self.rnn = make_rnn(rnn, 2 * F, rnn_dim, orthogonal)
        if glorot:
            if orthogonal == "parametrize":
                raise ValueError("glorot: cannot initialise recurrent weights that orthogonal='parametrize' keeps orthogonal")
            glorot_init_(self)
        self._register_data_offsets(data_offsets)
        if data_offsets:
            self.register_buffer("x_mean", torch.zeros(x_dim))

    def features_x(self, x, observed):
        """``phi_x`` of observations ``[..., D]`` (missing entries zeroed)."""
        inp = masked_input(x, observed) if self.observed_channel else x * observed.to(x.dtype)
        return self.feature_act(self.phi_x(inp))

    def scale(self, raw):
        return positive(raw + self.scale_bias, self.min_scale) if self.scale_bias else positive(raw, self.min_scale)

    def initial(self, batch_shape):
        return rnn_initial(self.rnn, batch_shape, self.prior_net[0].weight)

    def prior(self, s, c):
        loc, raw = self.prior_net(s["h"]).chunk(2, -1)
        return dist.Normal(loc, self.scale(raw)).to_event(1)

    def likelihood(self, s, z, c):
        return self.emit(self.decoder(cat_broadcast([s["h"], self.feature_act(self.phi_z(z))])))

    def update(self, s, z, x, c, observed=None):
        obs = torch.ones_like(x, dtype=torch.bool) if observed is None else observed
        if self.x_mean is not None:  # the recurrence reads centred notes (FIVO's code); the guide raw ones
            x = x - self.x_mean
        phx = self.features_x(x, obs)
        return rnn_step(self.rnn, cat_broadcast([phx, self.feature_act(self.phi_z(z))]), s)


class VRNNGuide(Guide):
    """``q(z_t | x_t, h_{t-1} [, x_{t:T}])``; ``phi_x`` is the model's (shared, as in the paper).

    Args:
        vrnn: the :class:`VRNN` whose ``phi_x`` and carry the guide reads (referenced, not registered twice).
        smoothing: add a backward RNN over ``x_{t:T}`` (width ``rnn_dim``).
        residual: the proposal's mean is the prior's plus a learned correction, ``mu_prior(h_{t-1}) +
            delta`` (FIVO's code; Fraccaro et al.'s Resq), so the untrained proposal starts at the prior.
        glorot: Glorot-uniform weights and zero biases (see :class:`VRNN`).
    """

    def __init__(self, vrnn: VRNN, smoothing: bool = False, rnn_dim: int = 256, rnn: str = "gru", orthogonal=True,
                 residual: bool = False, glorot: bool = False):
        super().__init__()
        object.__setattr__(self, "_vrnn", vrnn)
        F = vrnn.phi_x[-1].out_features
        H = vrnn.rnn.hidden_size
        self.smoothing, self.residual = smoothing, bool(residual)
        self.uses_prior = self.residual
        if smoothing:
            self.backward_rnn = make_rnn(rnn, 2 * vrnn.x_dim, rnn_dim, orthogonal)
        self.encoder = MLP([F + H + (rnn_dim if smoothing else 0), F, 2 * vrnn.z_dim])
        if glorot:
            glorot_init_(self)

    def encode(self, batch, c):
        e = {"phi_x": self._vrnn.features_x(batch.x, batch.observed)}
        if self.smoothing:
            e["b"] = run_rnn(self.backward_rnn, masked_input(batch.x, batch.observed), batch.lengths, "backward")
        return e

    def proposal(self, g, s, e, c, p):
        loc, raw = self.encoder(cat_broadcast([e["phi_x"], s["h"], e.get("b")])).chunk(2, -1)
        if self.residual:
            loc = p.mean + loc
        return dist.Normal(loc, self._vrnn.scale(raw)).to_event(1)


def glorot_init_(module: nn.Module) -> nn.Module:
    """Glorot-uniform weights and zero biases for every ``nn.Linear`` and recurrent layer in ``module``
    (FIVO's reference code passes ``xavier_initializer`` and zero biases to its MLPs and its LSTM), with
    an LSTM's forget-gate bias at 1 (the ``forget_bias`` TensorFlow's ``LSTMCell`` adds).

    A recurrent layer's ``weight_ih [G H, I]`` and ``weight_hh [G H, H]`` are the two halves of
    TensorFlow's one kernel ``[I + H, G H]``, so both are drawn with that kernel's bound
    ``sqrt(6 / (I + H + G H))``."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.RNNBase):
            H, I = m.hidden_size, m.input_size
            G = m.weight_ih_l0.shape[0] // H
            bound = (6.0 / (I + H + G * H)) ** 0.5
            with torch.no_grad():
                for name, w in m.named_parameters():
                    if name.startswith("weight"):
                        w.uniform_(-bound, bound)
                    else:
                        w.zero_()
                        if isinstance(m, nn.LSTM) and name.startswith("bias_ih"):
                            w[H : 2 * H] = 1.0
    return module
