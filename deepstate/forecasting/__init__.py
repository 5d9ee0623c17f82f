"""Forecasting: filter a history, roll the model forward, score what happened next.

* :func:`forecast` / :class:`Forecast`: sample paths (or exact Gaussian moments) with quantiles and
  intervals on the original scale.
* :func:`one_step_ahead` / :func:`predictive_log_likelihood`: ``log p(future | history)``, one-step
  predictive draws and PIT values.
* :func:`filter_history`: the weighted particles at the end of a history.
* :func:`latent_trajectories`: filtered / smoothed latent states with uncertainty.
* :func:`backtest`: rolling-origin evaluation against statsmodels and naive baselines.
"""

from .filtering import FilteredState, feature_state, filter_history
from .forecast import FORECAST_METHODS, Forecast, check_levels, forecast
from .latent import LatentTrajectories, latent_trajectories
from .predictive import OneStepAhead, join_histories, one_step_ahead, predictive_log_likelihood

__all__ = [
    "Forecast",
    "forecast",
    "FORECAST_METHODS",
    "check_levels",
    "FilteredState",
    "filter_history",
    "feature_state",
    "LatentTrajectories",
    "latent_trajectories",
    "OneStepAhead",
    "one_step_ahead",
    "predictive_log_likelihood",
    "join_histories",
]
