r"""Exact inference for linear-Gaussian state-space models: a batched, masked Kalman filter and the
Rauch–Tung–Striebel smoother, in torch (differentiable, any float dtype).

The model (time-varying matrices allowed, per sequence)::

    z_1 ~ N(m0, P0)
    z_t = A_t z_{t-1} + b_t + w_t,   w_t ~ N(0, Q_t)          t > 1
    x_t = C_t z_t + d_t + v_t,       v_t ~ N(0, diag(r_t))

Every matrix argument is either shared (``A [Z, Z]``) or per sequence and step (``A [B, T, Z, Z]``);
vectors likewise (``b [Z]`` or ``[B, T, Z]``). Observation noise is diagonal so that individual
dimensions can be missing: a missing dimension is handled by zeroing its row of ``C`` and giving
it unit variance, which makes its innovation independent N(0, 1) with zero gain, and then removing
its exact ``-0.5 log 2 pi`` contribution. Padded steps (``valid = False``) are fully missing and
contribute nothing, so padding changes no number.

References: Kalman (1960); Rauch, Tung & Striebel (1965); Durbin & Koopman, *Time Series Analysis
by State Space Methods* (2012), ch. 4 (the same conventions as ``statsmodels``' state-space models
with ``initialization='known'``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import torch

__all__ = ["KalmanResult", "SmootherResult", "kalman_filter", "rts_smoother"]

_LOG_2PI = math.log(2 * math.pi)


@dataclasses.dataclass
class KalmanResult:
    """Output of :func:`kalman_filter`.

    Attributes:
        log_likelihood: ``[B]`` exact ``log p(x_{1:T})`` over observed values, in nats.
        step_log_likelihood: ``[B, T]`` one-step-ahead ``log p(x_t | x_{1:t-1})`` (0 when nothing observed).
        predicted_mean, predicted_cov: ``[B, T, Z]``, ``[B, T, Z, Z]``: ``p(z_t | x_{1:t-1})``.
        filtered_mean, filtered_cov: ``[B, T, Z]``, ``[B, T, Z, Z]``: ``p(z_t | x_{1:t})``.
        A: the transition matrices used, ``[B, T, Z, Z]`` (needed by the smoother).
    """

    log_likelihood: torch.Tensor
    step_log_likelihood: torch.Tensor
    predicted_mean: torch.Tensor
    predicted_cov: torch.Tensor
    filtered_mean: torch.Tensor
    filtered_cov: torch.Tensor
    A: torch.Tensor


@dataclasses.dataclass
class SmootherResult:
    """Output of :func:`rts_smoother`.

    Attributes:
        mean, cov: ``[B, T, Z]``, ``[B, T, Z, Z]``: ``p(z_t | x_{1:T})``.
        cross_cov: ``[B, T, Z, Z]``: ``Cov(z_t, z_{t-1} | x_{1:T})`` (entry 0 is zero).
    """

    mean: torch.Tensor
    cov: torch.Tensor
    cross_cov: torch.Tensor


def _at(m: Optional[torch.Tensor], t: int, rank: int):
    """Step ``t`` of a time-varying ``[B, T, *shape]`` tensor, or the shared one."""
    if m is None:
        return None
    return m[:, t] if m.dim() == rank + 2 else m


def _sym(P):
    return 0.5 * (P + P.transpose(-1, -2))


def kalman_filter(
    x: torch.Tensor,
    observed: torch.Tensor,
    valid: torch.Tensor,
    A: torch.Tensor,
    Q: torch.Tensor,
    C: torch.Tensor,
    r: torch.Tensor,
    m0: torch.Tensor,
    P0: torch.Tensor,
    b: Optional[torch.Tensor] = None,
    d: Optional[torch.Tensor] = None,
) -> KalmanResult:
    """Batched, masked Kalman filter.

    Args:
        x: ``[B, T, D]`` observations (values where ``observed`` is False are ignored).
        observed: ``[B, T, D]`` bool. valid: ``[B, T]`` bool.
        A: ``[Z, Z]`` or ``[B, T, Z, Z]`` transition. Q: same shapes, transition noise covariance.
        C: ``[D, Z]`` or ``[B, T, D, Z]`` emission. r: ``[D]`` or ``[B, T, D]`` observation noise variances.
        m0: ``[Z]`` or ``[B, Z]``; P0: ``[Z, Z]`` or ``[B, Z, Z]``: the distribution of ``z_1``.
        b: optional transition offsets ``[Z]`` / ``[B, T, Z]`` (used for ``t > 1``).
        d: optional observation offsets ``[D]`` / ``[B, T, D]``.

    Returns:
        :class:`KalmanResult`.
    """
    if x.dim() != 3:
        raise ValueError(f"x: expected [B, T, D], got shape {tuple(x.shape)}")
    B, T, D = x.shape
    if observed.shape != x.shape or valid.shape != (B, T):
        raise ValueError("observed, valid: expected shapes [B, T, D] and [B, T] matching x")
    Z = m0.shape[-1]
    obs = (observed & valid[..., None]).to(x.dtype)
    eye = torch.eye(Z, dtype=x.dtype, device=x.device)
    m = m0.expand(B, Z)
    P = P0.expand(B, Z, Z)
    ll_steps, pm, pc, fm, fc, As = [], [], [], [], [], []
    for t in range(T):
        A_t = _at(A, t, 2).expand(B, Z, Z)
        if t > 0:
            m = (A_t @ m[..., None])[..., 0]
            if b is not None:
                m = m + _at(b, t, 1)
            P = _sym(A_t @ P @ A_t.transpose(-1, -2) + _at(Q, t, 2))
        As.append(A_t)
        pm.append(m)
        pc.append(P)
        o = obs[:, t]  # [B, D]
        C_t = _at(C, t, 2) * o[..., None]  # missing rows zeroed
        r_t = torch.where(o > 0, _at(r, t, 1).expand(B, D), torch.ones_like(o))
        pred_x = (C_t @ m[..., None])[..., 0]
        if d is not None:
            pred_x = pred_x + _at(d, t, 1) * o
        v = (x[:, t] - pred_x) * o
        PCt = P @ C_t.transpose(-1, -2)  # [B, Z, D]
        S = _sym(C_t @ PCt) + torch.diag_embed(r_t)
        L = torch.linalg.cholesky(S)
        Linv_v = torch.linalg.solve_triangular(L, v[..., None], upper=False)[..., 0]
        logdet = 2 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
        n_obs = o.sum(-1)
        ll = -0.5 * (Linv_v.pow(2).sum(-1) + logdet + n_obs * _LOG_2PI)
        # (missing dims have v = 0, unit variance and contribute logdet 0: nothing to remove but the
        # constant, which n_obs already excludes)
        ll_steps.append(ll * valid[:, t].to(x.dtype))
        K = torch.cholesky_solve(PCt.transpose(-1, -2), L).transpose(-1, -2)  # P C^T S^-1  [B, Z, D]
        m = m + (K @ v[..., None])[..., 0]
        IKC = eye - K @ C_t
        # Joseph form keeps P symmetric positive definite in float32
        P = _sym(IKC @ P @ IKC.transpose(-1, -2) + K @ (r_t[..., None] * K.transpose(-1, -2)))
        # missing dims were given variance 1 in r_t but have zero gain, so K r K^T is unaffected
        fm.append(m)
        fc.append(P)
    step_ll = torch.stack(ll_steps, 1)
    return KalmanResult(
        log_likelihood=step_ll.sum(1),
        step_log_likelihood=step_ll,
        predicted_mean=torch.stack(pm, 1),
        predicted_cov=torch.stack(pc, 1),
        filtered_mean=torch.stack(fm, 1),
        filtered_cov=torch.stack(fc, 1),
        A=torch.stack(As, 1),
    )


def rts_smoother(kf: KalmanResult) -> SmootherResult:
    """Rauch–Tung–Striebel smoother from a :func:`kalman_filter` result.

    ``J_t = P^f_t A_{t+1}^T (P^p_{t+1})^{-1}``, ``m^s_t = m^f_t + J_t (m^s_{t+1} - m^p_{t+1})``,
    ``P^s_t = P^f_t + J_t (P^s_{t+1} - P^p_{t+1}) J_t^T``, and the pairwise cross-covariance
    ``Cov(z_{t+1}, z_t | x_{1:T}) = P^s_{t+1} J_t^T``.
    """
    B, T, Z = kf.filtered_mean.shape
    ms, Ps = kf.filtered_mean[:, -1], kf.filtered_cov[:, -1]
    means, covs, cross = [ms], [Ps], [torch.zeros_like(Ps)]
    for t in range(T - 2, -1, -1):
        Pf, mf = kf.filtered_cov[:, t], kf.filtered_mean[:, t]
        Pp, mp = kf.predicted_cov[:, t + 1], kf.predicted_mean[:, t + 1]
        A_next = kf.A[:, t + 1]
        # J = Pf A^T Pp^{-1}  computed as (Pp^{-1} A Pf)^T with a Cholesky solve
        Lp = torch.linalg.cholesky(Pp)
        J = torch.cholesky_solve(A_next @ Pf, Lp).transpose(-1, -2)
        cross.append(Ps @ J.transpose(-1, -2))  # Cov(z_{t+1}, z_t)
        ms = mf + (J @ (ms - mp)[..., None])[..., 0]
        Ps = _sym(Pf + J @ (Ps - Pp) @ J.transpose(-1, -2))
        means.append(ms)
        covs.append(Ps)
    means.reverse()
    covs.reverse()
    # cross[k] was appended for pair (t+1, t) while going backwards; place it at index t+1
    cross_cov = [torch.zeros_like(Ps)] + list(reversed(cross[1:]))
    return SmootherResult(mean=torch.stack(means, 1), cov=torch.stack(covs, 1), cross_cov=torch.stack(cross_cov, 1))
