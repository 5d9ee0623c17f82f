r"""KL annealing ("warm-up"): scale the latent ``z`` sites by a factor that grows linearly to 1.

With factor :math:`\beta` the training objective is

.. math:: \sum_t \mathbb{E}_q[\log p(x_t \mid \cdot)] + \beta\, \mathbb{E}_q[\log p(z_t \mid \cdot) - \log q(z_t \mid \cdot)]

(Bowman et al. 2016; Sønderby et al. 2016; Krishnan et al. 2017 anneal the DMM's KL the same way).
The factor scales the ``z`` sites in **both** the Pyro model and the guide (the ``annealing``
argument of :meth:`~deepstate.models.base.LatentSequenceModel.model` / ``guide``), so with
``Trace_ELBO`` the ``log q`` term is scaled exactly as the ``log p(z)`` term. On the particle path
(``"particle_elbo"``) the same factor scales the latent part of each particle's log-weight (see
:class:`~deepstate.inference.objectives.ParticleELBO`): the same objective, at the particle path's
speed. It is not a bound for ``beta < 1``: the trainer always logs the unannealed bound. IWAE and
FIVO refuse it: they normalise importance weights, which the factor would rescale.

Example:
    >>> sched = KLAnnealing(start=0.1, warmup_steps=4)
    >>> [round(sched.factor_at(s), 3) for s in range(6)]
    [0.1, 0.325, 0.55, 0.775, 1.0, 1.0]
"""

from __future__ import annotations

from typing import Optional, Union

__all__ = ["KLAnnealing", "as_annealing"]


class KLAnnealing:
    """Linear warm-up of the ``z``-site scale from ``start`` to ``1`` over ``warmup_steps`` optimiser steps.

    ``factor_at(s) = start + (1 - start) * min(1, s / warmup_steps)``. The schedule counts the
    optimiser steps it has been told about (:meth:`step`); that count is its only state and goes
    into checkpoints through :meth:`state_dict`.

    Args:
        start: initial factor, in ``(0, 1]`` (a factor of exactly 0 would drop the latent sites, and
            Pyro's ``poutine.scale`` refuses it).
        warmup_steps: number of steps to reach ``1`` (a positive int).
    """

    def __init__(self, start: float = 0.01, warmup_steps: int = 1000):
        if isinstance(start, bool) or not isinstance(start, (int, float)) or not 0.0 < float(start) <= 1.0:
            raise ValueError(f"start: expected a number in (0, 1], got {start!r}")
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 1:
            raise ValueError(f"warmup_steps: expected a positive int, got {warmup_steps!r}")
        self.start = float(start)
        self.warmup_steps = int(warmup_steps)
        self.num_steps = 0

    def factor_at(self, step: int) -> float:
        """The scale after ``step`` optimiser steps (a float in ``[start, 1]``)."""
        frac = min(1.0, max(0, step) / self.warmup_steps)
        return self.start + (1.0 - self.start) * frac

    @property
    def factor(self) -> float:
        """The current scale."""
        return self.factor_at(self.num_steps)

    def step(self) -> None:
        """Count one optimiser step."""
        self.num_steps += 1

    def state_dict(self) -> dict:
        return {"start": self.start, "warmup_steps": self.warmup_steps, "num_steps": self.num_steps}

    def load_state_dict(self, state: dict) -> "KLAnnealing":
        if not isinstance(state, dict) or not {"start", "warmup_steps", "num_steps"} <= set(state):
            raise ValueError("state: expected a dict from KLAnnealing.state_dict() (start, warmup_steps, num_steps)")
        self.start = float(state["start"])
        self.warmup_steps = int(state["warmup_steps"])
        self.num_steps = int(state["num_steps"])
        return self

    def __repr__(self) -> str:
        return f"KLAnnealing(start={self.start}, warmup_steps={self.warmup_steps}, num_steps={self.num_steps})"


def as_annealing(value: Union[None, KLAnnealing, dict, int]) -> Optional[KLAnnealing]:
    """Normalise the trainer's ``annealing`` argument.

    ``None`` (no annealing), a :class:`KLAnnealing`, a dict of its arguments
    (``{"start": 0.1, "warmup_steps": 500}``) or an int (``warmup_steps``, starting from ``1 / warmup_steps``:
    the first positive step of a ramp from 0, since a scale of 0 is refused).
    """
    if value is None or isinstance(value, KLAnnealing):
        return value
    if isinstance(value, dict):
        unknown = set(value) - {"start", "warmup_steps"}
        if unknown:
            raise ValueError(f"annealing: unknown keys {sorted(unknown)}; expected start, warmup_steps")
        return KLAnnealing(**value)
    if isinstance(value, int) and not isinstance(value, bool):
        return KLAnnealing(1.0 / value, value) if value >= 1 else KLAnnealing(warmup_steps=value)
    raise TypeError(
        f"annealing: expected None, a KLAnnealing, a dict(start=..., warmup_steps=...) or an int (warmup steps), "
        f"got {type(value).__name__}"
    )
