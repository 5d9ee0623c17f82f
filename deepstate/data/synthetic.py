"""Synthetic data from a linear-Gaussian state-space model (the exact Kalman oracle's model).

    z_1 ~ N(m0, P0)
    z_t = A z_{t-1} + w_t,   w_t ~ N(0, Q)
    x_t = C z_t + v_t,       v_t ~ N(0, R)

with ``z_t in R^Z`` and ``x_t in R^D``. All randomness comes from a local ``torch.Generator``
seeded with ``seed``; the global RNG is never touched.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np
import torch

from .batch import SequenceBatch

__all__ = ["random_stable_lgssm", "simulate_lgssm"]


def _tensor(value: Any, name: str, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        t = value.detach()
    else:
        arr = np.asarray(value)
        if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
            raise TypeError(f"{name}: expected a numeric array, got dtype {arr.dtype}")
        t = torch.from_numpy(np.array(arr, copy=True))  # (ascontiguousarray would make 0-d arrays 1-d)
    if t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name}: expected real numbers, got dtype {t.dtype}")
    t = t.to("cpu", dtype)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name}: expected finite values")
    return t


def _matrix(value, name, shape, dtype) -> torch.Tensor:
    t = _tensor(value, name, dtype)
    if t.dim() == 0 and shape == (1, 1):
        t = t.reshape(1, 1)
    if tuple(t.shape) != shape:
        raise ValueError(f"{name}: expected shape {list(shape)}, got {list(t.shape)}")
    return t


def _sqrt_psd(M: torch.Tensor, name: str) -> torch.Tensor:
    """A square root L with L L^T = M for a symmetric positive semi-definite M."""
    if not torch.allclose(M, M.T, atol=1e-10 * max(1.0, float(M.abs().max())), rtol=1e-8):
        raise ValueError(f"{name}: expected a symmetric covariance matrix")
    M64 = M.to(torch.float64)
    evals, evecs = torch.linalg.eigh((M64 + M64.T) / 2)
    tol = 1e-10 * max(1.0, float(evals.abs().max()))
    if evals.min() < -tol:
        raise ValueError(f"{name}: expected a positive semi-definite covariance, smallest eigenvalue {float(evals.min()):.3g}")
    return (evecs * evals.clamp(min=0).sqrt()).to(M.dtype)


def _pos_int(value, name) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)


def simulate_lgssm(
    A: Any,
    Q: Any,
    C: Any,
    R: Any,
    m0: Any,
    P0: Any,
    T: int,
    num_sequences: int = 1,
    seed: Optional[int] = None,
    lengths: Any = None,
    missing_prob: float = 0.0,
    dtype: torch.dtype = torch.float64,
) -> Tuple[SequenceBatch, torch.Tensor]:
    """Sample ``num_sequences`` sequences from a linear-Gaussian state-space model.

    Args:
        A: ``[Z, Z]`` transition matrix (a scalar is accepted for ``Z = 1``).
        Q: ``[Z, Z]`` transition noise covariance (symmetric PSD).
        C: ``[D, Z]`` emission matrix.
        R: ``[D, D]`` emission noise covariance (full or diagonal matrix, symmetric PSD), or a
            ``[D]`` vector of variances.
        m0: ``[Z]`` initial mean.
        P0: ``[Z, Z]`` initial covariance (symmetric PSD).
        T: number of time steps (the padded length).
        num_sequences: ``B``.
        seed: seed of the local ``torch.Generator`` (``None``: nondeterministic).
        lengths: optional ``[B]`` lengths in ``1..T``; steps beyond are padding (``x``, ``z`` = 0).
        missing_prob: probability that each ``x[b, t, d]`` is independently unobserved.
        dtype: float dtype of the outputs (default float64, for exact comparisons).

    Returns:
        ``(batch, z)``: a :class:`SequenceBatch` with ``x [B, T, D]`` (unobserved values are 0,
        ``observed`` False), and the latent states ``z [B, T, Z]``.
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype: expected a floating torch.dtype, got {dtype!r}")
    T = _pos_int(T, "T")
    B = _pos_int(num_sequences, "num_sequences")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise TypeError(f"seed: expected an int or None, got {type(seed).__name__}")
    if isinstance(missing_prob, bool) or not isinstance(missing_prob, (int, float)) or not 0.0 <= missing_prob < 1.0:
        raise ValueError(f"missing_prob: expected a probability in [0, 1), got {missing_prob!r}")
    A_t = _tensor(A, "A", dtype)
    if A_t.dim() == 0:
        A_t = A_t.reshape(1, 1)
    if A_t.dim() != 2 or A_t.shape[0] != A_t.shape[1]:
        raise ValueError(f"A: expected a square matrix [Z, Z], got shape {list(A_t.shape)}")
    Z = A_t.shape[0]
    C_t = _tensor(C, "C", dtype)
    if C_t.dim() == 0 and Z == 1:
        C_t = C_t.reshape(1, 1)
    if C_t.dim() != 2 or C_t.shape[1] != Z:
        raise ValueError(f"C: expected shape [D, {Z}], got {list(C_t.shape)}")
    D = C_t.shape[0]
    Q_t = _matrix(Q, "Q", (Z, Z), dtype)
    R_t = _tensor(R, "R", dtype)
    if R_t.dim() == 0 and D == 1:
        R_t = R_t.reshape(1, 1)
    if R_t.dim() == 1:
        if R_t.shape[0] != D:
            raise ValueError(f"R: expected [{D}] variances or a [{D}, {D}] covariance, got shape {list(R_t.shape)}")
        R_t = torch.diag(R_t)
    if tuple(R_t.shape) != (D, D):
        raise ValueError(f"R: expected shape [{D}, {D}], got {list(R_t.shape)}")
    m0_t = _tensor(m0, "m0", dtype)
    if m0_t.dim() == 0 and Z == 1:
        m0_t = m0_t.reshape(1)
    if tuple(m0_t.shape) != (Z,):
        raise ValueError(f"m0: expected shape [{Z}], got {list(m0_t.shape)}")
    P0_t = _matrix(P0, "P0", (Z, Z), dtype)
    LQ, LR, LP0 = _sqrt_psd(Q_t, "Q"), _sqrt_psd(R_t, "R"), _sqrt_psd(P0_t, "P0")
    if lengths is None:
        lens = torch.full((B,), T, dtype=torch.long)
    else:
        arr = np.asarray(lengths.cpu() if isinstance(lengths, torch.Tensor) else lengths)
        if arr.shape != (B,):
            raise ValueError(f"lengths: expected shape ({B},), got {arr.shape}")
        if not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"lengths: expected integers, got dtype {arr.dtype}")
        if arr.min() < 1 or arr.max() > T:
            raise ValueError(f"lengths: expected values in 1..{T}, got min {arr.min()}, max {arr.max()}")
        lens = torch.as_tensor(arr.astype(np.int64))

    g = torch.Generator().manual_seed(int(seed)) if seed is not None else torch.Generator()
    if seed is None:
        g.seed()
    # Draw all noise up front (fixed order: initial, transitions, emissions, missingness).
    e0 = torch.randn(B, Z, generator=g, dtype=dtype)
    ew = torch.randn(B, T, Z, generator=g, dtype=dtype)
    ev = torch.randn(B, T, D, generator=g, dtype=dtype)
    um = torch.rand(B, T, D, generator=g, dtype=dtype)

    z = torch.empty(B, T, Z, dtype=dtype)
    z[:, 0] = m0_t + e0 @ LP0.T
    for t in range(1, T):
        z[:, t] = z[:, t - 1] @ A_t.T + ew[:, t] @ LQ.T
    x = z @ C_t.T + ev @ LR.T
    valid = torch.arange(T)[None, :] < lens[:, None]
    observed = valid[:, :, None] & (um >= missing_prob)
    x = torch.where(observed, x, torch.zeros((), dtype=dtype))
    z = torch.where(valid[:, :, None], z, torch.zeros((), dtype=dtype))
    batch = SequenceBatch(x=x, valid=valid, observed=observed, lengths=lens)
    return batch, z


def random_stable_lgssm(
    state_dim: int,
    obs_dim: int,
    seed: Optional[int] = None,
    max_spectral_radius: float = 0.95,
) -> dict:
    """Random parameters of a stable linear-Gaussian state-space model (float64).

    Args:
        state_dim: ``Z``.
        obs_dim: ``D``.
        seed: seed of a local ``torch.Generator``.
        max_spectral_radius: upper bound on the spectral radius of ``A`` (in ``(0, 1)``); the
            actual radius is drawn uniformly in ``[0.5, 1] * max_spectral_radius``.

    Returns:
        ``dict(A [Z, Z], Q [Z, Z] positive definite, C [D, Z], R [D, D] diagonal positive,
        m0 [Z], P0 [Z, Z] positive definite)``, all float64 tensors; pass as
        ``simulate_lgssm(**params, T=..., ...)``.
    """
    Z = _pos_int(state_dim, "state_dim")
    D = _pos_int(obs_dim, "obs_dim")
    if isinstance(max_spectral_radius, bool) or not isinstance(max_spectral_radius, (int, float)) or not 0 < max_spectral_radius < 1:
        raise ValueError(f"max_spectral_radius: expected a number in (0, 1), got {max_spectral_radius!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise TypeError(f"seed: expected an int or None, got {type(seed).__name__}")
    g = torch.Generator().manual_seed(int(seed)) if seed is not None else torch.Generator()
    if seed is None:
        g.seed()
    f64 = torch.float64
    G = torch.randn(Z, Z, generator=g, dtype=f64)
    radius = float(torch.linalg.eigvals(G).abs().max())
    target = max_spectral_radius * (0.5 + 0.5 * float(torch.rand((), generator=g, dtype=f64)))
    A = G * (target / radius) if radius > 0 else G
    LQ = torch.randn(Z, Z, generator=g, dtype=f64) / np.sqrt(Z)
    Q = 0.1 * (LQ @ LQ.T) + 0.1 * torch.eye(Z, dtype=f64)
    C = torch.randn(D, Z, generator=g, dtype=f64) / np.sqrt(Z)
    R = torch.diag(0.05 + 0.25 * torch.rand(D, generator=g, dtype=f64))
    m0 = 0.5 * torch.randn(Z, generator=g, dtype=f64)
    P0 = torch.eye(Z, dtype=f64)
    return {"A": A, "Q": (Q + Q.T) / 2, "C": C, "R": R, "m0": m0, "P0": P0}
