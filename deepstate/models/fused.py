r"""Hand-written backpropagation through the recurrences on the training hot path.

Autograd records every small operation of a sequential loop and, on the way back, computes each
step's weight gradient as its own small matrix product and adds it into the accumulated gradient.
For the structured-inference guide's combiner (Krishnan et al. 2017), a step is only a few
``[N B, 600]``-sized operations, so that bookkeeping costs as much as the arithmetic. Here the
backward pass runs one reverse loop that carries only the gradient with respect to ``z_{t-1}``,
stores each step's local gradients, and forms the weight gradients afterwards as one large matrix
product over all ``T N B`` rows (what cuDNN does for its RNNs).

The recurrence (the ST-* guides of :mod:`deepstate.models.dkf`, reparameterised)::

    a_t     = tanh(W_z z_{t-1} + b_z)                       [N, B, H]
    o_t     = W_o a_t + c_t                                 [N, B, 2Z]   (c_t: the encoder's share)
    loc_t, r_t = o_t[:Z], o_t[Z:];   scale_t = softplus(r_t) + floor
    z_t     = loc_t + scale_t * eps_t,   eps_t ~ N(0, I)

``c_t = W_o (sum_k h^k_t) + b_o`` does not depend on ``z`` and is computed for all steps at once by
the caller (one matrix product instead of one per step), so only the ``z``-dependent half of the
combiner is sequential.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch.nn import functional as F

__all__ = ["combiner_rollout", "elman_rnn", "noise_log_prob"]


def _noise_term(eps: torch.Tensor) -> torch.Tensor:
    """``sum(eps^2) / 2 + Z log(2 pi) / 2`` over the last dim: the scale-free part of ``-log q``."""
    return 0.5 * eps.pow(2).sum(-1) + 0.5 * math.log(2 * math.pi) * eps.shape[-1]


def noise_log_prob(eps: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``log N(loc + scale eps; loc, scale)`` summed over the last dim, from the noise (no subtraction).

    Its total derivative in the parameters equals that of the density evaluated at the reparameterised
    draw, since ``(z - loc) / scale = eps`` whatever they are.
    """
    return -(_noise_term(eps) + scale.log().sum(-1))


class _CombinerRollout(torch.autograd.Function):
    # Internally rows are (sequence, particle) pairs, sequence-major: when the batch is sorted by
    # decreasing length, the sequences still running at step t are a prefix of the rows, and a step
    # touches only those (padding costs nothing, as with packed RNNs).

    @staticmethod
    def forward(ctx, c, eps, z0, w_z, b_z, w_o, floor, on_step, widths):
        # c [T, B, 2Z]; eps [T, N, B, Z]; z0 [N, B, Z]; w_z [H, Z]; b_z [H]; w_o [2Z, H]
        T, N, B, Z = eps.shape
        H = w_z.shape[0]
        M = B * N
        rows = [M] * T if widths is None else [w * N for w in widths]
        a = eps.new_zeros(T, M, H)
        raw = eps.new_zeros(T, M, Z)
        zs = eps.new_zeros(T, M, Z)
        z_in = eps.new_zeros(T, M, Z)  # the carry entering each step (z_{t-1} after any resampling)
        scale = eps.new_ones(T, M, Z)  # rows past a sequence's end stay at 1 (log-density finite, then masked)
        c = c.unsqueeze(2).expand(T, B, N, 2 * Z).reshape(T, M, 2 * Z)  # one copy, so addmm can add it in place
        eps_rows = eps.transpose(1, 2).reshape(T, M, Z)
        w_zt, w_ot = w_z.t(), w_o.t()
        ancestors = [None] * T
        if on_step is not None:  # noise_log_prob step by step, with its noise term for all steps at once
            noise = _noise_term(eps)  # [T, N, B]
        z = z0.transpose(0, 1).reshape(M, Z)
        for t in range(T):
            m = rows[t]
            z = z[:m]
            z_in[t, :m] = z
            torch.tanh(torch.addmm(b_z, z, w_zt), out=a[t, :m])
            o = torch.addmm(c[t, :m], a[t, :m], w_ot)
            loc, r = o[:, :Z], o[:, Z:]
            raw[t, :m] = r
            torch.add(F.softplus(r), floor, out=scale[t, :m])
            z = torch.addcmul(loc, scale[t, :m], eps_rows[t, :m], out=zs[t, :m])
            if on_step is not None:
                z_nb = zs[t].view(B, N, Z).transpose(0, 1)  # [N, B, Z]
                log_q = -(noise[t] + scale[t].log().sum(-1).view(B, N).t())
                anc = on_step(t, z_nb, log_q)
                if anc is not None:  # [N, B]: reorder each sequence's particles
                    ancestors[t] = anc.t()[: m // N].unsqueeze(-1).expand(m // N, N, Z)
                    z = z.view(m // N, N, Z).gather(1, ancestors[t]).view(m, Z)
        ctx.save_for_backward(eps_rows, w_z, w_o, a, raw, z_in)
        ctx.ancestors, ctx.rows = ancestors, rows
        ctx.shape = (T, N, B, Z)
        return zs.view(T, B, N, Z).transpose(1, 2), scale.view(T, B, N, Z).transpose(1, 2)

    @staticmethod
    def backward(ctx, g_z, g_scale):
        eps, w_z, w_o, a, raw, z_in = ctx.saved_tensors
        T, N, B, Z = ctx.shape
        M = B * N
        H = w_z.shape[0]
        g_z = torch.zeros_like(z_in) if g_z is None else g_z.transpose(1, 2).reshape(T, M, Z)
        g_scale = torch.zeros_like(z_in) if g_scale is None else g_scale.transpose(1, 2).reshape(T, M, Z)
        dsoftplus = torch.sigmoid(raw)  # d softplus / d raw (softplus is linear above 20; sigmoid(20) = 1 - 2e-9)
        dtanh = 1 - a * a
        d_o = a.new_zeros(T, M, 2 * Z)  # gradient w.r.t. o_t, all steps
        d_pre = a.new_zeros(T, M, H)  # gradient w.r.t. W_z z_{t-1} + b_z, all steps
        dz = z_in.new_zeros(ctx.rows[-1], Z)  # gradient w.r.t. the carry leaving step t
        for t in range(T - 1, -1, -1):
            m = ctx.rows[t]
            if dz.shape[0] < m:  # sequences that ended at step t: nothing flows back from t + 1
                dz = torch.cat([dz, dz.new_zeros(m - dz.shape[0], Z)])
            anc = ctx.ancestors[t]
            if anc is not None:  # the carry was gathered from z_t: scatter its gradient back
                dz = torch.zeros_like(dz).view(m // N, N, Z).scatter_add_(1, anc, dz.view(m // N, N, Z)).view(m, Z)
            dz = dz + g_z[t, :m]  # from the log-densities at t, plus from step t + 1 through z_t
            d_o[t, :m, :Z] = dz
            torch.mul(torch.addcmul(g_scale[t, :m], dz, eps[t, :m]), dsoftplus[t, :m], out=d_o[t, :m, Z:])
            torch.mul(d_o[t, :m] @ w_o, dtanh[t, :m], out=d_pre[t, :m])
            dz = d_pre[t, :m] @ w_z
        if dz.shape[0] < M:
            dz = torch.cat([dz, dz.new_zeros(M - dz.shape[0], Z)])
        d_pre2, d_o2 = d_pre.reshape(-1, H), d_o.reshape(-1, 2 * Z)
        g_w_z = d_pre2.t() @ z_in.reshape(-1, Z)
        g_b_z = d_pre2.sum(0)
        g_w_o = d_o2.t() @ a.reshape(-1, H)
        g_c = d_o.view(T, B, N, 2 * Z).sum(2)
        return g_c, None, dz.view(B, N, Z).transpose(0, 1), g_w_z, g_b_z, g_w_o, None, None, None


def combiner_rollout(c: torch.Tensor, eps: torch.Tensor, z0: torch.Tensor, w_z: torch.Tensor, b_z: torch.Tensor,
                     w_o: torch.Tensor, floor: float, on_step: Optional[Callable] = None, widths: Optional[list] = None):
    """Run the structured combiner over all steps; returns ``(z, scale)``, each ``[T, N, B, Z]``.

    Args:
        c: ``[T, B, 2Z]`` the encoder's share of the heads' output, ``W_o h_enc + b_o``.
        eps: ``[T, N, B, Z]`` standard-normal noise (not differentiated).
        z0: ``[N, B, Z]`` the guide's ``z_0``.
        w_z, b_z: ``[H, Z]``, ``[H]`` the map from ``z_{t-1}`` into the combiner.
        w_o: ``[2Z, H]`` the loc/scale heads' weight (already divided by the combiner's ``K + 1``).
        floor: the scale floor.
        on_step: optional ``on_step(t, z_t [N, B, Z], log_q_t [N, B]) -> ancestors [N, B] | None``, called
            without gradient after each draw (the particle filter's weighing and resampling decision);
            when it returns ancestors, the carry into step ``t + 1`` is ``z_t`` reordered by them, and
            the backward pass scatters the carry's gradient back to the ancestors.
        widths: optional ``[T]`` list: at step ``t`` only the first ``widths[t]`` sequences are still
            running (the batch sorted by decreasing length); the others' rows are skipped. Their
            outputs are then ``z = 0``, ``scale = 1`` and must be masked by the caller.

    Differentiable in ``c``, ``z0``, ``w_z``, ``b_z`` and ``w_o``; gradients equal autograd's
    through the step-by-step loop (tested to float64 round-off).
    """
    return _CombinerRollout.apply(c, eps, z0, w_z, b_z, w_o, float(floor), on_step, widths)


class _ElmanRNN(torch.autograd.Function):
    # Time-major, the batch sorted by decreasing length: the sequences running at step t are the
    # first ``widths[t]`` rows, so padded steps cost nothing (as with packed sequences).

    @staticmethod
    def forward(ctx, x, w_ih, w_hh, bias, h0, widths, relu):
        # x [T, B, F]; w_ih [H, F]; w_hh [H, H]; bias [H]; h0 [B, H]
        T, B, _ = x.shape
        H = w_hh.shape[0]
        pre = torch.addmm(bias, x.reshape(T * B, -1), w_ih.t()).view(T, B, H)  # all input terms at once
        h = x.new_zeros(T, B, H)
        w_hht = w_hh.t()
        prev = h0
        for t in range(T):
            m = widths[t]
            y = torch.addmm(pre[t, :m], prev[:m], w_hht)
            prev = torch.clamp_min(y, 0, out=h[t, :m]) if relu else torch.tanh(y, out=h[t, :m])
        ctx.save_for_backward(x, w_ih, w_hh, h, h0)
        ctx.widths, ctx.relu = widths, relu
        return h

    @staticmethod
    def backward(ctx, g_h):
        x, w_ih, w_hh, h, h0 = ctx.saved_tensors
        T, B, H = h.shape
        widths = ctx.widths
        dact = (h > 0).to(h.dtype) if ctx.relu else 1 - h * h  # both read off the output
        d_pre = h.new_zeros(T, B, H)
        # dh[t]: gradient w.r.t. h_{t-1} from step t; rows of sequences not running at t stay zero
        dh = h.new_zeros(T + 1, B, H)
        for t in range(T - 1, -1, -1):
            m = widths[t]
            torch.mul(g_h[t, :m] + dh[t + 1, :m], dact[t, :m], out=d_pre[t, :m])
            torch.mm(d_pre[t, :m], w_hh, out=dh[t, :m])
        # weight gradients as single products over all T * B rows (padded rows have d_pre = 0)
        h_prev = torch.cat([h0.unsqueeze(0), h[:-1]]).reshape(T * B, H)
        d2 = d_pre.reshape(T * B, H)
        g_x = (d2 @ w_ih).view_as(x) if ctx.needs_input_grad[0] else None
        return g_x, d2.t() @ x.reshape(T * B, -1), d2.t() @ h_prev, d2.sum(0), dh[0], None, None


def elman_rnn(x: torch.Tensor, lengths: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor, bias: torch.Tensor,
              h0: torch.Tensor, nonlinearity: str = "tanh") -> torch.Tensor:
    """A single-layer Elman RNN, ``h_t = act(W_ih x_t + W_hh h_{t-1} + b)``, over padded sequences.

    The same function as ``nn.RNN`` (one layer, batch first), with the backward pass of this module:
    one ``[B, H] x [H, H]`` product per step carries the gradient back through time, and the weight
    gradients are formed afterwards as one product over all steps, instead of autograd's per-step
    weight-gradient products and accumulations (about 3x fewer matrix products on the way back).

    Args:
        x: ``[B, T, F]`` inputs (batch first, padded).
        lengths: ``[B]`` sequence lengths; steps at or past a sequence's length are skipped and output 0.
        w_ih, w_hh: ``[H, F]``, ``[H, H]``; bias: ``[H]`` (``b_ih + b_hh``).
        h0: ``[B, H]`` initial states.
        nonlinearity: ``"tanh"`` or ``"relu"``.

    Returns:
        ``[B, T, H]`` the states, zeros at padded steps. Differentiable in every tensor argument but
        ``lengths``; gradients equal autograd's through ``nn.RNN`` (tested to float64 round-off).
    """
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity: expected 'tanh' or 'relu', got {nonlinearity!r}")
    B, T, _ = x.shape
    lengths = lengths.cpu()
    order = torch.argsort(lengths, descending=True, stable=True).to(x.device)
    sorted_lengths = lengths[order.cpu()]
    widths = [int(w) for w in (sorted_lengths.unsqueeze(0) > torch.arange(T).unsqueeze(1)).sum(1)]
    h = _ElmanRNN.apply(x[order].transpose(0, 1), w_ih, w_hh, bias, h0[order], widths, nonlinearity == "relu")
    return h.transpose(0, 1)[torch.argsort(order)]  # back to the caller's order
