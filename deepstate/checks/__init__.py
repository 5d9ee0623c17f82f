"""Posterior predictive checks: test statistics, Bayesian p-values and ArviZ export (model-free).

The model-free layer (statistics, p-values, ArviZ export) takes arrays (observed ``x [B, T, D]``, replicates ``x_rep [S, B, T, D]`` and the
masks of a :class:`~deepstate.data.SequenceBatch`), never models; whatever produces replicates
(reconstruction, one-step-ahead, free-running) hands its arrays here. :mod:`deepstate.checks.replicates` is the model side: :func:`replicate` makes
the three kinds of replicate from a fitted model and :func:`posterior_predictive_check` runs the
whole check (table of p-values + ``InferenceData``).
"""

from .arviz_data import REPLICATE_KINDS, to_inference_data
from .replicates import (
    DEFAULT_STATISTICS,
    ONE_STEP_STATISTICS,
    PIANO_ROLL_STATISTICS,
    REPLICATE_MODES,
    Replicates,
    default_statistics,
    is_piano_roll_model,
    mean_square,
    posterior_predictive_check,
    replicate,
)
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
    "DEFAULT_STATISTICS",
    "ONE_STEP_STATISTICS",
    "PIANO_ROLL_STATISTICS",
    "REPLICATE_MODES",
    "Replicates",
    "default_statistics",
    "is_piano_roll_model",
    "mean_square",
    "posterior_predictive_check",
    "replicate",
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
