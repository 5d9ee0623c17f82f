"""Shared neural building blocks: MLPs, the DMM's gated transition, recurrent encoders with
orthogonal initialisation, within-length sequence reversal, and emission families by name.

Every block is a small ``nn.Module`` that accepts any leading dimensions (``[B]``, ``[N, B]``,
``[B, T]``) on its inputs, so the same block serves Pyro's ``[B]`` loop and ``[N, B]`` particles.
"""

from __future__ import annotations

import functools

from typing import Callable, Dict, Optional

import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .fused import elman_rnn

__all__ = [
    "MLP",
    "GatedTransition",
    "positive",
    "make_rnn",
    "run_rnn",
    "reverse_within_length",
    "orthogonal_init_",
    "Emission",
    "EMISSIONS",
    "RNN_CELLS",
]

#: ``"rnn"`` is the tanh Elman RNN; ``"rnn_relu"`` the ReLU one of Pyro's ``examples/dmm.py`` guide
RNN_CELLS = {"gru": nn.GRU, "lstm": nn.LSTM, "rnn": nn.RNN, "rnn_relu": functools.partial(nn.RNN, nonlinearity="relu")}


def positive(raw: torch.Tensor, floor: float = 1e-3) -> torch.Tensor:
    """A positive scale that cannot collapse: ``softplus(raw) + floor``."""
    return F.softplus(raw) + floor


class MLP(nn.Sequential):
    """``Linear -> act -> ... -> Linear`` (no activation after the last layer).

    Args:
        sizes: ``[in, hidden..., out]``.
        activation: module class for the hidden nonlinearity (default ``nn.ReLU``).
    """

    def __init__(self, sizes, activation=nn.ReLU):
        layers = []
        for i in range(len(sizes) - 1):
            layers.append(nn.Linear(sizes[i], sizes[i + 1]))
            if i < len(sizes) - 2:
                layers.append(activation())
        super().__init__(*layers)


class GatedTransition(nn.Module):
    r"""The Deep Markov Model's gated transition (Krishnan et al. 2017, section 5).

    .. math::
        g = \sigma(W_2\,\mathrm{relu}(W_1 z)), \quad
        \tilde\mu = V_2\,\mathrm{relu}(V_1 z), \quad
        \mu = (1 - g) \odot L z + g \odot \tilde\mu, \quad
        \sigma = \mathrm{softplus}(S\,\mathrm{relu}(\tilde\mu)) + \epsilon

    ``L`` is a linear skip initialised to the identity, so the untrained transition is a random walk.

    Args:
        z_dim: latent size. hidden_dim: transition width (paper: 200). in_dim: extra inputs
            (e.g. covariates) concatenated to ``z`` for the gate and proposed mean.
    """

    def __init__(self, z_dim: int, hidden_dim: int, in_dim: int = 0, min_scale: float = 1e-3):
        super().__init__()
        self.min_scale = min_scale
        # the first layers of the gate and proposed-mean MLPs share their input: one Linear for both
        self.hidden = nn.Linear(z_dim + in_dim, 2 * hidden_dim)
        self.gate_out = nn.Linear(hidden_dim, z_dim)
        self.proposed_out = nn.Linear(hidden_dim, z_dim)
        self.skip = nn.Linear(z_dim, z_dim)
        self.scale = nn.Linear(z_dim, z_dim)
        nn.init.eye_(self.skip.weight)
        nn.init.zeros_(self.skip.bias)

    def forward(self, z: torch.Tensor, extra: Optional[torch.Tensor] = None):
        """``z [..., Z]`` (and ``extra [..., E]``) -> ``(loc, scale)`` each ``[..., Z]``."""
        h = z if extra is None else torch.cat([z, extra.expand(*z.shape[:-1], extra.shape[-1])], -1)
        h_gate, h_proposed = F.relu(self.hidden(h)).chunk(2, -1)
        gate = torch.sigmoid(self.gate_out(h_gate))
        proposed = self.proposed_out(h_proposed)
        loc = torch.lerp(self.skip(z), proposed, gate)  # (1 - gate) * skip + gate * proposed, one op
        scale = positive(self.scale(F.relu(proposed)), self.min_scale)
        return loc, scale


def orthogonal_init_(rnn: nn.Module) -> nn.Module:
    """Orthogonal initialisation of each gate's recurrent matrix (Saxe et al. 2014; Le et al. 2015).

    ``weight_hh`` stacks one ``[H, H]`` block per gate (3 for GRU, 4 for LSTM); each block is made
    orthogonal separately, so every gate starts norm-preserving. Input weights keep PyTorch's default,
    biases start at zero (LSTM forget-gate bias 1, Jozefowicz et al. 2015).
    """
    for name, p in rnn.named_parameters():
        if name.startswith("weight_hh"):
            H = p.shape[1]
            with torch.no_grad():
                for k in range(p.shape[0] // H):
                    nn.init.orthogonal_(p[k * H : (k + 1) * H])
        elif name.startswith("bias"):
            with torch.no_grad():
                p.zero_()
                if isinstance(rnn, (nn.LSTM, nn.LSTMCell)) and name.startswith("bias_ih"):
                    H = p.shape[0] // 4
                    p[H : 2 * H] = 1.0
    return rnn


def make_rnn(kind: str, input_dim: int, hidden_dim: int, orthogonal=True) -> nn.Module:
    """A one-layer batch-first ``nn.GRU`` / ``nn.LSTM`` / ``nn.RNN`` (tanh, or ReLU for ``"rnn_relu"``).

    Args:
        kind: ``"gru"``, ``"lstm"``, ``"rnn"`` or ``"rnn_relu"``.
        orthogonal: ``True`` (default): orthogonal initialisation of each gate's recurrent matrix;
            ``"parametrize"``: additionally keep each gate's block orthogonal throughout training
            (:func:`~deepstate.models.orthogonal.orthogonal_parametrize_`; the particle filter and
            Pyro's model/guide cache it per forward pass); ``False``: PyTorch's default init.
    """
    if kind not in RNN_CELLS:
        raise ValueError(f"rnn: expected one of {tuple(RNN_CELLS)}, got {kind!r}")
    if orthogonal not in (True, False, "parametrize"):
        raise ValueError(f"orthogonal: expected True, False or 'parametrize', got {orthogonal!r}")
    rnn = RNN_CELLS[kind](input_dim, hidden_dim, batch_first=True)
    if orthogonal:
        orthogonal_init_(rnn)
    if orthogonal == "parametrize":
        from .orthogonal import orthogonal_parametrize_

        orthogonal_parametrize_(rnn)
    return rnn


def reverse_within_length(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each ``[T, ...]`` sequence of ``x [B, T, ...]`` within its own length; padding stays at the end.

    Its own inverse. A backward RNN is ``reverse(forward_rnn(reverse(x)))``: its state at step t
    summarises ``x_{t:T_b}`` and never sees padding.
    """
    B, T = x.shape[:2]
    t = torch.arange(T, device=x.device)[None, :]
    L = lengths.to(x.device)[:, None]
    idx = torch.where(t < L, L - 1 - t, t)  # [B, T]
    return torch.gather(x, 1, idx.reshape(B, T, *([1] * (x.dim() - 2))).expand_as(x))


#: train one-layer ``nn.RNN`` encoders through :func:`~deepstate.models.fused.elman_rnn` where it applies
#: (set to ``False`` to time or compare against torch's own RNN, e.g. ``benchmarks/throughput.py --no-fused-rnn``)
USE_FUSED_RNN = True


def _fused_applies(rnn: nn.Module, x: torch.Tensor) -> bool:
    """Whether :func:`run_rnn` trains ``rnn`` with :func:`~deepstate.models.fused.elman_rnn`: a one-layer,
    one-direction ``nn.RNN`` with biases, on CPU, while gradients are wanted (cuDNN has its own fused
    kernels, and without gradients torch's native loop is as fast)."""
    return (USE_FUSED_RNN and type(rnn) is nn.RNN and rnn.num_layers == 1 and not rnn.bidirectional and rnn.bias
            and rnn.batch_first and x.device.type == "cpu" and torch.is_grad_enabled()
            and rnn.weight_hh_l0.requires_grad)


def run_rnn(rnn: nn.Module, x: torch.Tensor, lengths: torch.Tensor, direction: str = "forward",
            h0: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Run a batch-first RNN over whole padded sequences ``x [B, T, F] -> [B, T, H]``.

    ``direction``: ``"forward"`` (state at t summarises ``x_{1:t}``) or ``"backward"`` (``x_{t:T_b}``,
    reversed within each sequence's length). A bidirectional encoder is one RNN of each direction.
    Padded steps are skipped (packed sequences); their outputs are zeros and must be masked by the caller.
    ``h0``: optional initial state ``[H]`` shared by the sequences (a learned parameter; zeros when
    ``None``; an LSTM's cell state starts at zeros).
    """
    if direction not in ("forward", "backward"):
        raise ValueError(f"direction: expected 'forward' or 'backward', got {direction!r}")
    if direction == "backward":
        x = reverse_within_length(x, lengths)
    if _fused_applies(rnn, x):
        h = rnn.hidden_size
        out = elman_rnn(x, lengths, rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0 + rnn.bias_hh_l0,
                        x.new_zeros(x.shape[0], h) if h0 is None else h0.expand(x.shape[0], h), rnn.nonlinearity)
    else:
        hx = None
        if h0 is not None:
            hx = h0.expand(1, x.shape[0], h0.shape[-1]).contiguous()
            if isinstance(rnn, nn.LSTM):
                hx = (hx, torch.zeros_like(hx))
        if bool((lengths == x.shape[1]).all()):
            out = rnn(x, hx)[0]
        else:
            # packing skips the padded steps (as Pyro's DMM does): less work when lengths vary
            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            out = pad_packed_sequence(rnn(packed, hx)[0], batch_first=True, total_length=x.shape[1])[0]
    return reverse_within_length(out, lengths) if direction == "backward" else out


# ---------------------------------------------------------------------------- emissions
class Emission:
    """An emission family: how many raw outputs per observed dimension, and the distribution.

    ``build(raw [..., D * n_params]) -> Distribution`` with batch shape ``[..., D]`` and empty event
    shape (one factor per dimension, so ``observed`` can mask dimensions).
    """

    def __init__(self, name: str, n_params: int, build: Callable, mean: Callable):
        self.name, self.n_params, self._build, self._mean = name, n_params, build, mean

    def __call__(self, raw: torch.Tensor, min_scale: float = 1e-3) -> dist.Distribution:
        return self._build(raw, min_scale)

    def __repr__(self):
        return f"Emission({self.name!r})"


def _split(raw, n):
    return raw.chunk(n, -1) if n > 1 else (raw,)


def _bernoulli(raw, min_scale):
    return dist.Bernoulli(logits=raw)


def _gaussian(raw, min_scale):
    loc, s = _split(raw, 2)
    return dist.Normal(loc, positive(s, min_scale))


def _student_t(raw, min_scale):
    loc, s, df = _split(raw, 3)
    # df > 2 keeps the variance finite (intervals and CRPS stay meaningful)
    return dist.StudentT(positive(df, 2.0), loc, positive(s, min_scale))


def _poisson(raw, min_scale):
    return dist.Poisson(positive(raw, 1e-4))


EMISSIONS: Dict[str, Emission] = {
    "bernoulli": Emission("bernoulli", 1, _bernoulli, lambda d: d.probs),
    "gaussian": Emission("gaussian", 2, _gaussian, lambda d: d.loc),
    "studentt": Emission("studentt", 3, _student_t, lambda d: d.loc),
    "poisson": Emission("poisson", 1, _poisson, lambda d: d.rate),
}


# the support each family assumes of its data (Gaussian and Student-t take any real value)
_SUPPORT = {
    "bernoulli": ("binary values 0 or 1", lambda x: (x == 0) | (x == 1)),
    "poisson": ("non-negative integer counts", lambda x: (x >= 0) & (x == torch.floor(x)) & torch.isfinite(x)),
}


def check_support(likelihood, x: torch.Tensor, observed: Optional[torch.Tensor] = None, name: str = "data") -> None:
    """Raise a ``ValueError`` naming the likelihood and some offending values when observed data lie
    outside the emission family's support (Bernoulli: 0/1; Poisson: non-negative integers).

    Without this a Bernoulli likelihood on real values trains and reports a meaningless (even
    positive) "log-likelihood": ``Bernoulli.log_prob`` is ``x * logits - softplus(logits)`` for any
    real ``x``, and ``Poisson.log_prob`` evaluates at fractional or negative counts. One pass over the
    data, meant for entry points (fit, evaluation), not for every training step.

    Args:
        likelihood: an emission name or :class:`Emission`.
        x: ``[..., D]`` values.
        observed: optional bool mask of the same shape: only observed values are checked.
        name: the argument to name in the message.
    """
    key = get_emission(likelihood).name
    if key not in _SUPPORT:
        return
    what, ok_fn = _SUPPORT[key]
    with torch.no_grad():
        ok = ok_fn(x)
        if observed is not None:
            ok = ok | ~observed.to(torch.bool)
        if bool(ok.all()):
            return
        bad = x[~ok]
    shown = ", ".join(f"{v:g}" for v in torch.unique(bad.detach().to("cpu", torch.float64))[:5].tolist())
    raise ValueError(
        f"{name}: the {key} likelihood needs {what}, but {bad.numel()} observed value(s) are not "
        f"(e.g. {shown}); use likelihood='gaussian' (or 'studentt') for real-valued data"
    )


def get_emission(name) -> Emission:
    """Emission family by name: ``bernoulli`` (piano rolls), ``gaussian`` (diagonal), ``studentt``, ``poisson``."""
    if isinstance(name, Emission):
        return name
    key = str(name).lower().replace("-", "").replace("_", "")
    key = {"normal": "gaussian", "t": "studentt", "student": "studentt"}.get(key, key)
    if key not in EMISSIONS:
        raise ValueError(f"likelihood: expected one of {tuple(EMISSIONS)}, got {name!r}")
    return EMISSIONS[key]


def rnn_initial(rnn: nn.Module, batch_shape, ref: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Zero state ``{"h": [*batch_shape, H]}`` (plus ``"c"`` for an LSTM) of a batch-first RNN."""
    H = rnn.hidden_size
    state = {"h": ref.new_zeros(*batch_shape, H)}
    if isinstance(rnn, nn.LSTM):
        state["c"] = ref.new_zeros(*batch_shape, H)
    return state


def _cell(rnn: nn.Module):
    """The one-step kernel of a single-layer RNN module (parametrised ones too), or ``None``: the same
    gate equations as the sequence module without its per-call set-up (about 2x faster per step for
    an LSTM on CPU, forward and backward)."""
    if rnn.num_layers != 1 or rnn.bidirectional or not rnn.bias or getattr(rnn, "proj_size", 0):
        return None
    if isinstance(rnn, nn.LSTM):
        return torch.lstm_cell
    if isinstance(rnn, nn.GRU):
        return torch.gru_cell
    if isinstance(rnn, nn.RNN):
        return torch.rnn_tanh_cell if rnn.nonlinearity == "tanh" else torch.rnn_relu_cell
    return None


def rnn_step(rnn: nn.Module, x: torch.Tensor, state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """One step of a batch-first ``nn.GRU``/``nn.LSTM``/``nn.RNN`` on inputs with any leading dims.

    ``x [*lead, F]``, ``state["h"] [*lead, H]`` -> new state. The step reads the sequence module's own
    weights (``weight_ih_l0``, ...; parametrised ones too), so the parallel pass (:func:`run_rnn`) and
    the step-by-step pass share parameters and agree to round-off. A single-layer module runs its
    one-step kernel (``torch.lstm_cell``, ``gru_cell``, ``rnn_tanh_cell``, ``rnn_relu_cell``); any
    other configuration runs the module on a sequence of length one.
    """
    h = state["h"]
    lead = torch.broadcast_shapes(x.shape[:-1], h.shape[:-1])
    H = h.shape[-1]
    cell = _cell(rnn)
    if cell is not None:
        xf, hf = x.expand(*lead, x.shape[-1]).reshape(-1, x.shape[-1]), h.expand(*lead, H).reshape(-1, H)
        w = (rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0)
        if isinstance(rnn, nn.LSTM):
            h2, c2 = cell(xf, (hf, state["c"].expand(*lead, H).reshape(-1, H)), *w)
            return {"h": h2.reshape(*lead, H), "c": c2.reshape(*lead, H)}
        return {"h": cell(xf, hf, *w).reshape(*lead, H)}
    xf = x.expand(*lead, x.shape[-1]).reshape(-1, 1, x.shape[-1])
    hf = h.expand(*lead, H).reshape(1, -1, H)
    if isinstance(rnn, nn.LSTM):
        cf = state["c"].expand(*lead, H).reshape(1, -1, H)
        _, (h2, c2) = rnn(xf, (hf, cf))
        return {"h": h2[0].reshape(*lead, -1), "c": c2[0].reshape(*lead, -1)}
    _, h2 = rnn(xf, hf)
    return {"h": h2[0].reshape(*lead, -1)}


def cat_broadcast(tensors, dim: int = -1) -> torch.Tensor:
    """Concatenate along the last dim after broadcasting the leading dims (``[B, F]`` with ``[N, B, G]``)."""
    tensors = [t for t in tensors if t is not None]
    lead = torch.broadcast_shapes(*[t.shape[:-1] for t in tensors])
    return torch.cat([t.expand(*lead, t.shape[-1]) for t in tensors], dim)


def masked_input(x: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """RNN/MLP input for possibly-missing data: ``[x * observed, observed]`` (``[..., 2D]``)."""
    o = observed.to(x.dtype)
    return torch.cat([x * o, o], -1)


def shift_right(x: torch.Tensor) -> torch.Tensor:
    """``[B, T, F] -> [B, T, F]`` with step t holding ``x_{t-1}`` (zeros at t = 0)."""
    return torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], 1)
