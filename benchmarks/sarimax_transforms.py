"""Side check for BENCHMARKS.md: SARIMAX on sunspots with and without a variance-stabilising transform.

    python benchmarks/sarimax_transforms.py

The same 51 rolling origins (1949-1999) and horizon 10 as ``benchmarks/backtest.py sunspots``; each
model is fitted once on 1700-1948 (on the transformed scale), re-filtered at every origin, and its
Gaussian forecast is sampled (2,000 paths), mapped back to sunspot numbers and scored there (CRPS,
80% coverage). It asks whether a scale on which the spread does not grow with the level would help.
"""

import warnings

import numpy as np
import statsmodels.api as sm

from deepstate.data import load_dataset
from deepstate.scores import coverage, crps_ensemble

TRANSFORMS = {
    "none": (lambda v: v, lambda v: v),
    "sqrt": (np.sqrt, lambda v: np.square(np.maximum(v, 0))),
    "log1p": (np.log1p, np.expm1),
}


def main():
    warnings.simplefilter("ignore")  # statsmodels' convergence chatter
    y = load_dataset("sunspots").series.to_numpy()
    T, H, test = len(y), 10, 60
    origins = range(T - test, T - H + 1)
    print("transform  order      CRPS  coverage80")
    for name, (forward, inverse) in TRANSFORMS.items():
        for order in [(2, 0, 0), (3, 0, 0), (9, 0, 0)]:
            fitted = sm.tsa.SARIMAX(forward(y[:T - test]), order=order, trend="c").fit(disp=False)
            rng = np.random.default_rng(0)
            crps, cover = [], []
            for o in origins:
                fc = fitted.apply(forward(y[:o])).get_forecast(H)
                paths = inverse(fc.predicted_mean + np.sqrt(fc.var_pred_mean) * rng.standard_normal((2000, H)))
                crps.append(np.mean(crps_ensemble(paths, y[o:o + H])))
                lo, hi = np.quantile(paths, [0.1, 0.9], axis=0)
                cover.append(coverage(lo, hi, y[o:o + H]))
            print(f"{name:9s}  {str(order):9s}  {np.mean(crps):6.2f}  {np.mean(cover):.3f}")


if __name__ == "__main__":
    main()
