"""Data-parallel training, 1 vs K processes on this machine: seconds per epoch and samples per second.

Usage::

    python benchmarks/distributed.py [--nprocs 1 2] [--epochs 3] [--sequences 256] [--global-batch 64]
        [--num-particles 16] [--hidden 64] [--also-threads 2] [--repeats 3]

Every configuration is launched with ``torchrun --nproc_per_node=K`` (loopback only, ``gloo`` on
CPU; K = 1 runs as a plain single process, as the trainer does not start torch.distributed then)
and trains the same DKF with FIVO on the same fixed synthetic data set (``--sequences`` sequences of
lengths 20..80, 8 dimensions; DKF widths ``--hidden``, FIVO with
``--num-particles``) with the same *global* batch (``--global-batch``; each rank takes
``global / K`` sequences), so every configuration takes the same optimiser steps. Each process uses
``--threads`` intra-op threads (default 1); ``--device cuda`` trains on the GPU (each rank on
``cuda:LOCAL_RANK``, ``nccl``); ``--also-threads T`` adds a row of one process with ``T``
threads (the fair single-process baseline on a machine with T cores).

Prints a table: processes x threads, per-rank and global batch, median seconds per training epoch
(the first epoch, warm-up, is left out when there are more than two; with ``--repeats R`` the
configurations are launched R times, interleaved, and the median over launches is shown with its range), sequences (samples) per
second, frames per second, and the speed-up over the first row. The machine's core count and load
average are printed too: on a machine with fewer cores than processes x threads, or one that is
busy, the figures say little about scaling.

``--worker OUT`` is internal (what each torchrun rank runs).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _data(n: int, dim: int, seed: int = 0):
    import torch

    from deepstate.data import SequenceBatch

    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(20, 81, (n,), generator=g).tolist()
    seqs = []
    for L in lengths:  # a noisy random walk: something with temporal structure to learn
        seqs.append(torch.cumsum(0.3 * torch.randn(L, dim, generator=g), 0) + 0.1 * torch.randn(L, dim, generator=g))
    return SequenceBatch.from_sequences(seqs)


def worker(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT))
    from deepstate.inference.trainer import Trainer
    from deepstate.models import build

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if args.global_batch % world:
        raise SystemExit(f"--global-batch {args.global_batch} is not a multiple of {world} processes")
    train = _data(args.sequences, args.dim)
    torch.manual_seed(0)
    lsm = build("dkf", args.dim, "gaussian", z_dim=8, rnn_dim=args.hidden,
                transition_dim=args.hidden, emission_dim=args.hidden)
    tr = Trainer(lsm, objective="fivo", num_particles=args.num_particles, batch_size=args.global_batch // world,
                 lr=1e-3, progress=False, seed=0, device=args.device)
    t0 = time.perf_counter()
    tr.fit(train, epochs=args.epochs)
    wall = time.perf_counter() - t0
    if tr.rank == 0:
        Path(args.worker).write_text(json.dumps({
            "world_size": tr.world_size, "threads": args.threads, "batch_per_rank": tr.batch_size,
            "global_batch": tr.batch_size * tr.world_size,
            "sequences": train.batch_size, "frames": train.num_frames, "wall": wall,
            "epoch_seconds": [h["seconds"] for h in tr.history], "steps": [h["steps"] for h in tr.history],
            "final_bound": tr.history[-1]["train_bound"],
        }))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(nproc: int, threads: int, args, out: Path) -> dict:
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT))
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", __file__, "--worker", str(out),
           "--threads", str(threads), "--epochs", str(args.epochs), "--sequences", str(args.sequences),
           "--global-batch", str(args.global_batch), "--num-particles", str(args.num_particles),
           "--dim", str(args.dim), "--hidden", str(args.hidden), "--device", args.device]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"torchrun (K={nproc}) failed:\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}")
    res = json.loads(out.read_text())
    res["launch_seconds"] = time.perf_counter() - t0
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nprocs", type=int, nargs="+", default=[1, 2], help="processes per configuration")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads per process")
    ap.add_argument("--also-threads", type=int, default=None,
                    help="add a row: one process with this many threads")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--sequences", type=int, default=256)
    ap.add_argument("--global-batch", type=int, default=64)
    ap.add_argument("--num-particles", type=int, default=16)
    ap.add_argument("--dim", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=64, help="DKF rnn, transition and emission widths")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (under torchrun: cuda:LOCAL_RANK, nccl)")
    ap.add_argument("--repeats", type=int, default=1, help="launches per configuration (median reported)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker is not None:
        worker(args)
        return 0

    configs = [(k, args.threads) for k in args.nprocs]
    if args.also_threads:
        configs.append((1, args.also_threads))
    load_before = os.getloadavg()
    print(f"cores: {os.cpu_count()}; load average before: {load_before[0]:.2f} {load_before[1]:.2f} "
          f"{load_before[2]:.2f}")
    print(f"device {args.device}; DKF (z 8, widths {args.hidden}), FIVO N={args.num_particles}, "
          f"{args.sequences} synthetic sequences (lengths 20..80, "
          f"dim {args.dim}), global batch {args.global_batch}, {args.epochs} epochs")
    runs = {c: [] for c in configs}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):  # interleaved, so a change in the machine's load hits every row alike
            for i, (k, t) in enumerate(configs):
                res = launch(k, t, args, Path(tmp) / f"res{rep}_{i}.json")
                secs = res["epoch_seconds"]
                secs = secs[1:] if len(secs) > 2 else secs
                res["s_epoch"] = statistics.median(secs)
                runs[(k, t)].append(res)
                print(f"  repeat {rep + 1}: {k} proc x {t} thr, {res['s_epoch']:.2f} s/epoch "
                      f"({res['launch_seconds']:.1f}s launch-to-exit)", flush=True)
    rows = []
    for c in configs:
        r = dict(runs[c][0])
        r["s_epoch"] = statistics.median(x["s_epoch"] for x in runs[c])
        r["range"] = (min(x["s_epoch"] for x in runs[c]), max(x["s_epoch"] for x in runs[c]))
        rows.append(r)
    load_after = os.getloadavg()
    base = rows[0]["s_epoch"]
    print()
    print(f"{'procs x thr':>11} {'batch/rank':>10} {'global':>6} {'s/epoch':>8} {'samples/s':>10} "
          f"{'frames/s':>9} {'speed-up':>8} {'bound':>8}  s/epoch range")
    for r in rows:
        print(f"{r['world_size']:>5} x {r['threads']:<3} {r['batch_per_rank']:>10} {r['global_batch']:>6} "
              f"{r['s_epoch']:>8.2f} {r['sequences'] / r['s_epoch']:>10.1f} {r['frames'] / r['s_epoch']:>9.0f} "
              f"{base / r['s_epoch']:>7.2f}x {r['final_bound']:>8.3f}  {r['range'][0]:.2f}..{r['range'][1]:.2f}")
    print(f"\nload average after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
