"""Independent references the tests compare against: statsmodels' state-space models."""

from __future__ import annotations

import numpy as np
import statsmodels.api as sm


def statsmodels_ssm(x: np.ndarray, M: dict, obs_cov: np.ndarray = None):
    """statsmodels' ``MLEModel`` for one sequence ``x`` ``[T, D]`` (NaN where missing) under the
    time-invariant matrices ``M`` of :meth:`LinearGaussianSSM.matrices` (``A``, ``Q``, ``C``, ``r``,
    ``m0``, ``P0``), with the known initial state. ``obs_cov`` replaces ``diag(r)`` by a full ``R``."""
    Z = M["A"].shape[0]
    mod = sm.tsa.statespace.MLEModel(x, k_states=Z)
    mod["design"], mod["transition"], mod["selection"] = M["C"], M["A"], np.eye(Z)
    mod["state_cov"] = M["Q"]
    mod["obs_cov"] = np.diag(np.atleast_1d(M["r"])) if obs_cov is None else obs_cov
    mod.initialize_known(M["m0"], M["P0"])
    return mod
