"""deepstate: probabilistic sequence modelling with deep state-space models.

Models are written once as step functions (see :mod:`deepstate.models.base`); Pyro's SVI,
the particle objectives (IWAE, FIVO), forecasting and predictive checks all run on them.
"""

__version__ = "0.1.0"
