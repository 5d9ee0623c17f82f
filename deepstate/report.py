r"""The main job: fit, backtest, forecast and check deepstate models on a real series; write a report.

``deepstate demo`` runs :func:`run_demo` on the embedded default, yearly sunspot numbers
(1700-2008, shipped with statsmodels, so nothing is downloaded):

1. fit the exact linear-Gaussian state-space model (maximum likelihood, a few restarts) and a deep
   Markov model (DKF, trained with FIVO) on everything before the held-out tail;
2. score both by the conditional log-likelihood of the tail given the past, and backtest them
   with rolling origins against persistence, seasonal naive and statsmodels baselines;
3. forecast beyond the data with intervals;
4. run posterior predictive checks;
5. write figures, tables and ``report.md`` (plain words) into the output folder.

Why these two models: the LGSSM is the exact oracle (its likelihood and forecasts are computed
in closed form, so it is the honest linear baseline); the DKF is the simplest deep state-space
model whose nonlinear transition can bend the solar cycle's asymmetric rise and fall, and whose
guide-based particle filter shows the deep path end to end.
"""

from __future__ import annotations

import os
import time

import numpy as np

from .atomic import write_text_atomic

__all__ = ["run_demo", "fit_lgssm"]

_EXPLAIN = {
    "crps": "continuous ranked probability score: the average distance between the forecast distribution and "
            "what happened, in the data's units; lower is better (for a point forecast it is the absolute error)",
    "coverage80": "fraction of held-out values inside the central 80% interval; near 0.80 is calibrated, lower "
                  "means over-confident, higher means too cautious",
    "width80": "average width of the 80% interval, in the data's units: narrower is better only when coverage holds",
    "coverage95": "the same for the 95% interval",
    "mase": "mean absolute error of the median, divided by that of the in-sample one-step naive forecast; "
            "below 1 beats it",
}


def _md_table(df, floatfmt="{:.3f}") -> str:
    head = "| " + (df.index.name or "") + " | " + " | ".join(map(str, df.columns)) + " |"
    rule = "|---" * (len(df.columns) + 1) + "|"
    rows = []
    for i, r in zip(df.index, df.itertuples(index=False)):
        cells = [floatfmt.format(v) if isinstance(v, (float, np.floating)) else str(v) for v in r]
        rows.append("| " + str(i) + " | " + " | ".join(cells) + " |")
    return "\n".join([head, rule] + rows)


def fit_lgssm(train, z_dim: int, starts: int, seed: int, holdout: int = 0):
    """Exact maximum likelihood from ``starts`` initialisations (the likelihood is multimodal); best wins.

    With ``holdout`` the last ``holdout`` steps are held out: each fit keeps its L-BFGS iterate with the
    best conditional log-likelihood of them given the rest, and the best such score wins (else the best
    training bound).
    """
    import torch

    from .estimator import Estimator

    key = "valid_bound" if holdout else "train_bound"
    best = None
    for k in range(starts):
        est = Estimator("lgssm", objective="exact", z_dim=z_dim, dtype=torch.float64, seed=seed + k)
        est.fit(train, epochs=100, progress=False, holdout=holdout)
        if best is None or est.history_[-1][key] > best.history_[-1][key]:
            best = est
    return best


def run_demo(out: str = "deepstate-report", epochs: int = 150, seed: int = 0, quiet: bool = False,
             horizon: int = 10, test_size: int = 60, lgssm_z: int = 3, lgssm_starts: int = 3,
             log=print) -> str:
    """Run the main job and write the report into ``out``; return the report's path.

    Args:
        out: output folder (created; files in it are replaced atomically).
        epochs: at most this many DKF training epochs (early stopping on the last 40 training years).
        seed: seed of everything.
        quiet: no progress bars.
        horizon, test_size: backtest horizon and held-out tail (years).
        lgssm_z, lgssm_starts: LGSSM state dimension and maximum-likelihood restarts. Each LGSSM fit is
            early-stopped on the conditional log-likelihood of the last 40 training years (the years
            the DKF validates on); the default z = 3 is the smallest state within one standard error
            of the best validation CRPS over z = 2..6 (``benchmarks/lgssm_sizes.py``).
        log: where progress lines go.
    """
    import torch

    for name, v in (("epochs", epochs), ("horizon", horizon), ("test_size", test_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}: expected a positive int, got {v!r}")
    os.makedirs(out, exist_ok=True)
    threads = torch.get_num_threads()
    # these models are small: one intra-op thread is as fast, and immune to the many-fold slowdown two
    # threads suffer when another process is busy on a 2-core machine
    torch.set_num_threads(1)
    try:
        return _run(out, epochs, seed, quiet, horizon, test_size, lgssm_z, lgssm_starts, log)
    finally:
        torch.set_num_threads(threads)


def _run(out, epochs, seed, quiet, horizon, test_size, lgssm_z, lgssm_starts, log) -> str:
    import pandas as pd
    import torch

    from .data import load_dataset
    from .estimator import Estimator
    from .forecasting.backtest import backtest
    from .plots import ppc_panels, score_table

    path = lambda name: os.path.join(out, name)  # noqa: E731
    torch.manual_seed(seed)
    t_start = time.perf_counter()
    ds = load_dataset("sunspots")
    y = ds.series.astype("float64")
    y.name = "sunspots"
    train, test = y.iloc[:-test_size], y.iloc[-test_size:]
    log(f"sunspots: yearly sunspot numbers {y.index[0]}-{y.index[-1]} ({len(y)} years); "
        f"fitting on {train.index[0]}-{train.index[-1]}, holding out {test.index[0]}-{test.index[-1]}")

    t0 = time.perf_counter()
    valid_years = 40  # both models stop early on the last 40 training years
    lgssm = fit_lgssm(train, lgssm_z, lgssm_starts, seed, holdout=valid_years)
    t_lgssm = time.perf_counter() - t0
    log(f"[1/5] linear-Gaussian SSM (z={lgssm_z}, exact maximum likelihood, {lgssm_starts} starts, early-stopped "
        f"on the last {valid_years} training years): {t_lgssm:.0f}s")
    t0 = time.perf_counter()
    dkf = Estimator("dkf", likelihood="gaussian", objective="fivo", num_particles=8, seed=seed, z_dim=4,
                    transition_dim=32, emission_dim=32, rnn_dim=32)
    # 249 training years are few for a neural network: stop when the bound on the last 40 of them stops
    # improving (measured: without it the DKF's 80% intervals covered 53-59% of the held-out years, with it 65%)
    dkf.fit(train.iloc[:-valid_years], valid_data=train.iloc[-valid_years:], epochs=epochs, lr=3e-3, batch_size=16,
            window=40, stride=4, progress=not quiet, early_stopping_patience=20)
    dkf_epochs = len(dkf.history_)
    t_dkf = time.perf_counter() - t0
    log(f"[2/5] deep Markov model (z=4, FIVO with 8 particles, {dkf_epochs} epochs, early stopping): {t_dkf:.0f}s")

    # honest held-out score: log p(test | train), nats per year
    cond = {
        "lgssm (exact)": lgssm.log_likelihood(test, history=train, objective="exact"),
        "dkf (particles)": dkf.log_likelihood(test, history=train, objective="fivo", num_particles=2000),
    }
    t0 = time.perf_counter()
    kw = dict(horizon=horizon, test_size=test_size, season=11, num_samples=1000, order=(9, 0, 0), seed=seed,
              levels=(0.5, 0.8, 0.95))
    parts = [backtest(lgssm, y, baselines=(), model_name="lgssm (exact)", **kw).per_origin,
             backtest(dkf, y, baselines=(), model_name="dkf (particles)", **kw).per_origin,
             backtest(None, y, baselines=("persistence", "seasonal_naive", "local_level", "sarimax"), **kw).per_origin]
    per_origin = pd.concat(parts, ignore_index=True)
    n_origins = per_origin["origin"].nunique()
    cols = ["crps", "coverage80", "width80", "coverage95", "mase"]
    summary = per_origin.groupby("model", sort=False)[cols].mean().sort_values("crps")
    summary.index.name = "model"
    per_origin.to_csv(path("backtest_per_origin.csv"), index=False)
    summary.to_csv(path("backtest_summary.csv"))
    score_table(summary, title=f"Sunspots: rolling-origin backtest, {n_origins} origins, horizon {horizon} years",
                path=path("backtest.png"))
    log(f"[3/5] backtest: {n_origins} origins x {horizon} years, 2 models + 4 baselines: "
        f"{time.perf_counter() - t0:.0f}s")

    t0 = time.perf_counter()
    fc_dkf = dkf.forecast(y, horizon, num_samples=2000, levels=(0.1, 0.5, 0.9))
    fc_lgssm = lgssm.forecast(y, horizon, levels=(0.1, 0.5, 0.9))
    fc_dkf.plot(title=f"Sunspots: DKF forecast of {horizon} years beyond the data", ylabel="sunspot number",
                path=path("forecast_dkf.png"), max_history=100)
    fc_lgssm.plot(title=f"Sunspots: LGSSM (exact) forecast of {horizon} years beyond the data",
                  ylabel="sunspot number", path=path("forecast_lgssm.png"), max_history=100)
    table_fc = pd.DataFrame({f"{m} {c}": f.to_frame()[q] for m, f in (("dkf", fc_dkf), ("lgssm", fc_lgssm))
                             for c, q in (("median", "q0.5"), ("10%", "q0.1"), ("90%", "q0.9"))})
    table_fc.index.name = "year"
    table_fc.to_csv(path("forecast.csv"))
    # the fan chart of the last backtest origin, with what happened
    origin = len(y) - horizon
    fc_last = dkf.forecast(y.iloc[:origin], horizon, num_samples=2000)
    fc_last.plot(actual=y.iloc[origin:].to_numpy()[:, None], ylabel="sunspot number", max_history=100,
                 title=f"Sunspots: DKF forecast from {y.index[origin - 1]} against what happened",
                 path=path("forecast_dkf_holdout.png"))
    latent = lgssm.latent_trajectories(y, kind="smoothed")
    latent.plot(title="LGSSM: smoothed latent states (mean and 90% band)", path=path("latent_lgssm.png"))
    log(f"[4/5] forecasts beyond {y.index[-1]} and latent states: {time.perf_counter() - t0:.0f}s")

    t0 = time.perf_counter()
    checks = {}
    for label, est in (("lgssm", lgssm), ("dkf", dkf)):
        table, idata = est.check(y, kind="free", t0=len(train), num_samples=200)
        checks[label] = table
        ppc_panels(table, title=f"Sunspots, {label}: free-running replicates of {test.index[0]}-{test.index[-1]} "
                                f"from the filtered state in {train.index[-1]}", path=path(f"checks_{label}.png"))
        idata.to_netcdf(path(f"checks_{label}.nc"))
    log(f"[5/5] posterior predictive checks: {time.perf_counter() - t0:.0f}s")

    report = _write_report(path("report.md"), y, train, test, summary, n_origins, horizon, cond, table_fc, checks,
                           dict(lgssm=t_lgssm, dkf=t_dkf, total=time.perf_counter() - t_start), lgssm_z, dkf_epochs)
    return report


def _write_report(file, y, train, test, summary, n_origins, horizon, cond, table_fc, checks, times, lgssm_z, epochs):
    best = summary.index[0]
    ours = ("lgssm (exact)", "dkf (particles)")
    stats_best = [m for m in summary.index if m not in ours][0]
    best_ours = [m for m in summary.index if m in ours][0]
    cov_lines = []
    for m in ("lgssm (exact)", "dkf (particles)"):
        c = summary.loc[m, "coverage80"]
        verdict = ("calibrated" if 0.7 <= c <= 0.9 else "over-confident (intervals too narrow)" if c < 0.7
                   else "too cautious (intervals too wide)")
        cov_lines.append(f"- **{m}**: its 80% intervals held {c:.0%} of the held-out values: {verdict}.")
    check_lines = []
    for label, table in checks.items():
        extreme = table[(table["p_value"] < 0.05) | (table["p_value"] > 0.95)]
        if len(extreme):
            names = ", ".join(f"{i} (p = {p:.2f})" for i, p in extreme["p_value"].items())
            check_lines.append(f"- **{label}**: the held-out years differ from the model's free-running replicates "
                               f"in {names}: the model does not reproduce these features.")
        else:
            check_lines.append(f"- **{label}**: no statistic is extreme (all p-values in 0.05-0.95): the held-out years "
                               f"look like the model's replicates in every checked respect.")
    text = f"""# deepstate report: yearly sunspot numbers

**Data.** Yearly mean sunspot numbers {y.index[0]}-{y.index[-1]} ({len(y)} years, shipped with statsmodels).
The models were fitted on {train.index[0]}-{train.index[-1]}; the last {len(test)} years
({test.index[0]}-{test.index[-1]}) were held out.

**Models.**
- **lgssm (exact)**: a linear-Gaussian state-space model with a {lgssm_z}-dimensional state, fitted by exact
  maximum likelihood (Kalman filter, L-BFGS) on {train.index[0]}-{train.index[-41]}, keeping the iterate that best
  predicted {train.index[-40]}-{train.index[-1]} given the years before (early stopping). Its forecasts are exact
  Gaussians. Fitted in {times['lgssm']:.0f} s.
- **dkf (particles)**: a deep Markov model (Krishnan et al. 2017): a 4-dimensional latent state with a
  neural transition and emission, trained with the FIVO bound (8 particles) for {epochs} epochs in
  {times['dkf']:.0f} s, stopped early when its bound on {train.index[-40]}-{train.index[-1]} stopped improving. It
  forecasts by filtering the history with a particle filter and simulating forward.

## How well do they predict the held-out years?

Log-likelihood of the held-out years given everything before them (nats per year; higher is better;
a difference of 1 nat per year means the better model gave the actual values about e = 2.7 times
more probability each year):

{_md_table(_frame(cond, "log p(test | past), nats/year"))}

**Rolling-origin backtest.** From each of {n_origins} origins ({y.index[len(y) - len(test)]}-{y.index[len(y) - horizon]})
every forecaster saw the data up to that year and forecast the next {horizon} years; all were scored on the same
origins and averaged:

{_md_table(summary)}

{chr(10).join(f"- **{k}**: {v}." for k, v in _EXPLAIN.items())}

Best by CRPS: **{best}**{" (a classical baseline)" if best == stats_best else ""}; the best deepstate model is
**{best_ours}** (CRPS {summary.loc[best_ours, 'crps']:.1f}) and the best classical baseline **{stats_best}**
(CRPS {summary.loc[stats_best, 'crps']:.1f}).
{chr(10).join(cov_lines)}

![backtest](backtest.png)

![DKF forecast against the held-out years](forecast_dkf_holdout.png)

## Forecast beyond {y.index[-1]}

Median and 80% interval (10% and 90% quantiles), sunspot number:

{_md_table(table_fc, "{:.1f}")}
{_negative_note(table_fc)}
![DKF forecast](forecast_dkf.png)

![LGSSM forecast](forecast_lgssm.png)

![LGSSM smoothed latent states](latent_lgssm.png)

## Posterior predictive checks

Each model was run forward from its filtered state at the end of {train.index[-1]}, feeding back its own
simulated values, 200 times; statistics of the held-out years are compared with the same statistics of those
replicates. The p-value is the share of replicates whose statistic is at least the observed one: values near 0
or 1 flag something the model does not reproduce.

{chr(10).join(check_lines)}

![checks, LGSSM](checks_lgssm.png)

![checks, DKF](checks_dkf.png)

Files: `backtest_summary.csv`, `backtest_per_origin.csv`, `forecast.csv`, `checks_*.nc` (ArviZ InferenceData),
PNG figures. Total run time {times['total']:.0f} s.
"""
    write_text_atomic(file, text)
    return file


def _negative_note(table_fc) -> str:
    neg = [c.split()[0] for c in table_fc.columns if c.endswith("10%") and (table_fc[c] < 0).any()]
    if not neg:
        return ""
    return (f"\nSunspot numbers cannot be negative, yet the 10% quantile of {', '.join(neg)} goes below zero: "
            f"a Gaussian emission does not know the series is non-negative (a log or square-root transform, "
            f"or a count likelihood, would).\n")


def _frame(d: dict, column: str):
    import pandas as pd

    df = pd.DataFrame({column: pd.Series(d)})
    df.index.name = "model"
    return df
