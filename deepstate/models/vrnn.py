r"""Variational RNN (Chung, Kastner, Dinh, Goel, Courville & Bengio 2015, "A Recurrent Latent Variable
Model for Sequential Data").

Generative steps, with feature extractors ``phi_x``, ``phi_z`` and a deterministic recurrence::

    z_t ~ N(mu_prior(h_{t-1}), sigma_prior(h_{t-1}))
    x_t ~ Emission(dec(phi_z(z_t), h_{t-1}))
    h_t = RNN(h_{t-1}, [phi_x(x_t), phi_z(z_t)])

Guide: ``q(z_t | x_t, h_{t-1}) = N(enc(phi_x(x_t), h_{t-1}))`` (the paper's filtering encoder), or with
``smoothing=True`` also a backward RNN over ``x_{t:T}``. The guide reads the model's carry
``h_{t-1}``: the generic loop computes it once for both, so nothing is run twice.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch

from .base import Guide, StateSpaceModel
from .nn import MLP, cat_broadcast, get_emission, make_rnn, masked_input, positive, rnn_initial, rnn_step, run_rnn

__all__ = ["VRNN", "VRNNGuide"]


class VRNN(StateSpaceModel):
    """VRNN generative steps. Carry: the RNN state ``{"h": [*bs, H]}`` (``"c"`` too for an LSTM).

    Args:
        x_dim: observation size. z_dim: latent size (64). rnn_dim: ``H`` (512).
        feature_dim: width of ``phi_x``, ``phi_z``, prior and decoder MLPs (256).
        likelihood: emission family. rnn: ``"gru"`` | ``"lstm"`` | ``"rnn"``.
        orthogonal: ``True`` (orthogonal init), ``"parametrize"`` (kept orthogonal) or ``False``.
    """

    def __init__(self, x_dim: int, z_dim: int = 64, rnn_dim: int = 512, feature_dim: int = 256,
                 likelihood: str = "bernoulli", rnn: str = "gru", min_scale: float = 1e-3, orthogonal=True):
        super().__init__()
        self.x_dim, self.z_dim, self.min_scale = x_dim, z_dim, min_scale
        self.emission = get_emission(likelihood)
        F = feature_dim
        self.phi_x = MLP([2 * x_dim, F, F])
        self.phi_z = MLP([z_dim, F])
        self.prior_net = MLP([rnn_dim, F, 2 * z_dim])
        self.decoder = MLP([rnn_dim + F, F, x_dim * self.emission.n_params])
        self.rnn = make_rnn(rnn, 2 * F, rnn_dim, orthogonal)

    def initial(self, batch_shape):
        return rnn_initial(self.rnn, batch_shape, self.prior_net[0].weight)

    def prior(self, s, c):
        loc, raw = self.prior_net(s["h"]).chunk(2, -1)
        return dist.Normal(loc, positive(raw, self.min_scale)).to_event(1)

    def likelihood(self, s, z, c):
        return self.emission(self.decoder(cat_broadcast([s["h"], torch.relu(self.phi_z(z))])), self.min_scale)

    def update(self, s, z, x, c, observed=None):
        obs = torch.ones_like(x, dtype=torch.bool) if observed is None else observed
        phx = torch.relu(self.phi_x(masked_input(x, obs)))
        return rnn_step(self.rnn, cat_broadcast([phx, torch.relu(self.phi_z(z))]), s)


class VRNNGuide(Guide):
    """``q(z_t | x_t, h_{t-1} [, x_{t:T}])``; ``phi_x`` is the model's (shared, as in the paper).

    Args:
        vrnn: the :class:`VRNN` whose ``phi_x`` and carry the guide reads (referenced, not registered twice).
        smoothing: add a backward RNN over ``x_{t:T}`` (width ``rnn_dim``).
    """

    uses_prior = False

    def __init__(self, vrnn: VRNN, smoothing: bool = False, rnn_dim: int = 256, rnn: str = "gru", orthogonal=True):
        super().__init__()
        object.__setattr__(self, "_vrnn", vrnn)
        F = vrnn.phi_x[-1].out_features
        H = vrnn.rnn.hidden_size
        self.smoothing = smoothing
        if smoothing:
            self.backward_rnn = make_rnn(rnn, 2 * vrnn.x_dim, rnn_dim, orthogonal)
        self.encoder = MLP([F + H + (rnn_dim if smoothing else 0), F, 2 * vrnn.z_dim])

    def encode(self, batch, c):
        inp = masked_input(batch.x, batch.observed)
        e = {"phi_x": torch.relu(self._vrnn.phi_x(inp))}
        if self.smoothing:
            e["b"] = run_rnn(self.backward_rnn, inp, batch.lengths, "backward")
        return e

    def proposal(self, g, s, e, c, p):
        loc, raw = self.encoder(cat_broadcast([e["phi_x"], s["h"], e.get("b")])).chunk(2, -1)
        return dist.Normal(loc, positive(raw, self._vrnn.min_scale)).to_event(1)
