"""GPU smoke test: train a tiny model a few steps on CUDA, check it, and time it.

Usage::

    python benchmarks/gpu_smoke.py [--steps 5] [--device cuda]

On a machine without CUDA it prints ``CUDA not available, skipped`` and exits 0 (so CI without a GPU
passes). On a CUDA machine, for every training objective (the particle objectives and Pyro's ELBOs)
it trains a tiny DKF for ``--steps`` minibatches on the GPU and checks that

* every step's loss and gradient norm are finite and every parameter is finite and on the GPU;
* a checkpoint written on the GPU loads on the CPU (``map_location="cpu"``) into a CPU trainer, whose
  parameters equal the GPU ones, and the CPU trainer can take one more step;
* evaluation on the GPU gives a finite bound;

then prints the seconds per step (after a warm-up step) and the evaluation time. Exits 1 on the
first failed check, with a message saying which.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _data(n: int, dim: int, seed: int = 0):
    from deepstate.data import SequenceBatch

    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(8, 33, (n,), generator=g).tolist()
    return SequenceBatch.from_sequences([torch.randn(L, dim, generator=g) for L in lengths])


def _fail(msg: str) -> None:
    print(f"FAILED: {msg}", flush=True)
    sys.exit(1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=5, help="training minibatches per objective")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("CUDA not available, skipped")
        return 0

    from deepstate.inference.evaluation import evaluate
    from deepstate.inference.trainer import TRAINING_OBJECTIVES, Trainer
    from deepstate.models import build

    device = torch.device(args.device)
    print(f"device: {torch.cuda.get_device_name(device)}; torch {torch.__version__}, CUDA {torch.version.cuda}")
    dim = 3
    train = _data(args.batch_size * args.steps, dim, seed=0)
    valid = _data(16, dim, seed=1)
    hyper = dict(z_dim=4, rnn_dim=16, transition_dim=16, emission_dim=16)
    for objective in TRAINING_OBJECTIVES:
        torch.manual_seed(0)
        with tempfile.TemporaryDirectory() as tmp:
            steps, times = [], []

            def record(tr, rec):
                times.append(time.perf_counter())
                steps.append(rec)

            tr = Trainer(build("dkf", dim, "gaussian", **hyper), objective=objective,
                         num_particles=4 if objective not in ("elbo", "meanfield_elbo") else 1,
                         batch_size=args.batch_size, device=device, progress=False, checkpoint_dir=tmp, seed=0)
            t0 = time.perf_counter()
            tr.fit(train, epochs=1, callback=record)
            torch.cuda.synchronize(device)
            if len(steps) != args.steps:
                _fail(f"{objective}: expected {args.steps} steps, got {len(steps)}")
            for rec in steps:
                if rec["skipped"] or not math.isfinite(rec["loss"]) or not math.isfinite(rec["grad_norm"]):
                    _fail(f"{objective}: non-finite step {rec}")
            for name, p in tr.lsm.named_parameters():
                if p.device.type != device.type or not bool(torch.isfinite(p).all()):
                    _fail(f"{objective}: parameter {name} not finite or not on {device} ({p.device})")
            # a checkpoint written on the GPU loads on the CPU
            ckpt = Path(tmp) / "checkpoint.pt"
            if not ckpt.is_file():
                _fail(f"{objective}: no checkpoint written")
            cpu = Trainer(build("dkf", dim, "gaussian", **hyper), objective=objective,
                          num_particles=tr.num_particles, batch_size=args.batch_size, device="cpu", progress=False,
                          seed=0)
            cpu.load_checkpoint(ckpt)
            for (name, p), q in zip(tr.lsm.named_parameters(), cpu.lsm.parameters()):
                if q.device.type != "cpu" or not torch.equal(p.detach().cpu(), q.detach()):
                    _fail(f"{objective}: parameter {name} differs after loading the GPU checkpoint on the CPU")
            cpu.fit(train, epochs=2, max_steps=cpu.global_step + 1)
            if cpu.global_step != args.steps + 1:
                _fail(f"{objective}: the CPU trainer did not continue from the GPU checkpoint")
            # evaluation on the GPU
            t1 = time.perf_counter()
            res = evaluate(tr.lsm, valid, objective="iwae", num_particles=16, seed=0)
            torch.cuda.synchronize(device)
            t_eval = time.perf_counter() - t1
            if not math.isfinite(res["nats_per_frame"]):
                _fail(f"{objective}: non-finite evaluation bound")
        per_step = [b - a for a, b in zip(times, times[1:])]  # from the 2nd step on: after warm-up
        sec = sum(per_step) / len(per_step) if per_step else times[0] - t0
        print(f"{objective:>15}: ok  first step {times[0] - t0:.3f}s, then {sec * 1000:.1f} ms/step; "
              f"loss {steps[-1]['loss']:.4g}; eval (IWAE-16, {valid.batch_size} seqs) {t_eval:.3f}s, "
              f"{res['nats_per_frame']:.4f} nats/frame; GPU checkpoint loads on CPU")
    print(f"max GPU memory allocated: {torch.cuda.max_memory_allocated(device) / 2**20:.1f} MiB")
    print("GPU smoke test passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
