r"""Training loop: one torch optimiser path for every objective, exact resume, divergence guard, TBPTT.

Objectives (``objective=``):

==================  =========================================================================
``"elbo"``          Pyro's ``Trace_ELBO().differentiable_loss(lsm.model, lsm.guide, batch, annealing)``
``"meanfield_elbo"``  Pyro's ``TraceMeanField_ELBO`` (analytic KL terms where available)
``"particle_elbo"`` :class:`~deepstate.inference.objectives.ParticleELBO` (``N`` single-sample ELBOs)
``"iwae"``          :class:`~deepstate.inference.objectives.IWAE` (no DReG estimator)
``"fivo"``          :class:`~deepstate.inference.objectives.FIVO` (ESS-adaptive resampling)
==================  =========================================================================

All are optimised by a torch optimiser on the module's parameters (the Pyro ELBOs through
``differentiable_loss``, not Pyro's optimiser wrappers), with gradient-norm clipping and an
optional per-epoch exponential learning-rate decay; a checkpoint is therefore plain torch state.
``optimizer="adam"`` is ``torch.optim.Adam``; ``optimizer="clipped_adam"`` is Pyro's own
``ClippedAdam`` (``pyro.optim.clipped_adam``, a plain torch optimiser): element-wise gradient clamp,
L2 weight decay and a per-step learning-rate decay, so that a recipe written for Pyro's SVI (e.g.
``examples/dmm.py``: lr 3e-4, betas (0.96, 0.999), clamp 10, ``lrd`` 0.99996, weight decay 2.0) runs
unchanged; with ``loss_scale="sum"`` the gradient is that of the minibatch's *summed* negative bound,
as Pyro's SVI differentiates it (clamp and weight decay are not scale-free).

**KL annealing** (``annealing=``) scales the latent terms ``log p(z) - log q(z)`` for the Pyro ELBOs
(through the model and guide's ``annealing`` argument) and for ``"particle_elbo"`` (any ``N``: each
particle is its own single-sample ELBO; see :class:`~deepstate.inference.objectives.ParticleELBO`).
IWAE and FIVO refuse it: they normalise importance weights, which annealing would rescale.

**Loss scale.** Every minibatch loss is ``-(sum of its sequences' bounds) / c`` with a *fixed*
``c = (frames in the training set) / (batches per epoch)``, so the *mean* of one epoch's minibatch
losses (``history``'s ``train_loss``) is minus the whole training bound per frame (their sum is that
times the number of batches), and short batches are weighted as the full objective weights them.
``loss_scale="sequences"`` (particle objectives) weighs each sequence by ``1 / T_b`` instead, with
``c = (sequences in the training set) / (batches per epoch)``: every sequence counts equally, whatever its
length, as FIVO's reference code trains (``mean_b bound_b / T_b``, Maddison et al. 2017); the mean of the
epoch's minibatch losses is then minus the training set's mean per-frame bound *per sequence*.

**Reproducibility and resume.** Minibatch order is a function of ``(seed, epoch)`` only. A fresh
run seeds torch, numpy and Python's RNGs with ``seed``; a checkpoint stores the module,
optimiser, scheduler and annealing state, the position (epoch, step within the epoch, global
step), early-stopping state, history and every RNG state, so on CPU a run resumed from any
checkpoint (including one written mid-epoch) ends with bit-for-bit the same parameters as the
uninterrupted run. The same holds for a second :meth:`Trainer.fit` after ``fit(restore_best=True)``:
the module then holds the best epoch's parameters, but the trainer keeps the last epoch's (the live
training state, which goes with the optimiser's moments) and continues from those. Validation draws come from an RNG forked and seeded by ``(seed, epoch)``, so
validating does not perturb training. (On CUDA, kernels may be nondeterministic.)

**Divergence guard.** A non-finite loss, gradient norm or updated parameter rolls the module and
optimiser back to an in-memory copy of the state before the batch, warns and skips the batch;
``max_bad_steps`` (3) in a row raise :class:`TrainingDiverged`, leaving the last good checkpoint on
disk untouched and the module holding the last good parameters.

**Truncated BPTT** (``tbptt=k``, particle objectives only): each minibatch is cut into chunks of
``k`` steps; each chunk runs the particle objective from the previous chunk's final filter state
(carries and log-weights) *detached*, followed by backward and an optimiser step. Sequences with no
valid step in a chunk are dropped from it (they have ended: padding is at the end). Model features
and guide encodings (e.g. a backward RNN) see only the current chunk. With ``k >= T`` it is exactly
full backpropagation.

**Data parallel** (``torchrun --nproc_per_node=K``; see :mod:`deepstate.inference.distributed`):
the trainer initialises torch.distributed itself (``gloo`` on CPU, ``nccl`` on CUDA); each global
step takes a minibatch of ``K * batch_size`` sequences (the single-process minibatch of that size,
same bucketing and seed), every rank computes the loss of its ``1/K`` share, gradients are averaged
with one all-reduce, and the normaliser becomes ``c = frames / (K * steps per epoch)``, so that
``K`` ranks x ``batch_size`` update the parameters as one process with ``K * batch_size`` does.
Rank 0 alone writes metrics and checkpoints; a checkpoint holds every rank's RNG state and every
rank resumes from it; validation bounds are summed over ranks' shares of the split.

Example:
    >>> lsm = build("dkf", 88, "bernoulli", z_dim=32, rnn_dim=64)                  # doctest: +SKIP
    >>> trainer = Trainer(lsm, objective="fivo", num_particles=4, checkpoint_dir="runs/dkf")  # doctest: +SKIP
    >>> history = trainer.fit(train, valid, epochs=100)                             # doctest: +SKIP
    >>> history[-1]["valid_bound"]                       # nats per frame            # doctest: +SKIP
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Tuple, Union

import numpy as np
import pyro
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from ..data import SequenceBatch, SequenceDataset
from ..data.loader import minibatch_indices, shard_minibatch_indices
from ..models.base import LatentSequenceModel
from ..models.nn import check_support
from . import distributed as _dist
from .annealing import KLAnnealing, as_annealing
from .checkpoint import CHECKPOINT_NAME, atomic_save, get_rng_state, load_checkpoint, set_rng_state
from .diagnostics import posterior_use
from .evaluation import _pos_int, evaluate
from .objectives import get_objective

__all__ = [
    "Trainer",
    "TrainingDiverged",
    "TRAINING_OBJECTIVES",
    "time_slice",
    "iterate_chunks",
    "select_state",
    "resolve_device",
]

def _clipped_adam(params, **kwargs):
    from pyro.optim.clipped_adam import ClippedAdam

    return ClippedAdam(params, **kwargs)


#: Optimisers by name: torch's Adam, and Pyro's ClippedAdam (element-wise clamp, per-step lr decay).
OPTIMIZERS = {"adam": torch.optim.Adam, "clipped_adam": _clipped_adam}

#: Objective names the trainer accepts.
TRAINING_OBJECTIVES = ("elbo", "meanfield_elbo", "particle_elbo", "iwae", "fivo")
PYRO_OBJECTIVES = ("elbo", "meanfield_elbo")
CHECKPOINT_FORMAT = "deepstate.trainer_checkpoint"
_RANK_TAG = 0x5EED  # keys per-rank RNG seeds apart from the validation seeds


class TrainingDiverged(RuntimeError):
    """Raised when ``max_bad_steps`` consecutive minibatches give a non-finite loss or gradient."""


# ---------------------------------------------------------------------------- helpers
def resolve_device(device) -> torch.device:
    """``device`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``torch.device``) checked for availability."""
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device: expected a str or torch.device, got {type(device).__name__}")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"device: not a valid torch device: {device!r}") from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device: {device!r} requested but CUDA is not available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device: {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    elif dev.type not in ("cpu", "mps"):
        raise ValueError(f"device: expected 'cpu' or 'cuda[:i]', got {device!r}")
    return dev


def _pos_float(value, name: str, allow_none: bool = False) -> Optional[float]:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) or not float(value) > 0 \
            or not math.isfinite(float(value)):
        raise ValueError(f"{name}: expected a positive finite number{' or None' if allow_none else ''}, got {value!r}")
    return float(value)


def time_slice(batch: SequenceBatch, t0: int, t1: int) -> Tuple[Optional[SequenceBatch], torch.Tensor]:
    """Steps ``t0:t1`` of every sequence that has a valid step there.

    Lengths become ``clamp(lengths - t0, 0, t1 - t0)``; sequences whose length would be 0 (they
    ended before ``t0``) are dropped. Returns ``(chunk, rows)`` where ``rows`` (``[B']`` int64,
    ascending) indexes the kept sequences in ``batch``; ``chunk`` is ``None`` if no sequence is left.
    The time axis is trimmed to the longest kept chunk.
    """
    if not 0 <= t0 < t1:
        raise ValueError(f"t0, t1: expected 0 <= t0 < t1, got {t0}, {t1}")
    lengths = (batch.lengths - t0).clamp(0, t1 - t0)
    rows = torch.nonzero(lengths > 0).flatten()
    if rows.numel() == 0:
        return None, rows
    lengths = lengths[rows]
    T = int(lengths.max())
    stop = t0 + T
    rows_list = rows.tolist()
    chunk = SequenceBatch(
        x=batch.x[rows, t0:stop],
        valid=batch.valid[rows, t0:stop],
        observed=batch.observed[rows, t0:stop],
        lengths=lengths,
        u=None if batch.u is None else batch.u[rows, t0:stop],
        index=None if batch.index is None else [
            None if batch.index[r] is None else batch.index[r][t0 : t0 + int(L)] for r, L in zip(rows_list, lengths.tolist())
        ],
        names=None if batch.names is None else [batch.names[r] for r in rows_list],
        # absolute position of the chunk's first step, for position-dependent features (seasons)
        offset=(t0 if batch.offset is None else batch.offset[rows] + t0) + torch.zeros_like(lengths),
    )
    return chunk, rows


def iterate_chunks(batch: SequenceBatch, k: int) -> Iterator[Tuple[SequenceBatch, torch.Tensor]]:
    """Yield ``(chunk, rows)`` for consecutive chunks of ``k`` time steps (see :func:`time_slice`)."""
    k = _pos_int(k, "k")
    for t0 in range(0, batch.max_length, k):
        chunk, rows = time_slice(batch, t0, t0 + k)
        if chunk is None:
            return
        yield chunk, rows


def select_state(state: dict, positions: torch.Tensor, detach: bool = True) -> dict:
    """A particle filter state (``{"s": carry, "g": carry, "lw": [N, B]}``) restricted to batch
    entries ``positions`` (dim 1 of every ``[N, B, ...]`` tensor), detached by default."""

    def pick(t: torch.Tensor) -> torch.Tensor:
        t = t.detach() if detach else t
        return t.index_select(1, positions.to(t.device))

    return {
        "s": {k: pick(v) for k, v in state["s"].items()},
        "g": {k: pick(v) for k, v in state["g"].items()},
        "lw": pick(state["lw"]),
    }


def state_digest(obj) -> str:
    """SHA-256 of a checkpoint's content (tensors by dtype, shape and bytes; other values by ``repr``;
    dict keys sorted), stored in the file as ``"digest"`` and checked on loading, so that a file
    corrupted after it was written (a flipped byte: ``torch.load`` checks no zip CRC) is refused
    instead of loading as a wrong state. Independent of the device the tensors are on."""
    import hashlib

    h = hashlib.sha256()

    def visit(o):
        if isinstance(o, torch.Tensor):
            t = o.detach().to("cpu").contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(o, dict):
            h.update(f"D{len(o)}".encode())
            for k in sorted(o, key=repr):
                h.update(repr(k).encode())
                visit(o[k])
        elif isinstance(o, (list, tuple)):
            h.update(f"L{len(o)}".encode())
            for v in o:
                visit(v)
        else:
            h.update(f"V{o!r}".encode())

    visit(obj)
    return h.hexdigest()


def _check_digest(state: dict, what: str) -> None:
    """``ValueError`` when a state carrying a ``"digest"`` does not match it (files without one pass)."""
    saved = state.get("digest")
    if saved is None:
        return
    if saved != state_digest({k: v for k, v in state.items() if k != "digest"}):
        raise ValueError(f"{what}: the checkpoint's content does not match its checksum (the file was corrupted "
                         f"or edited after it was written); refusing to resume from a wrong state")


def _finite_or_none(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _params_finite(module: torch.nn.Module) -> bool:
    flags = [torch.isfinite(p).all() for p in module.parameters()]
    return bool(torch.stack(flags).all()) if flags else True


# ---------------------------------------------------------------------------- the trainer
class Trainer:
    """Fit a :class:`~deepstate.models.base.LatentSequenceModel` with one of the training objectives.

    Args:
        lsm: the model and guide (e.g. from :func:`deepstate.models.build`); moved to ``device``.
        objective: ``"elbo"``, ``"meanfield_elbo"``, ``"particle_elbo"``, ``"iwae"`` or ``"fivo"``.
        num_particles: ``N`` (default: 4 for the particle objectives, 1 for the Pyro ELBOs, where it
            is ``Trace_ELBO(num_particles=N)``, i.e. ``N`` sequential passes).
        lr: Adam learning rate.
        clip_norm: clip the global gradient norm to this (``None``: no clipping; the norm is still
            computed to detect non-finite gradients).
        lr_decay: ``ExponentialLR`` factor applied after every epoch (``1.0``: constant), in ``(0, 1]``.
        lr_decay_after: epochs at the constant ``lr`` before ``lr_decay`` starts (default 0: from the first).
            With ``lr_decay=1/1.2, lr_decay_after=20`` the lr of epoch ``e`` (from 0) is
            ``lr * 1.2 ** -max(0, e - 19)``: the schedule of Fraccaro et al.'s SRNN code.
        batch_size: sequences per minibatch.
        bucket_by_length: group sequences of similar length into minibatches (less padding).
        annealing: KL annealing for the Pyro ELBOs and ``"particle_elbo"``: ``None``, a
            :class:`KLAnnealing`, a dict ``{"start": ..., "warmup_steps": ...}`` or an int (warm-up
            steps from 0). The logged bound is always unannealed. Refused (``ValueError``) for IWAE and FIVO.
        analytic_kl: for ``"particle_elbo"`` only: the latent terms in closed form, ``-KL(q_t || p_t)``
            given the sampled past (Krishnan et al.'s estimator; Pyro's ``TraceMeanField_ELBO`` is the
            same on the Pyro path): the same ELBO with lower-variance gradients.
        optimizer: ``"adam"`` (``torch.optim.Adam``) or ``"clipped_adam"`` (Pyro's ``ClippedAdam``:
            element-wise gradient clamp ``clip_norm``, per-step lr decay ``lrd``, ``weight_decay``).
        optimizer_args: extra keyword arguments of that optimiser (e.g. ``{"betas": (0.96, 0.999),
            "clip_norm": 10.0, "lrd": 0.99996, "weight_decay": 2.0}`` for ``"clipped_adam"``).
        loss_scale: ``"frames"`` (default; the loss is per frame, see *Loss scale*), ``"sum"``
            (gradients of the minibatch's summed negative bound, as Pyro's SVI; the logged loss stays per frame)
            or ``"sequences"`` (particle objectives: each sequence's bound divided by its length, then
            averaged over sequences, as FIVO's reference code; see *Loss scale*).
        valid_every: validate every this many epochs (and after the last one); early-stopping
            patience then counts validations.
        early_stopping_patience: stop when the validation bound (nats/frame) has not improved for
            this many epochs (needs ``valid`` in :meth:`fit`).
        checkpoint_dir: folder for the rolling checkpoint ``checkpoint.pt`` (written atomically).
        checkpoint_every: also checkpoint every this many global steps (always at epoch end and
            when stopping).
        metrics_path: JSON-lines file; one record per step (``"kind": "step"``) and per epoch
            (``"kind": "epoch"``) is appended. After a resume the steps since the checkpoint appear
            again; keep the last record per ``global_step``.
        progress: show a tqdm bar (only when stderr is a terminal).
        tbptt: truncated backpropagation through time with chunks of this many steps (particle
            objectives only); ``None``: full backpropagation.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or a ``torch.device``.
        seed: non-negative int; fixes initial RNG states and every epoch's minibatch order.
        max_bad_steps: consecutive non-finite batches before :class:`TrainingDiverged`.
        valid_objective, valid_num_particles: the bound reported on validation data (default: the
            training objective's particle version, i.e. ``"elbo"`` for the Pyro ELBOs, and its
            ``num_particles``).
        valid_batch_size: sequences per validation pass (default ``batch_size``).
        track_posterior: at every validation also record how much the model uses its latent state on
            the validation data, to watch for posterior collapse: ``valid_kl_per_frame`` (the ELBO's KL
            term, nats per frame, :func:`~deepstate.inference.diagnostics.latent_kl`) and
            ``valid_active_units`` (Burda et al.'s count, :func:`~deepstate.inference.diagnostics.active_units`)
            in the epoch records. Costs two guide passes over the whole of ``valid`` at once (not in
            ``valid_batch_size`` pieces, and on every rank under torch.distributed), counted in the wall time;
            draws from a forked RNG, so training is unchanged.
        distributed: ``None`` (default): data-parallel over all ranks when launched by ``torchrun``
            with ``WORLD_SIZE > 1`` (or when a multi-rank process group is already initialised);
            ``False``: an ordinary single-process trainer even then; ``True``: require it.
            ``batch_size`` is then *per rank*; see the module docstring.

    Attributes:
        history: list of per-epoch dicts (``epoch``, ``train_loss`` (the *mean* of the epoch's
            minibatch losses: minus the training bound per frame, annealed; with ``loss_scale="sequences"``
            minus the mean over sequences of each one's bound per frame), ``train_bound`` and
            ``valid_bound`` in nats/frame (``None`` on epochs not validated), ``lr``, ``annealing``, ``steps``,
            ``skipped``, ``seconds`` (of training steps) and ``elapsed`` (wall seconds in ``fit`` so far);
            with ``track_posterior``, ``valid_kl_per_frame`` and ``valid_active_units`` on validated epochs).
        elapsed: wall seconds spent in :meth:`fit` (steps, validation, checkpoints) over resumes.
        epoch, step_in_epoch, global_step: the position in training.
        best_valid: best validation bound so far (nats/frame) or ``None``.
        best_state: the best validation epoch's module ``state_dict`` or ``None``.
        normalizer: the fixed loss normaliser ``frames / batches per epoch`` (``sequences / batches per epoch``
            with ``loss_scale="sequences"``).
        lsm: the module being trained (the one passed in). After ``fit(restore_best=True)`` it holds
            the *best* epoch's parameters (:attr:`best_state`); the last epoch's parameters are kept
            aside and are what :meth:`state_dict` / checkpoints save and what the next :meth:`fit`
            reloads before it trains on (so edits made to ``lsm`` in between do not carry into training).

    Example:
        >>> trainer = Trainer(lsm, objective="elbo", annealing={"start": 0.1, "warmup_steps": 500})  # doctest: +SKIP
        >>> trainer.fit(train, valid, epochs=20)                                                      # doctest: +SKIP
    """

    def __init__(
        self,
        lsm: LatentSequenceModel,
        objective: str = "fivo",
        num_particles: Optional[int] = None,
        lr: float = 1e-3,
        clip_norm: Optional[float] = 10.0,
        lr_decay: float = 1.0,
        lr_decay_after: int = 0,
        batch_size: int = 20,
        bucket_by_length: bool = True,
        annealing: Union[None, KLAnnealing, dict, int] = None,
        early_stopping_patience: Optional[int] = None,
        checkpoint_dir: Union[None, str, os.PathLike] = None,
        checkpoint_every: Optional[int] = None,
        metrics_path: Union[None, str, os.PathLike] = None,
        progress: bool = True,
        tbptt: Optional[int] = None,
        device: Union[str, torch.device] = "cpu",
        seed: int = 0,
        max_bad_steps: int = 3,
        valid_objective: Optional[str] = None,
        valid_num_particles: Optional[int] = None,
        valid_batch_size: Optional[int] = None,
        distributed: Optional[bool] = None,
        optimizer: str = "adam",
        optimizer_args: Optional[dict] = None,
        loss_scale: str = "frames",
        valid_every: int = 1,
        analytic_kl: bool = False,
        track_posterior: bool = False,
    ):
        if not isinstance(lsm, LatentSequenceModel):
            raise TypeError(f"lsm: expected a LatentSequenceModel (from deepstate.models.build), got {type(lsm).__name__}")
        if objective not in TRAINING_OBJECTIVES:
            raise ValueError(f"objective: expected one of {TRAINING_OBJECTIVES}, got {objective!r}")
        self.objective_name = objective
        self.is_pyro = objective in PYRO_OBJECTIVES
        default_n = 1 if self.is_pyro else 4
        self.num_particles = _pos_int(default_n if num_particles is None else num_particles, "num_particles")
        self.lr = _pos_float(lr, "lr")
        self.clip_norm = _pos_float(clip_norm, "clip_norm", allow_none=True)
        if isinstance(lr_decay, bool) or not isinstance(lr_decay, (int, float)) or not 0.0 < float(lr_decay) <= 1.0:
            raise ValueError(f"lr_decay: expected a factor in (0, 1], got {lr_decay!r}")
        self.lr_decay = float(lr_decay)
        if isinstance(lr_decay_after, bool) or not isinstance(lr_decay_after, (int, np.integer)) or lr_decay_after < 0:
            raise ValueError(f"lr_decay_after: expected a non-negative number of epochs, got {lr_decay_after!r}")
        self.lr_decay_after = int(lr_decay_after)
        self.batch_size = _pos_int(batch_size, "batch_size")
        if not isinstance(bucket_by_length, bool):
            raise TypeError(f"bucket_by_length: expected a bool, got {type(bucket_by_length).__name__}")
        self.bucket_by_length = bucket_by_length
        self.annealing = as_annealing(annealing)
        if self.annealing is not None and objective not in PYRO_OBJECTIVES + ("particle_elbo",):
            raise ValueError(
                f"annealing: KL annealing applies to the ELBOs ('elbo', 'meanfield_elbo', 'particle_elbo'); "
                f"objective={objective!r} normalises importance weights, which annealing would rescale"
            )
        if not isinstance(analytic_kl, bool):
            raise TypeError(f"analytic_kl: expected a bool, got {type(analytic_kl).__name__}")
        if analytic_kl and objective != "particle_elbo":
            raise ValueError(f"analytic_kl: the closed-form KL applies to objective='particle_elbo' (on the Pyro path "
                             f"use 'meanfield_elbo'), got objective={objective!r}")
        self.analytic_kl = analytic_kl
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer: expected one of {tuple(OPTIMIZERS)}, got {optimizer!r}")
        if optimizer_args is not None and not isinstance(optimizer_args, dict):
            raise TypeError(f"optimizer_args: expected a dict or None, got {type(optimizer_args).__name__}")
        self.optimizer_name, self.optimizer_args = optimizer, dict(optimizer_args or {})
        if "lr" in self.optimizer_args:
            raise ValueError("optimizer_args: give the learning rate as lr=, not in optimizer_args")
        if loss_scale not in ("frames", "sum", "sequences"):
            raise ValueError(f"loss_scale: expected 'frames', 'sum' or 'sequences', got {loss_scale!r}")
        if loss_scale == "sequences" and self.is_pyro:
            raise ValueError(f"loss_scale: 'sequences' weighs each sequence by 1 / length, which needs a particle "
                             f"objective ('particle_elbo', 'iwae', 'fivo'), got objective={objective!r}")
        self.loss_scale = loss_scale
        self.valid_every = _pos_int(valid_every, "valid_every")
        self.early_stopping_patience = _pos_int(early_stopping_patience, "early_stopping_patience", allow_none=True)
        if checkpoint_dir is not None and not isinstance(checkpoint_dir, (str, os.PathLike)):
            raise TypeError(f"checkpoint_dir: expected a folder path or None, got {type(checkpoint_dir).__name__}")
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        if self.checkpoint_dir is not None and self.checkpoint_dir.exists() and not self.checkpoint_dir.is_dir():
            raise ValueError(f"checkpoint_dir: {str(checkpoint_dir)!r} exists and is not a folder")
        self.checkpoint_every = _pos_int(checkpoint_every, "checkpoint_every", allow_none=True)
        if metrics_path is not None and not isinstance(metrics_path, (str, os.PathLike)):
            raise TypeError(f"metrics_path: expected a file path or None, got {type(metrics_path).__name__}")
        self.metrics_path = None if metrics_path is None else Path(metrics_path)
        self.progress = bool(progress)
        self.tbptt = _pos_int(tbptt, "tbptt", allow_none=True)
        if self.tbptt is not None and self.is_pyro:
            raise ValueError(
                f"tbptt: truncated BPTT needs a particle objective ('particle_elbo', 'iwae', 'fivo'), got {objective!r}"
            )
        if distributed not in (None, True, False):
            raise TypeError(f"distributed: expected None, True or False, got {distributed!r}")
        self.device = resolve_device(_dist.rank_device(device) if distributed is not False else device)
        # torch.distributed is only touched under a multi-process launch (or when asked for)
        self._dist = _dist.setup(self.device, distributed)
        self.rank = 0 if self._dist is None else self._dist.rank
        self.world_size = 1 if self._dist is None else self._dist.world_size
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed: expected a non-negative int, got {seed!r}")
        self.seed = int(seed)
        self.max_bad_steps = _pos_int(max_bad_steps, "max_bad_steps")
        vo = valid_objective if valid_objective is not None else ("elbo" if self.is_pyro else objective)
        if vo not in ("fivo", "iwae", "elbo", "particle_elbo"):
            raise ValueError(f"valid_objective: expected 'fivo', 'iwae', 'elbo' or 'particle_elbo' (the same), "
                             f"got {valid_objective!r}")
        self.valid_objective = vo
        self.valid_num_particles = _pos_int(
            self.num_particles if valid_num_particles is None else valid_num_particles, "valid_num_particles")
        self.valid_batch_size = _pos_int(self.batch_size if valid_batch_size is None else valid_batch_size,
                                         "valid_batch_size")
        if not isinstance(track_posterior, bool):
            raise TypeError(f"track_posterior: expected a bool, got {type(track_posterior).__name__}")
        self.track_posterior = track_posterior

        self.lsm = lsm.to(self.device)
        params = list(self.lsm.parameters())
        if not params:
            raise ValueError("lsm: the model has no parameters to train")
        self.dtype = params[0].dtype
        try:
            self.optimizer = OPTIMIZERS[optimizer](params, lr=self.lr, **self.optimizer_args)
        except TypeError as err:
            raise ValueError(f"optimizer_args: not accepted by {optimizer!r}: {err}") from err
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, gamma=self.lr_decay)
        if self.is_pyro:
            cls = Trace_ELBO if objective == "elbo" else TraceMeanField_ELBO
            self._elbo = cls(num_particles=self.num_particles)
            self._objective = None
        else:
            name = "elbo" if objective == "particle_elbo" else objective
            self._objective = get_objective(name, self.num_particles,
                                            **({"analytic_kl": True} if analytic_kl else {}))

        # training position and bookkeeping (all of it goes into checkpoints)
        self.epoch = 0
        self.step_in_epoch = 0
        self.global_step = 0
        self.best_valid: Optional[float] = None
        self.best_state: Optional[dict] = None
        self.bad_epochs = 0
        self.stopped_early = False
        self.consecutive_bad = 0
        self.history: List[dict] = []
        self.elapsed = 0.0  # wall seconds spent in fit (training, validation, checkpoints), over resumes
        self._mark = time.perf_counter()
        self._fit_epochs = None
        self.normalizer: Optional[float] = None
        self._accum = self._new_accum()
        self._started = False
        self._data_fingerprint = None
        # the live training parameters while ``lsm`` holds the restored best ones (restore_best): the
        # optimiser's moments belong to these, so continuing must start from them, not from the best
        self._live_model_state: Optional[dict] = None

    # ------------------------------------------------------------------ small pieces
    @staticmethod
    def _new_accum() -> dict:
        return {"loss": 0.0, "bound": 0.0, "frames": 0, "steps": 0, "skipped": 0, "seconds": 0.0}

    @property
    def _grad_scale(self) -> float:
        """What the per-frame loss is multiplied by before ``backward`` (``loss_scale``)."""
        return float(self.normalizer) if self.loss_scale == "sum" else 1.0

    def _tick(self) -> None:
        """Add the wall time since the last tick to :attr:`elapsed` (time spent in :meth:`fit`)."""
        now = time.perf_counter()
        self.elapsed += now - self._mark
        self._mark = now

    @property
    def checkpoint_path(self) -> Optional[Path]:
        """``checkpoint_dir / "checkpoint.pt"`` (or ``None``)."""
        return None if self.checkpoint_dir is None else self.checkpoint_dir / CHECKPOINT_NAME

    def _settings(self) -> dict:
        out = {
            "objective": self.objective_name, "num_particles": self.num_particles, "lr": self.lr,
            "clip_norm": self.clip_norm, "lr_decay": self.lr_decay, "batch_size": self.batch_size,
            "bucket_by_length": self.bucket_by_length, "tbptt": self.tbptt, "seed": self.seed,
            "annealing": None if self.annealing is None else {"start": self.annealing.start,
                                                             "warmup_steps": self.annealing.warmup_steps},
        }
        # only when not the defaults, so that older checkpoints keep matching
        if self.optimizer_name != "adam" or self.optimizer_args:
            out["optimizer"] = {"name": self.optimizer_name, **self.optimizer_args}
        if self.loss_scale != "frames":
            out["loss_scale"] = self.loss_scale
        if self.valid_every != 1:
            out["valid_every"] = self.valid_every
        if self.analytic_kl:
            out["analytic_kl"] = True
        if self.lr_decay_after:
            out["lr_decay_after"] = self.lr_decay_after
        if self.world_size > 1:  # single-process checkpoints keep their old settings
            out["world_size"] = self.world_size
        return out

    def global_epoch_batches(self, train: SequenceBatch, epoch: int) -> List[np.ndarray]:
        """Sequence indices of every *global* minibatch of ``epoch`` (``world_size * batch_size``
        sequences, over all ranks): a function of ``(seed, epoch, world_size)`` only."""
        rng = np.random.default_rng([self.seed, int(epoch)])
        return minibatch_indices(train.lengths, self.batch_size * self.world_size, shuffle=True, seed=rng,
                                 bucket_by_length=self.bucket_by_length)

    def epoch_batches(self, train: SequenceBatch, epoch: int) -> List[np.ndarray]:
        """This rank's sequence indices of every minibatch of ``epoch``: a function of ``(seed, epoch)``
        only (in a single process, the global minibatches; under torch.distributed, this rank's share
        of each, possibly empty, see :func:`~deepstate.data.loader.shard_minibatch_indices`)."""
        batches = self.global_epoch_batches(train, epoch)
        if self.world_size == 1:
            return batches
        return shard_minibatch_indices(batches, self.rank, self.world_size)

    def _rank_seed(self, *keys) -> int:
        return int(np.random.SeedSequence([self.seed, *[int(k) for k in keys]]).generate_state(1)[0])

    def _valid_seed(self, epoch: int) -> int:
        return int(np.random.SeedSequence([self.seed, int(epoch), 1]).generate_state(1)[0])

    def _to_device(self, batch: SequenceBatch) -> SequenceBatch:
        if batch.x.device == self.device and batch.x.dtype == self.dtype:
            return batch
        return batch.to(device=self.device, dtype=self.dtype)

    def _rng_devices(self) -> list:
        return [self.device] if self.device.type == "cuda" else []

    def _snapshot(self) -> dict:
        return {
            "model": {k: v.detach().clone() for k, v in self.lsm.state_dict().items()},
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
        }

    def _restore(self, snap: dict) -> None:
        self.lsm.load_state_dict(snap["model"])
        self.optimizer.load_state_dict(snap["optimizer"])

    def _log(self, record: dict) -> None:
        if self.metrics_path is None or self.rank != 0:
            return
        self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
        rec = {k: _finite_or_none(v) for k, v in record.items()}
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()

    # ------------------------------------------------------------------ losses
    def _forward(self, mb: SequenceBatch, initial_state: Optional[dict] = None,
                 lengths: Optional[torch.Tensor] = None):
        """``(loss, bound_total, result)``: the scaled loss to minimise, the unannealed total bound
        of the minibatch (nats, a float) and the particle filter result (``None`` for Pyro ELBOs).
        ``lengths [B]``: the whole sequences' lengths (for ``loss_scale="sequences"``; default ``mb``'s,
        which a TBPTT chunk cuts short)."""
        if self.is_pyro:
            a = 1.0 if self.annealing is None else float(self.annealing.factor)
            if a == 1.0:
                neg_elbo = self._elbo.differentiable_loss(self.lsm.model, self.lsm.guide, mb, 1.0)
                bound = -float(neg_elbo.detach())
            else:
                # the unannealed bound from the same draws: replay the RNG for a no-grad pass
                cpu_state = torch.random.get_rng_state()
                cuda_state = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
                neg_elbo = self._elbo.differentiable_loss(self.lsm.model, self.lsm.guide, mb, a)
                with torch.random.fork_rng(devices=self._rng_devices()):
                    torch.random.set_rng_state(cpu_state)
                    if cuda_state is not None:
                        torch.cuda.set_rng_state(cuda_state, self.device)
                    with torch.no_grad():
                        bound = -float(self._elbo.differentiable_loss(self.lsm.model, self.lsm.guide, mb, 1.0))
            return neg_elbo / self.normalizer, bound, None
        kw = {} if self.annealing is None else {"kl_scale": float(self.annealing.factor)}
        if self.loss_scale == "sequences":
            kw["weights"] = 1.0 / (mb.lengths if lengths is None else lengths).to(self.device, self.dtype)
        loss, result = self._objective.loss(self.lsm, mb, self.normalizer, initial_state=initial_state, **kw)
        return loss, float(result.log_z.detach().sum()), result

    def _zero_loss(self) -> torch.Tensor:
        """The loss of an empty share (distributed: this rank has no sequence in this step)."""
        return torch.zeros((), device=self.device, dtype=self.dtype)

    def _backward_and_step_distributed(self, loss: torch.Tensor) -> Tuple[bool, float]:
        """Backward, average the gradients over ranks, clip, step; every rank takes the same decision."""
        finite = bool(torch.isfinite(loss.detach()))
        self.optimizer.zero_grad(set_to_none=True)
        if finite and loss.requires_grad:
            (loss * self._grad_scale).backward()
        params = list(self.lsm.parameters())
        if _dist.allreduce_gradients(self._dist, params, local_bad=not finite):
            self.optimizer.zero_grad(set_to_none=True)
            return False, math.nan
        params = [p for p in params if p.grad is not None]
        if not params:
            return True, 0.0
        norm = float(torch.nn.utils.clip_grad_norm_(params, self.clip_norm if self.clip_norm is not None else math.inf))
        if not math.isfinite(norm):
            return False, norm
        self.optimizer.step()
        return True, norm

    def _backward_and_step(self, loss: torch.Tensor) -> Tuple[bool, float]:
        """Backward, clip, step. Returns ``(ok, grad_norm)``; nothing is stepped when not ok."""
        if self._dist is not None:
            return self._backward_and_step_distributed(loss)
        if not bool(torch.isfinite(loss.detach())):
            return False, math.nan
        self.optimizer.zero_grad(set_to_none=True)
        (loss * self._grad_scale).backward()
        params = [p for p in self.lsm.parameters() if p.grad is not None]
        if not params:
            return True, 0.0
        norm = torch.nn.utils.clip_grad_norm_(params, self.clip_norm if self.clip_norm is not None else math.inf)
        norm = float(norm)
        if not math.isfinite(norm):
            return False, norm
        self.optimizer.step()
        return True, norm

    def _train_batch(self, mb: Optional[SequenceBatch], max_length: Optional[int] = None) -> dict:
        """One minibatch (all its TBPTT chunks). Returns the step record; rolls back on failure.

        Distributed: ``mb`` is this rank's share (``None`` if empty) and ``max_length`` the longest
        sequence of the global minibatch, so every rank runs the same number of TBPTT chunks; the
        record's loss, bound and frames are the global minibatch's."""
        snap = self._snapshot()
        factor = 1.0 if self.annealing is None else float(self.annealing.factor)
        ok, norms, loss_total, bound_total = True, [], 0.0, 0.0
        if self.tbptt is None:
            if mb is None:
                loss, bound = self._zero_loss(), 0.0
            else:
                loss, bound, _ = self._forward(mb)
            ok, norm = self._backward_and_step(loss)
            norms.append(norm)
            loss_total, bound_total = float(loss.detach()), bound
        else:
            T = mb.max_length if max_length is None else int(max_length)
            state, prev_rows = None, None
            for t0 in range(0, T, self.tbptt):
                chunk, rows = (None, None) if mb is None or t0 >= mb.max_length else \
                    time_slice(mb, t0, t0 + self.tbptt)
                if chunk is None:
                    if self._dist is None:
                        break  # every sequence has ended
                    loss, bound, result = self._zero_loss(), 0.0, None  # still join the all-reduce
                else:
                    init = None
                    if state is not None:
                        init = select_state(state, torch.searchsorted(prev_rows, rows))
                    loss, bound, result = self._forward(chunk, init, mb.lengths[rows])
                ok, norm = self._backward_and_step(loss)
                norms.append(norm)
                loss_total += float(loss.detach())
                bound_total += bound
                if not ok:
                    break
                if result is not None:
                    state, prev_rows = result.state, rows
        if ok and not _params_finite(self.lsm):
            ok = False
        if not ok:
            self._restore(snap)
        elif self.annealing is not None:
            self.annealing.step()
        finite_norms = [n for n in norms if math.isfinite(n)]
        frames = 0 if mb is None else mb.num_frames
        if self._dist is not None:  # the global minibatch's numbers (the loss: as one process would report it)
            loss_total, bound_total, frames = _dist.allreduce_sum(self._dist, [loss_total, bound_total, frames])
            loss_total /= self.world_size
            frames = int(round(frames))
        return {
            "ok": ok,
            "loss": loss_total,
            "bound": bound_total,
            "frames": frames,
            "annealing": factor,
            "grad_norm": max(finite_norms) if len(finite_norms) == len(norms) else math.nan,
        }

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """Everything needed to continue this run exactly (see the module docstring)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "version": 1,
            "config": getattr(self.lsm, "config", None),
            "model": self._live_model_state if self._live_model_state is not None else self.lsm.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "annealing": None if self.annealing is None else self.annealing.state_dict(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "best_valid": self.best_valid,
            "best_state": self.best_state,
            "bad_epochs": self.bad_epochs,
            "stopped_early": self.stopped_early,
            "consecutive_bad": self.consecutive_bad,
            "accum": dict(self._accum),
            "history": list(self.history),
            "rng": get_rng_state(self.device),
            "settings": self._settings(),
            "data": self._data_fingerprint,
            "normalizer": self.normalizer,
            "elapsed": self.elapsed,
        }

    def save_checkpoint(self, path: Union[None, str, os.PathLike] = None) -> Path:
        """Write :meth:`state_dict` atomically to ``path`` (default :attr:`checkpoint_path`).

        Under torch.distributed every rank must call it (it gathers every rank's RNG state into the
        file); rank 0 writes, and all ranks return once the file is written."""
        path = path if path is not None else self.checkpoint_path
        if path is None:
            raise ValueError("path: no path given and the trainer has no checkpoint_dir")
        state = self.state_dict()
        if self._dist is None:
            state["digest"] = state_digest(state)
            return atomic_save(state, path)
        # distributed: a collective (every rank must call it); rank 0 writes every rank's RNG state
        state["rng_ranks"] = _dist.all_gather_object(self._dist, state["rng"])
        state["world_size"] = self.world_size
        if self.rank == 0:
            state["digest"] = state_digest(state)
            atomic_save(state, path)
        _dist.barrier(self._dist)
        return Path(path)

    def load_state_dict(self, state: dict, restore_rng: bool = True) -> None:
        """Restore a :meth:`state_dict` (from :meth:`save_checkpoint`). The model's configuration must
        match the checkpoint's (``ValueError`` otherwise)."""
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError("state: not a deepstate trainer checkpoint")
        _check_digest(state, "checkpoint")
        cfg, mine = state.get("config"), getattr(self.lsm, "config", None)
        if cfg is not None and mine is not None and cfg != mine:
            raise ValueError(f"checkpoint: saved for model config {cfg}, but this trainer's model has config {mine}")
        try:
            self.lsm.load_state_dict(state["model"])
        except RuntimeError as err:
            raise ValueError(f"checkpoint: the saved parameters do not fit this model: {err}") from err
        self._live_model_state = None  # the checkpoint's parameters are the live ones now
        if state["settings"] != self._settings():
            diff = {k: (state["settings"].get(k), v) for k, v in self._settings().items() if state["settings"].get(k) != v}
            warnings.warn(f"Trainer: resuming with settings that differ from the checkpoint's (saved, now): {diff}; "
                          f"the run will not reproduce the uninterrupted one", RuntimeWarning, stacklevel=3)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.annealing is not None and state["annealing"] is not None:
            self.annealing.load_state_dict(state["annealing"])
        for key in ("epoch", "step_in_epoch", "global_step", "best_valid", "bad_epochs", "stopped_early",
                    "consecutive_bad"):
            setattr(self, key, state[key])
        self.elapsed = float(state.get("elapsed", 0.0))  # older checkpoints did not keep it
        self.best_state = state["best_state"]
        self._accum = dict(state["accum"])
        self.history = list(state["history"])
        if restore_rng:
            rng, ranks = state["rng"], state.get("rng_ranks")
            if ranks is not None and len(ranks) == self.world_size:
                rng = ranks[self.rank]
            elif self.rank > 0:  # saved by fewer ranks: give this rank its own stream
                rng = None
            if rng is not None:
                set_rng_state(rng, self.device)
            else:
                pyro.set_rng_seed(self._rank_seed(_RANK_TAG, self.rank, self.global_step))
        self._started = True

    def load_checkpoint(self, path: Union[None, str, os.PathLike] = None, restore_rng: bool = True) -> None:
        """Load a checkpoint file (default :attr:`checkpoint_path`) into this trainer."""
        path = path if path is not None else self.checkpoint_path
        if path is None:
            raise ValueError("path: no path given and the trainer has no checkpoint_dir")
        state = load_checkpoint(path, map_location=self.device, kind=CHECKPOINT_FORMAT)
        _check_digest(state, f"path: {str(path)!r}")
        self.load_state_dict(state, restore_rng=restore_rng)
        self._data_fingerprint = state.get("data")

    # ------------------------------------------------------------------ fit
    def _check_data(self, data, name: str, required: bool) -> Optional[SequenceBatch]:
        if data is None:
            if required:
                raise ValueError(f"{name}: expected a SequenceBatch, got None")
            return None
        if isinstance(data, SequenceDataset):
            data = data.batch
        if not isinstance(data, SequenceBatch):
            raise TypeError(f"{name}: expected a SequenceBatch (see deepstate.data), got {type(data).__name__}")
        if data.dim != self.lsm.x_dim:
            raise ValueError(f"{name}: expected {self.lsm.x_dim} dimensions (the model's input_dim), got {data.dim}")
        if data.num_frames == 0:
            raise ValueError(f"{name}: has no valid steps")
        if not bool(data.observed.any()):
            raise ValueError(f"{name}: has no observed value (every value is missing/NaN): nothing to fit or score")
        emission = getattr(self.lsm.ssm, "emission", None)
        if emission is not None:  # once per fit, not per step: Bernoulli 0/1, Poisson counts
            check_support(emission, data.x, data.observed, name)
        return data

    def _remove_stale_temp_files(self) -> None:
        """Delete temporary files of checkpoint writes that a killed process left half-written
        (``.checkpoint.pt.*.tmp``; the checkpoint itself is intact: see :func:`atomic_save`). Rank 0
        only, once per run, before anything is written."""
        if self.checkpoint_path is None or self.rank != 0 or not self.checkpoint_dir.is_dir():
            return
        for p in self.checkpoint_dir.glob(f".{CHECKPOINT_NAME}.*.tmp"):
            try:
                p.unlink()
            except OSError:
                pass

    def _resume_state(self) -> Optional[dict]:
        """The checkpoint to resume from, or ``None``. Distributed: rank 0 reads it and broadcasts
        it, so every rank resumes from the same state (no shared file system needed)."""
        if self.checkpoint_path is None:
            return None
        if self._dist is None:
            if not self.checkpoint_path.is_file():
                return None
            state = load_checkpoint(self.checkpoint_path, map_location=self.device, kind=CHECKPOINT_FORMAT)
            _check_digest(state, f"checkpoint_dir: {str(self.checkpoint_path)!r}")
            return state
        box = None
        if self.rank == 0 and self.checkpoint_path.is_file():
            try:
                box = ("ok", load_checkpoint(self.checkpoint_path, map_location="cpu", kind=CHECKPOINT_FORMAT))
                _check_digest(box[1], f"checkpoint_dir: {str(self.checkpoint_path)!r}")
            except Exception as err:  # tell the other ranks instead of leaving them waiting
                box = ("error", f"{type(err).__name__}: {err}")
        box = _dist.broadcast_object(self._dist, box)
        if box is None:
            return None
        if box[0] == "error":
            raise ValueError(f"checkpoint: rank 0 could not read {str(self.checkpoint_path)!r}: {box[1]}")
        return box[1]

    def fit(
        self,
        train: SequenceBatch,
        valid: Optional[SequenceBatch] = None,
        epochs: int = 10,
        resume: bool = True,
        max_steps: Optional[int] = None,
        callback: Optional[Callable[["Trainer", dict], Optional[bool]]] = None,
        restore_best: bool = False,
        max_seconds: Optional[float] = None,
    ) -> List[dict]:
        """Train until ``epochs`` epochs in total are done (counting epochs restored from a checkpoint).

        Args:
            train: training sequences ``x [B, T, D]`` (cast to the model's device and dtype per minibatch).
            valid: optional validation sequences; their bound (nats/frame) is computed after every
                epoch and drives early stopping.
            epochs: total number of epochs of the run.
            resume: if the trainer has not started yet and ``checkpoint_dir`` holds a checkpoint,
                continue from it (the model config and training data must match).
            max_steps: stop once this many minibatches (global steps, in total) have been processed;
                a checkpoint is written at the stopping point, and a later ``fit`` continues from it.
            callback: ``callback(trainer, record)`` after every step (``record`` is the step's metrics
                dict); returning ``True`` stops training (after writing a checkpoint).
            restore_best: at the end, load the parameters of the best validation epoch into :attr:`lsm`.
                The last epoch's parameters are kept aside: checkpoints save them and a later ``fit``
                continues from them (with the optimiser state that belongs to them), so the run
                continues exactly as if it had not been interrupted.
            max_seconds: stop (after writing a checkpoint) once :attr:`elapsed`, the wall time spent
                in ``fit`` over this run and every run it resumed, reaches this many seconds: a
                wall-time budget that survives interruptions.

        Returns:
            :attr:`history`, a list of per-epoch dicts.

        Raises:
            TrainingDiverged: ``max_bad_steps`` non-finite minibatches in a row.
        """
        train = self._check_data(train, "train", required=True)
        valid = self._check_data(valid, "valid", required=False)
        epochs = _pos_int(epochs, "epochs")
        max_steps = _pos_int(max_steps, "max_steps", allow_none=True)
        max_seconds = _pos_float(max_seconds, "max_seconds", allow_none=True)
        if callback is not None and not callable(callback):
            raise TypeError(f"callback: expected a callable or None, got {type(callback).__name__}")
        if self.early_stopping_patience is not None and valid is None:
            raise ValueError("valid: early_stopping_patience needs validation data")

        n_batches = len(minibatch_indices(train.lengths, self.batch_size, shuffle=False))
        fingerprint = {"num_sequences": train.batch_size, "frames": train.num_frames, "dim": train.dim,
                       "num_batches": n_batches}
        if not self._started:
            self._remove_stale_temp_files()
        state = self._resume_state() if not self._started and resume else None
        if state is not None:
            saved = state.get("data")
            if saved is not None and saved != fingerprint:
                raise ValueError(f"train: differs from the checkpointed run's data ({saved} saved, {fingerprint} "
                                 f"now); use another checkpoint_dir or resume=False")
            self.load_state_dict(state)
        elif not self._started:
            pyro.set_rng_seed(self.seed if self.rank == 0 else self._rank_seed(_RANK_TAG, self.rank))
            if self._dist is not None:  # every rank starts from rank 0's parameters
                _dist.broadcast_module(self._dist, self.lsm)
            self._started = True
        if self._live_model_state is not None:  # a previous fit restored the best epoch: go on from the last
            self.lsm.load_state_dict(self._live_model_state)
            self._live_model_state = None
        self._data_fingerprint = fingerprint
        # frames (or sequences, for loss_scale="sequences") per minibatch on average
        total = train.batch_size if self.loss_scale == "sequences" else train.num_frames
        if self.world_size == 1:
            self.normalizer = total / n_batches
        else:  # total / (local minibatches per epoch over all ranks): averaged gradients = one process's
            n_global = len(minibatch_indices(train.lengths, self.batch_size * self.world_size, shuffle=False))
            self.normalizer = total / (self.world_size * n_global)
        self.lsm.train()
        self._fit_epochs = epochs
        self._mark = time.perf_counter()

        stop = False
        while self.epoch < epochs and not stop and not self.stopped_early:
            global_batches = self.global_epoch_batches(train, self.epoch)
            batches = global_batches if self.world_size == 1 else \
                shard_minibatch_indices(global_batches, self.rank, self.world_size)
            bar = self._progress_bar(len(batches))
            try:
                while self.step_in_epoch < len(batches):
                    if max_steps is not None and self.global_step >= max_steps:
                        stop = True
                        break
                    if max_seconds is not None and self.elapsed >= max_seconds:
                        stop = True
                        break
                    t_start = time.perf_counter()
                    idx = batches[self.step_in_epoch]
                    mb = self._to_device(train[idx.tolist()]) if len(idx) else None
                    max_length = None if self.world_size == 1 else \
                        int(train.lengths[torch.as_tensor(global_batches[self.step_in_epoch])].max())
                    out = self._train_batch(mb, max_length)
                    record = self._after_step(out, time.perf_counter() - t_start)
                    self._tick()
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{record['loss']:.4g}", bound=f"{record['bound_per_frame']:.4g}")
                    stop_now = callback is not None and bool(callback(self, record))
                    if callback is not None and self._dist is not None:  # stop on every rank, or on none
                        stop_now = _dist.allreduce_sum(self._dist, [float(stop_now)])[0] > 0
                    if stop_now:
                        stop = True
                        break
            finally:
                if bar is not None:
                    bar.close()
            if stop:
                break
            self._end_epoch(valid)
        if stop and self.checkpoint_path is not None:
            self.save_checkpoint()
        if restore_best and self.best_state is not None:
            self._live_model_state = {k: v.detach().clone() for k, v in self.lsm.state_dict().items()}
            self.lsm.load_state_dict(self.best_state)
        return self.history

    def _progress_bar(self, total: int):
        if not self.progress or self.rank != 0 or not sys.stderr.isatty():
            return None
        from tqdm import tqdm

        return tqdm(total=total, initial=self.step_in_epoch, desc=f"epoch {self.epoch + 1}", leave=False)

    def _after_step(self, out: dict, seconds: float) -> dict:
        a = self._accum
        record = {
            "kind": "step", "epoch": self.epoch, "step": self.step_in_epoch, "global_step": self.global_step + 1,
            "loss": out["loss"], "bound_per_frame": out["bound"] / max(out["frames"], 1),
            "annealing": out["annealing"],
            "lr": self.optimizer.param_groups[0]["lr"], "grad_norm": out["grad_norm"], "skipped": not out["ok"],
        }
        a["seconds"] += seconds
        if out["ok"]:
            self.consecutive_bad = 0
            a["loss"] += out["loss"]
            a["bound"] += out["bound"]
            a["frames"] += out["frames"]
            a["steps"] += 1
        else:
            self.consecutive_bad += 1
            a["skipped"] += 1
        self.step_in_epoch += 1
        self.global_step += 1
        self._log(record)
        if not out["ok"]:
            if self.consecutive_bad >= self.max_bad_steps:
                where = f"; the last good checkpoint is {str(self.checkpoint_path)!r}" \
                    if self.checkpoint_path is not None and self.checkpoint_path.is_file() else ""
                raise TrainingDiverged(
                    f"training diverged: {self.consecutive_bad} consecutive minibatches with a non-finite loss or "
                    f"gradient (epoch {self.epoch}, global step {self.global_step}); the model holds the last good "
                    f"parameters{where}. Try a smaller lr, a smaller clip_norm, or check the data."
                )
            warnings.warn(
                f"Trainer: non-finite loss or gradient at epoch {self.epoch}, step {self.step_in_epoch - 1} (global "
                f"step {self.global_step}); rolled back to the last good state and skipped the batch "
                f"({self.consecutive_bad} in a row)", RuntimeWarning, stacklevel=3,
            )
        elif self.checkpoint_every is not None and self.checkpoint_path is not None \
                and self.global_step % self.checkpoint_every == 0:
            self.save_checkpoint()
        return record

    def _posterior_use(self, valid: SequenceBatch) -> dict:
        """``track_posterior``'s record entries, from draws that leave the training RNG untouched."""
        self.lsm.eval()
        with torch.random.fork_rng(devices=self._rng_devices()), torch.no_grad():
            torch.manual_seed(self._valid_seed(self.epoch) + 1)
            use = posterior_use(self.lsm, self._to_device(valid))
        return {"valid_kl_per_frame": use["kl_per_frame"], "valid_active_units": use["active_units"]}

    def _end_epoch(self, valid: Optional[SequenceBatch]) -> None:
        a = self._accum
        lr_used = self.optimizer.param_groups[0]["lr"]
        entry = {
            "epoch": self.epoch + 1,
            "train_loss": a["loss"] / a["steps"] if a["steps"] else math.nan,
            "train_bound": a["bound"] / a["frames"] if a["frames"] else math.nan,
            "valid_bound": None,
            "lr": lr_used,
            "annealing": 1.0 if self.annealing is None else self.annealing.factor,
            "steps": a["steps"],
            "skipped": a["skipped"],
            "seconds": a["seconds"],
        }
        if self.epoch + 1 >= self.lr_decay_after:  # the epoch just finished counts
            self.scheduler.step()
        last = self._fit_epochs is not None and self.epoch + 1 >= self._fit_epochs
        if valid is not None and ((self.epoch + 1) % self.valid_every == 0 or last):
            kw = dict(objective=self.valid_objective, num_particles=self.valid_num_particles,
                      batch_size=self.valid_batch_size, seed=self._valid_seed(self.epoch))
            if self._dist is None:
                res = evaluate(self.lsm, valid, **kw)
            else:  # each rank scores its share; the bound is summed over ranks (the same on all)
                res = _dist.evaluate_distributed(self._dist, self.lsm, valid, **kw)
            if self.track_posterior:
                entry.update(self._posterior_use(valid))
            self.lsm.train()
            vb = res["nats_per_frame"]
            entry["valid_bound"] = vb
            if self.best_valid is None or vb > self.best_valid:
                self.best_valid = vb
                self.bad_epochs = 0
                self.best_state = {k: v.detach().clone() for k, v in self.lsm.state_dict().items()}
            else:
                self.bad_epochs += 1
                if self.early_stopping_patience is not None and self.bad_epochs >= self.early_stopping_patience:
                    self.stopped_early = True
        entry["stopped_early"] = self.stopped_early
        self._tick()
        entry["elapsed"] = self.elapsed
        self.history.append({k: _finite_or_none(v) for k, v in entry.items()})
        self._log({"kind": "epoch", **entry})
        self.epoch += 1
        self.step_in_epoch = 0
        self._accum = self._new_accum()
        if self.checkpoint_path is not None:
            self.save_checkpoint()
