"""Shared pytest fixtures.

* Every test starts with an empty Pyro param store and a seeded torch RNG (autouse).
* ``data_dir``: the shared data folder from ``$DEEPSTATE_DATA``. When it is missing the test is
  skipped with a reason, except under CI (``CI=true``), where a missing folder is a failure.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyro
import pytest
import torch

# The tests run tiny tensors: intra-op threads only add contention (with another busy process they
# make small ops up to 100x slower), so the suite runs single-threaded.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _fresh_pyro_and_seed():
    pyro.clear_param_store()
    torch.manual_seed(0)
    yield
    pyro.clear_param_store()


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def get_data_dir() -> Path:
    """The shared data folder (``$DEEPSTATE_DATA``); skip the test, or fail under ``CI=true``, if missing."""
    env = os.environ.get("DEEPSTATE_DATA", "")
    if not env:
        reason = "DEEPSTATE_DATA is not set (point it at the shared data folder, e.g. ../shared/data)"
    elif not Path(env).is_dir():
        reason = f"DEEPSTATE_DATA={env!r} is not a directory"
    else:
        return Path(env).resolve()  # absolute: tests may run subprocesses or kernels in other folders
    if _in_ci():
        pytest.fail(f"{reason}; required under CI=true")
    pytest.skip(reason)


@pytest.fixture
def data_dir() -> Path:
    """Path of the shared data folder from ``$DEEPSTATE_DATA`` (see :func:`get_data_dir`)."""
    return get_data_dir()
