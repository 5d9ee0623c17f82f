"""Where a particle-objective epoch goes: wall time per phase of the particle filter (JSB chorales).

Usage::

    python benchmarks/phases.py --objective fivo [--num-particles 4] [--bucket] [--repeats 2] [--data-dir DIR]

The DKF in Pyro's ``examples/dmm.py`` configuration (z 100, transition 200, emitter 100, ReLU RNN 600),
one pass over the training set (forward and backward, no optimiser step). The phases are timed by
wrapping the functions that implement them, so nested phases are included in their parents:
``encode`` (the guide's RNN, forward), ``rollout_forward`` (the guide's fused trajectory including the
resampling decisions), ``decisions`` (weights without gradient, ESS, resampling), ``parallel_weights``
(the differentiable increments over all steps, forward), ``rollout_backward`` (the hand-written
backward of the trajectory) and ``backward`` (the whole backward pass: encoder, rollout, model).
"""

from __future__ import annotations

import argparse
import collections
import sys
import time

import torch


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--objective", default="fivo", choices=["elbo", "iwae", "fivo"])
    ap.add_argument("--num-particles", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=20)
    ap.add_argument("--bucket", action="store_true")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--full-width", action="store_true",
                    help="A/B: every step processes every sequence (no skipping of ended sequences)")
    args = ap.parse_args(argv)

    import deepstate.inference.particle as particle
    import deepstate.models.fused as fused
    from jsb_setup import benchmark_model, jsb_train

    from deepstate.data import minibatches

    acc = collections.defaultdict(float)

    def timed(name, f):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return f(*a, **k)
            finally:
                acc[name] += time.perf_counter() - t0
        return wrapper

    particle._ResamplingDecisions.step = timed("decisions", particle._ResamplingDecisions.step)
    particle._parallel_increments = timed("parallel_weights", particle._parallel_increments)
    fused._CombinerRollout.forward = staticmethod(timed("rollout_forward", fused._CombinerRollout.forward))
    fused._CombinerRollout.backward = staticmethod(timed("rollout_backward", fused._CombinerRollout.backward))
    if args.full_width:
        sorted_filter = particle._filter

        def full_width_filter(*a, **k):
            k["widths"] = None
            return sorted_filter(*a, **k)

        particle._filter = full_width_filter

    torch.manual_seed(0)
    train = jsb_train(args.data_dir)
    lsm = benchmark_model("dkf", pyro_config=True)
    lsm.guide_steps.encode = timed("encode", lsm.guide_steps.encode)
    batches = list(minibatches(train, args.batch_size, shuffle=True, seed=0, bucket_by_length=args.bucket))
    N = 1 if args.objective == "elbo" else args.num_particles
    resample = "ess" if args.objective == "fivo" else "never"
    for _ in range(args.repeats):
        acc.clear()
        t0 = time.perf_counter()
        for batch in batches:
            result = particle.particle_filter(lsm, batch, N, resample=resample)
            loss = -result.log_z.sum() / 1000.0
            timed("backward", loss.backward)()
        total = time.perf_counter() - t0
        print(f"{args.objective} N={N} bucket={args.bucket} full_width={args.full_width} total={total:.2f}s " + " ".join(f"{k}={v:.2f}s" for k, v in acc.items()))


if __name__ == "__main__":
    sys.exit(main())
