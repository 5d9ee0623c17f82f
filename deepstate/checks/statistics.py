"""Test statistics and Bayesian p-values for posterior predictive checks (model-free).

Everything here is a plain function of arrays: observed sequences ``x_obs [B, T, D]``, replicated
sequences ``x_rep [S, B, T, D]`` (from whatever produced them: reconstruction, one-step-ahead or
free-running replicates) and the masks of a :class:`~deepstate.data.SequenceBatch`.

Statistic convention
--------------------
A statistic is a callable ``stat(x, valid, observed) -> [*, B, K]``:

* ``x``: ``[*, B, T, D]`` values (any number of leading sample dimensions ``*``),
* ``valid``: ``[B, T]`` bool, the step exists (not padding),
* ``observed``: ``[B, T, D]`` bool, the value was observed,

and returns one number per sequence per component: ``K = D`` for per-dimension statistics
(mean, variance, ...), ``K = 1`` for whole-frame statistics (notes per frame, ...), ``K = 12`` for
the pitch-class histogram. Only entries that are both valid and observed count: padding and
unobserved values never change any number (they may hold garbage, NaN included). A statistic that
is undefined for a sequence (no observed entries, zero variance, no notes) is ``NaN`` there, and
the dataset-level summaries skip NaN.

Piano-roll statistics (``D = 88``, key ``k`` is MIDI pitch ``k + 21``) call a key *active* when its
value is above ``0.5``; unobserved entries count as inactive (so they also end notes and runs).

Dataset-level statistic
-----------------------
:func:`predictive_check` summarises a dataset by the **mean over sequences** (unweighted, NaN
skipped) of the per-sequence statistic, per component, giving ``[K]`` for the data and ``[S, K]``
for the replicates; by default per-dimension statistics are then averaged over components (NaN
skipped) into one number per statistic (``per_component=True`` keeps one row per component). The
pitch-class histogram is always reported per pitch class: its average over classes is ``1/12``
whatever the data.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = [
    "STATISTICS",
    "PITCH_CLASS_NAMES",
    "mean",
    "variance",
    "autocorrelation",
    "maximum",
    "minimum",
    "longest_run",
    "notes_per_frame",
    "note_on_rate",
    "mean_note_duration",
    "pitch_class_histogram",
    "bayesian_p_values",
    "is_binary",
    "predictive_check",
]

#: Lowest MIDI pitch of the 88-key roll (column 0 is A0).
_MIN_PITCH = 21
_NUM_KEYS = 88
#: Names of the 12 pitch classes, index = MIDI pitch % 12.
PITCH_CLASS_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


# ---------------------------------------------------------------------------------- helpers
def _to_numpy(value: Any, name: str) -> np.ndarray:
    """Array-like or torch tensor -> numpy array (no copy where possible)."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # torch.Tensor, without importing torch
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise TypeError(f"{name}: expected numeric values, got dtype {arr.dtype}")
    return arr


def _prepare(x: Any, valid: Any, observed: Any) -> Tuple[np.ndarray, np.ndarray]:
    """Validate and return ``(x_clean [*, B, T, D] float64, mask [B, T, D] bool)``.

    ``x_clean`` is ``0`` wherever the mask is ``False``, so garbage (NaN, inf) in padding or
    unobserved entries never reaches an arithmetic operation.
    """
    x = _to_numpy(x, "x")
    if x.ndim < 3:
        raise ValueError(f"x: expected shape [*, B, T, D], got {x.shape}")
    B, T, D = x.shape[-3:]
    valid = _to_numpy(valid, "valid")
    if valid.shape != (B, T):
        raise ValueError(f"valid: expected shape {(B, T)} to match x {x.shape}, got {valid.shape}")
    mask = np.broadcast_to(valid.astype(bool)[..., None], (B, T, D))
    if observed is not None:
        observed = _to_numpy(observed, "observed")
        if observed.shape != (B, T, D):
            raise ValueError(f"observed: expected shape {(B, T, D)} to match x {x.shape}, got {observed.shape}")
        mask = mask & observed.astype(bool)
    x = np.where(mask, x.astype(np.float64, copy=False), 0.0)
    return x, np.ascontiguousarray(mask)


def _divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` with NaN where ``den == 0`` (an undefined statistic), without warnings."""
    den = np.broadcast_to(den, np.broadcast_shapes(num.shape, den.shape))
    out = np.full(den.shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _longest_true_run(a: np.ndarray) -> np.ndarray:
    """Longest run of consecutive ``True`` along axis ``-2`` (time) of ``a [..., T, D]`` -> ``[..., D]``."""
    T = a.shape[-2]
    idx = np.arange(T).reshape((T, 1))
    # index of the latest False at or before t (-1 if none): the run ending at t has length t - that
    last_false = np.maximum.accumulate(np.where(a, -1, idx), axis=-2)
    return (idx - last_false).max(axis=-2).astype(np.float64)


def _check_piano_roll(x: np.ndarray, name: str) -> None:
    if x.shape[-1] != _NUM_KEYS:
        raise ValueError(f"x: {name} is a piano-roll statistic and needs D = {_NUM_KEYS} keys, got D = {x.shape[-1]}")


def _active(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Key is sounding: value above 0.5 and the entry valid & observed."""
    return (x > 0.5) & mask


def _onsets(active: np.ndarray) -> np.ndarray:
    """``active [..., T, D]`` -> bool onsets: active at t and not at t - 1 (or t = 0)."""
    prev = np.zeros_like(active)
    prev[..., 1:, :] = active[..., :-1, :]
    return active & ~prev


def is_binary(x: Any, valid: Any, observed: Any = None) -> bool:
    """Whether every valid & observed entry of ``x`` is ``0`` or ``1`` (a piano roll, say)."""
    xc, _ = _prepare(x, valid, observed)  # masked entries are 0 there
    return bool(np.all((xc == 0) | (xc == 1)))


# ------------------------------------------------------------------------- statistics
def mean(x, valid, observed=None) -> np.ndarray:
    """Per-dimension mean over the sequence's valid observed steps: ``[*, B, T, D] -> [*, B, D]``."""
    x, mask = _prepare(x, valid, observed)
    return _divide(x.sum(axis=-2), mask.sum(axis=-2))


def variance(x, valid, observed=None) -> np.ndarray:
    """Per-dimension variance (``ddof=0``) over valid observed steps: ``[*, B, T, D] -> [*, B, D]``."""
    x, mask = _prepare(x, valid, observed)
    n = mask.sum(axis=-2)
    m = _divide(x.sum(axis=-2), n)
    dev = np.where(mask, x - np.nan_to_num(m)[..., None, :], 0.0)
    return _divide((dev**2).sum(axis=-2), n)


def autocorrelation(x, valid, observed=None) -> np.ndarray:
    """Lag-1 autocorrelation per dimension: ``[*, B, T, D] -> [*, B, D]``.

    The usual ACF estimator ``sum_t (x_t - m)(x_{t+1} - m) / sum_t (x_t - m)^2`` with ``m`` the
    sequence's mean; the numerator runs over pairs of consecutive steps that are both valid and
    observed, the denominator over all valid observed steps. ``NaN`` for a constant sequence.
    """
    x, mask = _prepare(x, valid, observed)
    n = mask.sum(axis=-2)
    m = _divide(x.sum(axis=-2), n)
    dev = np.where(mask, x - np.nan_to_num(m)[..., None, :], 0.0)
    pair = mask[..., 1:, :] & mask[..., :-1, :]
    num = np.where(pair, dev[..., 1:, :] * dev[..., :-1, :], 0.0).sum(axis=-2)
    return _divide(num, (dev**2).sum(axis=-2))


def maximum(x, valid, observed=None) -> np.ndarray:
    """Per-dimension maximum over valid observed steps: ``[*, B, T, D] -> [*, B, D]`` (NaN if none)."""
    x, mask = _prepare(x, valid, observed)
    out = np.where(mask, x, -np.inf).max(axis=-2)
    return np.where(mask.any(axis=-2), out, np.nan)


def minimum(x, valid, observed=None) -> np.ndarray:
    """Per-dimension minimum over valid observed steps: ``[*, B, T, D] -> [*, B, D]`` (NaN if none)."""
    x, mask = _prepare(x, valid, observed)
    out = np.where(mask, x, np.inf).min(axis=-2)
    return np.where(mask.any(axis=-2), out, np.nan)


def longest_run(x, valid, observed=None, binary: Optional[bool] = None) -> np.ndarray:
    """Longest stretch of consecutive steps per dimension, in steps: ``[*, B, T, D] -> [*, B, D]``.

    For binary data (every valid observed value is 0 or 1) the stretch of consecutive active
    (``1``) frames; for real data the stretch strictly above the sequence's own mean of that
    dimension. An unobserved or padded step breaks a run. ``binary=None`` decides from ``x``;
    :func:`predictive_check` decides once from the observed data so that data and replicates use
    the same definition.
    """
    xc, mask = _prepare(x, valid, observed)
    if binary is None:
        binary = bool(np.all((xc == 0) | (xc == 1)))  # masked entries are 0 after _prepare
    if binary:
        above = (xc > 0.5) & mask
    else:
        m = _divide(xc.sum(axis=-2), mask.sum(axis=-2))
        above = (xc > np.nan_to_num(m)[..., None, :]) & mask
    out = _longest_true_run(above)
    return np.where(mask.any(axis=-2), out, np.nan)


def notes_per_frame(x, valid, observed=None) -> np.ndarray:
    """Mean number of active keys per valid frame (piano roll, ``D = 88``): ``[*, B, T, 88] -> [*, B, 1]``."""
    x, mask = _prepare(x, valid, observed)
    _check_piano_roll(x, "notes_per_frame")
    frames = mask.any(axis=-1).sum(axis=-1)  # valid frames with at least one observed key
    return _divide(_active(x, mask).sum(axis=(-2, -1)), frames)[..., None]


def note_on_rate(x, valid, observed=None) -> np.ndarray:
    """Note onsets per valid frame (piano roll): ``[*, B, T, 88] -> [*, B, 1]``.

    An onset is a key active at frame ``t`` and not at ``t - 1`` (or ``t = 0``): the number of notes,
    a note being a maximal run of consecutive active frames of one key.
    """
    x, mask = _prepare(x, valid, observed)
    _check_piano_roll(x, "note_on_rate")
    frames = mask.any(axis=-1).sum(axis=-1)
    return _divide(_onsets(_active(x, mask)).sum(axis=(-2, -1)), frames)[..., None]


def mean_note_duration(x, valid, observed=None) -> np.ndarray:
    """Mean note duration in frames (piano roll): ``[*, B, T, 88] -> [*, B, 1]``.

    Active key-frames divided by notes (maximal runs of consecutive active frames of one key);
    ``NaN`` for a silent sequence.
    """
    x, mask = _prepare(x, valid, observed)
    _check_piano_roll(x, "mean_note_duration")
    active = _active(x, mask)
    return _divide(active.sum(axis=(-2, -1)).astype(np.float64), _onsets(active).sum(axis=(-2, -1)))[..., None]


def pitch_class_histogram(x, valid, observed=None) -> np.ndarray:
    """Fraction of sounding notes per pitch class (piano roll): ``[*, B, T, 88] -> [*, B, 12]``.

    Counts active key-frames (so a note weighs by its duration); key ``k`` is MIDI pitch ``k + 21``,
    pitch class ``(k + 21) % 12`` (0 = C, see :data:`PITCH_CLASS_NAMES`). Rows sum to 1 (``NaN`` for
    a silent sequence).
    """
    x, mask = _prepare(x, valid, observed)
    _check_piano_roll(x, "pitch_class_histogram")
    per_key = _active(x, mask).sum(axis=-2).astype(np.float64)  # [*, B, 88]
    onehot = np.zeros((_NUM_KEYS, 12))
    onehot[np.arange(_NUM_KEYS), (np.arange(_NUM_KEYS) + _MIN_PITCH) % 12] = 1.0
    counts = per_key @ onehot
    return _divide(counts, counts.sum(axis=-1, keepdims=True))


#: name -> statistic ``(x [*, B, T, D], valid [B, T], observed [B, T, D]) -> [*, B, K]``.
STATISTICS: Dict[str, Callable[..., np.ndarray]] = {
    "mean": mean,
    "variance": variance,
    "autocorrelation": autocorrelation,
    "max": maximum,
    "min": minimum,
    "longest_run": longest_run,
    "notes_per_frame": notes_per_frame,
    "note_on_rate": note_on_rate,
    "mean_note_duration": mean_note_duration,
    "pitch_class_histogram": pitch_class_histogram,
}

#: statistics whose components are categories, reported per component (their average is constant).
_PER_COMPONENT = {"pitch_class_histogram": PITCH_CLASS_NAMES}


# --------------------------------------------------------------------------- p-values
def bayesian_p_values(stat_obs: Any, stat_rep: Any) -> np.ndarray:
    """Posterior predictive p-values ``P(T_rep >= T_obs)`` with the mid-p convention for ties.

    ``p = P(T_rep > T_obs) + 0.5 * P(T_rep = T_obs)`` over the replicates, so that a discrete
    statistic which every replicate matches exactly (say the maximum of a 0/1 roll) gets ``0.5``,
    not ``1``. Values near 0 or 1 flag a misfit.

    Args:
        stat_obs: ``[...]`` statistic of the observed data.
        stat_rep: ``[S, ...]`` the same statistic of ``S >= 1`` replicates.

    Returns:
        ``[...]`` p-values in ``[0, 1]``; NaN replicates are skipped, and the p-value is NaN where
        ``stat_obs`` is NaN or every replicate is.
    """
    obs = _to_numpy(stat_obs, "stat_obs").astype(np.float64)
    rep = _to_numpy(stat_rep, "stat_rep").astype(np.float64)
    if rep.ndim < 1 or rep.shape[0] <= 0:
        raise ValueError(f"stat_rep: expected shape [S, ...] with S >= 1 replicates, got {rep.shape}")
    if rep.shape[1:] != obs.shape:
        raise ValueError(f"stat_rep: expected shape [S, *{obs.shape}] to match stat_obs, got {rep.shape}")
    ok = ~np.isnan(rep)
    n = ok.sum(axis=0)
    greater = (ok & (rep > obs)).sum(axis=0)
    equal = (ok & (rep == obs)).sum(axis=0)
    p = _divide(greater + 0.5 * equal, n.astype(np.float64))
    return np.where(np.isnan(obs), np.nan, p)


# ---------------------------------------------------------------------- the whole check
def _resolve(statistics) -> Dict[str, Callable]:
    if isinstance(statistics, (str, bytes)) or callable(statistics):
        statistics = [statistics]
    items = statistics.items() if isinstance(statistics, Mapping) else [(None, s) for s in statistics]
    out: Dict[str, Callable] = {}
    for name, s in items:
        if isinstance(s, str):
            if s not in STATISTICS:
                raise ValueError(f"statistics: unknown statistic {s!r}; known ones are {sorted(STATISTICS)}")
            out[name or s] = STATISTICS[s]
        elif callable(s):
            out[name or getattr(s, "__name__", f"statistic_{len(out)}")] = s
        else:
            raise TypeError(f"statistics: expected names or callables, got {type(s).__name__}")
    if not out:
        raise ValueError(f"statistics: expected at least one statistic; known ones are {sorted(STATISTICS)}")
    return out


def _dataset_stat(fn: Callable, x: np.ndarray, valid, observed) -> np.ndarray:
    """Per-sequence statistic ``[*, B, K]`` -> dataset statistic ``[*, K]`` (mean over sequences)."""
    per_seq = np.asarray(fn(x, valid, observed), dtype=np.float64)
    if per_seq.ndim < 2 or per_seq.shape[-2] != x.shape[-3]:
        raise ValueError(
            f"statistics: a statistic must return [*, B, K] with B = {x.shape[-3]} sequences, got shape {per_seq.shape}"
        )
    n = (~np.isnan(per_seq)).sum(axis=-2)
    return _divide(np.nan_to_num(per_seq).sum(axis=-2), n.astype(np.float64))


def predictive_check(
    x_obs: Any,
    x_rep: Any,
    valid: Any = None,
    observed: Any = None,
    statistics: Union[str, Callable, Sequence, Mapping] = ("mean", "variance", "autocorrelation", "max", "min", "longest_run"),
    per_component: bool = False,
    interval: Tuple[float, float] = (0.05, 0.95),
    chunk_size: int = 16,
):
    """Posterior predictive check of ``S`` replicated datasets against the observed one.

    Each statistic is reduced to the dataset level as the mean over sequences of the per-sequence
    statistic, per component (see the module docstring); per-dimension statistics are then
    averaged over components unless ``per_component`` (the pitch-class histogram is always per
    pitch class).

    Args:
        x_obs: ``[B, T, D]`` observed values, or a :class:`~deepstate.data.SequenceBatch` (then
            ``valid``/``observed`` default to its masks).
        x_rep: ``[S, B, T, D]`` replicates, ``S >= 1``, aligned with ``x_obs``.
        valid: ``[B, T]`` bool mask of existing steps.
        observed: ``[B, T, D]`` bool mask of observed values (default: every valid entry).
        statistics: names from :data:`STATISTICS`, callables ``(x, valid, observed) -> [*, B, K]``,
            or a mapping ``row name -> name or callable``. For piano rolls try
            ``("notes_per_frame", "note_on_rate", "mean_note_duration", "longest_run", "pitch_class_histogram")``.
        per_component: one row per component (``"mean[3]"``) instead of the component average.
        interval: lower and upper quantile levels reported for the replicates.
        chunk_size: replicates evaluated at a time (memory: ``chunk_size * B * T * D`` doubles).

    Returns:
        ``pandas.DataFrame`` indexed by statistic (row name) with columns ``observed``,
        ``replicated_mean``, ``replicated_5%``, ``replicated_95%`` (named after ``interval``) and
        ``p_value`` (:func:`bayesian_p_values`). ``table.attrs["replicated"]`` maps each row name to
        its ``[S]`` replicated values and ``table.attrs["num_replicates"]`` is ``S``, for
        :func:`deepstate.plots.checks.ppc_panels`.

    Raises:
        ValueError: unknown statistic (naming ``statistics``), ``S <= 0`` or shapes that do not
            match (naming the argument).
    """
    import pandas as pd

    if hasattr(x_obs, "valid") and hasattr(x_obs, "observed") and hasattr(x_obs, "x"):  # SequenceBatch
        valid = x_obs.valid if valid is None else valid
        observed = x_obs.observed if observed is None else observed
        x_obs = x_obs.x
    stats = _resolve(statistics)
    x_obs = _to_numpy(x_obs, "x_obs")
    if x_obs.ndim != 3:
        raise ValueError(f"x_obs: expected shape [B, T, D], got {x_obs.shape}")
    if valid is None:
        raise ValueError("valid: expected a [B, T] bool mask (or pass a SequenceBatch as x_obs)")
    x_rep = _to_numpy(x_rep, "x_rep")
    if x_rep.ndim != 4 or x_rep.shape[1:] != x_obs.shape:
        raise ValueError(f"x_rep: expected shape [S, *{x_obs.shape}] to match x_obs, got {x_rep.shape}")
    S = x_rep.shape[0]
    if S <= 0:
        raise ValueError(f"x_rep: expected at least one replicate (S >= 1), got S = {S}")
    lo, hi = interval
    if not 0 <= lo < hi <= 1:
        raise ValueError(f"interval: expected quantile levels 0 <= lo < hi <= 1, got {interval!r}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive int, got {chunk_size!r}")
    _prepare(x_obs, valid, observed)  # validates the masks before any work

    binary = is_binary(x_obs, valid, observed)
    rows, replicated = [], {}
    for row_name, fn in stats.items():
        # Decide "binary" once from the data, so replicates use the same definition of a run.
        if "binary" in inspect.signature(fn).parameters:
            fn = functools.partial(fn, binary=binary)
        t_obs = _dataset_stat(fn, x_obs, valid, observed)  # [K]
        t_rep = np.concatenate(
            [_dataset_stat(fn, x_rep[i : i + chunk_size], valid, observed) for i in range(0, S, chunk_size)], axis=0
        )  # [S, K]
        base = fn.func if isinstance(fn, functools.partial) else fn
        categories = next((c for k, c in _PER_COMPONENT.items() if STATISTICS[k] is base), None)
        if per_component or categories is not None:
            labels = categories if categories is not None and len(categories) == t_obs.shape[-1] else range(t_obs.shape[-1])
            parts = [(f"{row_name}[{lab}]", t_obs[k], t_rep[:, k]) for k, lab in enumerate(labels)]
        elif t_obs.shape[-1] == 1:
            parts = [(row_name, t_obs[0], t_rep[:, 0])]
        else:
            with np.errstate(all="ignore"):
                parts = [(row_name, _nanmean(t_obs), _nanmean(t_rep, axis=-1))]
        for label, o, r in parts:
            finite = r[~np.isnan(r)]
            rows.append({
                "statistic": label,
                "observed": float(o),
                "replicated_mean": float(finite.mean()) if finite.size else np.nan,
                f"replicated_{lo * 100:g}%": float(np.quantile(finite, lo)) if finite.size else np.nan,
                f"replicated_{hi * 100:g}%": float(np.quantile(finite, hi)) if finite.size else np.nan,
                "p_value": float(bayesian_p_values(np.asarray(o), r)),
            })
            replicated[label] = np.asarray(r, dtype=np.float64)
    table = pd.DataFrame(rows).set_index("statistic")
    table.attrs["replicated"] = replicated
    table.attrs["num_replicates"] = S
    return table


def _nanmean(a: np.ndarray, axis=None):
    n = (~np.isnan(a)).sum(axis=axis)
    return _divide(np.asarray(np.nan_to_num(a).sum(axis=axis), dtype=np.float64), np.asarray(n, dtype=np.float64))
