"""Peak memory (issue #14, item 5): training with truncated BPTT as T grows, and evaluation with
1,000 particles on the JSB chorales test split.

    DEEPSTATE_DATA=/work/shared/data python benchmarks/memory.py              # everything
    python benchmarks/memory.py --only train                                  # training rows only
    python benchmarks/memory.py --only eval                                   # evaluation row only

**What is measured.** Every configuration runs in a fresh Python subprocess (one torch thread, CPU)
and reports the process's peak resident set size from ``resource.getrusage(RUSAGE_SELF).ru_maxrss``
(Linux: KiB), both in total and above the level right after the imports, data and model are in
memory (so the number is what the training or evaluation itself needed).

* ``train``: a DKF with small sizes (z 4, RNN/transition/emission 16, Gaussian emission), FIVO with
  4 particles, one epoch over 2 sequences of ``T`` steps (random walks, 2 dimensions), truncated
  BPTT with chunks of ``tbptt=50`` steps (``T/50`` optimiser steps), for T = 1,000 / 10,000 /
  100,000; and, for contrast, full backpropagation (``tbptt=None``) at T = 1,000 and 10,000.
  Goal: flat in T under truncated BPTT.
* ``eval``: :func:`deepstate.inference.evaluation.evaluate` with ``objective="iwae"``,
  ``num_particles=1000`` (default ``max_elements=100_000`` particle rows at once) on the JSB test
  split with a paper-size DKF (z 100, transition 200, emission 100, RNN 600, Bernoulli, 88 keys;
  untrained weights: memory does not depend on their values). Goal: under 2 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_train(T: int, tbptt) -> dict:
    import torch

    torch.set_num_threads(1)
    from deepstate.data import SequenceBatch
    from deepstate.inference import Trainer
    from deepstate.models import build

    torch.manual_seed(0)
    batch = SequenceBatch.from_sequences([torch.randn(T, 2).cumsum(0) * 0.05 for _ in range(2)])
    lsm = build("dkf", 2, "gaussian", z_dim=4, rnn_dim=16, transition_dim=16, emission_dim=16)
    trainer = Trainer(lsm, objective="fivo", num_particles=4, batch_size=2, progress=False, tbptt=tbptt, seed=0)
    base = _rss_mb()
    t0 = time.perf_counter()
    hist = trainer.fit(batch, epochs=1)
    return {"config": "train", "T": T, "tbptt": tbptt, "steps": trainer.global_step,
            "train_bound": hist[-1]["train_bound"], "seconds": time.perf_counter() - t0,
            "peak_rss_mb": _rss_mb(), "above_baseline_mb": _rss_mb() - base}


def run_eval(num_particles: int) -> dict:
    import torch

    torch.set_num_threads(1)
    from deepstate.data import load_polyphonic
    from deepstate.inference.evaluation import evaluate
    from deepstate.models import build

    test = load_polyphonic("jsb_chorales")["test"]
    torch.manual_seed(0)
    lsm = build("dkf", 88, "bernoulli", z_dim=100, transition_dim=200, emission_dim=100, rnn_dim=600)
    base = _rss_mb()
    t0 = time.perf_counter()
    res = evaluate(lsm, test, objective="iwae", num_particles=num_particles, seed=0)
    return {"config": "eval", "sequences": test.batch_size, "frames": test.num_frames,
            "max_length": test.max_length, "num_particles": num_particles,
            "nats_per_frame": res["nats_per_frame"], "seconds": time.perf_counter() - t0,
            "peak_rss_mb": _rss_mb(), "above_baseline_mb": _rss_mb() - base}


def _child(args) -> None:
    if args.child == "train":
        out = run_train(args.T, None if args.tbptt == "none" else int(args.tbptt))
    else:
        out = run_eval(args.num_particles)
    print(json.dumps(out), flush=True)


def _spawn(*argv) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    r = subprocess.run([sys.executable, __file__, *map(str, argv)], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        return {"error": r.stderr.strip()[-500:], "argv": list(map(str, argv))}
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=("train", "eval"), default=None)
    p.add_argument("--max-T", type=int, default=100_000, help="largest T of the training rows")
    p.add_argument("--num-particles", type=int, default=1000)
    p.add_argument("--child", choices=("train", "eval"), help=argparse.SUPPRESS)
    p.add_argument("--T", type=int, help=argparse.SUPPRESS)
    p.add_argument("--tbptt", default="50", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        _child(args)
        return
    rows = []
    if args.only in (None, "train"):
        configs = [(T, "50") for T in (1_000, 10_000, 100_000) if T <= args.max_T]
        configs += [(T, "none") for T in (1_000, 10_000) if T <= args.max_T]
        for T, k in configs:
            rows.append(_spawn("--child", "train", "--T", T, "--tbptt", k))
            print(json.dumps(rows[-1]), flush=True)
    if args.only in (None, "eval"):
        rows.append(_spawn("--child", "eval", "--num-particles", args.num_particles))
        print(json.dumps(rows[-1]), flush=True)
    print("\n| configuration | peak RSS (MB) | above baseline (MB) | seconds |\n|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {' '.join(r['argv'])} | error: {r['error'][-120:]} | | |")
        elif r["config"] == "train":
            k = "full BPTT, 1 optimiser step" if r["tbptt"] is None else \
                f"tbptt={r['tbptt']}, {-(-r['T'] // r['tbptt'])} optimiser steps"
            print(f"| train, T = {r['T']:,}, {k} | {r['peak_rss_mb']:.0f} | "
                  f"{r['above_baseline_mb']:.0f} | {r['seconds']:.1f} |")
        else:
            print(f"| evaluate iwae N = {r['num_particles']:,}, JSB test ({r['sequences']} seqs, {r['frames']:,} "
                  f"frames) | {r['peak_rss_mb']:.0f} | {r['above_baseline_mb']:.0f} | {r['seconds']:.1f} |")


if __name__ == "__main__":
    main()
