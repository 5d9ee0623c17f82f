"""Rolling-origin backtests of deepstate models against statsmodels and naive baselines on real series.

    python benchmarks/backtest.py sunspots  --out bench-out/sunspots   # yearly, last 60 years held out
    python benchmarks/backtest.py lynx_hare --out bench-out/lynx_hare  # log counts, bivariate

Every model is fitted once on the training part (everything before the first origin) and reused as
the history grows; every forecaster is scored on the same origins (horizon 10, stride 1). Writes
``summary.csv``, ``per_origin.csv``, ``summary.md`` and PNGs (fan chart from the last origin, score
table) into ``--out`` and prints the table. Data: ``$DEEPSTATE_DATA`` or ``--data-dir`` (lynx_hare).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import pandas as pd
import torch

from deepstate.data import load_dataset
from deepstate.estimator import Estimator
from deepstate.forecasting.backtest import backtest
from deepstate.report import fit_lgssm  # maximum likelihood from several starts; the best wins

CONFIGS = {
    # yearly sunspot numbers 1700-2008: an ~11-year quasi-cycle with varying amplitude, skewed, >= 0
    "sunspots": dict(test_size=60, season=11, log=False, sarimax=(9, 0, 0), ylabel="sunspot number (yearly mean)"),
    # Hudson's Bay lynx and hare pelts 1845-1935 (log): a ~10-year predator-prey cycle, two series
    "lynx_hare": dict(test_size=39, season=10, log=True, sarimax=(2, 0, 0),  # 30 origins at horizon 10
                      ylabel="log pelts"),
}


def fit_deep(args, train, seed: int) -> Estimator:
    """The deep model fitted on ``train`` (early stopping on its last ``--valid-steps`` steps when given;
    the DeepState-style model by exact maximum likelihood, L-BFGS, on all of ``train``)."""
    est = deep_model(argparse.Namespace(**{**vars(args), "seed": seed}))
    if args.model == "deepstate":
        return est.fit(train, epochs=args.exact_steps, progress=False)
    kw = dict(epochs=args.epochs, lr=3e-3, batch_size=16, window=40, stride=4, progress=False)
    if args.valid_steps:
        # early stopping on the held-out end of the training part (the backtest's test part stays unseen)
        return est.fit(train.iloc[:-args.valid_steps], valid_data=train.iloc[-args.valid_steps:],
                       early_stopping_patience=args.patience, **kw)
    return est.fit(train, **kw)


def deep_model(args) -> Estimator:
    if args.model == "deepstate":
        # the DeepState-style model (Rangapuram et al. 2018) with a level and a damped stochastic cycle
        # whose period (initially the dataset's season) and damping are learned: exact Kalman likelihood,
        # so its forecasts are exact Gaussian predictives
        return Estimator("deepstate", objective="exact", seed=args.seed, dtype=torch.float64, trend=False,
                         cycle_period=float(CONFIGS[args.dataset]["season"]), rnn_dim=args.hidden,
                         hidden_dim=args.hidden)
    common = dict(likelihood=args.likelihood, objective=args.objective, num_particles=args.num_particles,
                  seed=args.seed, z_dim=args.z_dim, rnn_dim=args.hidden, min_scale=args.min_scale)
    if args.model == "srnn":
        # SRNN (Fraccaro et al. 2016): a deterministic RNN over the past values under the stochastic layer,
        # so the forecast feeds its own sampled values back like an autoregression
        return Estimator("srnn", hidden_dim=args.hidden, **common)
    # a small DKF: a gated transition can bend the cycle where a linear state space cannot;
    # `augmented` also feeds the previous value to the emission (Krishnan et al. 2017's DMM-Aug)
    return Estimator("dkf", transition_dim=args.hidden, emission_dim=args.hidden, augmented=args.augmented, **common)


def markdown_table(df: pd.DataFrame) -> str:
    """A pipe table (pandas' to_markdown needs the optional tabulate package)."""
    head = "| model | " + " | ".join(df.columns) + " |"
    rule = "|---|" + "---|" * len(df.columns)
    rows = ["| " + str(i) + " | " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r) + " |"
            for i, r in zip(df.index, df.itertuples(index=False))]
    return "\n".join([head, rule] + rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", choices=sorted(CONFIGS))
    p.add_argument("--out", required=True)
    p.add_argument("--horizon", type=int, default=10)
    p.add_argument("--epochs", type=int, default=150)
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=os.environ.get("DEEPSTATE_DATA"))
    p.add_argument("--model", default="dkf", choices=["dkf", "srnn", "deepstate"],
                   help="the deep model (default dkf; deepstate: level + learned damped cycle, univariate)")
    p.add_argument("--exact-steps", type=int, default=200, help="deepstate: L-BFGS iterations (default 200)")
    p.add_argument("--z-dim", type=int, default=4, help="deep model's latent dimension")
    p.add_argument("--hidden", type=int, default=32, help="deep model's widths (transition/emission/RNNs)")
    p.add_argument("--augmented", action="store_true", help="DKF-Aug: the previous value feeds the emission")
    p.add_argument("--objective", default="fivo")
    p.add_argument("--num-particles", type=int, default=8, help="training particles")
    p.add_argument("--lgssm-z", type=int, default=None, help="LGSSM state dimension (default 2 per series)")
    p.add_argument("--lgssm-starts", type=int, default=1)
    p.add_argument("--lgssm-holdout", type=int, default=0,
                   help="early-stop the LGSSM fits on the conditional log-likelihood of the last K training steps")
    p.add_argument("--likelihood", default="gaussian", help="DKF emission: gaussian or studentt")
    p.add_argument("--valid-steps", type=int, default=0,
                   help="hold out the last steps of the training part for early stopping of the DKF (0: none)")
    p.add_argument("--patience", type=int, default=20)
    p.add_argument("--min-scale", type=float, default=1e-3, help="DKF floor on the transition/emission scales")
    p.add_argument("--ensemble", type=int, default=1, help="also score an ensemble of this many DKF seeds")
    args = p.parse_args(argv)
    cfg = CONFIGS[args.dataset]
    data = load_dataset(args.dataset, data_dir=args.data_dir).data
    frame = data.to_frame() if isinstance(data, pd.Series) else data
    if cfg["log"]:
        frame = np.log(frame)
    frame = frame.astype("float64")
    if args.model == "deepstate" and frame.shape[1] > 1:
        p.error(f"--model deepstate: the DeepState-style model is univariate; {args.dataset} has {frame.shape[1]} series")
    train = frame.iloc[: len(frame) - cfg["test_size"]]
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(args.seed)
    results, timings = [], {}

    t0 = time.perf_counter()
    lgssm = fit_lgssm(train, args.lgssm_z or 2 * frame.shape[1], args.lgssm_starts, args.seed,
                      holdout=args.lgssm_holdout)
    timings["lgssm fit"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    members = [fit_deep(args, train, args.seed + k) for k in range(args.ensemble)]
    deep = members[0]
    print(f"{args.model} trained {[len(m.history_) for m in members]} epochs")
    timings[f"{args.model} fit"] = time.perf_counter() - t0

    kw = dict(horizon=args.horizon, test_size=cfg["test_size"], season=cfg["season"], num_samples=args.num_samples,
              order=cfg["sarimax"], seed=args.seed, levels=(0.5, 0.8, 0.95))
    t0 = time.perf_counter()
    base = backtest(None, frame, **kw)
    timings["baselines"] = time.perf_counter() - t0
    exact_deep = args.model == "deepstate"
    models = [("lgssm (exact)", lgssm), (f"{args.model} ({'exact' if exact_deep else 'particles'})", deep)]
    if args.ensemble > 1:
        models.append((f"{args.model} ensemble of {args.ensemble} seeds", members))
    for name, est in models:
        t0 = time.perf_counter()
        res = backtest(est, frame, baselines=(), model_name=name, **kw)
        timings[f"{name} backtest"] = time.perf_counter() - t0
        results.append(res.per_origin)
    per_origin = pd.concat(results + [base.per_origin], ignore_index=True)
    summary = per_origin.drop(columns=["origin", "origin_label"]).groupby("model", sort=False).mean().sort_values("crps")
    summary.insert(0, "origins", per_origin.groupby("model").size())
    per_origin.to_csv(os.path.join(args.out, "per_origin.csv"), index=False)
    summary.to_csv(os.path.join(args.out, "summary.csv"))
    cols = ["origins", "crps", "coverage80", "width80", "coverage95", "mase", "mae", "rmse"]
    table = markdown_table(summary[cols])
    with open(os.path.join(args.out, "summary.md"), "w") as fh:
        fh.write(table + "\n")
    print(f"{args.dataset}: {len(base.origins)} origins, horizon {args.horizon}, "
          f"first origin {frame.index[base.origins[0]]}")
    with pd.option_context("display.width", 200, "display.precision", 3):
        print(summary[cols].to_string())
    print("timings (s):", {k: round(v, 1) for k, v in timings.items()})
    print("arguments:", vars(args))
    # held-out conditional log-likelihood of the tail given the training part (nats per step)
    tail = frame.iloc[len(train):]
    for name, est, obj in (("lgssm", lgssm, "exact"), (args.model, deep, "exact" if exact_deep else "fivo")):
        v = est.log_likelihood(tail, history=train, objective=obj, num_particles=2000)
        print(f"{name}: log p(test | train) = {v:.3f} nats per step (conditional)")
    # pictures: the deep model's forecast from the last origin and the score table
    origin = base.origins[-1]
    fc = deep.forecast(frame.iloc[:origin], args.horizon, num_samples=args.num_samples)
    fc.plot(actual=frame.iloc[origin:origin + args.horizon].to_numpy(), max_history=80,
            title=f"{args.dataset}: {args.model.upper()} forecast from {frame.index[origin - 1]}",
            ylabel=cfg["ylabel"], path=os.path.join(args.out, f"fan_{args.model}.png"))
    fc2 = lgssm.forecast(frame.iloc[:origin], args.horizon)
    fc2.plot(actual=frame.iloc[origin:origin + args.horizon].to_numpy(), max_history=80,
             title=f"{args.dataset}: LGSSM (exact) forecast from {frame.index[origin - 1]}",
             ylabel=cfg["ylabel"], path=os.path.join(args.out, "fan_lgssm.png"))
    from deepstate.plots import score_table

    score_table(summary[cols[1:]], title=f"{args.dataset}: {len(base.origins)} origins, horizon {args.horizon}",
                path=os.path.join(args.out, "scores.png"))


if __name__ == "__main__":
    main()
