"""Small built-in time series for examples, forecasting and tests.

=============  ========  ==========================================================================
name           freq      contents
=============  ========  ==========================================================================
``sunspots``   yearly    Wolf sunspot numbers 1700-2008 (309 values), from statsmodels (offline).
``co2``        weekly    Mauna Loa CO2 (ppm), 1958-03-29 .. 2001-12-29 (2284 weeks, 59 missing ->
                         ``observed = False``), from statsmodels (offline).
``lynx_hare``  yearly    Hudson's Bay Company hare and lynx pelts (thousands) 1845-1935 (91 years,
                         2 columns); file ``LynxHare.txt`` found via ``data_dir`` /
                         ``$DEEPSTATE_DATA`` / user cache, sha256-checked.
=============  ========  ==========================================================================

    ds = load_dataset("co2")
    ds.data        # pandas DataFrame (time index)
    ds.batch       # SequenceBatch [1, T, D], index kept for forecasts
"""

from __future__ import annotations

import dataclasses
import io
from typing import Any, List, Optional

import numpy as np
import torch

from .batch import SequenceBatch
from .convert import from_pandas
from .files import data_file_candidates, find_data_file

__all__ = ["TimeSeriesDataset", "dataset_location", "list_datasets", "load_dataset"]


@dataclasses.dataclass
class TimeSeriesDataset:
    """A built-in series: the pandas data and the same values as a one-sequence batch.

    Attributes:
        name: dataset name.
        data: ``pandas.DataFrame`` with a time index and one column per dimension (NaN = missing).
        batch: :class:`SequenceBatch` ``[1, T, D]`` (columns in ``columns`` order, index kept).
        frequency: ``"yearly"``, ``"weekly"``, ...
        description: one paragraph on source and units.
        columns: names of the ``D`` dimensions.
    """

    name: str
    data: Any
    batch: SequenceBatch
    frequency: str
    description: str
    columns: List[str]

    @property
    def series(self):
        """The data as a ``pandas.Series`` (univariate datasets only)."""
        if len(self.columns) != 1:
            raise ValueError(f"{self.name} has {len(self.columns)} columns; use .data")
        return self.data[self.columns[0]]


LYNX_HARE_FILE = "LynxHare.txt"
LYNX_HARE_SHA256 = "47d957b8eb72d772d87a514e9afc8be03586eb314c49a8ae0a4adcbe58b2164f"
LYNX_HARE_URL = "https://d2hg8soec8ck9v.cloudfront.net/datasets/LynxHare.txt"


def _sunspots(data_dir, download):
    import pandas as pd
    import statsmodels.api as sm

    raw = sm.datasets.sunspots.load_pandas().data
    df = pd.DataFrame(
        {"SUNACTIVITY": raw["SUNACTIVITY"].to_numpy(dtype=np.float64)},
        index=pd.Index(raw["YEAR"].to_numpy().astype(np.int64), name="year"),
    )
    desc = "Yearly Wolf sunspot numbers 1700-2008 (statsmodels.api.datasets.sunspots)."
    return df, "yearly", desc


def _co2(data_dir, download):
    import statsmodels.api as sm

    df = sm.datasets.co2.load_pandas().data.astype(np.float64)
    df.index.name = "date"
    desc = (
        "Weekly atmospheric CO2 (ppm) at Mauna Loa, 1958-2001 (statsmodels.api.datasets.co2); "
        "59 missing weeks are observed=False."
    )
    return df, "weekly", desc


def _lynx_hare(data_dir, download):
    import pandas as pd

    path, raw = find_data_file(
        LYNX_HARE_FILE, data_dir=data_dir, sha256=LYNX_HARE_SHA256, url=LYNX_HARE_URL, download=download
    )
    table = pd.read_csv(io.BytesIO(raw), sep=r"\s+", header=None, names=["year", "hare", "lynx"])
    if table.shape != (91, 3):
        raise ValueError(f"{path}: expected 91 rows of year, hare, lynx, got shape {table.shape}")
    df = table.set_index(table["year"].astype(np.int64))[["hare", "lynx"]].astype(np.float64)
    df.index.name = "year"
    desc = "Hudson's Bay Company pelts of snowshoe hare and Canadian lynx (thousands), 1845-1935."
    return df, "yearly", desc


_DATASETS = {"sunspots": _sunspots, "co2": _co2, "lynx_hare": _lynx_hare}


def list_datasets() -> List[str]:
    """Names accepted by :func:`load_dataset` (polyphonic music: see :func:`load_polyphonic`)."""
    return sorted(_DATASETS)


def load_dataset(
    name: str,
    data_dir: Optional[Any] = None,
    download: bool = True,
    dtype: Optional[torch.dtype] = None,
) -> TimeSeriesDataset:
    """Load a built-in series by name (see :func:`list_datasets`).

    Args:
        name: ``"sunspots"``, ``"co2"`` or ``"lynx_hare"``.
        data_dir: folder to look in first for file-based datasets (then ``$DEEPSTATE_DATA``,
            then the user cache). statsmodels datasets need no file.
        download: allow downloading a missing file into the user cache (never under pytest).
        dtype: float dtype of ``batch.x`` (default: torch's default dtype).

    Returns:
        :class:`TimeSeriesDataset` with ``data`` (DataFrame) and ``batch`` (``[1, T, D]``).
    """
    if not isinstance(name, str):
        raise TypeError(f"name: expected a dataset name (str), got {type(name).__name__}")
    if name not in _DATASETS:
        hint = " (use deepstate.data.load_polyphonic for music)" if name == "jsb_chorales" else ""
        raise ValueError(f"name: expected one of {list_datasets()}, got {name!r}{hint}")
    df, freq, desc = _DATASETS[name](data_dir, download)
    batch = from_pandas(df, as_multivariate=True, dtype=dtype)
    batch.names = [name]
    return TimeSeriesDataset(name=name, data=df, batch=batch, frequency=freq, description=desc, columns=list(df.columns))


def dataset_location(name: str, data_dir: Optional[Any] = None) -> str:
    """Where dataset ``name`` comes from, in one line, without downloading anything.

    ``"built in (statsmodels)"`` for the statsmodels series; for a file-based dataset
    (``lynx_hare``, ``jsb_chorales``) the path :func:`~deepstate.data.files.find_data_file` resolves
    (sha256-checked), or ``"not found; looked in: ..."`` naming ``data_dir``, ``$DEEPSTATE_DATA`` and
    the user cache, or ``"<path> (sha256 mismatch: ...)"`` for a corrupt copy.
    """
    from .files import ChecksumError
    from .music import POLYPHONIC_DATASETS

    if name in ("sunspots", "co2"):
        return "built in (statsmodels)"
    if name == "lynx_hare":
        filename, sha = LYNX_HARE_FILE, LYNX_HARE_SHA256
    elif name in POLYPHONIC_DATASETS:
        filename, sha = POLYPHONIC_DATASETS[name][0], POLYPHONIC_DATASETS[name][1]
    else:
        raise ValueError(f"name: expected one of {list_datasets() + sorted(POLYPHONIC_DATASETS)}, got {name!r}")
    try:
        path, _ = find_data_file(filename, data_dir=data_dir, sha256=sha, download=False)
    except FileNotFoundError:
        import os

        from .files import DATA_ENV

        looked = [f"{label} {p}" for label, p in data_file_candidates(filename, data_dir)]
        if data_dir is None:
            looked.insert(0, "data_dir (not given)")
        if not os.environ.get(DATA_ENV):
            looked.insert(1, f"${DATA_ENV} (not set)")
        looked = "; ".join(looked)
        return f"not found; looked in: {looked}"
    except ChecksumError:
        path = next(p for _, p in data_file_candidates(filename, data_dir) if p.is_file())
        return f"{path} (sha256 mismatch: corrupt or not the expected file)"
    return str(path)
