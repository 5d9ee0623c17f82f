"""`SequenceBatch`: a padded, masked batch of variable-length multivariate sequences.

Every consumer in deepstate (Pyro's model/guide, the particle filter, forecasting, checks) reads
sequences through this one container, so the masking rules live in one place:

* ``valid [B, T]``: step ``t`` exists for sequence ``b`` (``t < lengths[b]``). Padding is always at
  the end of a sequence. It gates the latent sites, particle weights, resampling and the frame
  count that bounds are normalised by.
* ``observed [B, T, D]``: the value ``x[b, t, d]`` was observed. It masks the emission likelihood
  only; a step with nothing observed still has a transition ``p(z_t | z_{t-1})``.
  ``observed`` is always ``False`` where ``valid`` is ``False``.
* NaN in the input becomes ``observed = False`` with the value set to ``0`` when the batch is built,
  so no NaN ever reaches a loss or a gradient.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import numpy as np
import torch

__all__ = ["SequenceBatch"]


def _as_float_tensor(value, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        t = value
    else:
        try:
            arr = np.asarray(value)
        except Exception as err:  # pragma: no cover - numpy raises many types
            raise TypeError(f"{name}: expected an array-like of numbers, got {type(value).__name__}") from err
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise TypeError(f"{name}: expected numeric values, got dtype {arr.dtype}")
        arr = np.ascontiguousarray(arr)
        # read-only arrays (pandas' .to_numpy() views) are copied: torch tensors must be writable
        t = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
    if not (t.is_floating_point() or t.dtype in (torch.bool, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)):
        raise TypeError(f"{name}: expected a real-valued tensor, got dtype {t.dtype}")
    if not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    return t


@dataclasses.dataclass
class SequenceBatch:
    """A padded batch of ``B`` sequences of up to ``T`` steps and ``D`` dimensions.

    Attributes:
        x: ``[B, T, D]`` float values; ``0`` wherever ``observed`` is ``False``.
        valid: ``[B, T]`` bool, the step exists (not padding).
        observed: ``[B, T, D]`` bool, the value is observed (implies ``valid``).
        lengths: ``[B]`` int64, number of valid steps of each sequence (``>= 1``).
        u: optional ``[B, T, U]`` covariates (known inputs / interventions / future regressors).
            Covariates must be finite on valid steps.
        index: optional list of ``B`` per-sequence time indices (e.g. ``pandas.Index``) of length
            ``lengths[b]``, kept so forecasts can continue them.
        names: optional list of ``B`` sequence identifiers.
        offset: optional ``[B]`` int64, the absolute position (0-based step number in the original
            series) of each sequence's first step; ``None`` means 0. Chunks and windows cut from a
            longer series set it, so that models whose features depend on the position (the
            DeepState model's season) see the true phase.

    Build one with :meth:`from_sequences` (list of ``[T_b, D]`` arrays), or the constructors in
    :mod:`deepstate.data` (numpy arrays, pandas frames).
    """

    x: torch.Tensor
    valid: torch.Tensor
    observed: torch.Tensor
    lengths: torch.Tensor
    u: Optional[torch.Tensor] = None
    index: Optional[list] = None
    names: Optional[list] = None
    offset: Optional[torch.Tensor] = None

    def __post_init__(self):
        if not isinstance(self.x, torch.Tensor) or self.x.dim() != 3:
            raise ValueError(f"x: expected a tensor of shape [B, T, D], got {getattr(self.x, 'shape', type(self.x))}")
        B, T, D = self.x.shape
        if B == 0 or T == 0 or D == 0:
            raise ValueError(f"x: expected non-empty [B, T, D], got shape {tuple(self.x.shape)}")
        if not isinstance(self.valid, torch.Tensor) or self.valid.shape != (B, T):
            raise ValueError(f"valid: expected shape {(B, T)}, got {getattr(self.valid, 'shape', None)}")
        if not isinstance(self.observed, torch.Tensor) or self.observed.shape != (B, T, D):
            raise ValueError(f"observed: expected shape {(B, T, D)}, got {getattr(self.observed, 'shape', None)}")
        if not isinstance(self.lengths, torch.Tensor) or self.lengths.shape != (B,):
            raise ValueError(f"lengths: expected shape {(B,)}, got {getattr(self.lengths, 'shape', None)}")
        if self.valid.dtype != torch.bool or self.observed.dtype != torch.bool:
            raise TypeError("valid, observed: expected bool tensors")
        if self.u is not None and (self.u.dim() != 3 or self.u.shape[:2] != (B, T)):
            raise ValueError(f"u: expected shape [{B}, {T}, U], got {tuple(self.u.shape)}")
        if self.index is not None and len(self.index) != B:
            raise ValueError(f"index: expected {B} per-sequence indices, got {len(self.index)}")
        if self.names is not None and len(self.names) != B:
            raise ValueError(f"names: expected {B} names, got {len(self.names)}")
        if self.offset is not None and (not isinstance(self.offset, torch.Tensor) or self.offset.shape != (B,)
                                        or self.offset.is_floating_point()):
            raise ValueError(f"offset: expected an int64 tensor of shape {(B,)}, got {getattr(self.offset, 'shape', self.offset)}")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_sequences(
        cls,
        sequences: Sequence[Any],
        covariates: Optional[Sequence[Any]] = None,
        index: Optional[list] = None,
        names: Optional[list] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> "SequenceBatch":
        """Pad a list of ``[T_b, D]`` (or ``[T_b]``) arrays/tensors into a batch.

        NaN values become ``observed=False`` with value ``0``.

        Args:
            sequences: non-empty list of numeric arrays, each of length ``T_b >= 1``.
            covariates: optional list of ``[T_b, U]`` arrays, one per sequence, same lengths.
            index: optional list of per-sequence time indices (each of length ``T_b``).
            names: optional list of sequence identifiers.
            dtype: float dtype of ``x`` (default: torch's default dtype).

        Example:
            >>> b = SequenceBatch.from_sequences([np.zeros((5, 2)), np.ones((3, 2))])
            >>> b.x.shape, b.lengths.tolist()
            (torch.Size([2, 5, 2]), [5, 3])
        """
        if isinstance(sequences, (torch.Tensor, np.ndarray)) or not isinstance(sequences, Sequence):
            raise TypeError("sequences: expected a list of [T_b, D] arrays")
        if len(sequences) == 0:
            raise ValueError("sequences: expected at least one sequence, got an empty list")
        dtype = dtype or torch.get_default_dtype()
        seqs = []
        for i, s in enumerate(sequences):
            t = _as_float_tensor(s, f"sequences[{i}]").to(dtype)
            if t.dim() == 1:
                t = t[:, None]
            if t.dim() != 2:
                raise ValueError(f"sequences[{i}]: expected shape [T, D] or [T], got {tuple(t.shape)}")
            if t.shape[0] == 0:
                raise ValueError(f"sequences[{i}]: expected at least one time step, got length 0")
            seqs.append(t)
        D = seqs[0].shape[1]
        for i, t in enumerate(seqs):
            if t.shape[1] != D:
                raise ValueError(f"sequences[{i}]: expected {D} dimensions like sequences[0], got {t.shape[1]}")
        lengths = torch.tensor([t.shape[0] for t in seqs], dtype=torch.long)
        B, T = len(seqs), int(lengths.max())
        x = torch.zeros(B, T, D, dtype=dtype)
        observed = torch.zeros(B, T, D, dtype=torch.bool)
        for b, t in enumerate(seqs):
            finite = ~torch.isnan(t)
            if torch.isinf(t).any():
                raise ValueError(f"sequences[{b}]: contains infinite values")
            x[b, : t.shape[0]] = torch.where(finite, t, torch.zeros((), dtype=dtype))
            observed[b, : t.shape[0]] = finite
        valid = torch.arange(T)[None, :] < lengths[:, None]
        u = None
        if covariates is not None:
            if len(covariates) != B:
                raise ValueError(f"covariates: expected {B} arrays (one per sequence), got {len(covariates)}")
            us = []
            for i, c in enumerate(covariates):
                c = _as_float_tensor(c, f"covariates[{i}]").to(dtype)
                if c.dim() == 1:
                    c = c[:, None]
                if c.dim() != 2 or c.shape[0] != lengths[i]:
                    raise ValueError(
                        f"covariates[{i}]: expected shape [{int(lengths[i])}, U] to match sequences[{i}], got {tuple(c.shape)}"
                    )
                if not torch.isfinite(c).all():
                    raise ValueError(f"covariates[{i}]: covariates must be finite (no NaN/inf)")
                us.append(c)
            U = us[0].shape[1]
            if any(c.shape[1] != U for c in us):
                raise ValueError("covariates: every sequence needs the same number of covariates U")
            u = torch.zeros(B, T, U, dtype=dtype)
            for b, c in enumerate(us):
                u[b, : c.shape[0]] = c
        if index is not None:
            if len(index) != B:
                raise ValueError(f"index: expected {B} per-sequence indices, got {len(index)}")
            for i, ix in enumerate(index):
                if len(ix) != lengths[i]:
                    raise ValueError(f"index[{i}]: expected length {int(lengths[i])}, got {len(ix)}")
        return cls(x=x, valid=valid, observed=observed, lengths=lengths, u=u, index=index, names=names)

    @classmethod
    def from_numpy(cls, array, **kwargs) -> "SequenceBatch":
        """See :func:`deepstate.data.from_numpy` (``[T]``, ``[T, D]`` or ``[B, T, D]`` arrays)."""
        from .convert import from_numpy

        return from_numpy(array, **kwargs)

    @classmethod
    def from_pandas(cls, data, **kwargs) -> "SequenceBatch":
        """See :func:`deepstate.data.from_pandas` (wide or long pandas frames, index kept)."""
        from .convert import from_pandas

        return from_pandas(data, **kwargs)

    def with_covariates(self, u) -> "SequenceBatch":
        """This batch with covariates ``u`` attached; see :func:`deepstate.data.with_covariates`."""
        from .convert import with_covariates

        return with_covariates(self, u)

    # ------------------------------------------------------------------ properties
    @property
    def batch_size(self) -> int:
        return self.x.shape[0]

    @property
    def max_length(self) -> int:
        return self.x.shape[1]

    @property
    def dim(self) -> int:
        return self.x.shape[2]

    @property
    def num_frames(self) -> int:
        """Number of valid steps (frames) in the batch: the normaliser of bounds in nats/frame."""
        return int(self.valid.sum())

    @property
    def device(self) -> torch.device:
        return self.x.device

    def __len__(self) -> int:
        return self.batch_size

    # ------------------------------------------------------------------ transforms
    def _map_tensors(self, fn, **changes) -> "SequenceBatch":
        return dataclasses.replace(
            self,
            x=fn(self.x),
            valid=fn(self.valid),
            observed=fn(self.observed),
            lengths=fn(self.lengths),
            u=None if self.u is None else fn(self.u),
            offset=None if self.offset is None else fn(self.offset),
            **changes,
        )

    def to(self, *args, **kwargs) -> "SequenceBatch":
        """Move tensors to a device (and cast ``x``/``u`` when a dtype is given); masks stay bool."""

        def move(t):
            if t.is_floating_point():
                return t.to(*args, **kwargs)
            # masks and lengths keep their dtype, only change device
            dev = kwargs.get("device", next((a for a in args if isinstance(a, (str, torch.device))), None))
            return t.to(device=dev) if dev is not None else t

        return self._map_tensors(move)

    def double(self) -> "SequenceBatch":
        return self.to(torch.float64)

    def __getitem__(self, key) -> "SequenceBatch":
        """Sub-batch by integer, slice, list, index array/tensor or bool mask over sequences; trims padding."""
        if isinstance(key, (int, np.integer)) or (isinstance(key, (torch.Tensor, np.ndarray)) and key.ndim == 0):
            key = [int(key)]
        if isinstance(key, (torch.Tensor, np.ndarray)) and key.dtype in (torch.bool, np.bool_):
            if key.shape != (self.batch_size,):
                raise ValueError(f"key: expected a bool mask of shape ({self.batch_size},), got {tuple(key.shape)}")
            key = np.flatnonzero(np.asarray(key.cpu() if isinstance(key, torch.Tensor) else key))
        if isinstance(key, slice):
            idx = list(range(self.batch_size))[key]
        else:
            idx = [int(i) for i in (key.tolist() if isinstance(key, (torch.Tensor, np.ndarray)) else key)]
            bad = [i for i in idx if not -self.batch_size <= i < self.batch_size]
            if bad:
                raise IndexError(f"key: sequence index {bad[0]} out of range for a batch of {self.batch_size}")
            idx = [i % self.batch_size for i in idx]
        if len(idx) == 0:
            raise ValueError("key: selects no sequences")
        it = torch.tensor(idx, dtype=torch.long, device=self.x.device)
        T = int(self.lengths[it].max())
        return self._map_tensors(
            lambda t: t[it] if t.dim() == 1 else t[it, :T],
            index=None if self.index is None else [self.index[i] for i in idx],
            names=None if self.names is None else [self.names[i] for i in idx],
        )

    def pad_to(self, T: int) -> "SequenceBatch":
        """The same batch padded with ``T - max_length`` extra invalid steps (changes no number)."""
        extra = T - self.max_length
        if extra < 0:
            raise ValueError(f"T: expected >= {self.max_length}, got {T}")

        def pad(t):
            if t.dim() == 1:
                return t
            shape = list(t.shape)
            shape[1] = extra
            return torch.cat([t, torch.zeros(shape, dtype=t.dtype, device=t.device)], dim=1)

        return self._map_tensors(pad)

    def sequences(self) -> list:
        """The un-padded sequences as a list of ``[T_b, D]`` tensors, NaN where unobserved."""
        out = []
        for b in range(self.batch_size):
            L = int(self.lengths[b])
            v = self.x[b, :L].clone()
            v[~self.observed[b, :L]] = float("nan")
            out.append(v)
        return out
