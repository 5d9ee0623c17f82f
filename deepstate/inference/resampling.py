"""Resampling schemes for particle filters, vectorised over a batch of independent filters.

Each scheme maps normalised log-weights ``[N, B]`` (particles lead) to ancestor indices ``[N, B]``
with ``P(ancestor = i) = w_i`` marginally. Uniforms may be injected (``uniforms``) so that tests
and padding-invariance checks control the randomness exactly.

* multinomial: ``N`` independent draws from the categorical (inverse CDF of sorted uniforms is not
  needed; independent uniforms through the CDF).
* systematic: one uniform per filter, ``u_i = (i + U) / N`` (Kitagawa 1996); lower variance.

References: Douc, Cappé & Moulines (2005), "Comparison of resampling schemes for particle filtering".
"""

from __future__ import annotations

from typing import Optional

import torch

__all__ = ["multinomial_resample", "systematic_resample", "RESAMPLERS", "effective_sample_size"]


def _cdf(log_weights: torch.Tensor, weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    w = torch.softmax(log_weights.detach(), dim=0) if weights is None else weights
    return torch.cumsum(w, dim=0)


def _search(cdf: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``ancestors[n, b]`` = the number of ``cdf[:, b]`` entries ``<= u[n, b]`` (inverse-CDF lookup).

    The clamp guards against round-off (``cdf[-1]`` slightly below 1). For few particles one
    broadcast comparison ``[N, N, B]`` is cheaper than ``searchsorted`` (which needs the filters on the
    last dim, i.e. two transposed copies).
    """
    N = cdf.shape[0]
    if N <= 64:
        idx = (cdf.unsqueeze(0) <= u.unsqueeze(1)).sum(1)
    else:
        idx = torch.searchsorted(cdf.T.contiguous(), u.T.contiguous(), right=True).T
    return idx.clamp_max(N - 1)


def multinomial_resample(log_weights: torch.Tensor, uniforms: Optional[torch.Tensor] = None,
                         weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Ancestors ``[N, B]`` drawn i.i.d. from ``softmax(log_weights, 0)``.

    Args:
        log_weights: ``[N, B]`` (detached internally: no gradient flows through the indices).
        uniforms: optional ``[N, B]`` uniforms in ``[0, 1)``.
        weights: optional ``softmax(log_weights, 0)`` when the caller already has it.
    """
    cdf = _cdf(log_weights, weights)
    u = torch.rand_like(cdf) if uniforms is None else uniforms.to(cdf)
    return _search(cdf, u)


def systematic_resample(log_weights: torch.Tensor, uniforms: Optional[torch.Tensor] = None,
                        weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Systematic resampling: ancestors ``[N, B]`` from one uniform per filter.

    Args:
        log_weights: ``[N, B]``.
        uniforms: optional ``[N, B]`` uniforms; only row 0 is used (one offset per filter).
        weights: optional ``softmax(log_weights, 0)`` when the caller already has it.
    """
    cdf = _cdf(log_weights, weights)
    N = cdf.shape[0]
    u0 = torch.rand_like(cdf[:1]) if uniforms is None else uniforms[:1].to(cdf)
    u = (torch.arange(N, dtype=cdf.dtype, device=cdf.device)[:, None] + u0) / N
    return _search(cdf, u)


RESAMPLERS = {"multinomial": multinomial_resample, "systematic": systematic_resample}


def effective_sample_size(log_weights: torch.Tensor, weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``ESS = (sum w)^2 / sum w^2 = 1 / sum wbar^2`` over dim 0, ``[N, B] -> [B]`` (between 1 and N).

    ``wbar = softmax(log_weights, 0)`` (pass it as ``weights`` if already computed).
    """
    w = torch.softmax(log_weights.detach(), 0) if weights is None else weights
    return 1 / (w * w).sum(0)
