"""Minibatching, length bucketing, and cutting long series into splits and windows.

* :class:`SequenceDataset` holds one full padded :class:`SequenceBatch` and hands out sub-batches.
* :func:`minibatches` yields sub-batches (padding trimmed to each sub-batch's longest sequence),
  optionally shuffled with an explicit seed and bucketed by length.
* :func:`split_series` cuts one long series into contiguous train / valid / test pieces.
* :func:`sliding_windows` cuts one series into a batch of (possibly overlapping) windows.

Randomness always comes from a local ``numpy.random.Generator`` built from ``seed``; the global
RNGs are never touched, so the same seed gives the same batches.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator, List, Sequence, Union

import numpy as np
import torch

from .batch import SequenceBatch
from .convert import concat_batches, from_numpy, from_pandas

__all__ = [
    "SequenceDataset",
    "minibatch_indices",
    "minibatches",
    "padding_fraction",
    "shard_minibatch_indices",
    "sliding_windows",
    "split_series",
]

SeedLike = Union[None, int, np.random.Generator]


def _rng(seed: SeedLike) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None or (isinstance(seed, (int, np.integer)) and not isinstance(seed, bool)):
        return np.random.default_rng(seed)
    raise TypeError(f"seed: expected an int, a numpy.random.Generator or None, got {type(seed).__name__}")


def _as_batch(data: Any, name: str) -> SequenceBatch:
    if isinstance(data, SequenceDataset):
        return data.batch
    if isinstance(data, SequenceBatch):
        return data
    if isinstance(data, (list, tuple)):
        return SequenceBatch.from_sequences(list(data))
    raise TypeError(f"{name}: expected a SequenceBatch, SequenceDataset or list of [T_b, D] sequences, got {type(data).__name__}")


def minibatch_indices(
    lengths: Any,
    batch_size: int,
    shuffle: bool = True,
    seed: SeedLike = None,
    bucket_by_length: bool = False,
    drop_last: bool = False,
) -> List[np.ndarray]:
    """The sequence indices of each minibatch (see :func:`minibatches`).

    Args:
        lengths: ``[B]`` sequence lengths.
        batch_size: sequences per minibatch (the last one may be smaller unless ``drop_last``).
        shuffle: randomise which sequences go together (and, with bucketing, the batch order).
        seed: int / ``numpy.random.Generator`` / ``None`` (fresh entropy); the global RNG is not used.
        bucket_by_length: sort sequences by length (ties broken randomly when shuffling) and cut the
            sorted list into consecutive batches, so each batch holds similar lengths and little
            padding; then shuffle the order of the batches.
        drop_last: drop a final incomplete batch.

    Returns:
        list of int64 index arrays; without ``drop_last`` they partition ``range(B)``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    lengths = np.asarray(lengths.cpu() if isinstance(lengths, torch.Tensor) else lengths)
    if lengths.ndim != 1 or len(lengths) == 0:
        raise ValueError(f"lengths: expected a non-empty 1-D array of lengths, got shape {lengths.shape}")
    B = len(lengths)
    rng = _rng(seed) if shuffle else None
    order = rng.permutation(B) if shuffle else np.arange(B)
    if bucket_by_length:
        # stable sort of the (shuffled) order: equal lengths stay in random order
        order = order[np.argsort(lengths[order], kind="stable")]
    batches = [order[i : i + batch_size] for i in range(0, B, batch_size)]
    if drop_last and len(batches) > 0 and len(batches[-1]) < batch_size:
        batches = batches[:-1]
    if bucket_by_length and shuffle:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return [np.asarray(b, dtype=np.int64) for b in batches]


def shard_minibatch_indices(batches: Sequence[np.ndarray], rank: int, world_size: int) -> List[np.ndarray]:
    """Rank ``rank``'s share of each global minibatch, for data-parallel training.

    Every rank computes the same global minibatches (e.g. :func:`minibatch_indices` with batch size
    ``world_size * b``, bucketed and seeded by epoch) and keeps positions ``rank, rank + world_size,
    ...`` of each: the ranks' pieces of a bucketed batch have similar lengths, their union is the
    global batch, and every rank gets one piece per global batch, so all ranks take the same number
    of steps. A piece may be empty (a last batch with fewer than ``world_size`` sequences); the
    rank then contributes nothing to that step but must still take part in it.

    Args:
        batches: the global minibatches (int index arrays), identical on every rank.
        rank: ``0 <= rank < world_size``.
        world_size: number of ranks.

    Returns:
        list of int64 index arrays, one per global batch (possibly empty).
    """
    for name, v in (("world_size", world_size), ("rank", rank)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{name}: expected an int, got {type(v).__name__}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank, world_size: expected 0 <= rank < world_size, got {rank}, {world_size}")
    return [np.asarray(b, dtype=np.int64)[rank::world_size] for b in batches]


def minibatches(
    data: Any,
    batch_size: int,
    shuffle: bool = True,
    seed: SeedLike = None,
    bucket_by_length: bool = False,
    drop_last: bool = False,
) -> Iterator[SequenceBatch]:
    """Yield sub-batches of ``data``, each trimmed to its own longest sequence.

    Args:
        data: a :class:`SequenceBatch`, :class:`SequenceDataset` or list of ``[T_b, D]`` sequences.
        batch_size, shuffle, seed, bucket_by_length, drop_last: see :func:`minibatch_indices`.
            Pass a different ``seed`` each epoch (e.g. ``seed=base_seed + epoch``) for new orders.

    Yields:
        :class:`SequenceBatch` with ``x [b, T_max(b), D]`` (``b <= batch_size``); the union over
        all yielded batches is every sequence exactly once (without ``drop_last``).

    Example:
        >>> for mb in minibatches(train, batch_size=20, seed=epoch, bucket_by_length=True):
        ...     loss = svi.step(mb)
    """
    batch = _as_batch(data, "data")
    for idx in minibatch_indices(batch.lengths, batch_size, shuffle, seed, bucket_by_length, drop_last):
        yield batch[idx.tolist()]


def padding_fraction(batches: Sequence[SequenceBatch]) -> float:
    """Fraction of padded (invalid) steps over all ``B * T`` steps of ``batches``."""
    if isinstance(batches, SequenceBatch):
        batches = [batches]
    total = sum(b.batch_size * b.max_length for b in batches)
    if total == 0:
        raise ValueError("batches: expected at least one batch")
    return 1.0 - sum(b.num_frames for b in batches) / total


class SequenceDataset:
    """A full padded batch of sequences that hands out minibatches.

    Args:
        data: a :class:`SequenceBatch` or list of ``[T_b, D]`` sequences.

    Attributes:
        batch: the full :class:`SequenceBatch` ``[N, T, D]``.
    """

    def __init__(self, data: Any):
        self.batch = _as_batch(data, "data")

    def __len__(self) -> int:
        return self.batch.batch_size

    def __getitem__(self, key) -> SequenceBatch:
        return self.batch[key]

    def __repr__(self) -> str:
        b = self.batch
        return f"SequenceDataset(num_sequences={b.batch_size}, max_length={b.max_length}, dim={b.dim}, num_frames={b.num_frames})"

    @property
    def num_frames(self) -> int:
        """Total valid steps over all sequences (normaliser for per-frame bounds)."""
        return self.batch.num_frames

    def batches(
        self,
        batch_size: int,
        shuffle: bool = True,
        seed: SeedLike = None,
        bucket_by_length: bool = False,
        drop_last: bool = False,
    ) -> Iterator[SequenceBatch]:
        """Same as :func:`minibatches` on this dataset."""
        return minibatches(self.batch, batch_size, shuffle, seed, bucket_by_length, drop_last)

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        n = len(self)
        return n // batch_size if drop_last else -(-n // batch_size)


# ---------------------------------------------------------------------------- one long series
def _single_series(series: Any, name: str) -> SequenceBatch:
    """A one-sequence batch (trimmed to its length) from an array, pandas object or batch."""
    import pandas as pd

    if isinstance(series, SequenceBatch):
        if series.batch_size != 1:
            raise ValueError(f"{name}: expected a single series (batch of 1), got a batch of {series.batch_size}")
        return series[0]
    if isinstance(series, pd.DataFrame):
        return from_pandas(series, as_multivariate=True)
    if isinstance(series, pd.Series):
        return from_pandas(series)
    if isinstance(series, (torch.Tensor, np.ndarray)):
        arr = series
    else:
        try:
            arr = np.asarray(series)
        except Exception as err:
            raise TypeError(f"{name}: expected an array, tensor, pandas object or SequenceBatch, got {type(series).__name__}") from err
    if getattr(arr, "ndim", None) not in (1, 2):
        raise ValueError(
            f"{name}: expected one series of shape [T] or [T, D], got shape {tuple(getattr(arr, 'shape', ()))}"
        )
    return from_numpy(arr, dtype=arr.dtype if isinstance(arr, torch.Tensor) and arr.is_floating_point() else None)


def _slice_time(b: SequenceBatch, start: int, stop: int) -> SequenceBatch:
    """Steps ``start:stop`` of a one-sequence batch (all valid); ``offset`` records the absolute start."""
    L = stop - start
    base = b.offset if b.offset is not None else torch.zeros_like(b.lengths)
    return dataclasses.replace(
        b,
        x=b.x[:, start:stop].clone(),
        valid=b.valid[:, start:stop].clone(),
        observed=b.observed[:, start:stop].clone(),
        lengths=torch.full_like(b.lengths, L),
        u=None if b.u is None else b.u[:, start:stop].clone(),
        index=None if b.index is None else [None if ix is None else ix[start:stop] for ix in b.index],
        names=None if b.names is None else list(b.names),
        offset=base + start,
    )


def _check_fraction(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name}: expected a number in [0, 1), got {type(value).__name__}")
    value = float(value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name}: expected a fraction in [0, 1), got {value}")
    return value


def split_series(series: Any, valid_fraction: float = 0.1, test_fraction: float = 0.1) -> dict:
    """Split one long series into contiguous train / valid / test pieces (in time order).

    The last ``round(T * test_fraction)`` steps are the test piece, the
    ``round(T * valid_fraction)`` before them the validation piece, the rest the training piece.
    The time index (if any) is sliced along, so forecasts from the end of ``train`` line up with
    the start of ``valid``.

    Args:
        series: ``[T]`` / ``[T, D]`` array or tensor, pandas Series (univariate) / DataFrame
            (one multivariate series), or a one-sequence :class:`SequenceBatch`.
        valid_fraction: fraction of steps for validation, in ``[0, 1)``.
        test_fraction: fraction of steps for testing, in ``[0, 1)``.

    Returns:
        ``{"train": SequenceBatch, "valid": SequenceBatch | None, "test": SequenceBatch | None}``,
        each ``[1, T_split, D]``; a split with fraction ``0`` is ``None``.
    """
    valid_fraction = _check_fraction(valid_fraction, "valid_fraction")
    test_fraction = _check_fraction(test_fraction, "test_fraction")
    if valid_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"valid_fraction, test_fraction: expected a sum < 1 to leave training data, got {valid_fraction + test_fraction}"
        )
    b = _single_series(series, "series")
    T = int(b.lengths[0])
    n_test = int(round(T * test_fraction))
    n_valid = int(round(T * valid_fraction))
    if test_fraction > 0 and n_test == 0:
        raise ValueError(f"test_fraction: {test_fraction} of {T} steps is less than one step")
    if valid_fraction > 0 and n_valid == 0:
        raise ValueError(f"valid_fraction: {valid_fraction} of {T} steps is less than one step")
    n_train = T - n_valid - n_test
    if n_train < 1:
        raise ValueError(f"series: {T} steps leave no training steps with these fractions")
    return {
        "train": _slice_time(b, 0, n_train),
        "valid": _slice_time(b, n_train, n_train + n_valid) if n_valid else None,
        "test": _slice_time(b, n_train + n_valid, T) if n_test else None,
    }


def sliding_windows(series: Any, window: int, stride: int = 1) -> SequenceBatch:
    """Cut one series into windows of ``window`` steps starting every ``stride`` steps.

    Windows start at ``0, stride, 2 * stride, ...`` while they fit entirely (a tail shorter than
    ``window`` is dropped). Covariates and the time index are cut along; ``names`` holds each
    window's start offset.

    Args:
        series: ``[T]`` / ``[T, D]`` array or tensor, pandas Series / DataFrame (one multivariate
            series), or a one-sequence :class:`SequenceBatch`.
        window: steps per window, ``1 <= window <= T``.
        stride: steps between window starts, ``>= 1``.

    Returns:
        :class:`SequenceBatch` ``[num_windows, window, D]`` with
        ``num_windows = (T - window) // stride + 1``.
    """
    for arg, v in (("window", window), ("stride", stride)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{arg}: expected a positive integer, got {v!r}")
    b = _single_series(series, "series")
    T = int(b.lengths[0])
    if window > T:
        raise ValueError(f"window: expected at most the series length {T}, got {window}")
    starts = list(range(0, T - window + 1, stride))
    pieces = [_slice_time(b, s, s + window) for s in starts]
    index = None if b.index is None else [p.index[0] for p in pieces]
    return dataclasses.replace(concat_batches(pieces), index=index, names=starts)
