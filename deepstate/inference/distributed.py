r"""Data-parallel training on :mod:`torch.distributed` (launched with ``torchrun``).

The :class:`~deepstate.inference.trainer.Trainer` detects a ``torchrun`` launch (``WORLD_SIZE > 1``
in the environment, or a process group the caller already initialised) and then:

* initialises the default process group itself if needed, with backend ``nccl`` for a CUDA device
  and ``gloo`` otherwise (``device="cuda"`` without an index becomes ``cuda:LOCAL_RANK``);
* gives every rank the same epoch plan: the global minibatches of ``world_size * batch_size``
  sequences (length bucketing, seeded by ``(seed, epoch)`` exactly as a single process with batch
  ``world_size * batch_size``), each cut into ``world_size`` interleaved pieces
  (:func:`~deepstate.data.loader.shard_minibatch_indices`). Every rank therefore takes the same
  number of optimiser steps; a rank whose piece of the last batch is empty contributes a zero
  gradient (it still joins the all-reduce, so nothing deadlocks and nothing is padded or dropped);
* after ``backward`` averages the gradients over ranks with one ``all_reduce`` of a flattened
  buffer (:func:`allreduce_gradients`), together with a flag for a non-finite loss on any rank, so
  the divergence guard takes the same decision everywhere;
* normalises the loss by ``frames / (world_size * steps per epoch)``: with averaged gradients the
  update is then exactly that of one process with batch ``world_size * batch_size``;
* writes metrics and checkpoints on rank 0 only (checkpoints carry every rank's RNG state, so all
  ranks resume from the one file exactly), and reduces validation bounds over ranks
  (:func:`evaluate_distributed`).

Why not :class:`torch.nn.parallel.DistributedDataParallel`: the Pyro ELBOs call ``lsm.model`` and
``lsm.guide``, which call the submodules directly, never the wrapper's ``forward``, so DDP's
reducer would not be prepared; TBPTT runs several backward passes per minibatch; and the
divergence guard needs all ranks to agree before stepping. An explicit all-reduce after backward
serves every objective the same way. It does not overlap communication with backward (DDP's
bucketed hooks do); for the model sizes here one collective per step is cheap.

A single process (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``) never initialises torch.distributed.
"""

from __future__ import annotations

import atexit
import datetime
import os
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence

import numpy as np
import torch

__all__ = [
    "DistContext",
    "env_world_size",
    "setup",
    "rank_device",
    "is_main_process",
    "get_rank",
    "allreduce_gradients",
    "allreduce_sum",
    "broadcast_module",
    "broadcast_object",
    "all_gather_object",
    "barrier",
    "wait_for_all_ranks",
    "evaluate_distributed",
]


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (set by ``torchrun``), 1 when absent."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def _group_active() -> bool:
    """A default process group exists (without touching torch.distributed if it is unavailable)."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def get_rank() -> int:
    """This process's rank: the process group's, else ``RANK`` from the environment (set by
    ``torchrun`` before any group exists), else 0."""
    if _group_active():
        return torch.distributed.get_rank()
    try:
        return int(os.environ.get("RANK", "0")) if env_world_size() > 1 else 0
    except ValueError:
        return 0


def is_main_process() -> bool:
    """True on rank 0, and in a single process: the process that writes files and prints."""
    return get_rank() == 0


def rank_device(device):
    """``"cuda"`` (no index) under ``torchrun`` becomes ``cuda:LOCAL_RANK``; anything else is unchanged."""
    if env_world_size() > 1 or _group_active():
        if (isinstance(device, str) and device == "cuda") or (
                isinstance(device, torch.device) and device.type == "cuda" and device.index is None):
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


@dataclass
class DistContext:
    """The process group as the trainer uses it."""

    rank: int
    world_size: int
    backend: str
    comm_device: torch.device  # where collective buffers live (cuda for nccl, cpu for gloo)


def _destroy():
    if _group_active():
        try:
            torch.distributed.destroy_process_group()
        except Exception:  # interpreter shutdown: best effort
            pass


def setup(device: torch.device, enabled: Optional[bool] = None, timeout_s: float = 1800.0) -> Optional[DistContext]:
    """The distributed context for a trainer on ``device``, or ``None`` for a single process.

    Args:
        device: the trainer's (resolved) device; a CUDA device selects ``nccl``, otherwise ``gloo``.
        enabled: ``None`` (auto: on when a process group with more than one rank exists or
            ``WORLD_SIZE > 1``), ``False`` (never; a single-process trainer even under torchrun),
            ``True`` (required: ``RuntimeError`` if there is no multi-process launch).
        timeout_s: collective timeout when this function initialises the group.
    """
    if enabled is False:
        return None
    if not torch.distributed.is_available():
        if enabled or env_world_size() > 1:
            raise RuntimeError("distributed: torch.distributed is not available in this torch build")
        return None
    dist = torch.distributed
    if not dist.is_initialized():
        if env_world_size() <= 1:
            if enabled:
                raise RuntimeError("distributed=True: no process group and WORLD_SIZE <= 1; launch with torchrun")
            return None
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        kwargs = {"timeout": datetime.timedelta(seconds=timeout_s)}
        if backend == "nccl":
            kwargs["device_id"] = device
        try:
            dist.init_process_group(backend=backend, **kwargs)
        except TypeError:  # older torch without device_id
            kwargs.pop("device_id", None)
            dist.init_process_group(backend=backend, **kwargs)
        atexit.register(_destroy)
    world = dist.get_world_size()
    if world <= 1:
        if enabled:
            raise RuntimeError("distributed=True: the process group has a single rank")
        return None
    backend = str(dist.get_backend())
    if device.type == "cuda" and backend == "nccl":
        torch.cuda.set_device(device)
    comm = device if backend == "nccl" else torch.device("cpu")
    return DistContext(rank=dist.get_rank(), world_size=world, backend=backend, comm_device=comm)


# ---------------------------------------------------------------------------- collectives
def allreduce_sum(ctx: DistContext, values: Sequence[float]) -> List[float]:
    """Sum a few floats over ranks (in float64)."""
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=ctx.comm_device)
    torch.distributed.all_reduce(t)
    return t.cpu().tolist()


def allreduce_gradients(ctx: DistContext, params: Sequence[torch.nn.Parameter], local_bad: bool) -> bool:
    """Average every parameter's gradient over ranks, in one ``all_reduce``.

    A missing gradient counts as zero; a parameter without a gradient on *every* rank keeps
    ``grad = None`` (so Adam skips it, as in one process). ``local_bad`` (a non-finite loss here) is
    reduced along. Returns ``True`` if any rank was bad (then the gradients are not to be used).
    """
    params = list(params)
    ref = params[0]
    pieces, mask = [], []
    for p in params:
        if p.grad is None:
            pieces.append(torch.zeros(p.numel(), dtype=ref.dtype, device=ref.device))
            mask.append(0.0)
        else:
            pieces.append(p.grad.detach().reshape(-1).to(ref.dtype))
            mask.append(1.0)
    pieces.append(torch.tensor(mask + [1.0 if local_bad else 0.0], dtype=ref.dtype, device=ref.device))
    flat = torch.cat(pieces).to(ctx.comm_device)
    torch.distributed.all_reduce(flat)
    flat = flat.to(ref.device)
    n = len(params)
    tail = flat[-(n + 1):].tolist()
    if tail[-1] > 0:
        return True
    flat = flat / ctx.world_size
    offset = 0
    for p, present in zip(params, tail[:n]):
        k = p.numel()
        if present > 0:
            g = flat[offset : offset + k].view_as(p).to(p.dtype)
            if p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.copy_(g)
        else:
            p.grad = None
        offset += k
    return False


def broadcast_module(ctx: DistContext, module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank."""
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            buf = t.detach().to(ctx.comm_device).clone()
            torch.distributed.broadcast(buf, src=0)
            t.copy_(buf.to(t.device))


def broadcast_object(ctx: DistContext, obj: Any = None) -> Any:
    """Rank 0's ``obj`` on every rank (pickled)."""
    box = [obj if ctx.rank == 0 else None]
    torch.distributed.broadcast_object_list(box, src=0, device=ctx.comm_device if ctx.backend == "nccl" else None)
    return box[0]


def all_gather_object(ctx: DistContext, obj: Any) -> list:
    """Every rank's ``obj``, in rank order, on every rank."""
    out = [None] * ctx.world_size
    torch.distributed.all_gather_object(out, obj)
    return out


def wait_for_all_ranks() -> None:
    """A barrier over the default process group when one is active; nothing in a single process."""
    if not _group_active():
        return
    if torch.distributed.get_backend() == "nccl":
        torch.distributed.barrier(device_ids=[torch.cuda.current_device()])
    else:
        torch.distributed.barrier()


def barrier(ctx: DistContext) -> None:
    if ctx.backend == "nccl":
        torch.distributed.barrier(device_ids=[ctx.comm_device.index or 0])
    else:
        torch.distributed.barrier()


# ---------------------------------------------------------------------------- evaluation
def evaluate_distributed(ctx: Optional[DistContext], lsm, data, seed: Optional[int] = None, **kwargs) -> dict:
    """:func:`~deepstate.inference.evaluation.evaluate` with the sequences shared out over ranks.

    Sequences are sorted by length and dealt round-robin (rank ``r`` takes positions ``r, r + K, ...``),
    so every rank gets similar lengths; each rank evaluates its share (with ``seed`` made
    rank-specific when given), then ``total`` and ``frames`` are summed over ranks and
    ``per_sequence`` is gathered, so every rank returns the same dict, in ``data``'s order. Without a
    context (one process) this is plain :func:`evaluate`.
    """
    from .evaluation import evaluate

    if ctx is None:
        return evaluate(lsm, data, seed=seed, **kwargs)
    from ..data import SequenceDataset

    if isinstance(data, SequenceDataset):
        data = data.batch
    order = np.argsort(data.lengths.cpu().numpy(), kind="stable")
    mine = order[ctx.rank :: ctx.world_size]
    rank_seed = None if seed is None else int(np.random.SeedSequence([int(seed), ctx.rank]).generate_state(1)[0])
    if len(mine):
        res = evaluate(lsm, data[mine.tolist()], seed=rank_seed, **kwargs)
        local = (mine.tolist(), res["per_sequence"].tolist())
        total, frames = res["total"], res["frames"]
        name, n = res["objective"], res["num_particles"]
    else:
        local, total, frames, name, n = ([], []), 0.0, 0, None, None
    total, frames = allreduce_sum(ctx, [total, frames])
    per_sequence = torch.empty(data.batch_size, dtype=torch.float64)
    for idx, vals in all_gather_object(ctx, local):
        if idx:
            per_sequence[torch.as_tensor(idx)] = torch.as_tensor(vals, dtype=torch.float64)
    frames = int(round(frames))
    if name is None:  # this rank had no sequence: the objective as evaluate names it
        obj = kwargs.get("objective", "fivo")
        name, n = ("elbo" if obj == "particle_elbo" else obj), kwargs.get("num_particles", 100)
    return {
        "nats_per_frame": total / frames if frames else float("nan"),
        "total": total,
        "frames": frames,
        "per_sequence": per_sequence,
        "objective": name,
        "num_particles": n,
    }
