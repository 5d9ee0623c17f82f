r"""Stochastic RNN (Fraccaro, Sønderby, Paquet & Winther 2016, "Sequential Neural Models with
Stochastic Layers").

A deterministic RNN over past observations feeds a state-space layer::

    d_t = GRU(d_{t-1}, x_{t-1})                   parallel ``features`` (depends on observed x only)
    z_t ~ N(mu_p(z_{t-1}, d_t), sigma_p(z_{t-1}, d_t))
    x_t ~ Emission(MLP(z_t, d_t))

Guide: ``a_t = backward RNN([d_t, x_t])`` over ``t..T`` (smoothing) or ``a_t = [d_t, x_t]``
(filtering), and ``q(z_t | z_{t-1}, a_t)``; with **Resq** the guide's mean is the prior mean plus a
learned correction, ``mu_q = mu_p(z_{t-1}, d_t) + f(z_{t-1}, a_t)``, which the paper found essential.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn

from .base import Guide, StateSpaceModel
from .nn import MLP, cat_broadcast, get_emission, make_rnn, masked_input, positive, rnn_initial, rnn_step, run_rnn, shift_right

__all__ = ["SRNN", "SRNNGuide"]


class SRNN(StateSpaceModel):
    """SRNN generative steps. Features ``{"d": [B, T, H]}``; carry ``{"z": [*bs, Z]}``.

    Args:
        x_dim: observation size. z_dim: latent size (100). rnn_dim: ``d`` width (300).
        hidden_dim: MLP widths (300). likelihood: emission family. rnn: ``"gru"`` | ``"lstm"`` | ``"rnn"``.
        orthogonal: ``True`` (orthogonal init), ``"parametrize"`` (kept orthogonal) or ``False``.
        data_offsets: the emission starts at the training mean once
            :meth:`~.base.StateSpaceModel.init_from_data` is called (default ``False``).
    """

    def __init__(self, x_dim: int, z_dim: int = 100, rnn_dim: int = 300, hidden_dim: int = 300,
                 likelihood: str = "bernoulli", rnn: str = "gru", u_dim: int = 0, min_scale: float = 1e-3,
                 orthogonal=True, data_offsets: bool = False):
        super().__init__()
        self.x_dim, self.z_dim, self.u_dim, self.min_scale = x_dim, z_dim, u_dim, min_scale
        self.emission = get_emission(likelihood)
        self.d_rnn = make_rnn(rnn, 2 * x_dim + u_dim, rnn_dim, orthogonal)
        self.z_0 = nn.Parameter(torch.zeros(z_dim))
        self.prior_net = MLP([z_dim + rnn_dim, hidden_dim, 2 * z_dim])
        self.decoder = MLP([z_dim + rnn_dim, hidden_dim, x_dim * self.emission.n_params])
        self._register_data_offsets(data_offsets)

    def _d_input(self, x_prev, obs_prev, u_t):
        inp = masked_input(x_prev, obs_prev)
        return inp if u_t is None else torch.cat([inp, u_t], -1)

    def features(self, batch):
        inp = self._d_input(shift_right(batch.x), shift_right(batch.observed), batch.u)
        return {"d": run_rnn(self.d_rnn, inp, batch.lengths, "forward")}

    def feature_initial(self, batch_shape, start=0):  # d_t does not depend on the position
        return rnn_initial(self.d_rnn, batch_shape, self.z_0)

    def feature_step(self, f, x_prev, observed_prev, u_t=None):
        f = rnn_step(self.d_rnn, self._d_input(x_prev, observed_prev, u_t), f)
        return f, {"d": f["h"]}

    def initial(self, batch_shape):
        return {"z": self.z_0.expand(*batch_shape, self.z_dim)}

    def prior(self, s, c):
        loc, raw = self.prior_net(cat_broadcast([s["z"], c["d"]])).chunk(2, -1)
        return dist.Normal(loc, positive(raw, self.min_scale)).to_event(1)

    def likelihood(self, s, z, c):
        return self.emit(self.decoder(cat_broadcast([z, c["d"]])))

    def update(self, s, z, x, c, observed=None):
        return {"z": z}


class SRNNGuide(Guide):
    """SRNN's inference network: ``q(z_t | z_{t-1}, a_t)``, ``a_t`` smoothing or filtering; Resq optional.

    Args:
        srnn: the model (its ``rnn_dim`` and ``x_dim``). smoothing: backward RNN over ``[d_t, x_t]``.
        resq: residual parameterisation of the mean (the paper's default).
        rnn_dim: width of the backward RNN (300). hidden_dim: MLP width (300).
    """

    def __init__(self, srnn: SRNN, smoothing: bool = True, resq: bool = True, rnn_dim: int = 300,
                 hidden_dim: int = 300, rnn: str = "gru", orthogonal=True):
        super().__init__()
        self.smoothing, self.resq, self.min_scale = smoothing, resq, srnn.min_scale
        self.uses_prior = resq
        a_in = srnn.d_rnn.hidden_size + 2 * srnn.x_dim
        if smoothing:
            self.a_rnn = make_rnn(rnn, a_in, rnn_dim, orthogonal)
        a_dim = rnn_dim if smoothing else a_in
        self.net = MLP([srnn.z_dim + a_dim, hidden_dim, 2 * srnn.z_dim])

    def encode(self, batch, c):
        a = torch.cat([c["d"], masked_input(batch.x, batch.observed)], -1)
        if self.smoothing:
            a = run_rnn(self.a_rnn, a, batch.lengths, "backward")
        return {"a": a}

    def proposal(self, g, s, e, c, p):
        delta, raw = self.net(cat_broadcast([s["z"], e["a"]])).chunk(2, -1)
        loc = p.mean + delta if self.resq else delta
        return dist.Normal(loc, positive(raw, self.min_scale)).to_event(1)
