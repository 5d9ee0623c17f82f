"""Building :class:`SequenceBatch` objects from numpy arrays and pandas objects, and combining them.

* :func:`from_numpy`: ``[T]``, ``[T, D]`` or ``[B, T, D]`` arrays (optionally with ``lengths``).
* :func:`from_pandas`: wide frames (one column per series, or one multivariate series) and long
  frames (id / time / value columns); the time index is kept in ``batch.index``.
* :func:`concat_batches`: stack batches along ``B``, padding to a common ``T``.
* :func:`with_covariates`: attach covariates ``u [B, T, U]``.
* :func:`extend_index`: continue a time index ``horizon`` steps (for forecasts).

NaN values become ``observed = False`` with value ``0``; infinite values are refused.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

from .batch import SequenceBatch

__all__ = ["from_numpy", "from_pandas", "concat_batches", "with_covariates", "extend_index"]


# ---------------------------------------------------------------------------- helpers
def _numeric_array(value: Any, name: str) -> np.ndarray:
    """``value`` as a float64 numpy array, or a TypeError naming ``name``."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype == torch.bool:
            value = value.to(torch.uint8)
        value = value.numpy()
    try:
        arr = np.asarray(value)
    except Exception as err:
        raise TypeError(f"{name}: expected a numeric array, got {type(value).__name__}") from err
    if arr.dtype == bool:
        arr = arr.astype(np.float64)
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise TypeError(f"{name}: expected real numeric values, got dtype {arr.dtype}")
    return arr.astype(np.float64, copy=False)


def _check_dtype(dtype) -> torch.dtype:
    dtype = torch.get_default_dtype() if dtype is None else dtype
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype: expected a floating torch.dtype (e.g. torch.float32), got {dtype!r}")
    return dtype


def _check_lengths(lengths: Any, B: int, T: int) -> torch.Tensor:
    arr = _numeric_array(lengths, "lengths")
    if arr.shape != (B,):
        raise ValueError(f"lengths: expected shape ({B},) (one length per sequence), got {arr.shape}")
    if not np.all(arr == np.round(arr)):
        raise TypeError("lengths: expected integers")
    if arr.min() < 1 or arr.max() > T:
        raise ValueError(f"lengths: expected integers in 1..{T}, got min {arr.min():g}, max {arr.max():g}")
    return torch.as_tensor(arr.astype(np.int64))


def _is_index_like(value) -> bool:
    """A single time index (pandas Index or 1-D array), as opposed to a list of per-sequence ones."""
    import pandas as pd

    if isinstance(value, range):
        return True
    if isinstance(value, (pd.Index, np.ndarray, torch.Tensor, pd.Series)):
        return getattr(value, "ndim", 1) == 1
    if isinstance(value, (list, tuple)):
        return len(value) > 0 and all(np.ndim(v) == 0 for v in value)
    return False


def _per_sequence_index(index, lengths: torch.Tensor, T: int, name: str = "index") -> Optional[list]:
    """Normalise ``index`` to a list of ``B`` indices of lengths ``lengths[b]`` (or ``None``)."""
    import pandas as pd

    if index is None:
        return None
    B = len(lengths)
    if _is_index_like(index):
        full = pd.Index(index)
        if len(full) != T:
            raise ValueError(f"{name}: expected a time index of length {T}, got {len(full)}")
        return [full[: int(L)] for L in lengths]
    if not isinstance(index, (list, tuple)):
        raise TypeError(f"{name}: expected a time index of length {T} or a list of {B} per-sequence indices")
    if len(index) != B:
        raise ValueError(f"{name}: expected {B} per-sequence indices, got {len(index)}")
    out = []
    for b, ix in enumerate(index):
        if ix is None:
            out.append(None)
            continue
        ix = ix if isinstance(ix, pd.Index) else pd.Index(ix)
        if len(ix) < int(lengths[b]):
            raise ValueError(f"{name}[{b}]: expected length {int(lengths[b])}, got {len(ix)}")
        out.append(ix[: int(lengths[b])])
    return out


def _build(
    values: np.ndarray,
    lengths: torch.Tensor,
    dtype: torch.dtype,
    name: str,
    u: Optional[torch.Tensor] = None,
    index: Optional[list] = None,
    names: Optional[list] = None,
) -> SequenceBatch:
    """``values [B, T, D]`` float64 (NaN = missing) -> batch; steps ``>= lengths`` are padding."""
    B, T, D = values.shape
    valid = torch.arange(T)[None, :] < lengths[:, None]
    finite_valid = values[valid.numpy()]
    if np.isinf(finite_valid).any():
        raise ValueError(f"{name}: contains infinite values (use NaN for missing values)")
    nan = np.isnan(values)
    observed = torch.from_numpy(~nan) & valid[:, :, None]
    x = torch.from_numpy(np.where(nan, 0.0, values)).to(dtype)
    x = torch.where(observed, x, torch.zeros((), dtype=dtype))
    return SequenceBatch(x=x, valid=valid, observed=observed, lengths=lengths, u=u, index=index, names=names)


def _covariate_tensor(u, lengths: torch.Tensor, T: int, dtype: torch.dtype, name: str = "u") -> torch.Tensor:
    """``u`` as ``[B, T, U]``: accepts ``[B, T, U]``, ``[T, U]`` / ``[T]`` (shared) or a list of ``[T_b, U]``."""
    import pandas as pd

    B = len(lengths)
    valid = torch.arange(T)[None, :] < lengths[:, None]
    if isinstance(u, (pd.DataFrame, pd.Series)):
        u = u.to_numpy()
    per_sequence = (
        isinstance(u, (list, tuple))
        and len(u) > 0
        and all(isinstance(c, (np.ndarray, torch.Tensor, pd.DataFrame, pd.Series)) for c in u)
    )
    if per_sequence:
        # list of per-sequence covariates
        if len(u) != B:
            raise ValueError(f"{name}: expected {B} per-sequence covariate arrays, got {len(u)}")
        parts = []
        for b, c in enumerate(u):
            if isinstance(c, (pd.DataFrame, pd.Series)):
                c = c.to_numpy()
            a = _numeric_array(c, f"{name}[{b}]")
            if a.ndim == 1:
                a = a[:, None]
            if a.ndim != 2 or a.shape[0] < int(lengths[b]):
                raise ValueError(f"{name}[{b}]: expected shape [{int(lengths[b])}, U], got {a.shape}")
            parts.append(a[: int(lengths[b])])
        U = parts[0].shape[1]
        if any(p.shape[1] != U for p in parts):
            raise ValueError(f"{name}: every sequence needs the same number of covariates U")
        arr = np.zeros((B, T, U))
        for b, p in enumerate(parts):
            arr[b, : p.shape[0]] = p
    else:
        arr = _numeric_array(u, name)
        if arr.ndim == 1:
            arr = arr[:, None]
        if arr.ndim == 2:
            if arr.shape[0] != T:
                raise ValueError(f"{name}: expected shared covariates of shape [{T}, U], got {arr.shape}")
            arr = np.broadcast_to(arr, (B,) + arr.shape).copy()
        if arr.ndim != 3 or arr.shape[:2] != (B, T):
            raise ValueError(f"{name}: expected shape [{B}, {T}, U], [{T}, U] or a list of [T_b, U], got {arr.shape}")
    if arr.shape[2] == 0:
        raise ValueError(f"{name}: expected at least one covariate (U >= 1)")
    vm = valid.numpy()
    if not np.isfinite(arr[vm]).all():
        raise ValueError(f"{name}: covariates must be finite (no NaN/inf) on valid steps")
    arr = np.where(vm[:, :, None], arr, 0.0)
    return torch.from_numpy(arr).to(dtype)


# ---------------------------------------------------------------------------- numpy
def from_numpy(
    array: Any,
    lengths: Any = None,
    covariates: Any = None,
    index: Any = None,
    names: Optional[Sequence] = None,
    dtype: Optional[torch.dtype] = None,
) -> SequenceBatch:
    """A batch from a numeric array.

    Shapes:
        * ``[T]``: one univariate sequence -> ``x [1, T, 1]``.
        * ``[T, D]``: one ``D``-dimensional sequence -> ``x [1, T, D]``.
        * ``[B, T, D]``: ``B`` sequences -> ``x [B, T, D]``; with ``lengths [B]``, steps
          ``t >= lengths[b]`` are padding (their values are ignored).

    NaN becomes ``observed = False`` with value ``0``.

    Args:
        array: numpy array, torch tensor or nested list of numbers.
        lengths: optional ``[B]`` integers in ``1..T`` (only for ``[B, T, D]`` input; default all ``T``).
        covariates: optional ``[B, T, U]``, shared ``[T, U]``, or list of per-sequence ``[T_b, U]``.
        index: optional time index of length ``T`` (shared) or a list of ``B`` per-sequence indices.
        names: optional ``B`` sequence identifiers.
        dtype: float dtype of ``x`` (default: torch's default dtype).

    Example:
        >>> b = from_numpy(np.array([1.0, np.nan, 3.0]))
        >>> b.x.shape, b.observed[0, :, 0].tolist()
        (torch.Size([1, 3, 1]), [True, False, True])
    """
    if isinstance(array, SequenceBatch):
        raise TypeError("array: expected a numeric array, got a SequenceBatch (it is already a batch)")
    dtype = _check_dtype(dtype)
    arr = _numeric_array(array, "array")
    if arr.ndim == 1:
        arr = arr[None, :, None]
        single = True
    elif arr.ndim == 2:
        arr = arr[None]
        single = True
    elif arr.ndim == 3:
        single = False
    else:
        raise ValueError(f"array: expected shape [T], [T, D] or [B, T, D], got {arr.ndim} dimensions {arr.shape}")
    B, T, D = arr.shape
    if B == 0:
        raise ValueError(f"array: expected at least one sequence, got shape {arr.shape}")
    if T == 0:
        raise ValueError(f"array: expected at least one time step (T >= 1), got shape {arr.shape}")
    if D == 0:
        raise ValueError(f"array: expected at least one dimension (D >= 1), got shape {arr.shape}")
    if lengths is None:
        lens = torch.full((B,), T, dtype=torch.long)
    else:
        if single:
            raise ValueError("lengths: only allowed for [B, T, D] input (a single sequence has no padding)")
        lens = _check_lengths(lengths, B, T)
    if names is not None:
        names = list(names)
        if len(names) != B:
            raise ValueError(f"names: expected {B} names, got {len(names)}")
    idx = _per_sequence_index(index, lens, T)
    u = None if covariates is None else _covariate_tensor(covariates, lens, T, dtype, "covariates")
    return _build(arr, lens, dtype, "array", u=u, index=idx, names=names)


# ---------------------------------------------------------------------------- pandas
def _numeric_frame(df, name: str) -> np.ndarray:
    import pandas as pd

    bad = [c for c in df.columns if not (pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_complex_dtype(df[c]))]
    if bad:
        raise TypeError(
            f"{name}: expected numeric columns, got non-numeric column(s) {bad!r} "
            f"(dtypes {[str(df[c].dtype) for c in bad]}); select or convert them first"
        )
    return df.to_numpy(dtype=np.float64, na_value=np.nan)


def from_pandas(
    data: Any,
    as_multivariate: bool = False,
    id_col: Optional[str] = None,
    time_col: Optional[str] = None,
    value_cols: Union[str, Sequence[str], None] = None,
    covariate_cols: Union[str, Sequence[str], None] = None,
    covariates: Any = None,
    trim_trailing_nan: bool = False,
    dtype: Optional[torch.dtype] = None,
) -> SequenceBatch:
    """A batch from a pandas ``Series`` or ``DataFrame``.

    **Wide form** (``id_col`` is ``None``): rows are time steps, the frame's index is the time index.

    * ``Series`` -> one univariate sequence, ``x [1, T, 1]``, ``names = [series.name]``.
    * ``DataFrame`` -> one univariate sequence per column, ``x [C, T, 1]``,
      ``names = list(columns)``; or with ``as_multivariate=True`` one sequence ``x [1, T, C]``.
    * ``covariates``: optional shared covariates aligned with the rows (``[T, U]`` frame or array).
    * ``trim_trailing_nan``: per-column trailing all-NaN rows become padding instead of missing
      values (for series of different lengths in one frame).

    **Long form** (``id_col`` given): one row per (series, time step). ``value_cols`` (required)
    name the value column(s) (``D = len(value_cols)``), ``time_col`` (optional) orders the rows
    within each series (default: row order) and becomes each sequence's index, and
    ``covariate_cols`` (optional) become ``u [B, T, U]``. Series appear in order of first appearance.

    In both forms NaN values become ``observed = False`` with value ``0``, and each
    ``batch.index[b]`` is a ``pandas.Index`` that :func:`extend_index` can continue.

    Example:
        >>> df = pd.DataFrame({"a": [1.0, 2.0], "b": [3.0, np.nan]})
        >>> from_pandas(df).x.shape, from_pandas(df, as_multivariate=True).x.shape
        (torch.Size([2, 2, 1]), torch.Size([1, 2, 2]))
    """
    import pandas as pd

    dtype = _check_dtype(dtype)
    if not isinstance(data, (pd.Series, pd.DataFrame)):
        raise TypeError(f"data: expected a pandas Series or DataFrame, got {type(data).__name__}")
    if id_col is not None:
        if covariates is not None:
            raise ValueError("covariates: not used in long form; name covariate columns with covariate_cols")
        if as_multivariate:
            raise ValueError("as_multivariate: only for wide form; in long form list several value_cols")
        return _from_long(data, id_col, time_col, value_cols, covariate_cols, trim_trailing_nan, dtype)
    for arg, val in (("time_col", time_col), ("value_cols", value_cols), ("covariate_cols", covariate_cols)):
        if val is not None:
            raise ValueError(f"{arg}: only used in long form; also pass id_col (the column identifying each series)")

    if isinstance(data, pd.Series):
        frame = data.to_frame(name=data.name if data.name is not None else 0)
        names = [data.name]
        as_multivariate = False
    else:
        frame = data
        names = list(frame.columns)
    if frame.shape[1] == 0:
        raise ValueError("data: expected at least one column, got an empty DataFrame")
    if frame.shape[0] == 0:
        raise ValueError("data: expected at least one row (time step), got 0 rows")
    values = _numeric_frame(frame, "data")  # [T, C]
    T, C = values.shape
    if as_multivariate:
        arr = values[None]  # [1, T, C]
        names = [None]
        lens = torch.tensor([T])
        if trim_trailing_nan:
            keep = np.flatnonzero(~np.isnan(values).all(axis=1))
            if len(keep) == 0:
                raise ValueError("data: every value is NaN; the sequence would have length 0")
            lens = torch.tensor([int(keep[-1]) + 1])
    else:
        arr = values.T[:, :, None]  # [C, T, 1]
        if trim_trailing_nan:
            L = []
            for c in range(C):
                keep = np.flatnonzero(~np.isnan(values[:, c]))
                if len(keep) == 0:
                    raise ValueError(f"data: column {names[c]!r} is all NaN; the sequence would have length 0")
                L.append(int(keep[-1]) + 1)
            lens = torch.tensor(L, dtype=torch.long)
        else:
            lens = torch.full((C,), T, dtype=torch.long)
    idx = _per_sequence_index(frame.index, lens, T)
    u = None if covariates is None else _covariate_tensor(covariates, lens, T, dtype, "covariates")
    return _build(arr, lens.to(torch.long), dtype, "data", u=u, index=idx, names=names)


def _as_col_list(cols, name: str) -> Optional[list]:
    if cols is None:
        return None
    if isinstance(cols, (str, int)):
        return [cols]
    cols = list(cols)
    if len(cols) == 0:
        raise ValueError(f"{name}: expected at least one column name, got an empty list")
    return cols


def _from_long(df, id_col, time_col, value_cols, covariate_cols, trim_trailing_nan, dtype) -> SequenceBatch:
    import pandas as pd

    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"data: long form needs a DataFrame with an id column, got {type(df).__name__}")
    value_cols = _as_col_list(value_cols, "value_cols")
    if value_cols is None:
        raise ValueError("value_cols: long form needs the name(s) of the value column(s)")
    covariate_cols = _as_col_list(covariate_cols, "covariate_cols")
    needed = [("id_col", id_col)] + ([("time_col", time_col)] if time_col is not None else [])
    needed += [("value_cols", c) for c in value_cols] + [("covariate_cols", c) for c in covariate_cols or []]
    for arg, col in needed:
        if col not in df.columns:
            raise ValueError(f"{arg}: column {col!r} not in the DataFrame (columns: {list(df.columns)})")
    if len(df) == 0:
        raise ValueError("data: expected at least one row, got an empty DataFrame")
    if df[id_col].isna().any():
        raise ValueError(f"id_col: column {id_col!r} has missing ids")
    vals = _numeric_frame(df[value_cols], "value_cols")
    covs = None if covariate_cols is None else _numeric_frame(df[covariate_cols], "covariate_cols")
    if time_col is not None:
        if df[time_col].isna().any():
            raise ValueError(f"time_col: column {time_col!r} has missing time values")
        if df.duplicated([id_col, time_col]).any():
            dup = df[df.duplicated([id_col, time_col], keep=False)][[id_col, time_col]].head(3).values.tolist()
            raise ValueError(f"time_col: duplicate (id, time) rows, e.g. {dup}")
    seqs, cov_list, index, names = [], [], [], []
    for key, pos in df.groupby(id_col, sort=False).indices.items():
        pos = np.asarray(pos)
        if time_col is not None:
            order = np.argsort(df[time_col].to_numpy()[pos], kind="stable")
            pos = pos[order]
            index.append(pd.Index(df[time_col].to_numpy()[pos], name=time_col))
        else:
            index.append(pd.RangeIndex(len(pos)))
        seqs.append(vals[pos])
        if covs is not None:
            cov_list.append(covs[pos])
        names.append(key)
    lens = []
    for b, s in enumerate(seqs):
        L = len(s)
        if trim_trailing_nan:
            keep = np.flatnonzero(~np.isnan(s).all(axis=1))
            if len(keep) == 0:
                raise ValueError(f"value_cols: series {names[b]!r} is all NaN; the sequence would have length 0")
            L = int(keep[-1]) + 1
        lens.append(L)
    B, T, D = len(seqs), max(len(s) for s in seqs), len(value_cols)
    arr = np.full((B, T, D), np.nan)
    for b, s in enumerate(seqs):
        arr[b, : len(s)] = s
    lengths = torch.tensor(lens, dtype=torch.long)
    T = int(lengths.max())
    arr = arr[:, :T]
    index = [ix[:L] for ix, L in zip(index, lens)]
    u = None
    if covs is not None:
        u = _covariate_tensor([c[:L] for c, L in zip(cov_list, lens)], lengths, T, dtype, "covariate_cols")
    return _build(arr, lengths, dtype, "value_cols", u=u, index=index, names=names)


# ---------------------------------------------------------------------------- combining
def concat_batches(batches: Sequence[SequenceBatch]) -> SequenceBatch:
    """Concatenate batches along the sequence dimension, padding each to the longest ``T``.

    All batches must have the same ``D``, dtype and device, and either all or none carry
    covariates (with the same ``U``). ``index``/``names`` are kept when every batch has them.

    Returns:
        a batch with ``B = sum(B_i)`` and ``T = max(T_i)``.
    """
    if isinstance(batches, SequenceBatch) or not isinstance(batches, (list, tuple)):
        raise TypeError(f"batches: expected a list of SequenceBatch, got {type(batches).__name__}")
    if len(batches) == 0:
        raise ValueError("batches: expected at least one SequenceBatch, got an empty list")
    for i, b in enumerate(batches):
        if not isinstance(b, SequenceBatch):
            raise TypeError(f"batches[{i}]: expected a SequenceBatch, got {type(b).__name__}")
    first = batches[0]
    for i, b in enumerate(batches[1:], 1):
        if b.dim != first.dim:
            raise ValueError(f"batches[{i}]: expected D={first.dim} like batches[0], got D={b.dim}")
        if b.x.dtype != first.x.dtype:
            raise TypeError(f"batches[{i}]: expected dtype {first.x.dtype} like batches[0], got {b.x.dtype}")
        if b.device != first.device:
            raise ValueError(f"batches[{i}]: expected device {first.device} like batches[0], got {b.device}")
        if (b.u is None) != (first.u is None):
            raise ValueError(f"batches[{i}]: either every batch has covariates u or none has")
        if b.u is not None and b.u.shape[2] != first.u.shape[2]:
            raise ValueError(f"batches[{i}]: expected U={first.u.shape[2]} covariates like batches[0], got {b.u.shape[2]}")
    T = max(b.max_length for b in batches)
    padded = [b.pad_to(T) for b in batches]

    def cat(attr):
        return torch.cat([getattr(p, attr) for p in padded], dim=0)

    index = None
    if all(b.index is not None for b in batches):
        index = [ix for b in batches for ix in b.index]
    names = None
    if all(b.names is not None for b in batches):
        names = [n for b in batches for n in b.names]
    offset = None  # absolute start positions (windows, chunks): kept when any batch has them, 0 elsewhere
    if any(b.offset is not None for b in batches):
        offset = torch.cat([b.offset if b.offset is not None else torch.zeros_like(b.lengths) for b in batches])
    return SequenceBatch(
        x=cat("x"),
        valid=cat("valid"),
        observed=cat("observed"),
        lengths=cat("lengths"),
        u=None if first.u is None else cat("u"),
        index=index,
        names=names,
        offset=offset,
    )


def with_covariates(batch: SequenceBatch, u: Any) -> SequenceBatch:
    """The same batch with covariates ``u`` attached (replacing any it had).

    Args:
        batch: a SequenceBatch with ``x [B, T, D]``.
        u: ``[B, T, U]`` array/tensor, ``[T, U]`` or ``[T]`` shared by every sequence, or a list of
            ``B`` per-sequence ``[T_b, U]`` arrays (at least ``lengths[b]`` rows). Must be finite on
            valid steps; padded steps are set to ``0``.

    Returns:
        a new SequenceBatch with ``u [B, T, U]`` of ``x``'s dtype and device.
    """
    if not isinstance(batch, SequenceBatch):
        raise TypeError(f"batch: expected a SequenceBatch, got {type(batch).__name__}")
    lengths = batch.lengths.cpu()
    ut = _covariate_tensor(u, lengths, batch.max_length, batch.x.dtype, "u")
    return dataclasses.replace(batch, u=ut.to(batch.device))


def extend_index(index: Any, horizon: int):
    """Continue a time index by ``horizon`` steps (for labelling forecasts).

    * ``DatetimeIndex`` / ``PeriodIndex`` with a frequency (set or inferable): the next periods.
    * integer index with a constant step (e.g. years): the next integers.
    * anything else: a ``RangeIndex`` of positions ``len(index) .. len(index) + horizon - 1``.

    Returns:
        a ``pandas.Index`` of length ``horizon``.
    """
    import pandas as pd

    if not isinstance(horizon, (int, np.integer)) or isinstance(horizon, bool) or horizon < 1:
        raise ValueError(f"horizon: expected a positive integer, got {horizon!r}")
    index = pd.Index(index)
    n = len(index)
    if n == 0:
        raise ValueError("index: expected a non-empty index")
    if isinstance(index, pd.PeriodIndex):
        return pd.period_range(index[-1] + 1, periods=horizon, freq=index.freq)
    if isinstance(index, pd.DatetimeIndex):
        freq = index.freq or (pd.infer_freq(index) if n >= 3 else None)
        if freq is not None:
            return pd.date_range(index[-1], periods=horizon + 1, freq=freq)[1:]
    elif pd.api.types.is_integer_dtype(index.dtype):
        vals = index.to_numpy()
        step = int(vals[1] - vals[0]) if n >= 2 else 1
        if n < 2 or (step != 0 and np.all(np.diff(vals) == step)):
            return pd.Index(vals[-1] + step * np.arange(1, horizon + 1), name=index.name)
    return pd.RangeIndex(n, n + horizon, name=index.name)
