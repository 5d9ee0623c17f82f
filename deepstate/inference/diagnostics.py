r"""Posterior-collapse diagnostics: per-dimension KL, active units, gradient norms.

A latent dimension has *collapsed* when the guide ignores the data for it: its posterior equals
its prior, it contributes no KL, and its posterior mean does not move with the input (Bowman et al.
2016 "Generating sentences from a continuous space"; Burda, Grosse & Salakhutdinov 2016
"Importance weighted autoencoders", section 5.2, for *active units*). In a sequential model both
quantities are measured along trajectories of the guide, exactly as the particle filter runs it
(:mod:`deepstate.inference.particle` with ``resample="never"``)::

    for t:  p_t = ssm.prior(s_{t-1}, c_t);  q_t = guide.proposal(g_{t-1}, s_{t-1}, e_t, c_t, p_t)
            z_t ~ q_t                       # [N, B, Z], N = num_samples trajectories per sequence
            KL_t = KL(q_t || p_t)           # given the sampled past z_{<t}
            s_t, g_t = updates(z_t, x_t)

* :func:`latent_kl`: ``E_q[KL(q_t || p_t)]`` per latent dimension, averaged over valid steps and
  sequences: **nats per frame per dimension**. Summed over dimensions and multiplied by the number
  of frames it is the KL term of the sequential ELBO, ``E_q[log q(z_{1:T}) - log p(z_{1:T})]``.
* :func:`active_units`: Burda et al.'s activity ``A_u = Cov_x(E_q[z_u])`` with data points the valid
  ``(sequence, step)`` pairs; a unit is active when ``A_u`` exceeds a threshold (0.01).
* :func:`gradient_norms`: L2 norm of the gradient of each sub-module's parameters (a collapsed
  guide often shows as a vanishing encoder gradient).
* :func:`posterior_collapse_report`: all of it in one printable summary.

Example:
    >>> from deepstate.models import build
    >>> lsm = build("dkf", 3, z_dim=4, transition_dim=8, emission_dim=8, rnn_dim=8)
    >>> batch = SequenceBatch.from_sequences([torch.randn(6, 3), torch.randn(4, 3)])
    >>> latent_kl(lsm, batch).shape                       # nats per frame per dim
    torch.Size([4])
    >>> count, activity = active_units(lsm, batch)
    >>> print(posterior_collapse_report(lsm, batch))      # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from typing import Dict, Iterator, Optional, Tuple

import torch
import torch.distributions as td
from torch import nn

from ..data import SequenceBatch
from ..models.base import slice_time

__all__ = [
    "latent_kl",
    "active_units",
    "posterior_use",
    "gradient_norms",
    "posterior_collapse_report",
    "CollapseReport",
    "KL_ESTIMATORS",
    "CENTRES",
]

KL_ESTIMATORS = ("auto", "analytic", "mc")
CENTRES = ("step", "global")


# ------------------------------------------------------------------------------ checks
def _check_lsm_batch(lsm, batch) -> None:
    if not (isinstance(lsm, nn.Module) and hasattr(lsm, "ssm") and hasattr(lsm, "guide_steps")):
        raise TypeError(
            f"lsm: expected a LatentSequenceModel (with .ssm and .guide_steps), got {type(lsm).__name__}"
        )
    if not isinstance(batch, SequenceBatch):
        raise TypeError(f"batch: expected a SequenceBatch, got {type(batch).__name__}")
    x_dim = getattr(lsm.ssm, "x_dim", None)
    if x_dim is not None and batch.dim != x_dim:
        raise ValueError(f"batch: expected {x_dim} observed dimensions (the model's x_dim), got {batch.dim}")


def _check_num_samples(num_samples) -> None:
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples: expected a positive int, got {num_samples!r}")


# ------------------------------------------------------------------------------ trajectories
def _expand(d: td.Distribution, shape: torch.Size) -> td.Distribution:
    return d if d.batch_shape == shape else d.expand(shape)


def _shared_noise_sample(q: td.Distribution, eps: torch.Tensor) -> Optional[torch.Tensor]:
    """``z = loc + scale * eps`` for (Independent) Normal / MultivariateNormal ``q``; None otherwise."""
    base = q.base_dist if isinstance(q, td.Independent) else q
    if isinstance(base, td.MultivariateNormal):
        return base.loc + (base.scale_tril @ eps[..., None])[..., 0]
    if isinstance(base, td.Normal) and base.loc.shape == eps.shape:
        return base.loc + base.scale * eps
    return None


def _trajectory(lsm, batch: SequenceBatch, num_samples: int, shared_noise: bool = False) -> Iterator:
    """Yield ``(t, p_t, q_t, z_t)`` along ``N`` sampled guide trajectories (no resampling, no weights).

    ``p_t``, ``q_t`` are expanded to batch shape ``[N, B]``; ``z_t`` is ``[N, B, Z]``. With
    ``shared_noise`` every sequence of the batch uses the same standard-normal noise (common random
    numbers), so a guide that ignores the data gives identical trajectories for every sequence.
    """
    ssm, guide = lsm.ssm, lsm.guide_steps
    N, (B, T) = num_samples, batch.valid.shape
    shape = torch.Size([N, B])
    c = ssm.features(batch)
    e = guide.encode(batch, c)
    s, g = ssm.initial(shape), guide.initial(shape)
    for t in range(T):
        c_t, e_t = slice_time(c, t), slice_time(e, t)
        p = ssm.prior(s, c_t)
        q = guide.proposal(g, s, e_t, c_t, p)
        same = q is p
        p = _expand(p, shape)
        q = p if same else _expand(q, shape)
        z = None
        if shared_noise:
            Z = q.event_shape[-1] if len(q.event_shape) else 1
            eps = torch.randn(N, 1, Z, dtype=batch.x.dtype, device=batch.x.device).expand(N, B, Z)
            z = _shared_noise_sample(q, eps)
        if z is None:
            z = q.sample()
        yield t, p, q, z
        s = ssm.update(s, z, batch.x[:, t], c_t, batch.observed[:, t])
        g = guide.update(g, z, e_t)


def _factors(d: td.Distribution) -> Optional[td.Distribution]:
    """The per-dimension factors (batch shape ``[..., Z]``) of a factorised ``d``, or None."""
    if isinstance(d, td.Independent) and d.reinterpreted_batch_ndims == 1:
        return d.base_dist
    return None


def _step_kl(p, q, z, per_dim: bool, estimator: str) -> torch.Tensor:
    """KL(q || p) at one step: ``[N, B, Z]`` (per_dim) or ``[N, B]``."""
    if q is p:
        return torch.zeros_like(z) if per_dim else torch.zeros(z.shape[:-1], dtype=z.dtype, device=z.device)
    if per_dim:
        qf, pf = _factors(q), _factors(p)
        if qf is None or pf is None:
            bad = type(q if qf is None else p).__name__
            raise ValueError(
                f"per_dim: the per-dimension KL needs factorised proposal and prior "
                f"(Independent(Normal, 1)-like), got {bad}; use per_dim=False for the total KL"
            )
        q, p = qf, pf
    if estimator != "mc":
        try:
            return td.kl_divergence(q, p).expand(z.shape if per_dim else z.shape[:-1])
        except NotImplementedError:
            if estimator == "analytic":
                raise ValueError(
                    f"estimator: no analytic KL({type(q).__name__} || {type(p).__name__}); "
                    "use estimator='mc' or 'auto'"
                ) from None
    return q.log_prob(z) - p.log_prob(z)


# ------------------------------------------------------------------------------ KL
@torch.no_grad()
def latent_kl(lsm, batch: SequenceBatch, num_samples: int = 1, per_dim: bool = True,
              estimator: str = "auto") -> torch.Tensor:
    r"""Per-dimension ``KL(q(z_t | z_{<t}, x) || p(z_t | z_{<t}, x_{<t}))`` in nats per frame.

    The guide is run as the particle filter runs it (``N = num_samples`` trajectories per sequence,
    no resampling): at each step the KL between the proposal and the prior *given the same sampled
    past* is computed, then averaged over the ``N`` samples and over the valid ``(sequence, step)``
    pairs (padded steps excluded). ``latent_kl(...).sum() * batch.num_frames`` estimates the KL
    term ``E_q[log q(z_{1:T}) - log p(z_{1:T})]`` of the ELBO, summed over the batch.

    When the proposal and the prior are both diagonal Gaussians (``Normal(...).to_event(1)``) each
    dimension's KL is computed in closed form from the ``base_dist`` locs and scales (Kingma &
    Welling 2014, appendix B); other factorised pairs use ``torch.distributions.kl_divergence`` of
    the factors when registered, else the Monte Carlo estimate ``log q(z) - log p(z)`` per factor at
    the sampled ``z``. A guide that *is* the prior (``PriorGuide``) gives exact zeros. The
    per-dimension split exists only when both factorise over dimensions; for e.g. a
    ``MultivariateNormal`` (the LGSSM) ``per_dim=True`` raises and ``per_dim=False`` returns the
    total (analytic when ``kl_divergence`` knows the pair, Monte Carlo otherwise).

    Args:
        lsm: a :class:`~deepstate.models.base.LatentSequenceModel`.
        batch: a :class:`~deepstate.data.SequenceBatch` whose ``dim`` is the model's ``x_dim``.
        num_samples: ``N >= 1`` guide trajectories per sequence (more: less Monte Carlo noise from
            the sampled past, and from ``z_t`` itself for the Monte Carlo estimator).
        per_dim: return ``[Z]`` (default) or the 0-dim total over dimensions.
        estimator: ``"auto"`` (closed form when available), ``"analytic"`` (closed form or
            ValueError), ``"mc"`` (always ``log q(z) - log p(z)`` at the sampled ``z``).

    Returns:
        ``[Z]`` tensor (or 0-dim with ``per_dim=False``), nats per frame (per dimension), in the
        batch's dtype. Computed without gradients.

    Example:
        >>> kl = latent_kl(lsm, batch, num_samples=8)          # doctest: +SKIP
        >>> collapsed = (kl < 0.01).nonzero().flatten()           # doctest: +SKIP
    """
    _check_lsm_batch(lsm, batch)
    _check_num_samples(num_samples)
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"estimator: expected one of {KL_ESTIMATORS}, got {estimator!r}")
    if not isinstance(per_dim, bool):
        raise TypeError(f"per_dim: expected a bool, got {type(per_dim).__name__}")
    valid = batch.valid.to(batch.x.dtype)
    total = None
    for t, p, q, z in _trajectory(lsm, batch, num_samples):
        kl = _step_kl(p, q, z, per_dim, estimator)  # [N, B, Z] or [N, B]
        w = valid[:, t].reshape(1, -1, *([1] * (kl.dim() - 2)))
        step = (kl * w).sum((0, 1))
        total = step if total is None else total + step
    return total / (num_samples * batch.valid.sum())


# ------------------------------------------------------------------------------ active units
@torch.no_grad()
def active_units(lsm, batch: SequenceBatch, threshold: float = 0.01, num_samples: int = 1,
                 centre: str = "step") -> Tuple[int, torch.Tensor]:
    r"""Burda et al. (2016) active units: ``A_u = Cov_x(E_q[z_u])``, active when ``A_u > threshold``.

    Data points are the valid ``(sequence, step)`` pairs and ``E_q[z_{t,u}]`` is the guide's
    proposal mean along a sampled trajectory (averaged over ``num_samples`` trajectories, a
    Rao-Blackwellised estimate of the marginal posterior mean). Trajectories use the same noise
    for every sequence of the batch (common random numbers), so a unit whose posterior mean does
    not depend on the data gets exactly zero activity, e.g. for a guide equal to the prior.

    ``centre`` chooses what "varies with the data" means for a sequence:

    * ``"step"`` (default): the variance across sequences at each step, pooled over steps
      (``sum_{t, b} (m_{b,t,u} - mean_b m_{b,t,u})^2 / sum_t B_t`` over steps with ``B_t >= 2``
      valid sequences). A prior whose mean drifts over time, or a guide that follows it, is not
      counted as activity. Needs at least two sequences of overlapping length.
    * ``"global"``: the variance over all valid ``(sequence, step)`` pairs around one mean (Burda's
      formula read literally; use it for a single long series). Time variation that the prior
      alone would produce counts as activity here.

    For a VAE with a fixed ``N(0, I)`` prior and i.i.d. frames both reduce to Burda's definition.

    Args:
        lsm: a :class:`~deepstate.models.base.LatentSequenceModel`.
        batch: a :class:`~deepstate.data.SequenceBatch`.
        threshold: activity above which a unit counts as active (Burda et al.: 0.01), in squared
            latent units.
        num_samples: trajectories averaged per sequence.
        centre: ``"step"`` or ``"global"`` (see above).

    Returns:
        ``(count, activity)``: number of active units (int) and ``activity`` ``[Z]`` (batch dtype).

    Example:
        >>> count, activity = active_units(lsm, batch)         # doctest: +SKIP
        >>> print(f"{count}/{activity.numel()} active")        # doctest: +SKIP
    """
    _check_lsm_batch(lsm, batch)
    _check_num_samples(num_samples)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold >= 0 or math.isinf(threshold):
        raise ValueError(f"threshold: expected a finite number >= 0, got {threshold!r}")
    if centre not in CENTRES:
        raise ValueError(f"centre: expected one of {CENTRES}, got {centre!r}")
    means = []
    for t, p, q, z in _trajectory(lsm, batch, num_samples, shared_noise=True):
        means.append(q.mean.expand(z.shape).mean(0))  # [B, Z]
    m = torch.stack(means, 1)  # [B, T, Z]
    valid = batch.valid.to(m.dtype)[..., None]  # [B, T, 1]
    if centre == "global":
        n = valid.sum()
        mu = (m * valid).sum((0, 1)) / n
        activity = (((m - mu) ** 2) * valid).sum((0, 1)) / n
    else:
        n_t = valid.sum(0)  # [T, 1]
        if not bool((n_t >= 2).any()):
            raise ValueError(
                "batch: centre='step' needs at least two valid sequences at some step; "
                "use centre='global' for a single sequence"
            )
        mu_t = (m * valid).sum(0) / n_t.clamp_min(1)  # [T, Z]
        keep = valid * (n_t >= 2).to(m.dtype)  # steps with a single sequence carry no information
        activity = (((m - mu_t) ** 2) * keep).sum((0, 1)) / keep.sum()
    return int((activity > threshold).sum()), activity


# ------------------------------------------------------------------------------ gradients
def gradient_norms(module: nn.Module, depth: int = 2) -> Dict[str, float]:
    """L2 norm of the gradient of each sub-module's parameters (call after ``loss.backward()``).

    Parameters are grouped by the first ``depth`` components of their qualified name, so with the
    default ``depth=2`` a :class:`~deepstate.models.base.LatentSequenceModel` gives keys such as
    ``"ssm.transition"``, ``"ssm.emitter"``, ``"ssm.z_0"`` (a parameter owned by ``ssm`` itself),
    ``"guide_steps.rnns"``, ``"guide_steps.head"``; ``depth=1`` gives ``"ssm"`` and
    ``"guide_steps"``. ``"total"`` (last key) is the norm over all parameters, the number that
    ``torch.nn.utils.clip_grad_norm_`` clips. Parameters without a gradient count as zero; shared
    parameters count once.

    Note that Pyro's ``SVI.step`` zeroes the gradients after its optimiser step: to inspect them use
    e.g. ``Trace_ELBO().loss_and_grads(lsm.model, lsm.guide, batch)`` or the particle objectives'
    loss and ``backward()``.

    Args:
        module: any ``nn.Module``.
        depth: name components per group (``>= 1``).

    Returns:
        ``{group: norm, ..., "total": norm}`` as Python floats (L2 norms of gradients, in loss units
        per parameter unit).

    Example:
        >>> loss.backward()                                    # doctest: +SKIP
        >>> gradient_norms(lsm)["guide_steps.rnns"]            # doctest: +SKIP
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module: expected an nn.Module, got {type(module).__name__}")
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth: expected a positive int, got {depth!r}")
    squares: Dict[str, float] = OrderedDict()
    total = 0.0
    for name, p in module.named_parameters():
        key = ".".join(name.split(".")[:depth])
        if key == "total":
            key = "total_"
        sq = 0.0
        if p.grad is not None:
            g = p.grad.detach()
            g = g.coalesce().values() if g.is_sparse else g
            sq = float(g.to(torch.float64).pow(2).sum())
        squares[key] = squares.get(key, 0.0) + sq
        total += sq
    out = OrderedDict((k, math.sqrt(v)) for k, v in squares.items())
    out["total"] = math.sqrt(total)
    return dict(out)


# ------------------------------------------------------------------------------ report
@dataclasses.dataclass
class CollapseReport:
    """Summary of :func:`posterior_collapse_report`; ``print(report)`` shows a table.

    Attributes:
        z_dim: latent size ``Z``.
        frames: valid ``(sequence, step)`` pairs in the batch.
        num_samples: guide trajectories per sequence.
        kl_total: KL per frame summed over dimensions (nats per frame).
        kl_per_dim: ``[Z]`` nats per frame per dimension, or None if the guide/prior do not factorise.
        activity: ``[Z]`` Burda activity of each unit.
        active_units: number of units with ``activity > threshold``.
        threshold: the activity threshold.
        centre: how activity was centred (see :func:`active_units`).
        gradient_norms: :func:`gradient_norms` of the model if any parameter had a gradient, else None.
    """

    z_dim: int
    frames: int
    num_samples: int
    kl_total: float
    kl_per_dim: Optional[torch.Tensor]
    activity: torch.Tensor
    active_units: int
    threshold: float
    centre: str
    gradient_norms: Optional[Dict[str, float]] = None

    @property
    def inactive_dims(self) -> list:
        """Indices of units with ``activity <= threshold``."""
        return [i for i, a in enumerate(self.activity.tolist()) if not a > self.threshold]

    def as_dict(self) -> dict:
        """Plain-Python summary (lists and floats), e.g. for logging to JSON."""
        d = dataclasses.asdict(self)
        d["kl_per_dim"] = None if self.kl_per_dim is None else self.kl_per_dim.tolist()
        d["activity"] = self.activity.tolist()
        d["inactive_dims"] = self.inactive_dims
        return d

    def __str__(self, max_rows: int = 20) -> str:
        lines = [
            f"posterior collapse report: {self.active_units}/{self.z_dim} active units "
            f"(activity > {self.threshold:g}, centre={self.centre!r}); "
            f"KL {self.kl_total:.4g} nats/frame over {self.frames} frames ({self.num_samples} sample(s))"
        ]
        inactive = self.inactive_dims
        if inactive:
            shown = ", ".join(map(str, inactive[:30])) + (", ..." if len(inactive) > 30 else "")
            lines.append(f"  inactive units ({len(inactive)}): {shown}")
        kl = None if self.kl_per_dim is None else self.kl_per_dim.tolist()
        act = self.activity.tolist()
        order = sorted(range(self.z_dim), key=lambda i: -(kl[i] if kl is not None else act[i]))
        lines.append(f"  {'dim':>5} {'KL nats/frame':>14} {'activity':>10}")
        for i in order[:max_rows]:
            k = f"{kl[i]:14.4g}" if kl is not None else f"{'n/a':>14}"
            lines.append(f"  {i:5d} {k} {act[i]:10.4g}{'' if act[i] > self.threshold else '  inactive'}")
        if self.z_dim > max_rows:
            lines.append(f"  ... {self.z_dim - max_rows} more dims")
        if kl is None:
            lines.append("  (per-dimension KL unavailable: proposal or prior does not factorise)")
        if self.gradient_norms:
            parts = [f"{k} {v:.3g}" for k, v in self.gradient_norms.items() if k != "total"]
            lines.append(f"  gradient norms: total {self.gradient_norms['total']:.3g}; " + ", ".join(parts))
        return "\n".join(lines)


def posterior_collapse_report(lsm, batch: SequenceBatch, num_samples: int = 1, threshold: float = 0.01,
                              centre: str = "step") -> CollapseReport:
    """Per-dimension KL (:func:`latent_kl`), active units (:func:`active_units`) and, when the model
    holds gradients from a previous ``backward()``, :func:`gradient_norms`, in one :class:`CollapseReport`.

    Args:
        lsm, batch: as in :func:`latent_kl`.
        num_samples: trajectories per sequence for both estimates.
        threshold: activity threshold (0.01).
        centre: ``"step"`` or ``"global"`` (see :func:`active_units`).

    Example:
        >>> print(posterior_collapse_report(lsm, batch, num_samples=4))   # doctest: +SKIP
        posterior collapse report: 3/16 active units (activity > 0.01, centre='step'); KL 4.2 nats/frame ...
    """
    _check_lsm_batch(lsm, batch)
    try:
        kl_dim = latent_kl(lsm, batch, num_samples)
        kl_total = float(kl_dim.sum())
    except ValueError as err:
        if not str(err).startswith("per_dim"):
            raise
        kl_dim = None
        kl_total = float(latent_kl(lsm, batch, num_samples, per_dim=False))
    count, activity = active_units(lsm, batch, threshold, num_samples, centre)
    has_grad = any(p.grad is not None for p in lsm.parameters())
    return CollapseReport(
        z_dim=int(activity.numel()),
        frames=int(batch.valid.sum()),
        num_samples=num_samples,
        kl_total=kl_total,
        kl_per_dim=kl_dim,
        activity=activity,
        active_units=count,
        threshold=float(threshold),
        centre=centre,
        gradient_norms=gradient_norms(lsm) if has_grad else None,
    )


def posterior_use(lsm, batch: SequenceBatch, num_samples: int = 1) -> dict:
    """Both collapse diagnostics of ``batch``: ``{"kl_per_frame", "active_units", "z_dim"}``.

    ``kl_per_frame`` is :func:`latent_kl`'s total (nats per frame), ``active_units`` is
    :func:`active_units`'s count (across sequences at each step; over time for a single sequence, which
    has no second sequence to compare with). A KL near zero with no active unit is a collapsed posterior.
    """
    kl = float(latent_kl(lsm, batch, num_samples=num_samples, per_dim=False))
    count, activity = active_units(lsm, batch, num_samples=num_samples,
                                   centre="step" if batch.batch_size >= 2 else "global")
    return {"kl_per_frame": kl, "active_units": int(count), "z_dim": int(activity.numel())}
