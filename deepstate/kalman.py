r"""Exact inference for linear-Gaussian state-space models: a batched, masked Kalman filter (parallel
scan or sequential) and the Rauch–Tung–Striebel smoother, in torch (differentiable, any float dtype).

It lives at the package top level because both :mod:`deepstate.models` (the LGSSM and the
DeepState-style model compute their exact likelihood with it) and the layers above (inference,
forecasting) use it; :mod:`deepstate.inference.kalman` re-exports it.

The model (time-varying matrices allowed, per sequence)::

    z_1 ~ N(m0, P0)
    z_t = A_t z_{t-1} + b_t + w_t,   w_t ~ N(0, Q_t)          t > 1
    x_t = C_t z_t + d_t + v_t,       v_t ~ N(0, R_t)

Every matrix argument is either shared (``A [Z, Z]``) or per sequence and step (``A [B, T, Z, Z]``);
vectors likewise (``b [Z]`` or ``[B, T, Z]``). ``R_t`` is diagonal (given as variances ``r [D]`` /
``[B, T, D]``) or a full covariance (``[D, D]`` / ``[B, T, D, D]``).

Missing values: the marginal of the observed sub-vector ``x_o`` of a Gaussian has the observed
block of its covariance, so a step with missing dimensions is filtered with the missing rows of
``C`` zeroed, the residual zeroed there, and the missing rows/columns of ``R`` replaced by those of
the identity (cross terms with observed dimensions zeroed). The missing dimensions then have an
innovation independent of the observed ones, with unit variance, zero residual and zero gain:
they change neither the update nor the log-determinant, and their ``-0.5 log 2 pi`` constant is
not counted. This is exact for a diagonal and for a full ``R``.

Padded steps (``valid = False``) keep the previous moments: no prediction is made there, so
padding changes no number (a transition with ``|eig(A)| > 1`` cannot overflow over a long stretch
of padding) and contributes 0 to the log-likelihood. At a padded step the predicted and filtered
moments both equal the last filtered moments.

Two algorithms give the same filtered moments:

* ``"parallel"``: the associative scan of Särkkä & García-Fernández (2021), "Temporal
  parallelization of Bayesian smoothers", IEEE TAC 66(1): every step is an element
  ``(A, b, C, eta, J)`` (``p(z_t | z_{t-1}, x_t) = N(A z_{t-1} + b, C)`` and the likelihood of
  ``x_t`` as an information-form function of ``z_{t-1}``), combined in ``O(log T)`` rounds of
  batched operations. Far fewer (bigger) torch operations than a Python loop over ``T``.
* ``"sequential"``: the textbook filter, one step at a time, with the Joseph-form update.

Everything else (predicted moments, innovations, the log-likelihood and the observation predictive
moments) is computed in parallel over all steps from the filtered moments.

References: Kalman (1960); Rauch, Tung & Striebel (1965); Durbin & Koopman, *Time Series Analysis
by State Space Methods* (2012), ch. 4 (the same conventions as ``statsmodels``' state-space models
with ``initialization='known'``); Särkkä & García-Fernández (2021).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional, Tuple

import torch

__all__ = ["KalmanResult", "SmootherResult", "kalman_filter", "rts_smoother"]

_LOG_2PI = math.log(2 * math.pi)
METHODS = ("auto", "parallel", "shared", "sequential")
# "auto" takes the shared-covariance path for B > 1 sequences of at least this many steps in all
# (measured: below it the full scan costs little more for a few sequences than for one, and the
# shared path's extra mean scan is the larger cost)
_SHARED_MIN_STEPS = 1024


@dataclasses.dataclass
class KalmanResult:
    """Output of :func:`kalman_filter`.

    Attributes:
        log_likelihood: ``[B]`` exact ``log p(x_{1:T})`` over observed values, in nats.
        step_log_likelihood: ``[B, T]`` one-step-ahead ``log p(x_t | x_{1:t-1})`` over the observed
            dims of step ``t`` (0 when nothing is observed and on padded steps).
        predicted_mean, predicted_cov: ``[B, T, Z]``, ``[B, T, Z, Z]``: ``p(z_t | x_{1:t-1})``.
        filtered_mean, filtered_cov: ``[B, T, Z]``, ``[B, T, Z, Z]``: ``p(z_t | x_{1:t})``.
        predicted_obs_mean: ``[B, T, D]``: ``E[x_t | x_{1:t-1}] = C_t m^p_t + d_t`` for every dim,
            observed or not (the full ``C_t``).
        predicted_obs_cov: ``[B, T, D, D]``: ``Cov(x_t | x_{1:t-1}) = C_t P^p_t C_t^T + R_t``.
            Append ``H`` fully-missing (valid, unobserved) steps to a history and these are the
            exact Gaussian ``h``-step-ahead forecasts of ``x`` at those steps (their marginals).
        A: ``[B, T, Z, Z]`` the transition into each step as used (identity on padded steps and
            at ``t = 0``, where it is unused); needed by the smoother.
        Q: ``[B, T, Z, Z]`` the transition noise into each step as used (zero on padded steps).
    """

    log_likelihood: torch.Tensor
    step_log_likelihood: torch.Tensor
    predicted_mean: torch.Tensor
    predicted_cov: torch.Tensor
    filtered_mean: torch.Tensor
    filtered_cov: torch.Tensor
    predicted_obs_mean: torch.Tensor
    predicted_obs_cov: torch.Tensor
    A: torch.Tensor
    Q: torch.Tensor
    valid: Optional[torch.Tensor] = None


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


def _sym(P):
    return 0.5 * (P + P.transpose(-1, -2))


def _mT(M):
    return M.transpose(-1, -2)


def _mv(M, v):
    return (M @ v[..., None])[..., 0]


def _solve(M: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """``M^{-1} rhs`` for a batch of small well-conditioned matrices ``M [..., Z, Z]``.

    For ``Z <= 2`` the closed form (adjugate over determinant) is several times faster than
    LAPACK's batched solve, which pays a call per matrix.
    """
    Z = M.shape[-1]
    if Z == 1:
        return rhs / M
    if Z == 2:
        a, b, c, d = M[..., 0, 0], M[..., 0, 1], M[..., 1, 0], M[..., 1, 1]
        adj = torch.stack([d, -b, -c, a], -1).reshape(*M.shape)
        return (adj @ rhs) / (a * d - b * c)[..., None, None]
    return torch.linalg.solve(M, rhs)


def _spd_inverse_and_logdet(S: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(S^{-1}, log det S)`` for symmetric positive-definite ``S [..., D, D]``."""
    if S.shape[-1] == 1:
        return 1.0 / S, torch.log(S[..., 0, 0])
    L = torch.linalg.cholesky(S)
    eye = torch.eye(S.shape[-1], dtype=S.dtype, device=S.device).expand(S.shape)
    return torch.cholesky_solve(eye, L), 2 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)


# ---------------------------------------------------------------------------- matrix-first algebra
# The parallel filter works in a *matrix-first* layout: a small matrix per (sequence, step) is one
# tensor ``[R, C, B, T]`` and a vector ``[R, B, T]`` (shared ones broadcast as ``[R, C, 1, 1]``). A
# product of 2x2 matrices is then two elementwise products over long contiguous rows of B*T numbers,
# where the batch-first ``[B, T, 2, 2] @ [B, T, 2, 2]`` pays a BLAS call per matrix (about 30 ns each:
# most of the filter's time for 100 series). Small inner dimensions (<= _SMALL) take the elementwise
# form; larger ones move the matrix dims last for one batched matmul.
_SMALL = 4
_FEW = 4096  # matrices per product below which one broadcast product beats K accumulating ones


def _last2(a):
    return torch.movedim(a, (0, 1), (-2, -1))


def _first2(a):
    return torch.movedim(a, (-2, -1), (0, 1))


def _mmf(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Matrix product in the matrix-first layout: ``[I, K, ...] x [K, J, ...] -> [I, J, ...]``."""
    K = a.shape[1]
    if K > _SMALL:
        return _first2(_last2(a) @ _last2(b))
    if max(math.prod(a.shape[2:]), math.prod(b.shape[2:])) <= _FEW:
        # few matrices: the fewest torch operations (one broadcast product and one sum)
        return (a.unsqueeze(2) * b.unsqueeze(0)).sum(1)
    # many: K passes over contiguous rows, no [I, K, J, ...] temporary
    out = a[:, 0, None] * b[None, 0]
    for k in range(1, K):
        out = torch.addcmul(out, a[:, k, None], b[None, k])
    return out


def _mvf(a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``[I, K, ...] x [K, ...] -> [I, ...]``."""
    return _mmf(a, v[:, None])[:, 0]


def _tf(a: torch.Tensor) -> torch.Tensor:
    return a.transpose(0, 1)


def _symf(a: torch.Tensor) -> torch.Tensor:
    return 0.5 * (a + a.transpose(0, 1))


_EYES: dict = {}


def _eyef(Z: int, like: torch.Tensor) -> torch.Tensor:
    """The identity ``[Z, Z, 1, 1]`` (cached per size, dtype and device: the scan asks for it every round)."""
    key = (Z, like.dtype, like.device)
    if key not in _EYES:
        _EYES[key] = torch.eye(Z, dtype=like.dtype, device=like.device)[..., None, None]
    return _EYES[key]


def _inversef(M: torch.Tensor) -> torch.Tensor:
    """``M^{-1}`` for small well-conditioned ``M [Z, Z, ...]`` (adjugate over determinant for Z <= 2)."""
    Z = M.shape[0]
    if Z == 1:
        return 1.0 / M
    if Z == 2:
        a, b, c, d = M[0, 0], M[0, 1], M[1, 0], M[1, 1]
        return torch.stack([torch.stack([d, -b]), torch.stack([-c, a])]) / (a * d - b * c)
    return _first2(torch.linalg.inv(_last2(M)))


def _spd_inverse_logdetf(S: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(S^{-1}, log det S)`` for symmetric positive-definite ``S [D, D, ...]`` (closed form for D <= 2)."""
    D = S.shape[0]
    if D == 1:
        return 1.0 / S, torch.log(S[0, 0])
    if D == 2:
        a, b, d = S[0, 0], 0.5 * (S[0, 1] + S[1, 0]), S[1, 1]  # both off-diagonals: a symmetric gradient
        det = a * d - b * b
        inv = torch.stack([torch.stack([d, -b]), torch.stack([-b, a])]) / det
        return inv, torch.log(det)
    inv, logdet = _spd_inverse_and_logdet(_last2(S))
    return _first2(inv), logdet


# ---------------------------------------------------------------------------- the parallel scan
# An element is packed into one matrix-first tensor [Z, 3Z + 2, B, T]: columns A | b | C | eta | J.
def _unpack(e: torch.Tensor):
    Z = e.shape[0]
    return e[:, :Z], e[:, Z], e[:, Z + 1 : 2 * Z + 1], e[:, 2 * Z + 1], e[:, 2 * Z + 2 :]


def _combine(ei: torch.Tensor, ej: torch.Tensor) -> torch.Tensor:
    r"""Associative operator of Särkkä & García-Fernández (2021), Lemma 8 (``i`` before ``j``):

    .. math::

        M &= I + C_i J_j, \quad [X_A, X_b, X_C] = M^{-1} [A_i,\ b_i + C_i \eta_j,\ C_i] \\
        A_{ij} &= A_j X_A, \quad b_{ij} = A_j X_b + b_j, \quad C_{ij} = A_j X_C A_j^T + C_j \\
        \eta_{ij} &= X_A^T (\eta_j - J_j b_i) + \eta_i, \quad J_{ij} = X_A^T J_j A_i + J_i

    using ``A_i^T (I + J_j C_i)^{-1} = (M^{-1} A_i)^T`` (``C, J`` symmetric), so one inverse serves all.
    The packed columns are ordered so that ``[A_i | b_i | C_i]`` and ``[eta_j | J_j]`` are slices of the
    operands, and the vector terms are separate products: the only copy is the packing of the
    result (concatenations of these large tensors cost as much as the arithmetic). ``C`` and ``J``
    are not re-symmetrised here (``log2 T`` rounds add rounding error only; the elements are).
    """
    Z = ei.shape[0]
    Aj, bj, Cj, ej_, Jj = _unpack(ej)
    CeJ = _mmf(ei[:, Z + 1 : 2 * Z + 1], ej[:, 2 * Z + 1 :])  # C_i [eta_j | J_j]
    Minv = _inversef(CeJ[:, 1:] + _eyef(Z, ei))
    X = _mmf(Minv, ei[:, : 2 * Z + 1])  # M^{-1} [A_i | b_i | C_i]
    AX = _mmf(Aj, torch.cat([X, _mmf(Minv, CeJ[:, :1])], 1))  # A_j [X_A | M^{-1} b_i | X_C | M^{-1} C_i eta_j]
    XA_T = _tf(X[:, :Z])
    XJ = _mmf(XA_T, _mmf(Jj, ei[:, : Z + 1]))  # X_A^T J_j [A_i | b_i]
    return torch.cat([
        AX[:, :Z],
        (AX[:, Z] + AX[:, 2 * Z + 1] + bj)[:, None],
        _mmf(AX[:, Z + 1 : 2 * Z + 1], _tf(Aj)) + Cj,
        (_mvf(XA_T, ej_) - XJ[:, Z] + ei[:, 2 * Z + 1])[:, None],
        XJ[:, :Z] + ei[:, 2 * Z + 2 :],
    ], 1)


def _scan_hillis_steele(e: torch.Tensor) -> torch.Tensor:
    """Inclusive prefix scan along the last dim, ``ceil(log2 T)`` rounds of one combine each (``T log T`` work)."""
    T = e.shape[-1]
    k = 1
    while k < T:
        e = torch.cat([e[..., :k], _combine(e[..., : T - k], e[..., k:])], -1)
        k *= 2
    return e


def _scan_blelloch(e: torch.Tensor) -> torch.Tensor:
    """Inclusive prefix scan along the last dim, work-efficient odd/even recursion (``O(T)`` work, two
    combines per round): combine pairs, scan the pairs, then fill in the even positions."""
    T = e.shape[-1]
    if T < 2:
        return e
    half = T // 2
    odd = _scan_blelloch(_combine(e[..., 0 : 2 * half : 2], e[..., 1 : 2 * half : 2]))
    rest = e[..., 2:T:2]  # positions 2, 4, ...: prefix = prefix(2k - 1) (+) e_2k
    n = rest.shape[-1]
    even = torch.cat([e[..., :1], _combine(odd[..., :n], rest)], -1) if n else e[..., :1]
    pair = torch.stack([even[..., :half], odd], -1).reshape(*odd.shape[:-1], 2 * half)
    return torch.cat([pair, even[..., half:]], -1) if T % 2 else pair


# ---------------------------------------------------------------------------- the filter
def _prepare_R(r: torch.Tensor, D: int, o: torch.Tensor):
    """``(R_full_or_None, R_eff [B, T, D, D])``: the observation covariance and its missing-data form.

    ``o [B, T, D]`` float observed mask. ``R_eff`` has the observed block of ``R`` and the identity
    on missing rows/columns.
    """
    if r.dim() in (1, 3):  # diagonal variances [D] / [B, T, D]
        if r.shape[-1] != D:
            raise ValueError(f"r: expected {D} variances, got shape {tuple(r.shape)}")
        R = torch.diag_embed(r)
        R_eff = torch.diag_embed(torch.where(o > 0, r, torch.ones_like(o)))
        return R, R_eff
    if r.dim() in (2, 4):
        if r.shape[-2:] != (D, D):
            raise ValueError(f"r: expected a [{D}, {D}] covariance, got shape {tuple(r.shape)}")
        oo = o[..., :, None] * o[..., None, :]
        R_eff = r * oo + torch.diag_embed(1 - o)
        return r, R_eff
    raise ValueError(f"r: expected [D], [B, T, D], [D, D] or [B, T, D, D], got shape {tuple(r.shape)}")


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
    method: str = "auto",
) -> KalmanResult:
    """Batched, masked Kalman filter.

    Args:
        x: ``[B, T, D]`` observations (values where ``observed`` is False are ignored).
        observed: ``[B, T, D]`` bool. valid: ``[B, T]`` bool (padding is at the end of a sequence).
        A: ``[Z, Z]`` or ``[B, T, Z, Z]`` transition. Q: same shapes, transition noise covariance.
        C: ``[D, Z]`` or ``[B, T, D, Z]`` emission.
        r: observation noise: variances ``[D]`` / ``[B, T, D]`` (diagonal ``R``), or a full
            covariance ``[D, D]`` / ``[B, T, D, D]``.
        m0: ``[Z]`` or ``[B, Z]``; P0: ``[Z, Z]`` or ``[B, Z, Z]``: the distribution of ``z_1``.
        b: optional transition offsets ``[Z]`` / ``[B, T, Z]`` (used for ``t > 1``).
        d: optional observation offsets ``[D]`` / ``[B, T, D]``.
        method: ``"parallel"`` (associative scan, ``O(log T)`` rounds), ``"shared"`` (see below),
            ``"sequential"`` (one step at a time, Joseph form), or ``"auto"`` (``"shared"`` where it
            applies, ``B > 1`` and ``B T >= 1024``, else ``"parallel"``; all agree to rounding error).

    **Shared covariances.** When the parameters are shared (``A, Q, C, r, m0, P0`` and the offsets
    are not per-step or per-sequence) and every value is observed with no padding, the covariance
    recursion does not depend on the data: every sequence has the same ``P_{t|t-1}``, ``P_{t|t}``
    and gain ``K_t``. ``"shared"`` then runs the covariance scan once (for one sequence) and the
    filtered means of all ``B`` sequences by a scan of the affine recursion
    ``m_t = (I - K_t C) A m_{t-1} + (I - K_t C) b + K_t (x_t - d)``: ``B`` times less matrix work,
    which is what a batch of series under one model (backtests, likelihoods of many series) needs.
    Asked for explicitly where it does not apply, it is a ``ValueError``.

    Returns:
        :class:`KalmanResult`.
    """
    if x.dim() != 3:
        raise ValueError(f"x: expected [B, T, D], got shape {tuple(x.shape)}")
    B, T, D = x.shape
    if observed.shape != x.shape or valid.shape != (B, T):
        raise ValueError("observed, valid: expected shapes [B, T, D] and [B, T] matching x")
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    Z = m0.shape[-1]
    for name, v, ranks in (("A", A, (2, 4)), ("Q", Q, (2, 4)), ("C", C, (2, 4)), ("P0", P0, (2, 3))):
        if v.dim() not in ranks:
            raise ValueError(f"{name}: expected a shared or per-step matrix, got shape {tuple(v.shape)}")
    dtype, device = x.dtype, x.device
    eye = torch.eye(Z, dtype=dtype, device=device)
    o = (observed & valid[..., None]).to(dtype)  # [B, T, D]
    shared = method == "shared" or (method == "auto" and 1 < B and B * T >= _SHARED_MIN_STEPS)
    if shared:
        shared = (A.dim() == 2 and Q.dim() == 2 and C.dim() == 2 and r.dim() in (1, 2) and m0.dim() == 1
                  and P0.dim() == 2 and (b is None or b.dim() == 1) and (d is None or d.dim() == 1)
                  and bool(o.all()))
        if method == "shared" and not shared:
            raise ValueError("method: 'shared' needs shared parameters (no per-step or per-sequence A, Q, C, r, "
                             "m0, P0, b, d), every value observed and no padding")
    # the parameters' batch: one for the shared path (broadcast over the B sequences), else B
    Bp = 1 if shared else B
    vf = valid.to(dtype)
    if shared:
        o, valid = o[:1], valid[:1]
    R, R_eff = _prepare_R(r, D, o)
    Cm = C * o[..., None]  # [B, T, D, Z]: missing rows zeroed
    y = x if d is None else x - d
    y = torch.where(o > 0, y, 0.0)  # missing dims zeroed (NaN there too): y - Cm mu is the masked innovation
    m0b = m0 if m0.dim() == 2 else m0.expand(B, Z)
    P0b = P0 if P0.dim() == 3 else P0.expand(Bp, Z, Z)
    # transition into each step as used: identity / no noise on padded steps (they keep the moments)
    keep = valid[:, :, None, None]
    A_eff = torch.where(keep, A, eye)
    Q_eff = torch.where(keep, Q, torch.zeros((), dtype=dtype, device=device))
    b_eff = None if b is None else b * vf[..., None]

    # matrix-first copies of what the parallel algebra reads (see "matrix-first algebra" above)
    yf, Cmf, Rf_eff, Af, Qf = _vecf(y), _matf(Cm), _matf(R_eff), _matf(A_eff), _matf(Q_eff)
    bf = None if b_eff is None else _vecf(b_eff)
    m0f = m0b.transpose(0, 1)[..., None]  # [Z, B, 1]
    P0f = P0b.permute(1, 2, 0)[..., None]  # [Z, Z, B, 1]
    if shared:
        mf, Pf = _filter_shared(yf, Cmf, Rf_eff, Af, Qf, bf, m0f, P0f, valid)
    elif method in ("auto", "parallel"):
        mf, Pf = _filter_parallel(yf, Cmf, Rf_eff, Af, Qf, bf, m0f, P0f, valid)
    else:
        mf_b, Pf_b = _filter_sequential(y, Cm, R_eff, A_eff, Q_eff, b_eff, m0b, P0b, valid)
        mf, Pf = _vecf(mf_b), _matf(Pf_b)

    # predicted moments, in parallel: p(z_t | x_{1:t-1}) from the filtered moments of t - 1
    A1 = Af[..., 1:]
    mp_rest = _mvf(A1, mf[..., :-1])
    if bf is not None:
        mp_rest = mp_rest + bf[..., 1:]
    Pp_rest = _symf(_mmf(_mmf(A1, Pf[..., :-1]), _tf(A1)) + Qf[..., 1:])
    mp = torch.cat([m0f, mp_rest], -1)
    Pp = torch.cat([P0f, Pp_rest], -1)

    # one-step-ahead innovations and log-likelihood over the observed dims, all steps at once
    v = yf - _mvf(Cmf, mp)
    S = _symf(_mmf(_mmf(Cmf, Pp), _tf(Cmf))) + Rf_eff
    if D <= 2:
        Sinv, logdet = _spd_inverse_logdetf(S)
        maha = v[0] ** 2 * Sinv[0, 0] if D == 1 else (v * _mvf(Sinv, v)).sum(0)
    else:
        L = torch.linalg.cholesky(_last2(S))
        w = torch.linalg.solve_triangular(L, v.permute(1, 2, 0)[..., None], upper=False)[..., 0]
        maha = w.pow(2).sum(-1)
        logdet = 2 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
    step_ll = -0.5 * (maha + logdet + o.sum(-1) * _LOG_2PI) * vf

    # observation predictive moments with the full C (forecasts at unobserved steps)
    Cff = _matf(C) if C.dim() == 4 else C[..., None, None]
    pom = _mvf(Cff, mp)
    if d is not None:
        pom = pom + (_vecf(d) if d.dim() == 3 else d[:, None, None])
    poc = _symf(_mmf(_mmf(Cff, Pp), _tf(Cff))) + (_matf(R) if R.dim() == 4 else R[..., None, None])
    return KalmanResult(
        log_likelihood=step_ll.sum(1),
        step_log_likelihood=step_ll,
        predicted_mean=_vecb(mp),
        predicted_cov=_matb(Pp).expand(B, T, Z, Z),
        filtered_mean=_vecb(mf),
        filtered_cov=_matb(Pf).expand(B, T, Z, Z),
        predicted_obs_mean=_vecb(pom.expand(D, B, T)),
        predicted_obs_cov=_matb(poc.expand(D, D, B, T)),
        A=A_eff.expand(B, T, Z, Z),
        Q=Q_eff.expand(B, T, Z, Z),
        valid=valid.expand(B, T),
    )


def _matf(M: torch.Tensor) -> torch.Tensor:
    """Batch-first ``[B, T, R, C]`` -> matrix-first ``[R, C, B, T]`` (contiguous), and back (``_matb``)."""
    return M.permute(2, 3, 0, 1).contiguous()


def _vecf(v: torch.Tensor) -> torch.Tensor:
    """``[B, T, R]`` -> ``[R, B, T]`` (contiguous)."""
    return v.permute(2, 0, 1).contiguous()


# the permutation swaps the two pairs of dims, so it is its own inverse: back to batch-first
_matb = _matf


def _vecb(v: torch.Tensor) -> torch.Tensor:
    """``[R, B, T]`` -> ``[B, T, R]`` (contiguous)."""
    return v.permute(1, 2, 0).contiguous()


def _filter_parallel(y, Cm, R_eff, A_eff, Q_eff, b_eff, m0, P0, valid):
    """Filtered moments, matrix-first ``[Z, B, T]`` and ``[Z, Z, B, T]``, by the associative scan.

    Inputs are matrix-first (``y [D, B, T]``, ``Cm [D, Z, B, T]``, ``m0 [Z, B, 1]``, ...). Each step's
    element conditions the step's "prior" (``N(m0, P0)`` at ``t = 0``, the transition noise
    ``N(b_t, Q_t)`` after) on ``x_t``: with ``S = C Sig C^T + R`` and ``W = S^{-1} C`` the gain is
    ``K = Sig W^T``, and ``(A, b, C, eta, J) = ((I - K C) A_t, mu + K v, Joseph(Sig), (W A_t)^T v,
    (W A_t)^T C A_t)`` (``A = eta = J = 0`` at ``t = 0``); padded steps are the identity element.
    """
    D, B, T = y.shape
    Z = m0.shape[0]
    eye = _eyef(Z, y)
    zero = y.new_zeros(())
    first = torch.zeros(T, dtype=torch.bool, device=y.device)
    first[0] = True
    mu = torch.where(first, m0, zero if b_eff is None else b_eff)  # [Z, B, T]
    Sig = torch.where(first, P0, Q_eff)  # [Z, Z, B, T]
    S = _symf(_mmf(_mmf(Cm, Sig), _tf(Cm))) + R_eff
    Sinv, _ = _spd_inverse_logdetf(S)
    W = _mmf(Sinv, Cm)  # [D, Z]
    K = _mmf(Sig, _tf(W))  # [Z, D]
    v = y - _mvf(Cm, mu)
    IKC = eye - _mmf(K, Cm)
    b_el = mu + _mvf(K, v)
    # Joseph form: stays positive semi-definite in float32
    C_el = _symf(_mmf(_mmf(IKC, Sig), _tf(IKC)) + _mmf(_mmf(K, R_eff), _tf(K)))
    WA = _mmf(W, A_eff)  # [D, Z]: the information the step carries about z_{t-1}
    A_el = torch.where(first, zero, _mmf(IKC, A_eff))
    eta = torch.where(first, zero, _mvf(_tf(WA), v))
    J = torch.where(first, zero, _symf(_mmf(_mmf(_tf(WA), Cm), A_eff)))
    # padded steps are the identity element: the prefix keeps the last filtered moments exactly
    A_el = torch.where(valid, A_el, eye)
    b_el, C_el = torch.where(valid, b_el, zero), torch.where(valid, C_el, zero)
    eta, J = torch.where(valid, eta, zero), torch.where(valid, J, zero)
    e = torch.cat([A_el.expand(Z, Z, B, T), b_el.expand(Z, B, T)[:, None], C_el.expand(Z, Z, B, T),
                   eta.expand(Z, B, T)[:, None], J.expand(Z, Z, B, T)], 1)
    # few, small elements: the T log T scan has half the rounds; otherwise the O(T)-work one
    scan = _scan_hillis_steele if B * T * Z * Z <= 4096 else _scan_blelloch
    out = scan(e)
    return out[:, Z], out[:, Z + 1 : 2 * Z + 1]


def _filter_shared(y, Cm, R_eff, A_eff, Q_eff, b_eff, m0, P0, valid):
    """Filtered moments when the covariances are shared by the ``B`` sequences (see :func:`kalman_filter`).

    ``Cm, R_eff, A_eff, Q_eff, P0`` have a parameter batch of one (``[.., 1, T]``), ``y [D, B, T]`` and
    ``m0 [Z, B, 1]`` the data's. Returns ``m [Z, B, T]`` and ``P [Z, Z, 1, T]``.
    """
    T = y.shape[-1]
    Z = m0.shape[0]
    # the covariance scan of one sequence (its data do not enter the covariances)
    _, Pf = _filter_parallel(y[:, :1], Cm, R_eff, A_eff, Q_eff, None if b_eff is None else b_eff[:, :1],
                             m0[:, :1], P0, valid)
    # gains K_t = P_{t|t-1} C^T S_t^{-1}, from the predicted covariances
    Pp = torch.cat([P0, _symf(_mmf(_mmf(A_eff[..., 1:], Pf[..., :-1]), _tf(A_eff[..., 1:])) + Q_eff[..., 1:])], -1)
    S = _symf(_mmf(_mmf(Cm, Pp), _tf(Cm))) + R_eff
    Sinv, _ = _spd_inverse_logdetf(S)
    K = _mmf(_mmf(Pp, _tf(Cm)), Sinv)  # [Z, D, 1, T]
    IKC = _eyef(Z, y) - _mmf(K, Cm)
    # m_t = F_t m_{t-1} + g_t, with m_{-1} = 0 and F_0 = 0 so that g_0 is the first filtered mean
    g = _mvf(K, y)
    if b_eff is not None:
        g = g + _mvf(IKC, b_eff)
    g0 = m0[..., 0] + _mvf(K[..., 0], y[..., 0] - _mvf(Cm[..., 0], m0[..., 0]))  # [Z, B]
    g = torch.cat([g0[..., None], g[..., 1:]], -1)
    F = torch.cat([torch.zeros_like(A_eff[..., :1]), _mmf(IKC[..., 1:], A_eff[..., 1:])], -1)  # [Z, Z, 1, T]
    # inclusive prefix of the affine maps (Hillis-Steele): the matrix part is one sequence's, the
    # vector part is every sequence's, so a round costs one small product and one over B x T vectors
    k = 1
    while k < T:
        g = torch.cat([g[..., :k], _mvf(F[..., k:], g[..., : T - k]) + g[..., k:]], -1)
        if 2 * k < T:
            F = torch.cat([F[..., :k], _mmf(F[..., k:], F[..., : T - k])], -1)
        k *= 2
    return g, Pf


def _filter_sequential(y, Cm, R_eff, A_eff, Q_eff, b_eff, m0b, P0b, valid):
    """Filtered moments by the step-by-step filter (Joseph-form update); padded steps keep the moments."""
    B, T, D = y.shape
    Z = m0b.shape[-1]
    eye = torch.eye(Z, dtype=y.dtype, device=y.device)

    def at(M, t, rank):
        return M[:, t] if M.dim() == rank + 2 else M

    m, P = m0b, P0b
    fm, fc = [], []
    for t in range(T):
        if t > 0:
            A_t = at(A_eff, t, 2)
            m = _mv(A_t, m)
            if b_eff is not None:
                m = m + at(b_eff, t, 1)
            P = _sym(A_t @ P @ _mT(A_t) + at(Q_eff, t, 2))
        C_t, R_t = at(Cm, t, 2), at(R_eff, t, 2)
        PCt = P @ _mT(C_t)  # [B, Z, D]
        S = _sym(C_t @ PCt) + R_t
        Sinv, _ = _spd_inverse_and_logdet(S)
        K = PCt @ Sinv
        v = at(y, t, 1) - _mv(C_t, m)
        m_new = m + _mv(K, v)
        IKC = eye - K @ C_t
        # Joseph form keeps P symmetric positive definite in float32
        P_new = _sym(IKC @ P @ _mT(IKC) + K @ R_t @ _mT(K))
        if t > 0:
            # padded steps keep the previous filtered moments (no prediction: nothing can overflow)
            keep = valid[:, t]
            m_new = torch.where(keep[:, None], m_new, fm[-1])
            P_new = torch.where(keep[:, None, None], P_new, fc[-1])
        m, P = m_new, P_new
        fm.append(m)
        fc.append(P)
    return torch.stack(fm, 1), torch.stack(fc, 1)


# ---------------------------------------------------------------------------- the smoother
def rts_smoother(kf: KalmanResult) -> SmootherResult:
    r"""Rauch–Tung–Striebel smoother from a :func:`kalman_filter` result.

    With the smoother gain ``J_t = P^f_t A_{t+1}^T (P^p_{t+1})^{-1}``:

    .. math::

        m^s_t &= m^f_t + J_t (m^s_{t+1} - m^p_{t+1}) \\
        P^s_t &= (I - J_t A_{t+1}) P^f_t (I - J_t A_{t+1})^T + J_t Q_{t+1} J_t^T + J_t P^s_{t+1} J_t^T

    The covariance recursion is the Joseph form (equal to ``P^f_t + J_t (P^s_{t+1} - P^p_{t+1}) J_t^T``
    in exact arithmetic, but a sum of positive semi-definite terms, so it stays positive definite in
    float32 where the difference form cancels). The pairwise cross-covariance is
    ``Cov(z_{t+1}, z_t | x_{1:T}) = P^s_{t+1} J_t^T``. The gains and everything that does not depend on
    ``t+1``'s smoothed moments are computed for all steps at once; the loop does two products per step.
    On padded steps ``J = I`` (the filter held the moments there), so padding changes nothing.
    """
    B, T, Z = kf.filtered_mean.shape
    mf, Pf, mp, Pp = kf.filtered_mean, kf.filtered_cov, kf.predicted_mean, kf.predicted_cov
    if T == 1:
        return SmootherResult(mean=mf, cov=Pf, cross_cov=torch.zeros_like(Pf))
    A1, Q1 = kf.A[:, 1:], kf.Q[:, 1:]
    eye = torch.eye(Z, dtype=mf.dtype, device=mf.device)
    # J_t^T = (P^p_{t+1})^{-1} A_{t+1} P^f_t
    J = _mT(_solve(Pp[:, 1:], A1 @ Pf[:, :-1]))
    if kf.valid is not None:
        J = torch.where(kf.valid[:, 1:, None, None], J, eye)
    IJA = eye - J @ A1
    const = _sym(IJA @ Pf[:, :-1] @ _mT(IJA) + J @ Q1 @ _mT(J))  # [B, T-1, Z, Z]
    g = mf[:, :-1] - _mv(J, mp[:, 1:])  # m^s_t = g_t + J_t m^s_{t+1}
    ms, Ps = mf[:, -1], Pf[:, -1]
    means, covs = [ms], [Ps]
    for t in range(T - 2, -1, -1):
        Jt = J[:, t]
        ms = g[:, t] + _mv(Jt, ms)
        Ps = _sym(const[:, t] + Jt @ Ps @ _mT(Jt))
        means.append(ms)
        covs.append(Ps)
    means.reverse()
    covs.reverse()
    mean, cov = torch.stack(means, 1), torch.stack(covs, 1)
    cross = torch.cat([torch.zeros_like(Pf[:, :1]), cov[:, 1:] @ _mT(J)], 1)
    return SmootherResult(mean=mean, cov=cov, cross_cov=cross)
