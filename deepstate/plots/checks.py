"""Posterior predictive check panels: replicated statistics against the observed value.

Takes results (the table of :func:`deepstate.checks.predictive_check`, or plain arrays), never
models, and returns the matplotlib Figure; ``path`` also saves it as a PNG.
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from ._save import save_figure

__all__ = ["ppc_panels"]


def _entries(table_or_arrays: Any, statistics: Optional[Sequence[str]]):
    """-> list of (name, observed float, replicated [S], p-value float)."""
    from deepstate.checks.statistics import bayesian_p_values

    if hasattr(table_or_arrays, "attrs") and hasattr(table_or_arrays, "index"):  # DataFrame
        table = table_or_arrays
        reps = table.attrs.get("replicated")
        if not isinstance(reps, Mapping):
            raise ValueError(
                "table_or_arrays: the table has no replicated values (table.attrs['replicated']); pass the table "
                "returned by deepstate.checks.predictive_check, or a dict name -> (observed, replicated)"
            )
        names = list(table.index) if statistics is None else list(statistics)
        out = []
        for name in names:
            if name not in table.index or name not in reps:
                raise ValueError(f"statistics: {name!r} is not in the table; it has {list(table.index)}")
            out.append((str(name), float(table.loc[name, "observed"]), np.asarray(reps[name], float),
                        float(table.loc[name, "p_value"])))
        return out
    if isinstance(table_or_arrays, Mapping):
        names = list(table_or_arrays) if statistics is None else list(statistics)
        out = []
        for name in names:
            if name not in table_or_arrays:
                raise ValueError(f"statistics: {name!r} is not among {list(table_or_arrays)}")
            obs, rep = table_or_arrays[name]
            obs = float(np.asarray(obs))
            rep = np.asarray(rep, dtype=float).reshape(-1)
            if rep.size == 0:
                raise ValueError(f"table_or_arrays: {name!r} has no replicated values")
            out.append((str(name), obs, rep, float(bayesian_p_values(np.asarray(obs), rep))))
        return out
    raise TypeError(
        "table_or_arrays: expected the DataFrame of predictive_check or a dict name -> (observed, replicated [S]), "
        f"got {type(table_or_arrays).__name__}"
    )


def ppc_panels(
    table_or_arrays: Any,
    statistics: Optional[Sequence[str]] = None,
    path: Union[None, str, os.PathLike] = None,
    ncols: int = 3,
    bins: int = 30,
    title: Optional[str] = None,
):
    """One panel per test statistic: histogram of its replicated values, observed value as a line.

    Args:
        table_or_arrays: the ``DataFrame`` returned by :func:`deepstate.checks.predictive_check`
            (its ``attrs["replicated"]`` holds the ``[S]`` replicated values of each row), or a
            mapping ``name -> (observed scalar, replicated [S])`` (the p-value is then computed with
            :func:`deepstate.checks.bayesian_p_values`, mid-p for ties).
        statistics: rows to show, in order (default: all).
        path: optional PNG path (parent folders created, written atomically).
        ncols: panels per row.
        bins: histogram bins (fewer when the replicates take few distinct values).
        title: optional figure title (e.g. the replicate kind).

    Returns:
        the ``matplotlib.figure.Figure``. Each panel's title is ``name`` and ``p = ...``
        (``P(T_rep >= T_obs)``); x axis: the statistic's value, y axis: number of replicates.
    """
    import matplotlib.pyplot as plt

    entries = _entries(table_or_arrays, statistics)
    if not entries:
        raise ValueError("statistics: nothing to plot")
    if not isinstance(ncols, int) or ncols < 1:
        raise ValueError(f"ncols: expected a positive int, got {ncols!r}")
    ncols = min(ncols, len(entries))
    nrows = math.ceil(len(entries) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 2.9 * nrows), squeeze=False)
    for ax, (name, obs, rep, p) in zip(axes.flat, entries):
        finite = rep[np.isfinite(rep)]
        if finite.size:
            distinct = np.unique(finite).size
            ax.hist(finite, bins=max(1, min(bins, distinct)), color="C0", alpha=0.7, label="replicated")
        if np.isfinite(obs):
            ax.axvline(obs, color="C3", lw=2, label="observed")
        flag = "  (!)" if np.isfinite(p) and (p < 0.05 or p > 0.95) else ""
        ax.set_title(f"{name}\np = {p:.3f}{flag}", fontsize=10)
        ax.set_xlabel(f"{name}")
        ax.set_ylabel("replicates")
    for ax in list(axes.flat)[len(entries):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=8, loc="best")
    if title:
        fig.suptitle(title)
        # leave room for the title above the first row of panel titles (0.45 inch)
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / fig.get_figheight()))
    else:
        fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig
