"""Sequence data: batches with masks, loaders, minibatching and standardisation.

* :class:`SequenceBatch` (``x [B, T, D]``, ``valid [B, T]``, ``observed [B, T, D]``, ``lengths [B]``,
  optional ``u [B, T, U]``, ``index``, ``names``) and its constructors :func:`from_numpy`,
  :func:`from_pandas`, :func:`concat_batches`, :func:`with_covariates`.
* Minibatching: :func:`minibatches`, :class:`SequenceDataset`; one long series:
  :func:`split_series`, :func:`sliding_windows`.
* :class:`Standardizer` (fitted on training data only).
* Datasets: :func:`load_polyphonic` (JSB chorales piano rolls), :func:`load_dataset`
  (sunspots, co2, lynx_hare), :func:`simulate_lgssm` / :func:`random_stable_lgssm` (synthetic).

Data files are found in ``data_dir``, ``$DEEPSTATE_DATA``, or the user cache, sha256-checked
before parsing, and never written into the data folder.
"""

from .batch import SequenceBatch
from .convert import concat_batches, extend_index, from_numpy, from_pandas, with_covariates
from .datasets import TimeSeriesDataset, list_datasets, load_dataset
from .files import ChecksumError, cache_dir, find_data_file
from .loader import (
    SequenceDataset,
    minibatch_indices,
    minibatches,
    padding_fraction,
    sliding_windows,
    split_series,
)
from .music import load_polyphonic, notes_to_piano_roll, piano_roll_to_notes
from .scaling import Standardizer
from .synthetic import random_stable_lgssm, simulate_lgssm

__all__ = [
    "ChecksumError",
    "SequenceBatch",
    "SequenceDataset",
    "Standardizer",
    "TimeSeriesDataset",
    "cache_dir",
    "concat_batches",
    "extend_index",
    "find_data_file",
    "from_numpy",
    "from_pandas",
    "list_datasets",
    "load_dataset",
    "load_polyphonic",
    "minibatch_indices",
    "minibatches",
    "notes_to_piano_roll",
    "padding_fraction",
    "piano_roll_to_notes",
    "random_stable_lgssm",
    "simulate_lgssm",
    "sliding_windows",
    "split_series",
    "with_covariates",
]
