"""Training throughput on JSB chorales at the papers' sizes: observed frames per second per epoch.

Usage::

    python benchmarks/throughput.py --model dkf --objective elbo --batch-size 20 --epochs 3 [--data-dir DIR]

Objectives: ``elbo`` (the particle-path ELBO, N = 1: pure torch, no Pyro sites), ``pyro_elbo``
(the same model and guide through Pyro's ``Trace_ELBO``), ``iwae`` and ``fivo`` (``--num-particles``,
default 4). ``--pyro-config`` uses the configuration of Pyro's ``examples/dmm.py`` for the DKF
(z 100, transition 200, emitter 100, a plain RNN of width 600 in the guide, ClippedAdam-like
Adam(lr 3e-4, betas (0.96, 0.999)) with gradient clipping at 10, batch 20, no length bucketing,
so that the comparison with ``../shared/bench/pyro_dmm_baseline.sh`` is like for like.

Prints one line per epoch and, last, ``sec_per_epoch=<median> frames_per_sec=<...>``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="dkf", choices=["dkf", "vrnn", "srnn"])
    ap.add_argument("--objective", default="elbo", choices=["elbo", "pyro_elbo", "iwae", "fivo"])
    ap.add_argument("--num-particles", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--bucket", action="store_true", help="length bucketing (less padding)")
    ap.add_argument("--pyro-config", action="store_true", help="match Pyro's examples/dmm.py configuration")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-fused-rnn", action="store_true",
                    help="train the guide's nn.RNN with torch's autograd (before the hand-written backward)")
    ap.add_argument("--profile", action="store_true", help="print a torch profiler table for one epoch")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.no_fused_rnn:
        import deepstate.models.nn

        deepstate.models.nn.USE_FUSED_RNN = False

    import pyro
    from pyro.infer import Trace_ELBO

    from jsb_setup import benchmark_model, benchmark_optimizer, jsb_train, loss_normalizer

    from deepstate.data import minibatches
    from deepstate.inference.objectives import get_objective

    torch.manual_seed(args.seed)
    train = jsb_train(args.data_dir)
    lsm = benchmark_model(args.model, args.pyro_config)
    opt = benchmark_optimizer(lsm.parameters())
    normalizer = loss_normalizer(train, args.batch_size)
    if args.objective == "pyro_elbo":
        elbo = Trace_ELBO()

        def loss_fn(batch):
            return elbo.differentiable_loss(lsm.model, lsm.guide, batch) / normalizer
    else:
        objective = get_objective(args.objective, 1 if args.objective == "elbo" else args.num_particles)

        def loss_fn(batch):
            return objective.loss(lsm, batch, normalizer=normalizer)[0]

    times, bounds = [], []
    print(f"model={args.model} objective={args.objective} N={args.num_particles} threads={torch.get_num_threads()} "
          f"params={sum(p.numel() for p in lsm.parameters())}", flush=True)
    for epoch in range(args.epochs):
        prof = None
        if args.profile and epoch == args.epochs - 1:
            from torch.profiler import profile

            prof = profile()
            prof.__enter__()
        t0 = time.perf_counter()
        total = 0.0
        for batch in minibatches(train, args.batch_size, shuffle=True, seed=args.seed + epoch, bucket_by_length=args.bucket):
            pyro.clear_param_store()
            opt.zero_grad()
            loss = loss_fn(batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(lsm.parameters(), 10.0)
            opt.step()
            total += loss.item() * normalizer
        dt = time.perf_counter() - t0
        if prof is not None:
            prof.__exit__(None, None, None)
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
        times.append(dt)
        bounds.append(-total / train.num_frames)
        print(f"epoch {epoch} sec={dt:.2f} train_bound_nats_per_frame={bounds[-1]:.4f}", flush=True)
    spe = statistics.median(times)
    print(f"sec_per_epoch={spe:.3f} frames_per_sec={train.num_frames / spe:.0f}")


if __name__ == "__main__":
    sys.exit(main())
