"""Plots for forecasts and model checks (matplotlib; every function returns a ``Figure``).

:mod:`deepstate.plots.forecast`: fan charts, latent trajectories, PIT histograms, score tables.
"""

from deepstate.plots.forecast import fan_chart, latent_trajectories, pit_histogram, score_table

__all__ = ["fan_chart", "latent_trajectories", "pit_histogram", "score_table"]
