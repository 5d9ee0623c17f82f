"""Per-dimension standardisation fitted on training data only.

    scaler = Standardizer().fit(splits["train"])          # mean/std over observed values only
    train, valid = scaler.transform(splits["train"]), scaler.transform(splits["valid"])
    ...
    pred = scaler.inverse_transform(pred_mean)            # [..., D] back to the original scale
    pred_sd = scaler.inverse_transform_scale(pred_sd)     # standard deviations: scale only

Padding and missing values never enter the statistics and stay ``0`` / unobserved after
transforming. ``state_dict()`` / ``load_state_dict()`` store the fitted statistics with a model.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Optional, Union

import numpy as np
import torch

from .batch import SequenceBatch

__all__ = ["Standardizer"]


class Standardizer:
    """``x -> (x - mean) / std`` per dimension, with statistics from observed training values.

    Args:
        min_std: floor on the standard deviation (avoids dividing by zero for constant or
            single-valued dimensions).

    Attributes (after :meth:`fit`):
        mean: ``[D]`` float64 tensor.
        std: ``[D]`` float64 tensor (``>= min_std``).
    """

    def __init__(self, min_std: float = 1e-6):
        if isinstance(min_std, bool) or not isinstance(min_std, (int, float)) or not min_std > 0:
            raise ValueError(f"min_std: expected a positive number, got {min_std!r}")
        self.min_std = float(min_std)
        self.mean: Optional[torch.Tensor] = None
        self.std: Optional[torch.Tensor] = None

    def __repr__(self) -> str:
        if not self.fitted:
            return "Standardizer(unfitted)"
        return f"Standardizer(dim={self.dim}, mean={self.mean.tolist()}, std={self.std.tolist()})"

    @property
    def fitted(self) -> bool:
        return self.mean is not None

    @property
    def dim(self) -> int:
        self._require_fitted()
        return int(self.mean.shape[0])

    def _require_fitted(self):
        if not self.fitted:
            raise RuntimeError("Standardizer is not fitted: call fit(train_batch) or load_state_dict(...) first")

    # ------------------------------------------------------------------ fitting
    def fit(self, batch: SequenceBatch) -> "Standardizer":
        """Fit mean/std per dimension over the observed values of ``batch`` (``x [B, T, D]``).

        Padding and missing values are ignored. A dimension with no observed value gets
        mean ``0`` and std ``1`` (with a warning). Returns ``self``.
        """
        if not isinstance(batch, SequenceBatch):
            raise TypeError(f"batch: expected a SequenceBatch (the training data), got {type(batch).__name__}")
        x = batch.x.detach().to("cpu", torch.float64)
        m = (batch.observed & batch.valid[..., None]).cpu()
        count = m.sum(dim=(0, 1)).to(torch.float64)  # [D]
        safe = count.clamp(min=1)
        mean = torch.where(m, x, 0.0).sum(dim=(0, 1)) / safe
        var = torch.where(m, (x - mean) ** 2, 0.0).sum(dim=(0, 1)) / safe
        empty = count == 0
        if empty.any():
            warnings.warn(
                f"Standardizer.fit: dimension(s) {torch.nonzero(empty).flatten().tolist()} have no observed "
                f"values; using mean 0 and std 1 for them",
                RuntimeWarning,
                stacklevel=2,
            )
        self.mean = torch.where(empty, 0.0, mean)
        self.std = torch.where(empty, 1.0, var.sqrt().clamp(min=self.min_std))
        return self

    def fit_transform(self, batch: SequenceBatch) -> SequenceBatch:
        return self.fit(batch).transform(batch)

    # ------------------------------------------------------------------ applying
    def _stats_like(self, t: torch.Tensor, name: str):
        self._require_fitted()
        if t.shape[-1:] != (self.dim,):
            raise ValueError(f"{name}: expected last dimension D={self.dim} (as fitted), got shape {tuple(t.shape)}")
        return self.mean.to(t.device, t.dtype), self.std.to(t.device, t.dtype)

    def transform(self, batch: SequenceBatch) -> SequenceBatch:
        """The batch with ``x`` standardised on observed values (``0`` elsewhere); masks unchanged."""
        if not isinstance(batch, SequenceBatch):
            raise TypeError(f"batch: expected a SequenceBatch, got {type(batch).__name__}")
        mean, std = self._stats_like(batch.x, "batch.x")
        x = torch.where(batch.observed, (batch.x - mean) / std, torch.zeros((), dtype=batch.x.dtype, device=batch.x.device))
        return dataclasses.replace(batch, x=x)

    def inverse_transform(self, data: Union[SequenceBatch, torch.Tensor, np.ndarray]) -> Any:
        """Back to the original scale: ``x * std + mean``.

        Args:
            data: a standardised :class:`SequenceBatch` (only observed values are changed), or a
                tensor / numpy array ``[..., D]`` of values on the standardised scale (e.g.
                forecast means or samples ``[S, B, H, D]``).

        Returns:
            the same kind of object as ``data``.
        """
        if isinstance(data, SequenceBatch):
            mean, std = self._stats_like(data.x, "data.x")
            x = torch.where(data.observed, data.x * std + mean, torch.zeros((), dtype=data.x.dtype, device=data.x.device))
            return dataclasses.replace(data, x=x)
        if isinstance(data, np.ndarray):
            return self.inverse_transform(torch.from_numpy(np.asarray(data, dtype=np.float64))).numpy()
        if isinstance(data, torch.Tensor):
            if not data.is_floating_point():
                raise TypeError(f"data: expected a floating tensor, got dtype {data.dtype}")
            mean, std = self._stats_like(data, "data")
            return data * std + mean
        raise TypeError(f"data: expected a SequenceBatch, torch.Tensor or numpy array [..., D], got {type(data).__name__}")

    def inverse_transform_scale(self, scale: Union[torch.Tensor, np.ndarray]) -> Any:
        """Standard deviations / scales ``[..., D]`` back to the original units (``scale * std``)."""
        if isinstance(scale, np.ndarray):
            return self.inverse_transform_scale(torch.from_numpy(np.asarray(scale, dtype=np.float64))).numpy()
        if not isinstance(scale, torch.Tensor) or not scale.is_floating_point():
            raise TypeError(f"scale: expected a floating tensor or numpy array [..., D], got {type(scale).__name__}")
        _, std = self._stats_like(scale, "scale")
        return scale * std

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict:
        """``{"mean": [D], "std": [D], "min_std": float}`` (tensors are copies)."""
        self._require_fitted()
        return {"mean": self.mean.clone(), "std": self.std.clone(), "min_std": self.min_std}

    def load_state_dict(self, state: dict) -> "Standardizer":
        """Restore statistics saved by :meth:`state_dict`. Returns ``self``."""
        if not isinstance(state, dict):
            raise TypeError(f"state: expected a dict from Standardizer.state_dict(), got {type(state).__name__}")
        missing = {"mean", "std"} - set(state)
        if missing:
            raise ValueError(f"state: missing key(s) {sorted(missing)}; expected keys mean, std (and min_std)")
        mean = torch.as_tensor(state["mean"], dtype=torch.float64).detach().clone().cpu()
        std = torch.as_tensor(state["std"], dtype=torch.float64).detach().clone().cpu()
        if mean.dim() != 1 or mean.shape != std.shape or mean.numel() == 0:
            raise ValueError(f"state: expected mean and std of the same shape [D], got {tuple(mean.shape)} and {tuple(std.shape)}")
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all() and (std > 0).all()):
            raise ValueError("state: mean must be finite and std finite and positive")
        self.min_std = float(state.get("min_std", self.min_std))
        self.mean, self.std = mean, std
        return self
