"""The exact LGSSM on sunspots at several state sizes: train bound and the rolling-origin backtest.

Usage::

    python benchmarks/lgssm_sizes.py --sizes 2,4,6 --starts 2

For each state size, ``deepstate.report.fit_lgssm`` (exact maximum likelihood, ``--starts``
initialisations, the best train bound wins) on 1700-1948, then the same 51-origin, horizon-10
backtest as ``benchmarks/backtest.py sunspots``; prints the train bound (standardised scale, nats per
year), the iterations, the fit time, and the CRPS, 80% / 95% coverage and 80% width.
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
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    d = load_dataset("sunspots").data
    frame = (d.to_frame() if isinstance(d, pd.Series) else d).astype("float64")
    train = frame.iloc[: len(frame) - 60]
    for z in [int(a) for a in args.sizes.split(",") if a]:
        t0 = time.perf_counter()
        est = fit_lgssm(train, z, args.starts, args.seed)
        fit_s = time.perf_counter() - t0
        res = backtest(est, frame, baselines=(), model_name=f"lgssm z{z}", horizon=10, test_size=60, season=11,
                       num_samples=1000, order=(9, 0, 0), seed=args.seed, levels=(0.5, 0.8, 0.95))
        s = res.per_origin[["crps", "coverage80", "coverage95", "width80"]].mean()
        print(f"z {z}: train bound {est.history_[-1]['train_bound']:.4f}, {len(est.history_)} iterations, "
              f"fit {fit_s:.0f} s | CRPS {s['crps']:.3f} coverage80 {s['coverage80']:.3f} "
              f"coverage95 {s['coverage95']:.3f} width80 {s['width80']:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
