"""Forecasting: exact forecasts against statsmodels, particle forecasts against exact ones, conditional
predictive log-likelihoods, PIT calibration, latent trajectories, the rolling-origin backtest, bad input."""

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
import torch

from deepstate.data import from_numpy
from deepstate.data.synthetic import simulate_lgssm
from deepstate.estimator import Estimator
from deepstate.forecasting import forecast, latent_trajectories, one_step_ahead
from deepstate.forecasting.backtest import backtest
from deepstate.models import build
from deepstate.models.base import LatentSequenceModel, PriorGuide
from deepstate.models.lgssm import LinearGaussianSSM
from deepstate.models.rollout import RolloutState, rollout
from deepstate.scores import pit_normal, pit_uniformity

A, Q, C, R = 0.8, 0.5, 1.0, 0.3


def _ar1(dtype=torch.float64, **kw):
    ssm = LinearGaussianSSM(1, 1, A=[[A]], Q=[[Q]], C=[[C]], R=[R], m0=[0.0], P0=[[1.0]], dtype=dtype, **kw)
    return ssm.as_latent_sequence_model(PriorGuide())


def _series(T=60, seed=0, B=1):
    batch, _ = simulate_lgssm(A=[[A]], Q=[[Q]], C=[[C]], R=[[R]], m0=[0.0], P0=[[1.0]], T=T, num_sequences=B, seed=seed)
    return batch


def _statsmodels_forecast(x: np.ndarray, H: int):
    mod = sm.tsa.statespace.MLEModel(x, k_states=1)
    mod["design"], mod["transition"], mod["selection"] = np.array([[C]]), np.array([[A]]), np.eye(1)
    mod["state_cov"], mod["obs_cov"] = np.array([[Q]]), np.array([[R]])
    mod.initialize_known(np.zeros(1), np.eye(1))
    return mod.filter([]).get_forecast(H)


def test_exact_forecast_quantiles_match_statsmodels():
    batch = _series(T=50)
    x = batch.x[0, :, 0].numpy()
    fc = forecast(_ar1(), batch, 6, num_samples=10, method="exact")
    ref = _statsmodels_forecast(x, 6)
    assert fc.method == "exact" and fc.is_gaussian
    np.testing.assert_allclose(fc.mean[0, :, 0], ref.predicted_mean, rtol=1e-6, atol=1e-9)
    lo, hi = fc.interval(0.8)
    ci = ref.conf_int(alpha=0.2)
    np.testing.assert_allclose(lo[0, :, 0], ci[:, 0], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(hi[0, :, 0], ci[:, 1], rtol=1e-6, atol=1e-9)


def test_particle_forecast_of_lgssm_agrees_with_exact_within_monte_carlo_error():
    torch.manual_seed(0)
    batch = _series(T=40, B=2)
    lsm = _ar1()
    exact = forecast(lsm, batch, 5, method="exact", num_samples=10)
    part = forecast(lsm, batch, 5, method="particles", num_samples=4000, num_particles=2000, seed=1)
    S = part.samples.shape[0]
    sd = exact.gaussian_std
    # the particle filter's end state carries its own Monte Carlo error: allow 5 standard errors plus a little
    assert np.all(np.abs(part.mean - exact.mean) < 5 * sd / np.sqrt(S) + 0.08 * sd)
    assert np.all(np.abs(part.samples.std(0) / sd - 1) < 0.08)
    # exact sample paths are draws from the same Gaussian marginals
    ex = forecast(lsm, batch, 5, method="exact", num_samples=4000, seed=2)
    assert np.all(np.abs(ex.samples.mean(0) - ex.mean) < 5 * sd / np.sqrt(4000))
    assert np.all(np.abs(ex.samples.std(0) / sd - 1) < 0.06)


def test_conditional_predictive_loglik_particles_vs_exact():
    torch.manual_seed(0)
    full = _series(T=50)
    hist = from_numpy(full.x[0, :40].numpy(), dtype=torch.float64)
    fut = from_numpy(full.x[0, 40:].numpy(), dtype=torch.float64)
    lsm = _ar1()
    exact = one_step_ahead(lsm, hist, fut, method="exact").total
    # check the exact conditional against the difference of two Kalman log-likelihoods
    ll_full = lsm.ssm.log_likelihood(full)
    ll_hist = lsm.ssm.log_likelihood(hist)
    assert torch.allclose(exact, ll_full - ll_hist, atol=1e-8)
    est = torch.stack([one_step_ahead(lsm, hist, fut, num_particles=2000, method="particles", seed=s).total
                       for s in range(6)]).squeeze(-1)
    se = float(est.std() / np.sqrt(len(est)))
    assert abs(float(est.mean() - exact)) < 4 * se + 0.02, (est, exact)


def test_rollout_from_prior_is_sample_and_pit_is_calibrated_for_the_true_model():
    """One-step PIT values of the true model are uniform; a model with the wrong noise level fails."""
    batch = _series(T=400, seed=3)
    hist = from_numpy(batch.x[0, :1].numpy(), dtype=torch.float64)
    fut = from_numpy(batch.x[0, 1:].numpy(), dtype=torch.float64)
    y = fut.x[0, :, 0].numpy()

    def pit_p(lsm):
        o = one_step_ahead(lsm, hist, fut, method="exact")
        return pit_uniformity(pit_normal(o.gaussian_mean[0, :, 0].numpy(), o.gaussian_std[0, :, 0].numpy(), y))

    assert pit_p(_ar1()) > 0.01
    wrong = LinearGaussianSSM(1, 1, A=[[A]], Q=[[Q * 0.1]], C=[[C]], R=[R * 0.1], m0=[0.0], P0=[[1.0]],
                              dtype=torch.float64).as_latent_sequence_model()
    assert pit_p(wrong) < 0.01


def test_particle_one_step_draws_are_calibrated():
    torch.manual_seed(0)
    batch = _series(T=300, seed=4)
    o = one_step_ahead(_ar1(), None, batch, num_particles=300, method="particles", seed=0)
    y = batch.x[0, :, 0].numpy()
    from deepstate.scores import pit_from_samples

    pit = pit_from_samples(o.draws[:, 0, :, 0].numpy(), y)
    assert pit_uniformity(pit) > 0.01
    assert o.draws.shape == (300, 1, 300, 1)


def test_forecast_continues_the_index_and_frame_columns():
    idx = pd.Index(np.arange(1900, 1960), name="year")
    y = pd.Series(np.sin(np.arange(60) / 3.0) * 10 + 50, index=idx, name="spots")
    est = Estimator("dkf", z_dim=2, rnn_dim=6, transition_dim=6, emission_dim=6, seed=0)
    est.fit(y, epochs=1, window=20, progress=False)
    fc = est.forecast(y, 4, num_samples=50, levels=(0.1, 0.5, 0.9))
    df = fc.to_frame()
    assert list(df.index) == [1960, 1961, 1962, 1963] and df.index.name == "year"
    assert list(df.columns) == ["mean", "q0.1", "q0.5", "q0.9"]
    assert np.all(df["q0.1"] <= df["q0.5"]) and np.all(df["q0.5"] <= df["q0.9"])
    assert fc.samples.shape == (50, 1, 4, 1)
    # original scale: the standardiser is undone (the series lives around 50)
    assert 20 < float(df["mean"].iloc[0]) < 80
    frame = pd.DataFrame({"a": y.values, "b": y.values[::-1]}, index=pd.date_range("2000-01", periods=60, freq="MS"))
    est2 = Estimator("dkf", z_dim=2, rnn_dim=6, transition_dim=6, emission_dim=6, seed=0).fit(frame, epochs=1,
                                                                                              progress=False)
    df2 = est2.forecast(frame, 3, num_samples=20).to_frame()
    assert df2.index[0] == pd.Timestamp("2005-01-01") and "a:q0.5" in df2.columns and "b:mean" in df2.columns


@pytest.mark.parametrize("name", ["dkf", "vrnn", "srnn", "deepstate", "lgssm"])
def test_every_model_forecasts_from_variable_length_histories(name):
    torch.manual_seed(0)
    kw = {} if name == "deepstate" else {"z_dim": 2}
    lsm = build(name, 1, "gaussian", **kw)
    b = from_numpy(np.random.default_rng(0).normal(size=(3, 12, 1)), lengths=[12, 7, 3])
    fc = forecast(lsm, b, 4, num_samples=30, num_particles=20, method="particles", seed=0)
    assert fc.samples.shape == (30, 3, 4, 1) and np.isfinite(fc.samples).all()
    # the same forecast for one sequence alone (batching changes nothing but the draws)
    one = forecast(lsm, b[2], 4, num_samples=30, num_particles=20, method="particles", seed=0)
    assert one.samples.shape == (30, 1, 4, 1)


def test_latent_trajectories_particles_match_kalman_and_rts():
    torch.manual_seed(0)
    from deepstate.models.lgssm import ExactPosteriorGuide

    batch = _series(T=25)
    lsm = _ar1()
    ex = latent_trajectories(lsm, batch, "smoothed", method="exact")
    # smoothed: with the exact posterior as proposal every weight is equal (ESS = N)
    exact_guide = LatentSequenceModel(lsm.ssm, ExactPosteriorGuide(lsm.ssm))
    pf = latent_trajectories(exact_guide, batch, "smoothed", method="particles", num_particles=4000, seed=0)
    assert pf.ess[0] > 3999
    assert np.abs(pf.mean - ex.mean).max() < 5 * ex.std.max() / np.sqrt(4000)
    assert np.abs(pf.std / ex.std - 1).max() < 0.1
    assert np.all(pf.lower < pf.mean) and np.all(pf.mean < pf.upper)
    # filtered: bootstrap proposal, weights accumulated up to t
    # over a long series whole-path weights degenerate; the resampling filter does not
    long = _series(T=150, seed=2)
    kf_long = latent_trajectories(lsm, long, "filtered", method="exact")
    pf_long = latent_trajectories(lsm, long, "filtered", method="particles", num_particles=3000, seed=0)
    assert pf_long.ess[0] > 300
    assert np.abs(pf_long.mean - kf_long.mean).max() < 0.25 * kf_long.std.max()
    assert latent_trajectories(lsm, long, "smoothed", method="particles", num_particles=3000, seed=0).ess[0] < 50
    q = latent_trajectories(lsm, long, "guide", method="particles", num_particles=50, seed=0)
    assert q.ess[0] == pytest.approx(50)
    short = _series(T=8, seed=1)
    kf = latent_trajectories(lsm, short, "filtered", method="exact")
    pb = latent_trajectories(lsm, short, "filtered", method="particles", num_particles=20000, seed=0)
    assert np.abs(pb.mean - kf.mean).max() < 0.1 * kf.std.max()
    sm_short = latent_trajectories(lsm, short, "smoothed", method="exact")
    assert np.all(kf.std[0, :-1] >= sm_short.std[0, :-1] - 1e-9)  # filtering is never more certain than smoothing


def test_future_covariates_required_and_checked():
    ssm = LinearGaussianSSM(1, 1, u_dim=1, dtype=torch.float64)
    lsm = ssm.as_latent_sequence_model()
    b = from_numpy(np.random.randn(10, 1), dtype=torch.float64)
    b = b.__class__(**{**b.__dict__, "u": torch.zeros(1, 10, 1, dtype=torch.float64)})
    with pytest.raises(ValueError, match="covariates"):
        forecast(lsm, b, 3)
    with pytest.raises(ValueError, match="covariates"):
        forecast(lsm, b, 3, covariates=np.zeros((1, 2, 1)))
    fc = forecast(lsm, b, 3, covariates=np.ones((1, 3, 1)))
    assert fc.mean.shape == (1, 3, 1)


def test_bad_forecast_input():
    lsm = _ar1()
    b = _series(T=10)
    with pytest.raises(ValueError, match="horizon"):
        forecast(lsm, b, 0)
    with pytest.raises(ValueError, match="num_samples"):
        forecast(lsm, b, 2, num_samples=0)
    with pytest.raises(ValueError, match="method"):
        forecast(lsm, b, 2, method="magic")
    with pytest.raises(ValueError, match="history"):
        forecast(lsm, from_numpy(np.zeros((10, 2))), 2)
    with pytest.raises(TypeError, match="history"):
        forecast(lsm, np.zeros(10), 2)
    fc = forecast(lsm, b, 2)
    with pytest.raises(ValueError, match="levels"):
        fc.quantiles([0.0, 0.5])
    with pytest.raises(ValueError, match="level"):
        fc.interval(1.5)
    with pytest.raises(ValueError, match="method"):
        forecast(build("dkf", 1, "gaussian", z_dim=2), b.to(torch.float32), 2, method="exact")


def test_backtest_scores_model_and_baselines_on_the_same_origins():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    y = pd.Series(np.cumsum(rng.normal(size=120)) + 0.5 * np.sin(np.arange(120) * 2 * np.pi / 12), name="y")
    y.iloc[30] = np.nan  # a missing value in the histories
    est = Estimator("lgssm", objective="exact", z_dim=1, dtype=torch.float64).fit(y.iloc[:80], epochs=20,
                                                                                    progress=False)
    res = backtest(est, y, horizon=5, test_size=40, season=12, num_samples=200, levels=(0.8,),
                   baselines=("persistence", "seasonal_naive", "local_level"))
    assert len(res.origins) == 36 and res.origins[0] == 80
    counts = res.per_origin.groupby("model")["origin"].apply(list)
    assert all(c == res.origins for c in counts)  # every forecaster on exactly the same origins
    assert set(res.summary.index) == {"lgssm", "persistence", "seasonal_naive", "local_level"}
    assert {"crps", "coverage80", "width80", "pinball80", "mae", "rmse", "mase"} <= set(res.summary.columns)
    # a random walk: the LGSSM (a local level when fitted) and persistence are close, and both cover ~80%
    for m in ("lgssm", "persistence"):
        assert 0.6 < res.summary.loc[m, "coverage80"] <= 1.0
    # an ensemble: the members' paths pooled (two copies of one model score like the model)
    ens = backtest([est, est], y, horizon=5, test_size=40, num_samples=200, levels=(0.8,), baselines=())
    assert list(ens.summary.index) == ["lgssm x2"]
    assert ens.summary.loc["lgssm x2", "crps"] == pytest.approx(res.summary.loc["lgssm", "crps"], rel=0.05)
    with pytest.raises(ValueError, match="estimator"):
        backtest([], y, horizon=5, test_size=40)
    with pytest.raises(ValueError, match="test_size"):
        backtest(est, y, horizon=5, test_size=200)
    with pytest.raises(ValueError, match="baselines"):
        backtest(None, y, horizon=5, test_size=20, baselines=("prophet",))
    with pytest.raises(ValueError, match="origins"):
        backtest(None, y, horizon=5, origins=[118])


def test_persistence_baseline_crps_equals_closed_form():
    y = np.array([0.0, 1.0, 3.0, 2.0, 4.0, 5.0, 4.0, 6.0])
    res = backtest(None, y, horizon=2, origins=[6], baselines=("persistence",), levels=(0.5,))
    sigma = np.sqrt(np.mean(np.diff(y[:6]) ** 2))
    from deepstate.scores import crps_normal

    expected = np.mean(crps_normal(np.array([5.0, 5.0]), sigma * np.sqrt([1.0, 2.0]), y[6:8]))
    assert res.summary.loc["persistence", "crps"] == pytest.approx(expected, rel=1e-12)


def test_rollout_observations_log_predictive_matches_kalman():
    torch.manual_seed(0)
    batch = _series(T=20)
    lsm = _ar1()
    state = RolloutState.prior(lsm.ssm, 3000, 1)
    res = rollout(lsm.ssm, state, 20, observations=batch.x)
    exact = lsm.ssm.log_likelihood(batch)
    assert abs(float(res.log_predictive.sum() - exact.detach())) < 0.3
    with pytest.raises(ValueError, match="horizon"):
        rollout(lsm.ssm, state, 0)


def test_windows_and_splits_carry_their_absolute_position():
    """Windows and split pieces record where they start, so a seasonal model sees the true phase."""
    from deepstate.data import split_series
    from deepstate.estimator import _windows

    b = from_numpy(np.arange(20.0))
    w = _windows(b, 6, 4)
    assert w.offset.tolist() == [0, 4, 8, 12]
    parts = split_series(b, valid_fraction=0.0, test_fraction=0.25)
    assert parts["test"].offset.tolist() == [15]
    lsm = build("deepstate", 1, "gaussian", season_length=4)
    whole = lsm.ssm.features(b)["a"][0]
    for k, start in enumerate([0, 4, 8, 12]):
        assert torch.equal(lsm.ssm.features(w[k])["a"][0], whole[start:start + 6])
    # a forecast from a split piece continues the phase of the whole series
    test = parts["test"]
    fc_piece = forecast(lsm, test.to(torch.float32), 3, method="exact")
    from deepstate.forecasting.forecast import _extend

    e = _extend(test, 3, None)
    assert torch.equal(lsm.ssm.features(e)["a"][0, 5:8], lsm.ssm.features(from_numpy(np.arange(23.0)))["a"][0, 20:23])
    assert fc_piece.mean.shape == (1, 3, 1)
