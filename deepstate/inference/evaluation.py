r"""Evaluating a fitted model: a bound on ``log p(x)`` over a whole split, in nats per frame.

:func:`evaluate` runs a particle objective (FIVO, IWAE or the ELBO) over every sequence of a split
under ``torch.no_grad()``, in minibatches, and reports

* ``total``: the sum over sequences of each sequence's bound estimate ``log Z_b`` (nats),
* ``frames``: the number of valid steps in the split,
* ``nats_per_frame = total / frames`` (the papers' unit; *not* an average of per-batch ratios),
* ``per_sequence``: ``[B]`` the estimates ``log Z_b`` in the input's sequence order.

**Memory.** At most about ``max_elements`` particle rows (particles x sequences) are processed at
once. For IWAE and the ELBO a large ``N`` is split exactly: the ``N`` particles of a sequence become
``K`` batch rows of ``n = N / K`` particles each (``n`` the largest divisor of ``N`` not above
``max_elements``), and the rows are combined as

.. math:: \log \hat Z_{\mathrm{IWAE}} = \operatorname{logmeanexp}_{k} \log \hat Z_k, \qquad
          \hat{\mathcal L}_{\mathrm{ELBO}} = \operatorname{mean}_k \hat{\mathcal L}_k,

which is the same estimator as one pass with ``N`` particles. The FIVO estimate cannot be assembled
from independent filters (resampling couples all ``N`` particles), so for FIVO a large ``N`` only
reduces the number of sequences per pass (down to one, with a warning if ``N > max_elements``).

A pass also keeps per-step tensors of every particle row for the whole (padded) length of its
sequences (the noise, the trajectory, the carries, the increments evaluated over all steps at once),
so its memory grows with *particle rows x steps*, not rows alone: about 5.4 KB per particle-step for
the paper-size DKF on JSB (z 100, RNN 600). ``max_particle_steps`` (default 250,000, about 1.4 GB
there) caps that product as well: passes take fewer sequences, and for IWAE/ELBO a sequence's
particles are split into more rows, when the sequences are long. (Before this cap, IWAE with 1,000
particles on the JSB test split took 77,000 rows x 160 steps at once: tens of GB.)

Example:
    >>> res = evaluate(lsm, test_batch, objective="fivo", num_particles=100)   # doctest: +SKIP
    >>> res["nats_per_frame"]                                                  # doctest: +SKIP
    -7.21
"""

from __future__ import annotations

import math
import warnings
from typing import Optional

import numpy as np
import torch

from ..data import SequenceBatch, SequenceDataset
from ..models.base import LatentSequenceModel
from ..models.nn import check_support
from .objectives import get_objective
from .particle import logmeanexp

__all__ = ["evaluate", "EVAL_OBJECTIVES"]

#: Objectives :func:`evaluate` accepts (``"particle_elbo"`` is an alias of ``"elbo"``).
EVAL_OBJECTIVES = ("fivo", "iwae", "elbo", "particle_elbo")


def _pos_int(value, name: str, allow_none: bool = False) -> Optional[int]:
    """``value`` as a positive int (``None`` passes when ``allow_none``); ValueError naming ``name`` otherwise."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: expected a positive int{' or None' if allow_none else ''}, got {value!r}")
    return int(value)


def _largest_divisor_at_most(n: int, cap: int) -> int:
    for d in range(min(n, cap), 0, -1):
        if n % d == 0:
            return d
    return 1


def _model_ref(lsm: LatentSequenceModel):
    p = next(lsm.parameters(), None)
    if p is None:
        return None, None
    return p.device, p.dtype


def evaluate(
    lsm: LatentSequenceModel,
    data: SequenceBatch,
    objective: str = "fivo",
    num_particles: int = 100,
    batch_size: int = 64,
    max_elements: int = 100_000,
    seed: Optional[int] = None,
    max_particle_steps: Optional[int] = 250_000,
    **objective_kwargs,
) -> dict:
    """A bound on ``log p(x)`` of every sequence in ``data``, summed and divided by the frame count.

    Args:
        lsm: the model (a :class:`~deepstate.models.base.LatentSequenceModel`). It is put in eval mode
            for the call and restored afterwards; parameters are not changed.
        data: a :class:`~deepstate.data.SequenceBatch` (or :class:`~deepstate.data.SequenceDataset`)
            ``x [B, T, D]``; cast to the model's device and dtype one minibatch at a time.
        objective: ``"fivo"`` (ESS-resampling particle filter), ``"iwae"`` or ``"elbo"``.
        num_particles: ``N`` particles per sequence.
        batch_size: sequences per pass (fewer when ``N`` times it exceeds ``max_elements``).
        max_elements: cap on particles x sequence rows held at once (see the module docstring).
        max_particle_steps: cap on particle rows x (padded) steps of one pass, which is what the
            memory of a pass grows with (``None``: no cap); see the module docstring.
        seed: if given, the draws use a torch RNG seeded with it (forked: the global RNG state is
            unchanged afterwards), so repeated calls give identical numbers.
        **objective_kwargs: passed to the objective (e.g. ``scheme="systematic"``, ``ess_threshold``).

    Returns:
        dict with ``nats_per_frame`` (float), ``total`` (float, nats), ``frames`` (int),
        ``per_sequence`` (``[B]`` float64 CPU tensor, nats, in ``data``'s order), ``objective``,
        ``num_particles``.

    Example:
        >>> evaluate(lsm, batch, "iwae", num_particles=1000, max_elements=10_000)["nats_per_frame"]  # doctest: +SKIP
    """
    if not isinstance(lsm, LatentSequenceModel):
        raise TypeError(f"lsm: expected a LatentSequenceModel (from deepstate.models.build), got {type(lsm).__name__}")
    if isinstance(data, SequenceDataset):
        data = data.batch
    if not isinstance(data, SequenceBatch):
        raise TypeError(f"data: expected a SequenceBatch, got {type(data).__name__}")
    if objective not in EVAL_OBJECTIVES:
        raise ValueError(f"objective: expected one of {EVAL_OBJECTIVES}, got {objective!r}")
    name = "elbo" if objective == "particle_elbo" else objective
    N = _pos_int(num_particles, "num_particles")
    batch_size = _pos_int(batch_size, "batch_size")
    max_elements = _pos_int(max_elements, "max_elements")
    max_particle_steps = _pos_int(max_particle_steps, "max_particle_steps", allow_none=True)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise TypeError(f"seed: expected an int or None, got {type(seed).__name__}")
    if data.x.shape[-1] != lsm.x_dim:
        raise ValueError(f"data: expected {lsm.x_dim} dimensions (the model's input_dim), got {data.x.shape[-1]}")
    emission = getattr(lsm.ssm, "emission", None)
    if emission is not None:  # Bernoulli 0/1, Poisson counts: a bound on other values means nothing
        check_support(emission, data.x, data.observed, "data")

    if name == "fivo":
        n_per_row, K = N, 1
        if N > max_elements:
            warnings.warn(
                f"evaluate: FIVO with num_particles={N} > max_elements={max_elements}; processing one sequence "
                f"at a time with all {N} particles (a FIVO estimate cannot be split over particle chunks)",
                RuntimeWarning, stacklevel=2,
            )
    else:
        cap = max_elements
        if max_particle_steps is not None:  # a long sequence's particles are split over more rows
            cap = min(cap, max(1, max_particle_steps // max(data.max_length, 1)))
        n_per_row = _largest_divisor_at_most(N, cap)
        K = N // n_per_row
    rows_per_pass = max(1, min(batch_size * K, max_elements // n_per_row))
    obj = get_objective(name, n_per_row, **objective_kwargs)

    device, dtype = _model_ref(lsm)
    B = data.batch_size
    # shortest first (little padding per pass); each sequence occupies K consecutive rows
    order = torch.as_tensor(np.argsort(data.lengths.cpu().numpy(), kind="stable"))
    rows = order.repeat_interleave(K)
    row_log_z = torch.empty(B * K, dtype=torch.float64)
    row_lengths = data.lengths.cpu()[rows].tolist()  # ascending
    passes, start = [], 0
    while start < B * K:  # at most rows_per_pass rows, and (if capped) rows x steps <= max_particle_steps
        stop = min(start + rows_per_pass, B * K)
        if max_particle_steps is not None:
            # rows are sorted by length: the pass's padded length is that of its last row
            while stop - start > 1 and (stop - start) * n_per_row * row_lengths[stop - 1] > max_particle_steps:
                stop = start + max(1, min(stop - start - 1, max_particle_steps // (n_per_row * row_lengths[stop - 1])))
        passes.append((start, stop))
        start = stop

    was_training = lsm.training
    devices = [device] if device is not None and device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(int(seed))
        lsm.eval()
        try:
            with torch.no_grad():
                for start, stop in passes:
                    idx = rows[start:stop]
                    mb = data[idx.tolist()]
                    if device is not None:
                        mb = mb.to(device=device, dtype=dtype)
                    res = obj.bound(lsm, mb)
                    row_log_z[start : start + len(idx)] = res.log_z.detach().to("cpu", torch.float64)
        finally:
            lsm.train(was_training)
    per_row = row_log_z.reshape(B, K)
    if K == 1:
        combined = per_row[:, 0]
    elif name == "iwae":
        combined = logmeanexp(per_row, 1)
    else:  # elbo: the mean of N single-sample ELBOs is the mean of the chunk means
        combined = per_row.mean(1)
    per_sequence = torch.empty(B, dtype=torch.float64)
    per_sequence[order] = combined
    total = float(per_sequence.sum())
    frames = data.num_frames
    return {
        "nats_per_frame": total / frames if frames else math.nan,
        "total": total,
        "frames": frames,
        "per_sequence": per_sequence,
        "objective": name,
        "num_particles": N,
    }
