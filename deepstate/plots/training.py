"""Training curves from the Trainer's JSON-lines metrics log.

:class:`deepstate.inference.Trainer` (``metrics_path=...``) appends one JSON object per line:

* ``{"kind": "step", "epoch" (0-based), "step" (within the epoch), "global_step", "loss",
  "bound_per_frame", "annealing", "lr", "grad_norm", "skipped"}`` per minibatch;
* ``{"kind": "epoch", "epoch" (1-based: epochs completed), "train_loss", "train_bound",
  "valid_bound" (or null), "lr", "annealing", "steps", "skipped", "seconds", "stopped_early"}``
  per epoch.

Bounds are in nats per frame (higher is better); ``train_loss`` is the optimised loss, normalised
by a fixed frames-per-minibatch constant, so it is about minus the (annealed) bound per frame.
Non-finite numbers are logged as ``null``. After a resume the records since the checkpoint appear
again: the last record per epoch / per global step wins.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, List, Mapping, Union

import numpy as np

from ._save import save_figure

__all__ = ["training_curves", "read_metrics"]


def read_metrics(metrics_path_or_records: Any) -> dict:
    """Read a metrics log into ``{"step": [records], "epoch": [records]}``, deduplicated and sorted.

    Args:
        metrics_path_or_records: a JSON-lines file path, or an iterable of dicts (the parsed
            records, or ``Trainer.history``: dicts without ``"kind"`` that have ``"train_bound"``
            count as epoch records).

    Raises:
        ValueError: a line that is not JSON (naming the file and line), or no epoch/step record.
    """
    if isinstance(metrics_path_or_records, (str, os.PathLike)):
        path = Path(metrics_path_or_records)
        records = []
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"metrics_path_or_records: {path} line {i} is not JSON ({err.msg})") from None
    elif isinstance(metrics_path_or_records, Iterable) and not isinstance(metrics_path_or_records, (bytes, Mapping)):
        records = list(metrics_path_or_records)
    else:
        raise TypeError(
            f"metrics_path_or_records: expected a file path or a list of dicts, got {type(metrics_path_or_records).__name__}"
        )
    steps, epochs = {}, {}
    for rec in records:
        if not isinstance(rec, Mapping):
            raise TypeError(f"metrics_path_or_records: expected dict records, got {type(rec).__name__}")
        kind = rec.get("kind", "epoch" if "train_bound" in rec else None)
        if kind == "step" and "global_step" in rec:
            steps[rec["global_step"]] = rec  # a resumed run repeats steps: keep the last
        elif kind == "epoch" and "epoch" in rec:
            epochs[rec["epoch"]] = rec
    if not steps and not epochs:
        raise ValueError("metrics_path_or_records: no step or epoch records found (is this a Trainer metrics log?)")
    return {"step": [steps[k] for k in sorted(steps)], "epoch": [epochs[k] for k in sorted(epochs)]}


def _col(records: List[Mapping], key: str) -> np.ndarray:
    return np.array([np.nan if r.get(key) is None else float(r[key]) for r in records], dtype=float)


def training_curves(metrics_path_or_records: Any, path: Union[None, str, os.PathLike] = None):
    """Plot training and validation bounds (and the training loss) from a Trainer metrics log.

    Panels: (1) bound per epoch, nats per frame: per-minibatch training bound (thin), the epoch's
    training bound and the validation bound; (2) training loss per epoch (with per-minibatch
    losses); (3) the same bounds against cumulative wall-clock seconds, when the log records
    ``seconds``. Minibatch ``j`` of ``n`` in (0-based) epoch ``e`` sits at ``x = e + (j + 1) / n``,
    so it lines up with epoch record ``e + 1``.

    Args:
        metrics_path_or_records: the JSON-lines file written by ``Trainer(metrics_path=...)``, or
            its records / ``Trainer.history``.
        path: optional PNG path (parent folders created, written atomically).

    Returns:
        the Figure.
    """
    import matplotlib.pyplot as plt

    data = read_metrics(metrics_path_or_records)
    steps, epochs = data["step"], data["epoch"]
    ep = _col(epochs, "epoch")
    seconds = _col(epochs, "seconds") if epochs else np.array([])
    has_time = seconds.size > 0 and np.isfinite(seconds).all()
    ncols = 3 if has_time else 2
    fig, axes = plt.subplots(1, ncols, figsize=(4.6 * ncols, 3.6), squeeze=False)
    ax_b, ax_l = axes[0, 0], axes[0, 1]

    if steps:
        se = _col(steps, "epoch")
        sj = _col(steps, "step")
        per_epoch = {e: sj[se == e].max() + 1 for e in np.unique(se)}
        sx = se + (sj + 1) / np.array([per_epoch[e] for e in se])
        ax_b.plot(sx, _col(steps, "bound_per_frame"), color="C0", lw=0.6, alpha=0.35, label="train (minibatch)")
        ax_l.plot(sx, _col(steps, "loss"), color="C2", lw=0.6, alpha=0.35, label="minibatch")
    if epochs:
        mk = "o" if len(epochs) <= 30 else None
        ax_b.plot(ep, _col(epochs, "train_bound"), color="C0", marker=mk, ms=3, label="train (epoch)")
        valid = _col(epochs, "valid_bound")
        if np.isfinite(valid).any():
            ax_b.plot(ep, valid, color="C1", marker=mk, ms=3, label="validation")
        ax_l.plot(ep, _col(epochs, "train_loss"), color="C2", marker=mk, ms=3, label="epoch mean")
    ax_b.set_xlabel("epoch")
    ax_b.set_ylabel("bound (nats per frame)")
    ax_b.set_title("bound (higher is better)")
    ax_l.set_xlabel("epoch")
    ax_l.set_ylabel("training loss (nats per frame)")
    ax_l.set_title("training loss (lower is better)")
    if has_time:
        ax_t = axes[0, 2]
        wall = np.cumsum(seconds)
        ax_t.plot(wall, _col(epochs, "train_bound"), color="C0", marker=mk, ms=3, label="train (epoch)")
        if np.isfinite(valid).any():
            ax_t.plot(wall, valid, color="C1", marker=mk, ms=3, label="validation")
        ax_t.set_xlabel("wall-clock training time (s)")
        ax_t.set_ylabel("bound (nats per frame)")
        ax_t.set_title("bound against time")
        ax_t.legend(fontsize=8)
    for ax in (ax_b, ax_l):
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig
