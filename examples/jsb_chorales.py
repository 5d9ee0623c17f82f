"""Short training runs on JSB chorales: every model with every particle objective, validation bound per epoch.

    python examples/jsb_chorales.py --epochs 3 [--models dkf vrnn srnn] [--objectives particle_elbo iwae fivo]

Models are at their default (paper) sizes; the validation bound is FIVO with 4 particles, in nats per
frame (higher is better). Prints one line per epoch and a summary table; with ``--checkpoint-dir``
each run can be stopped and resumed.
"""

import argparse
import time

import torch

from deepstate.data import load_polyphonic
from deepstate.inference import Trainer
from deepstate.models import build


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--models", nargs="+", default=["dkf", "vrnn", "srnn"])
    ap.add_argument("--objectives", nargs="+", default=["particle_elbo", "iwae", "fivo"])
    ap.add_argument("--num-particles", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--checkpoint-dir", default=None)
    args = ap.parse_args()
    data = load_polyphonic("jsb_chorales", data_dir=args.data_dir)
    rows = []
    for name in args.models:
        for objective in args.objectives:
            torch.manual_seed(0)
            lsm = build(name, 88, "bernoulli")
            n = 1 if objective == "particle_elbo" else args.num_particles
            ckpt = None if args.checkpoint_dir is None else f"{args.checkpoint_dir}/{name}-{objective}"
            trainer = Trainer(lsm, objective=objective, num_particles=n, lr=args.lr, batch_size=20, progress=False,
                              valid_objective="fivo", valid_num_particles=4, checkpoint_dir=ckpt, seed=0)
            t0 = time.perf_counter()
            history = trainer.fit(data["train"], data["valid"], epochs=args.epochs)
            for h in history:
                print(f"{name:5s} {objective:14s} epoch {h['epoch']}: train bound {h['train_bound']:.3f}  "
                      f"valid FIVO(4) {h['valid_bound']:.3f} nats/frame", flush=True)
            rows.append((name, objective, history[0]["valid_bound"], history[-1]["valid_bound"],
                         time.perf_counter() - t0))
    print("\nmodel objective       valid bound after epoch 1 -> last   (seconds)")
    for name, objective, first, last, sec in rows:
        print(f"{name:5s} {objective:14s} {first:8.3f} -> {last:8.3f}   ({sec:.0f}s)")


if __name__ == "__main__":
    main()
