"""Inference: particle filter and objectives, training, checkpoints, evaluation.

Training and evaluation entry points, importable from here (loaded lazily, so that
``deepstate.models`` can import ``deepstate.inference.kalman`` without a circular import):

* :class:`Trainer`, :class:`TrainingDiverged` (:mod:`.trainer`)
* :func:`evaluate` (:mod:`.evaluation`): a bound over a whole split in nats per frame
* :class:`KLAnnealing` (:mod:`.annealing`)
* :func:`atomic_save`, :func:`load_checkpoint` (:mod:`.checkpoint`)
"""

import importlib

_EXPORTS = {
    "Trainer": ".trainer",
    "TrainingDiverged": ".trainer",
    "evaluate": ".evaluation",
    "KLAnnealing": ".annealing",
    "atomic_save": ".checkpoint",
    "load_checkpoint": ".checkpoint",
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
