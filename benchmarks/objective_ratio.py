"""Cost of each objective relative to the ELBO, measured epoch by epoch in one process.

Usage::

    python benchmarks/objective_ratio.py --objectives elbo,iwae,fivo --rounds 5 [--bucket] [--pyro-config] [--data-dir DIR]

Timings on a shared machine drift by 10-25% between runs, so a ratio of two separate runs is noisy.
Here each objective trains its own copy of the same initial model, and the objectives' epochs are
interleaved (round r: one epoch of each objective), so every ratio compares epochs measured within
seconds of each other. Prints, per objective, the median seconds per epoch and the median over
rounds of (its epoch / the ELBO epoch of the same round).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time

import torch


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="dkf", choices=["dkf", "vrnn", "srnn"])
    ap.add_argument("--objectives", default="elbo,fivo")
    ap.add_argument("--num-particles", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--bucket", action="store_true", help="length bucketing (the Trainer's default)")
    ap.add_argument("--pyro-config", action="store_true", help="Pyro's examples/dmm.py configuration (plain RNN 600)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from jsb_setup import benchmark_model, benchmark_optimizer, jsb_train, loss_normalizer

    from deepstate.data import minibatches
    from deepstate.inference.objectives import get_objective

    names = args.objectives.split(",")
    if names[0] != "elbo":
        raise SystemExit("--objectives: the first must be elbo (the reference)")
    torch.manual_seed(args.seed)
    train = jsb_train(args.data_dir)
    base = benchmark_model(args.model, args.pyro_config)
    normalizer = loss_normalizer(train, args.batch_size)
    runs = {}
    for name in names:
        lsm = copy.deepcopy(base)
        opt = benchmark_optimizer(lsm.parameters())
        runs[name] = (lsm, opt, get_objective(name, 1 if name == "elbo" else args.num_particles), [])
    print(f"model={args.model} N={args.num_particles} bucket={args.bucket} threads={torch.get_num_threads()}", flush=True)
    for r in range(args.rounds):
        for name, (lsm, opt, objective, times) in runs.items():
            t0 = time.perf_counter()
            for batch in minibatches(train, args.batch_size, shuffle=True, seed=args.seed + r, bucket_by_length=args.bucket):
                opt.zero_grad()
                loss = objective.loss(lsm, batch, normalizer=normalizer)[0]
                loss.backward()
                torch.nn.utils.clip_grad_norm_(lsm.parameters(), 10.0)
                opt.step()
            times.append(time.perf_counter() - t0)
        print(f"round {r}: " + " ".join(f"{n}={v[3][-1]:.2f}s" for n, v in runs.items()), flush=True)
    ref = runs["elbo"][3]
    for name, (_, _, _, times) in runs.items():
        ratio = statistics.median(t / e for t, e in zip(times, ref))
        print(f"{name}: sec_per_epoch={statistics.median(times):.3f} ratio_to_elbo={ratio:.2f}")


if __name__ == "__main__":
    sys.exit(main())
