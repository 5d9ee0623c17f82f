"""Numerical robustness sweep (issue #14, item 2): short trainings over many seeds, per objective.

    DEEPSTATE_DATA=/work/shared/data python benchmarks/robustness.py                 # 20 seeds
    python benchmarks/robustness.py --seeds 5 --datasets sunspots                    # quicker

For every dataset x objective (ELBO, IWAE, FIVO) x seed: a short training of a small DKF through
:class:`deepstate.estimator.Estimator` (every step's loss is checked by the Trainer's divergence
guard: a non-finite loss or gradient is counted as a *skipped* step, three in a row raise
``TrainingDiverged``), then the held-out bound. Reported per dataset x objective: runs, runs with
any non-finite step, skipped steps in all, diverged runs, non-finite held-out bounds, and the mean
and range of the held-out bound (nats per frame).

* ``jsb``: JSB chorales (Bernoulli, 88 keys), train split, 2 epochs of minibatches of 20 (24 steps), lr 1e-2,
  DKF z 16 / RNN 32 / transition 32 / emission 32, 4 particles; held-out bound on the valid split.
* ``sunspots``: yearly sunspots (Gaussian, standardised), the first 80% in windows of 50 steps,
  15 epochs (4 windows per epoch), DKF z 4 / widths 16, 4 particles, lr 1e-2; held-out bound on
  the last 20%.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings

import numpy as np
import torch

OBJECTIVES = ("elbo", "iwae", "fivo")


def _data(name):
    if name == "jsb":
        from deepstate.data import load_polyphonic

        d = load_polyphonic("jsb_chorales")
        return d["train"], d["valid"], "bernoulli", dict(z_dim=16, rnn_dim=32, transition_dim=32, emission_dim=32), \
            dict(epochs=2, batch_size=20, lr=1e-2)
    from deepstate.data import load_dataset

    s = load_dataset("sunspots").series
    cut = int(0.8 * len(s))
    return s.iloc[:cut], s.iloc[cut:], "gaussian", dict(z_dim=4, rnn_dim=16, transition_dim=16, emission_dim=16), \
        dict(epochs=15, batch_size=4, lr=1e-2, window=50)


def run_one(dataset, objective, seed, data) -> dict:
    from deepstate.estimator import Estimator
    from deepstate.inference.trainer import TrainingDiverged

    train, valid, likelihood, hyper, fit_kw = data
    est = Estimator("dkf", likelihood=likelihood, objective=objective, num_particles=4, seed=seed, **hyper)
    out = {"dataset": dataset, "objective": objective, "seed": seed, "diverged": False}
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            est.fit(train, progress=False, **fit_kw)
        except TrainingDiverged as err:
            out["diverged"] = True
            out["error"] = str(err)[:200]
    out["nonfinite_warnings"] = sum("non-finite" in str(w.message) for w in caught)
    hist = est.history_ if est.is_fitted else getattr(getattr(est, "trainer_", None), "history", [])
    out["skipped"] = int(sum(h.get("skipped") or 0 for h in hist))
    out["train_bound"] = hist[-1]["train_bound"] if hist else None
    out["heldout_bound"] = None
    if est.is_fitted:
        out["heldout_bound"] = est.log_likelihood(valid, objective="fivo", num_particles=16, seed=seed)
    out["seconds"] = time.perf_counter() - t0
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--datasets", nargs="+", default=["jsb", "sunspots"], choices=["jsb", "sunspots"])
    p.add_argument("--objectives", nargs="+", default=list(OBJECTIVES), choices=list(OBJECTIVES))
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = []
    for dataset in args.datasets:
        data = _data(dataset)
        for objective in args.objectives:
            for seed in range(args.seeds):
                r = run_one(dataset, objective, seed, data)
                rows.append(r)
                print(json.dumps(r), flush=True)
    print("\n| dataset | objective | runs | runs with a non-finite step | skipped steps | diverged | "
          "non-finite held-out bound | held-out bound (nats/frame): mean [min, max] | s/run |")
    print("|---|---|---|---|---|---|---|---|---|")
    for dataset in args.datasets:
        for objective in args.objectives:
            rs = [r for r in rows if r["dataset"] == dataset and r["objective"] == objective]
            hb = [r["heldout_bound"] for r in rs if r["heldout_bound"] is not None]
            finite = [b for b in hb if math.isfinite(b)]
            bound = f"{np.mean(finite):.3f} [{min(finite):.3f}, {max(finite):.3f}]" if finite else "-"
            print(f"| {dataset} | {objective} | {len(rs)} | {sum(r['skipped'] > 0 for r in rs)} | "
                  f"{sum(r['skipped'] for r in rs)} | {sum(r['diverged'] for r in rs)} | {len(hb) - len(finite)} | "
                  f"{bound} | {np.mean([r['seconds'] for r in rs]):.1f} |")


if __name__ == "__main__":
    main()
