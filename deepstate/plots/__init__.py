"""Plots for forecasts and model checks (matplotlib; every function returns a ``Figure``).

:mod:`deepstate.plots.forecast`: fan charts, latent trajectories, PIT histograms, score tables.
:mod:`deepstate.plots.checks`: posterior predictive check panels (observed statistic vs replicates).
:mod:`deepstate.plots.music`: piano rolls side by side (data vs generated).
:mod:`deepstate.plots.training`: training curves from the Trainer's JSON-lines metrics log.

Every ``path=`` argument saves the figure atomically through one helper (``deepstate.plots._save``).
"""

from deepstate.plots.checks import ppc_panels
from deepstate.plots.forecast import fan_chart, latent_trajectories, pit_histogram, score_table
from deepstate.plots.music import piano_roll
from deepstate.plots.training import training_curves

__all__ = ["fan_chart", "latent_trajectories", "pit_histogram", "score_table", "ppc_panels", "piano_roll",
           "training_curves"]
