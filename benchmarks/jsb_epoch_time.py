"""Seconds per training epoch of a ``benchmarks/jsb.py`` row, with its exact recipe and model.

Usage::

    python benchmarks/jsb_epoch_time.py dmm --threads 2 --epochs 8 [--no-fused-rnn] [--data-dir DIR]

Builds the row's ``Trainer`` (``jsb.make_trainer``: the row's model, optimiser, batching and
validation schedule) in a temporary folder, trains one warm-up epoch, then times ``--epochs`` more
and prints ``sec_per_epoch=<mean>``. ``--no-fused-rnn`` trains the guide's ``nn.RNN`` with torch's
own autograd instead of :func:`deepstate.models.fused.elman_rnn` (the before/after comparison).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import jsb  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("row", choices=sorted(jsb.ROWS))
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    ap.add_argument("--epochs", type=int, default=8, help="timed epochs after one warm-up epoch (default 8)")
    ap.add_argument("--no-fused-rnn", action="store_true", help="torch's autograd for the guide's nn.RNN")
    ap.add_argument("--data-dir", default=os.environ.get("DEEPSTATE_DATA"), help="folder with jsb_chorales.pickle")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.no_fused_rnn:
        import deepstate.models.nn

        deepstate.models.nn.USE_FUSED_RNN = False
    data = jsb.load(args.data_dir)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = jsb.make_trainer(args.row, jsb.ROWS[args.row], Path(tmp), seed=0, patience=100, valid_every=10)
        trainer.fit(data["train"], data["valid"], epochs=1)
        t0 = time.perf_counter()
        trainer.fit(data["train"], data["valid"], epochs=1 + args.epochs)
        per_epoch = (time.perf_counter() - t0) / args.epochs
    print(f"{args.row}: threads={args.threads} fused_rnn={not args.no_fused_rnn} sec_per_epoch={per_epoch:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
