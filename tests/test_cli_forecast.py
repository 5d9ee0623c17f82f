"""`deepstate forecast` and `deepstate backtest` through the real entry point, and CSV input rules."""

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from deepstate.cli import CLIError, read_series_csv
from deepstate.estimator import Estimator


def run(*args, cwd=None):
    env = dict(os.environ, MPLBACKEND="Agg")
    return subprocess.run([sys.executable, "-m", "deepstate", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


@pytest.fixture(scope="module")
def series_csv(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli_fc")
    years = np.arange(1900, 1980)
    y = 50 + 30 * np.sin(2 * np.pi * years / 11) + np.random.default_rng(0).normal(size=80)
    path = d / "spots.csv"
    pd.DataFrame({"year": years, "y": y}).to_csv(path, index=False)
    return d, path


@pytest.fixture(scope="module")
def model_path(series_csv):
    d, path = series_csv
    frame = read_series_csv(str(path))
    est = Estimator("lgssm", objective="exact", z_dim=2, dtype=torch.float64).fit(frame.iloc[:60], epochs=10,
                                                                                    progress=False)
    out = d / "m.pt"
    est.save(out)
    return out


def test_forecast_command_writes_quantiles_continuing_the_index(series_csv, model_path):
    d, path = series_csv
    out, png = d / "fc.csv", d / "fan.png"
    r = run("forecast", str(model_path), str(path), "--horizon", "5", "--levels", "0.8", "--out", str(out),
            "--plot", str(png))
    assert r.returncode == 0, r.stderr
    df = pd.read_csv(out)
    assert list(df.columns) == ["year", "mean", "q0.1", "q0.5", "q0.9"]
    assert df["year"].tolist() == [1980, 1981, 1982, 1983, 1984]
    assert (df["q0.1"] <= df["q0.9"]).all()
    assert png.stat().st_size > 1000


def test_backtest_command_prints_the_table_beside_baselines(series_csv, model_path):
    d, path = series_csv
    out, png = d / "scores.csv", d / "scores.png"
    r = run("backtest", str(model_path), str(path), "--horizon", "3", "--origins", "12", "--season", "11",
            "--num-samples", "100", "--quiet", "--out", str(out), "--plot", str(png))
    assert r.returncode == 0, r.stderr
    for name in ("lgssm", "persistence", "seasonal_naive", "sarimax"):
        assert name in r.stdout
    scores = pd.read_csv(out)
    assert scores.groupby("model").size().eq(12).all()
    assert png.stat().st_size > 1000


@pytest.mark.parametrize("content,fragment", [
    ("year,y\n2000,1\n2001,2\n2001,3\n", "not strictly increasing"),
    ("year,y\n2001,1\n2000,2\n2002,3\n", "not strictly increasing"),
    ("t,y\n1,1.0\n2,abc\n3,2.0\n", "column 'y'"),
    ("date,y\n2020-01-01,1\nnot a date,2\n", "not dates"),
    ("", "cannot read CSV"),
])
def test_csv_rules(tmp_path, content, fragment):
    p = tmp_path / "bad.csv"
    p.write_text(content)
    with pytest.raises(CLIError, match=fragment):
        read_series_csv(str(p))


def test_csv_time_column_becomes_the_index_not_a_series(tmp_path):
    p = tmp_path / "ok.csv"
    p.write_text("t,y\n1,1.5\n2,\n3,2.5\n")
    df = read_series_csv(str(p))
    assert list(df.columns) == ["y"] and df.index.name == "t" and np.isnan(df["y"].iloc[1])
    p2 = tmp_path / "dates.csv"
    p2.write_text("when,a,b\n2020-01-01,1,2\n2020-02-01,3,4\n2020-03-01,5,6\n")
    df2 = read_series_csv(str(p2))
    assert isinstance(df2.index, pd.DatetimeIndex) and list(df2.columns) == ["a", "b"]


@pytest.mark.parametrize("args,fragment", [
    (["--horizon", "0"], "horizon"),
    (["--horizon", "3", "--levels", "0.5,1.5"], "--levels"),
])
def test_forecast_bad_input_one_line_no_traceback(series_csv, model_path, args, fragment):
    d, path = series_csv
    r = run("forecast", str(model_path), str(path), "--out", str(d / "x.csv"), *args)
    assert r.returncode == 2
    assert fragment in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (d / "x.csv").exists()


def test_backtest_bad_origins(series_csv, model_path):
    d, path = series_csv
    r = run("backtest", str(model_path), str(path), "--horizon", "3", "--origins", "500", "--out", str(d / "y.csv"))
    assert r.returncode == 2 and "--origins" in r.stderr and "Traceback" not in r.stderr


def test_demo_main_job_writes_report_and_figures(tmp_path):
    """The README's main job end to end (1 training epoch: the pipeline, not the quality)."""
    out = tmp_path / "report"
    r = run("demo", "--epochs", "1", "--quiet", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert f"report: {out / 'report.md'}" in r.stdout
    text = (out / "report.md").read_text()
    for fragment in ("Rolling-origin backtest", "Best by CRPS", "Forecast beyond 2008", "Posterior predictive checks"):
        assert fragment in text
    for png in ("backtest.png", "forecast_dkf.png", "forecast_lgssm.png", "forecast_dkf_holdout.png",
                "latent_lgssm.png", "checks_lgssm.png", "checks_dkf.png"):
        assert (out / png).stat().st_size > 1000, png
        assert f"]({png})" in text  # every figure is shown in the report
    summary = pd.read_csv(out / "backtest_summary.csv", index_col=0)
    assert {"lgssm (exact)", "dkf (particles)", "persistence", "seasonal_naive"} <= set(summary.index)
