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

__all__ = ["combiner_rollout"]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class _CombinerRollout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, c, eps, z0, w_z, b_z, w_o, floor, on_step):
        # c [T, B, 2Z]; eps [T, N, B, Z]; z0 [N, B, Z]; w_z [H, Z]; b_z [H]; w_o [2Z, H]
        T, N, B, Z = eps.shape
        H = w_z.shape[0]
        M = N * B
        a = eps.new_empty(T, M, H)
        raw = eps.new_empty(T, M, Z)
        zs = eps.new_empty(T, M, Z)
        z_in = eps.new_empty(T, M, Z)  # the carry entering each step (z_{t-1} after any resampling)
        scale = eps.new_empty(T, M, Z)
        c = c.unsqueeze(1).expand(T, N, B, 2 * Z).reshape(T, M, 2 * Z)  # one copy, so addmm can add it in place
        eps_flat = eps.reshape(T, M, Z)
        w_zt, w_ot = w_z.t(), w_o.t()
        ancestors = [None] * T
        if on_step is not None:  # log q(z_t) = -sum(eps^2 / 2 + log scale) - Z log(2 pi) / 2; the eps half at once
            half_eps_sq = 0.5 * eps.pow(2).sum(-1) + _HALF_LOG_2PI * Z  # [T, N, B]
        z = z0.reshape(M, Z)
        for t in range(T):
            z_in[t] = z
            torch.tanh(torch.addmm(b_z, z, w_zt), out=a[t])
            o = torch.addmm(c[t], a[t], w_ot)
            loc, r = o[:, :Z], o[:, Z:]
            raw[t] = r
            torch.add(F.softplus(r), floor, out=scale[t])
            z = torch.addcmul(loc, scale[t], eps_flat[t], out=zs[t])
            if on_step is not None:
                log_q = -half_eps_sq[t] - scale[t].log().sum(-1).view(N, B)
                anc = on_step(t, z.view(N, B, Z), log_q)
                if anc is not None:
                    ancestors[t] = anc.view(N, B, 1).expand(N, B, Z)
                    z = z.view(N, B, Z).gather(0, ancestors[t]).view(M, Z)
        ctx.save_for_backward(eps_flat, w_z, w_o, a, raw, z_in)
        ctx.ancestors = ancestors
        ctx.shape = (T, N, B, Z)
        return zs.view(T, N, B, Z), scale.view(T, N, B, Z)

    @staticmethod
    def backward(ctx, g_z, g_scale):
        eps, w_z, w_o, a, raw, z_in = ctx.saved_tensors
        T, N, B, Z = ctx.shape
        M = N * B
        H = w_z.shape[0]
        g_z = torch.zeros_like(z_in) if g_z is None else g_z.reshape(T, M, Z)
        g_scale = torch.zeros_like(z_in) if g_scale is None else g_scale.reshape(T, M, Z)
        dsoftplus = torch.sigmoid(raw)  # d softplus / d raw (softplus is linear above 20; sigmoid(20) = 1 - 2e-9)
        dtanh = 1 - a * a
        d_o = a.new_empty(T, M, 2 * Z)  # gradient w.r.t. o_t, all steps
        d_pre = a.new_empty(T, M, H)  # gradient w.r.t. W_z z_{t-1} + b_z, all steps
        dz = torch.zeros_like(z_in[0])  # gradient w.r.t. the carry leaving step t
        for t in range(T - 1, -1, -1):
            anc = ctx.ancestors[t]
            if anc is not None:  # the carry was gathered from z_t: scatter its gradient back
                dz = torch.zeros_like(dz).view(N, B, Z).scatter_add_(0, anc, dz.view(N, B, Z)).view(M, Z)
            dz = dz + g_z[t]  # from the log-densities at t, plus from step t + 1 through z_t
            d_o[t, :, :Z] = dz
            torch.mul(torch.addcmul(g_scale[t], dz, eps[t]), dsoftplus[t], out=d_o[t, :, Z:])
            torch.mul(d_o[t] @ w_o, dtanh[t], out=d_pre[t])
            dz = d_pre[t] @ w_z
        d_pre2, d_o2 = d_pre.reshape(-1, H), d_o.reshape(-1, 2 * Z)
        g_w_z = d_pre2.t() @ z_in.reshape(-1, Z)
        g_b_z = d_pre2.sum(0)
        g_w_o = d_o2.t() @ a.reshape(-1, H)
        g_c = d_o.view(T, N, B, 2 * Z).sum(1)
        return g_c, None, dz.view(N, B, Z), g_w_z, g_b_z, g_w_o, None, None


def combiner_rollout(c: torch.Tensor, eps: torch.Tensor, z0: torch.Tensor, w_z: torch.Tensor, b_z: torch.Tensor,
                     w_o: torch.Tensor, floor: float, on_step: Optional[Callable] = None):
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

    Differentiable in ``c``, ``z0``, ``w_z``, ``b_z`` and ``w_o``; gradients equal autograd's
    through the step-by-step loop (tested to float64 round-off).
    """
    return _CombinerRollout.apply(c, eps, z0.contiguous(), w_z, b_z, w_o, float(floor), on_step)
