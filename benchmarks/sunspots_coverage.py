"""Why the deep models' 80% intervals under-cover on sunspots: per-horizon coverage, transforms, recalibration.

    python benchmarks/sunspots_coverage.py srnn                      # one model, raw scale
    python benchmarks/sunspots_coverage.py dkf --transform sqrt      # fitted and forecast on sqrt(x), scored on x
    python benchmarks/sunspots_coverage.py srnn --calibrate          # spread factors fitted on 1909-1948
    python benchmarks/sunspots_coverage.py srnn --refit              # then refitted on 1700-1948
    python benchmarks/sunspots_coverage.py sarimax                   # SARIMAX(9,0,0), the reference
    python benchmarks/sunspots_coverage.py lgssm --z-dim 6 --holdout # exact ML, early-stopped on 1909-1948

The setting of ``benchmarks/backtest.py sunspots --valid-steps 40``: yearly sunspot numbers, the
last 60 years (1949-2008) held out, 51 rolling origins at horizon 10 (``--score-on valid``: the 31
origins inside the validation years instead, whose actuals end in 1948); the deep model (z 4, widths
32, FIVO with 8 particles, windows of 40 years every 4, lr 3e-3) is fitted on 1700-1908 with early
stopping on 1909-1948. Forecasts are 1,000 paths (seed = origin), mapped back to sunspot numbers
when a transform is used, and scored there. Prints the mean CRPS, the coverage of the central 80%
and 95% intervals, and the 80% coverage at each horizon step 1..10.

``--calibrate`` fits, for each horizon step h, the factor k_h (a grid from 0.5 to 4) that minimises
the CRPS of ``median + k_h (path - median)`` over the 31 origins inside 1909-1948 (the validation
years: data the parameters were not fitted to), and applies it to the test forecasts: a post-hoc
spread recalibration (Kuleshov et al. 2018), here a diagnostic of whether the validation years see
the same spread errors as the test years.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch

from deepstate.data import load_dataset
from deepstate.estimator import Estimator
from deepstate.scores import crps_ensemble

TRANSFORMS = {
    "none": (lambda v: v, lambda v: v),
    "sqrt": (np.sqrt, lambda v: np.square(np.maximum(v, 0))),
    "log1p": (np.log1p, np.expm1),
}
HYPER = {
    "dkf": dict(z_dim=4, rnn_dim=32, transition_dim=32, emission_dim=32),
    "srnn": dict(z_dim=4, rnn_dim=32, hidden_dim=32),
    "vrnn": dict(z_dim=4, rnn_dim=32, feature_dim=32),
    # the DeepState-style model (Rangapuram et al. 2018): level + slope + an 11-year seasonal block,
    # exact Kalman likelihood, so its forecast intervals are exact Gaussian predictives
    "deepstate": dict(season_length=11),
    # the same model with a damped stochastic cycle of learned period (initially 11 years) in place of
    # the fixed 11-year season: a level plus a quasi-periodic component (Harvey 1989)
    "deepstate_cycle": dict(trend=False, cycle_period=11.0),
    # the linear-Gaussian SSM (full A, C, Q, diagonal R), exact ML by L-BFGS; z from --z-dim
    "lgssm": dict(),
}
TEST, VALID, H = 60, 40, 10
EXACT_STEPS = 100


def deep_forecaster(model: str, transformed: np.ndarray, seed: int, likelihood: str, refit: bool = False,
                    z_dim: int = 6, holdout: bool = False, starts: int = 1):
    """``paths(o) -> [S, H]`` forecasts (transformed scale) from the history ``transformed[:o]``."""
    import pandas as pd

    series = pd.Series(transformed)
    train = series.iloc[: len(series) - TEST]
    t0 = time.perf_counter()
    if model == "lgssm":  # exact ML from `starts` seeds; with --holdout early-stopped on 1909-1948, best of those wins
        fits = [Estimator("lgssm", objective="exact", seed=seed + k, dtype=torch.float64, z_dim=z_dim).fit(
            train, epochs=EXACT_STEPS, progress=False, holdout=VALID if holdout else 0) for k in range(starts)]
        key = "valid_bound" if holdout else "train_bound"
        est = max(fits, key=lambda e: e.history_[-1][key])
        print("lgssm:", ", ".join(f"seed {seed + k}: train {e.history_[-1]['train_bound']:.4f}" +
                                  (f" valid {e.history_[-1]['valid_bound']:.4f} (iteration {e.model_.ssm.best_iteration_})"
                                   if holdout else "") for k, e in enumerate(fits)))
    elif model.startswith("deepstate"):  # exact maximum likelihood (L-BFGS) on 1700-1948
        est = Estimator("deepstate", objective="exact", seed=seed, dtype=torch.float64, **HYPER[model])
        est.fit(train, epochs=EXACT_STEPS, progress=False)
    else:
        est = Estimator(model, likelihood=likelihood, objective="fivo", num_particles=8, seed=seed, **HYPER[model])
        fit = dict(lr=3e-3, batch_size=16, window=40, stride=4, progress=False)
        est.fit(train.iloc[:-VALID], valid_data=train.iloc[-VALID:], early_stopping_patience=20, epochs=300, **fit)
        if refit:  # the usual last step: a fresh model on all 1700-1948 for the early-stopped epoch count
            best = max(est.history_, key=lambda h: h["valid_bound"])["epoch"]
            print(f"{model}: best validation epoch {best} of {len(est.history_)}; refitting on 1700-1948")
            est = Estimator(model, likelihood=likelihood, objective="fivo", num_particles=8, seed=seed, **HYPER[model])
            est.fit(train, epochs=best, **fit)
    print(f"{model}: {len(est.history_)} epochs, {time.perf_counter() - t0:.0f} s")
    return lambda o: est.forecast(series.iloc[:o], H, num_samples=1000, seed=o).samples[:, 0, :, 0]


def sarimax_forecaster(transformed: np.ndarray):
    import statsmodels.api as sm

    fitted = sm.tsa.SARIMAX(transformed[: len(transformed) - TEST], order=(9, 0, 0), trend="c").fit(disp=False)

    def paths(o):
        fc = fitted.apply(transformed[:o]).get_forecast(H)
        rng = np.random.default_rng(o)
        return fc.predicted_mean + np.sqrt(fc.var_pred_mean) * rng.standard_normal((1000, H))

    return paths


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", choices=sorted(HYPER) + ["sarimax"])
    p.add_argument("--transform", default="none", choices=sorted(TRANSFORMS))
    p.add_argument("--likelihood", default="gaussian", help="deep models' emission (gaussian or studentt)")
    p.add_argument("--calibrate", action="store_true", help="per-horizon spread factors fitted on 1909-1948")
    p.add_argument("--refit", action="store_true",
                   help="deep models: refit on all 1700-1948 for the early-stopped number of epochs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--z-dim", type=int, default=6, help="lgssm: state dimension")
    p.add_argument("--holdout", action="store_true",
                   help="lgssm: keep the L-BFGS iterate with the best log p(1909-1948 | 1700-1908)")
    p.add_argument("--starts", type=int, default=1, help="lgssm: initialisations (seeds seed, seed+1, ...)")
    p.add_argument("--score-on", default="test", choices=["test", "valid"],
                   help="score the 51 test origins (1949-1999), or the 31 origins inside the validation years 1909-1939")
    args = p.parse_args(argv)
    warnings.simplefilter("ignore")  # statsmodels' convergence chatter
    torch.set_num_threads(1)
    y = load_dataset("sunspots").series.to_numpy().astype(float)
    forward, inverse = TRANSFORMS[args.transform]
    ty = forward(y)
    paths = sarimax_forecaster(ty) if args.model == "sarimax" else \
        deep_forecaster(args.model, ty, args.seed, args.likelihood, args.refit, args.z_dim, args.holdout, args.starts)
    T = len(y)

    def scaled(z, k):  # spread around the per-step median, mapped back to sunspot numbers
        med = np.median(z, 0)
        return inverse(med + k * (z - med))

    k = np.ones(H)
    if args.calibrate:
        cal = [(paths(o), y[o:o + H]) for o in range(T - TEST - VALID, T - TEST - H + 1)]
        grid = np.geomspace(0.5, 4.0, 43)
        for h in range(H):
            scores = [np.mean([crps_ensemble(scaled(z[:, [h]], g)[:, 0], a[h]) for z, a in cal]) for g in grid]
            k[h] = grid[int(np.argmin(scores))]
        print("spread factors k_h fitted on 1909-1948:", np.round(k, 2))
    crps, cov80, cov95 = [], [], []
    origins = range(T - TEST, T - H + 1) if args.score_on == "test" else range(T - TEST - VALID, T - TEST - H + 1)
    for o in origins:
        x, a = scaled(paths(o), k), y[o:o + H]
        crps.append(crps_ensemble(x, a).mean())
        lo, hi = np.quantile(x, [0.1, 0.9], axis=0)
        cov80.append((a >= lo) & (a <= hi))
        lo, hi = np.quantile(x, [0.025, 0.975], axis=0)
        cov95.append((a >= lo) & (a <= hi))
    print(f"{args.model} transform={args.transform} likelihood={args.likelihood} calibrate={args.calibrate} "
          f"seed={args.seed}: {len(crps)} {args.score_on} origins, CRPS {np.mean(crps):.2f}, coverage80 {np.mean(cov80):.3f}, "
          f"coverage95 {np.mean(cov95):.3f}")
    print("coverage80 by horizon step 1..10:", np.round(np.mean(cov80, 0), 2))


if __name__ == "__main__":
    main()
