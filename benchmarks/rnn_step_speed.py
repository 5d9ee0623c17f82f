"""Seconds per training epoch of a step-by-step model with ``rnn_step``'s one-step kernels
(``torch.lstm_cell`` & co.) against running the sequence module on one step, alternating.

Usage::

    python benchmarks/rnn_step_speed.py [--row vrnn_elbo] [--sequences 60] [--pairs 3] [--threads 1]

Trains a ``benchmarks/jsb.py`` row (default ``vrnn_elbo``: FIVO's VRNN, LSTM 32, batch 4) for one epoch
over the first ``--sequences`` JSB training chorales, ``--pairs`` times each way, alternating, after
one warm-up epoch each, and prints the per-pair times and the median ratio.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--row", default="vrnn_elbo")
    ap.add_argument("--sequences", type=int, default=60)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data-dir", default=os.environ.get("DEEPSTATE_DATA"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    spec = importlib.util.spec_from_file_location("jsb_benchmark", HERE / "jsb.py")
    jsb = importlib.util.module_from_spec(spec)
    sys.modules["jsb_benchmark"] = jsb
    spec.loader.exec_module(jsb)
    import deepstate.models.nn as dnn

    train = jsb.load(args.data_dir)["train"][list(range(args.sequences))]
    kernel_cell = dnn._cell
    ways = {"one-step kernel": kernel_cell, "module per step": lambda rnn: None}
    trainers = {}
    for name in ways:
        row = jsb.ROWS[args.row]
        trainers[name] = jsb.make_trainer(args.row, row, Path(tempfile.mkdtemp()), 0, None, 10**9)
        if row.get("init_from_data"):
            trainers[name].lsm.ssm.init_from_data(train)
    times = {name: [] for name in ways}
    for rep in range(args.pairs + 1):
        for name, cell in ways.items():
            dnn._cell = cell
            t = time.perf_counter()
            trainers[name].fit(train, epochs=trainers[name].epoch + 1)
            if rep:  # the first epoch of each is a warm-up
                times[name].append(time.perf_counter() - t)
    dnn._cell = kernel_cell
    for name, ts in times.items():
        print(f"{name}: " + " / ".join(f"{t:.2f}" for t in ts) + f" s per epoch (median {statistics.median(ts):.2f})")
    ratios = [b / a for a, b in zip(times["one-step kernel"], times["module per step"])]
    print(f"module / kernel, per pair: {' / '.join(f'{r:.2f}' for r in ratios)}; median {statistics.median(ratios):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
