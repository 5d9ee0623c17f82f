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
from .files import find_data_file

__all__ = ["TimeSeriesDataset", "list_datasets", "load_dataset"]


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
