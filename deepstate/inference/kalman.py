"""Re-export of :mod:`deepstate.kalman` (the Kalman filter and RTS smoother moved to the package top
level, so that :mod:`deepstate.models` does not import from :mod:`deepstate.inference`)."""

from ..kalman import KalmanResult, SmootherResult, kalman_filter, rts_smoother  # noqa: F401

__all__ = ["KalmanResult", "SmootherResult", "kalman_filter", "rts_smoother"]
