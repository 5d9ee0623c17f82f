"""Posterior predictive checks: test statistics, Bayesian p-values and ArviZ export (model-free).

These functions take arrays (observed ``x [B, T, D]``, replicates ``x_rep [S, B, T, D]`` and the
masks of a :class:`~deepstate.data.SequenceBatch`), never models; whatever produces replicates
(reconstruction, one-step-ahead, free-running) hands its arrays here.
"""

from .arviz_data import REPLICATE_KINDS, to_inference_data
from .statistics import (
    PITCH_CLASS_NAMES,
    STATISTICS,
    autocorrelation,
    bayesian_p_values,
    is_binary,
    longest_run,
    maximum,
    mean,
    mean_note_duration,
    minimum,
    note_on_rate,
    notes_per_frame,
    pitch_class_histogram,
    predictive_check,
    variance,
)

__all__ = [
    "STATISTICS",
    "PITCH_CLASS_NAMES",
    "REPLICATE_KINDS",
    "autocorrelation",
    "bayesian_p_values",
    "is_binary",
    "longest_run",
    "maximum",
    "mean",
    "mean_note_duration",
    "minimum",
    "note_on_rate",
    "notes_per_frame",
    "pitch_class_histogram",
    "predictive_check",
    "to_inference_data",
    "variance",
]
