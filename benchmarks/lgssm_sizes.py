"""The exact LGSSM on sunspots at several state sizes: train bound and the rolling-origin backtest.

Usage::

    python benchmarks/lgssm_sizes.py --sizes 2,4,6 --starts 2
    python benchmarks/lgssm_sizes.py --sizes 2,3,4,5,6 --starts 3 --holdout 40   # early-stopped on 1909-1948

For each state size, ``deepstate.report.fit_lgssm`` (exact maximum likelihood, ``--starts``
initialisations, the best train bound wins) on 1700-1948, then the same 51-origin, horizon-10
backtest as ``benchmarks/backtest.py sunspots``; prints the train bound (standardised scale, nats per
year), the iterations, the fit time, and the CRPS, 80% / 95% coverage and 80% width. With
``--holdout K`` each fit is early-stopped on the conditional log-likelihood of the last K training
years given the rest (printed as "valid", nats per year), and that score picks among the starts; the
fitted model is also backtested (horizon 10) on the origins inside those K years, a multi-step
selection score that does not touch the test years, and the smallest state within one standard
error of the best such score is printed (the one-standard-error rule).
"""

from __future__ import annotations

import argparse
import time
import warnings

import pandas as pd
import torch

from deepstate.data import load_dataset
from deepstate.forecasting.backtest import backtest
from deepstate.report import fit_lgssm


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="2,4,6", help="comma-separated state sizes (default 2,4,6)")
    ap.add_argument("--starts", type=int, default=2, help="initialisations per size (default 2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--holdout", type=int, default=0, help="early stopping on the last K training years (default 0: none)")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    d = load_dataset("sunspots").data
    frame = (d.to_frame() if isinstance(d, pd.Series) else d).astype("float64")
    train = frame.iloc[: len(frame) - 60]
    chosen = []  # (z, validation CRPS, its standard error)
    for z in [int(a) for a in args.sizes.split(",") if a]:
        t0 = time.perf_counter()
        est = fit_lgssm(train, z, args.starts, args.seed, holdout=args.holdout)
        fit_s = time.perf_counter() - t0
        res = backtest(est, frame, baselines=(), model_name=f"lgssm z{z}", horizon=10, test_size=60, season=11,
                       num_samples=1000, order=(9, 0, 0), seed=args.seed, levels=(0.5, 0.8, 0.95))
        s = res.per_origin[["crps", "coverage80", "coverage95", "width80"]].mean()
        valid = f", valid {est.history_[-1]['valid_bound']:.4f} (iteration {est.model_.ssm.best_iteration_})" \
            if args.holdout else ""
        if args.holdout:  # the same backtest on the held-out training years: a selection score that spares the test
            vres = backtest(est, train, baselines=(), model_name=f"lgssm z{z}", horizon=10, test_size=args.holdout,
                            season=11, num_samples=1000, order=(9, 0, 0), seed=args.seed, levels=(0.5, 0.8, 0.95))
            v = vres.per_origin[["crps", "coverage80"]].mean()
            se = float(vres.per_origin["crps"].std() / len(vres.per_origin) ** 0.5)
            chosen.append((z, float(v["crps"]), se))
            valid += f" | on the held-out years ({len(vres.origins)} origins): CRPS {v['crps']:.3f} " \
                     f"(s.e. {se:.2f}) coverage80 {v['coverage80']:.3f}"
        print(f"z {z}: train bound {est.history_[-1]['train_bound']:.4f}{valid}, {len(est.history_)} iterations, "
              f"fit {fit_s:.0f} s | CRPS {s['crps']:.3f} coverage80 {s['coverage80']:.3f} "
              f"coverage95 {s['coverage95']:.3f} width80 {s['width80']:.1f}", flush=True)
    if chosen:
        # the one-standard-error rule (Hastie, Tibshirani & Friedman, ESL section 7.10): the smallest state
        # within one standard error of the best validation CRPS (the origins overlap, so the error is optimistic)
        best = min(chosen, key=lambda c: c[1])
        pick = min(c[0] for c in chosen if c[1] <= best[1] + best[2])
        print(f"one-standard-error rule on the held-out years: best z {best[0]} (CRPS {best[1]:.3f} +- {best[2]:.2f}); "
              f"smallest within one s.e.: z {pick}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
