"""Observed and replicated sequences as an :class:`arviz.InferenceData` (ArviZ 0.x API).

Padded, masked arrays do not fit ArviZ's "one observation per coordinate" picture, so the valid &
observed entries are **flattened** into one dimension (``obs_id`` by default): no NaN padding, no
padded frames. Entry ``i`` is ``x[b_i, t_i, d_i]``; the non-dimension coordinates ``sequence``,
``time`` and ``component`` along ``obs_id`` say which. Entries are enumerated in C order of
``(b, t, d)``.

Groups built:

* ``observed_data``: variable ``x`` with dims ``(obs_id,)``;
* ``posterior_predictive``: ``x`` with dims ``(chain, draw, obs_id)``, one chain and ``S`` draws;
* ``log_likelihood`` (when given): ``x`` with dims ``(chain, draw, obs_id)``, pointwise per
  observed entry (what :func:`arviz.loo` and :func:`arviz.plot_loo_pit` need);
* ``posterior`` (with ``log_likelihood``): ``log_density`` with dims ``(chain, draw)``, each draw's
  total log density over the valid observed entries. ArviZ's ``loo``/``loo_pit`` refuse to run
  without a posterior group (they read its chain count), and the draws here are replicates, not
  parameters, so this per-draw total is what stands in for it.

Binary data (every observed and replicated value is 0 or 1, e.g. piano rolls) is stored as
integers so that ArviZ treats it as discrete (histograms instead of KDEs in ``plot_ppc``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .statistics import _to_numpy

__all__ = ["REPLICATE_KINDS", "to_inference_data"]

#: The kinds of replicate the producing code makes (recorded in ``attrs["replicate_kind"]``).
REPLICATE_KINDS = ("reconstruction", "one-step", "free-running", "prior")


def to_inference_data(
    x_obs: Any,
    valid: Any,
    observed: Any = None,
    x_rep: Any = None,
    log_likelihood: Any = None,
    kind: str = "one-step",
    dims_name: str = "obs_id",
    var_name: str = "x",
    log_likelihood_split: str = "even",
):
    """Build an :class:`arviz.InferenceData` from observed data, replicates and log densities.

    Args:
        x_obs: ``[B, T, D]`` observed values (garbage allowed where not valid & observed).
        valid: ``[B, T]`` bool, the step exists.
        observed: ``[B, T, D]`` bool, the value was observed (default: every valid entry).
        x_rep: optional ``[S, B, T, D]`` replicates (``S >= 1``) -> ``posterior_predictive``.
        log_likelihood: optional pointwise log densities in nats, either per entry
            ``[S, B, T, D]`` (exact for factorised emissions such as per-key Bernoullis) or per
            step ``[S, B, T]`` (``log p(x_{b,t} | ...)`` of the step's observed entries jointly).
            A per-step density is spread over the step's observed entries according to
            ``log_likelihood_split``; with ``D = 1`` both are the same.
        kind: the replicate kind, one of :data:`REPLICATE_KINDS`; recorded in the attrs of every
            group (``replicate_kind``).
        dims_name: name of the flattened entry dimension.
        var_name: name of the variable in every group.
        log_likelihood_split: how a per-step density with several observed entries becomes
            per-entry values. ``"even"``: each entry gets ``log p / n_obs(b, t)``, so sums (and
            :func:`arviz.loo`'s elpd) equal the model's total; the per-entry importance weights are
            then an approximation. ``"repeat"``: each entry gets the whole step's ``log p``, so its
            LOO weights are exactly those of leaving the whole step out (right for
            :func:`arviz.plot_loo_pit`), but sums count each step ``n_obs`` times. Recorded in
            ``attrs["log_likelihood_split"]``.

    Returns:
        ``arviz.InferenceData`` with groups ``observed_data`` and, when given,
        ``posterior_predictive`` and ``log_likelihood`` (+ ``posterior``, see above); coordinates ``sequence``, ``time``,
        ``component`` (ints) along ``dims_name``.

    Raises:
        ValueError: shapes that do not match, ``S <= 0``, an unknown ``kind`` or split, or no
            valid observed entry (naming the argument).
    """
    import arviz as az
    import xarray as xr

    if kind not in REPLICATE_KINDS:
        raise ValueError(f"kind: expected one of {REPLICATE_KINDS}, got {kind!r}")
    if log_likelihood_split not in ("even", "repeat"):
        raise ValueError(f"log_likelihood_split: expected 'even' or 'repeat', got {log_likelihood_split!r}")
    for arg, val in (("dims_name", dims_name), ("var_name", var_name)):
        if not isinstance(val, str) or not val or val in ("chain", "draw"):
            raise ValueError(f"{arg}: expected a non-empty name other than 'chain'/'draw', got {val!r}")
    x_obs = _to_numpy(x_obs, "x_obs")
    if x_obs.ndim != 3:
        raise ValueError(f"x_obs: expected shape [B, T, D], got {x_obs.shape}")
    B, T, D = x_obs.shape
    valid = _to_numpy(valid, "valid").astype(bool)
    if valid.shape != (B, T):
        raise ValueError(f"valid: expected shape {(B, T)} to match x_obs, got {valid.shape}")
    mask = np.broadcast_to(valid[..., None], (B, T, D))
    if observed is not None:
        observed = _to_numpy(observed, "observed").astype(bool)
        if observed.shape != (B, T, D):
            raise ValueError(f"observed: expected shape {(B, T, D)} to match x_obs, got {observed.shape}")
        mask = mask & observed
    b_idx, t_idx, d_idx = np.nonzero(mask)  # C order of (b, t, d)
    if b_idx.size == 0:
        raise ValueError("observed: no entry is both valid and observed; nothing to check")
    obs_vals = x_obs[b_idx, t_idx, d_idx].astype(np.float64)
    if not np.all(np.isfinite(obs_vals)):
        raise ValueError("x_obs: valid observed entries must be finite")

    rep_vals = None
    if x_rep is not None:
        x_rep = _to_numpy(x_rep, "x_rep")
        if x_rep.ndim != 4 or x_rep.shape[1:] != (B, T, D):
            raise ValueError(f"x_rep: expected shape [S, {B}, {T}, {D}] to match x_obs, got {x_rep.shape}")
        if x_rep.shape[0] <= 0:
            raise ValueError(f"x_rep: expected at least one replicate (S >= 1), got S = {x_rep.shape[0]}")
        rep_vals = x_rep[:, b_idx, t_idx, d_idx].astype(np.float64)
        if not np.all(np.isfinite(rep_vals)):
            raise ValueError("x_rep: replicates must be finite at valid observed entries")

    ll_vals = None
    if log_likelihood is not None:
        ll = _to_numpy(log_likelihood, "log_likelihood").astype(np.float64)
        if ll.ndim == 4 and ll.shape[1:] == (B, T, D):
            ll_vals = ll[:, b_idx, t_idx, d_idx]
        elif ll.ndim == 3 and ll.shape[1:] == (B, T):
            per_step = ll[:, b_idx, t_idx]
            if log_likelihood_split == "even":
                n_obs = mask.sum(axis=-1)[b_idx, t_idx]
                per_step = per_step / n_obs
            ll_vals = per_step
        else:
            raise ValueError(
                f"log_likelihood: expected shape [S, {B}, {T}, {D}] (per entry) or [S, {B}, {T}] (per step), "
                f"got {ll.shape}"
            )
        if ll.shape[0] <= 0:
            raise ValueError(f"log_likelihood: expected S >= 1 draws, got {ll.shape[0]}")
        if rep_vals is not None and ll.shape[0] != rep_vals.shape[0]:
            raise ValueError(f"log_likelihood: expected S = {rep_vals.shape[0]} draws like x_rep, got {ll.shape[0]}")
        if not np.all(np.isfinite(ll_vals)):
            raise ValueError("log_likelihood: values must be finite at valid observed entries")
        # Total log density of each draw over the valid observed entries (a step's density counted
        # once whatever the split), for the posterior group.
        if ll.ndim == 4:
            total = np.where(mask, np.nan_to_num(ll), 0.0).sum(axis=(1, 2, 3))
        else:
            total = np.where(mask.any(axis=-1), np.nan_to_num(ll), 0.0).sum(axis=(1, 2))

    binary = np.all((obs_vals == 0) | (obs_vals == 1)) and (
        rep_vals is None or np.all((rep_vals == 0) | (rep_vals == 1))
    )
    dtype = np.int64 if binary else np.float64

    coords = {
        dims_name: np.arange(b_idx.size),
        "sequence": (dims_name, b_idx.astype(np.int64)),
        "time": (dims_name, t_idx.astype(np.int64)),
        "component": (dims_name, d_idx.astype(np.int64)),
    }
    attrs = {
        "replicate_kind": kind,
        "num_sequences": B,
        "max_length": T,
        "num_components": D,
        "flattened": f"valid & observed (sequence, time, component) entries along {dims_name!r}, C order",
    }
    if ll_vals is not None:
        attrs["log_likelihood_split"] = log_likelihood_split if ll.ndim == 3 and D > 1 else "per-entry"

    def draws(vals):
        S = vals.shape[0]
        return xr.Dataset(
            {var_name: (("chain", "draw", dims_name), vals[None])},
            coords={"chain": [0], "draw": np.arange(S), **coords},
            attrs=attrs,
        )

    groups = {
        "observed_data": xr.Dataset({var_name: ((dims_name,), obs_vals.astype(dtype))}, coords=coords, attrs=attrs)
    }
    if rep_vals is not None:
        groups["posterior_predictive"] = draws(rep_vals.astype(dtype))
    if ll_vals is not None:
        groups["log_likelihood"] = draws(ll_vals)
        # ArviZ's loo / loo_pit read the posterior group (its chains, for the relative effective
        # sample size), so one is needed; it holds the per-draw total log density.
        groups["posterior"] = xr.Dataset(
            {"log_density": (("chain", "draw"), total[None])},
            coords={"chain": [0], "draw": np.arange(total.shape[0])},
            attrs=attrs,
        )
    return az.InferenceData(**groups)
