"""Tests for deepstate.scores against closed forms, brute force and hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from deepstate import scores
from deepstate.scores import (
    coverage,
    crps_ensemble,
    crps_normal,
    interval_score,
    interval_width,
    mae,
    mase,
    pinball_loss,
    pit_from_samples,
    pit_normal,
    pit_uniformity,
    quantile_loss,
    rmse,
)


def _crps_bruteforce(x: np.ndarray, y: float, fair: bool = False) -> float:
    """O(S^2) definition: mean |x - y| - sum_ij |x_i - x_j| / (2 S^2) (or 2 S (S-1))."""
    S = x.size
    pair = np.abs(x[:, None] - x[None, :]).sum()
    return float(np.mean(np.abs(x - y)) - pair / (2.0 * (S * (S - 1) if fair else S * S)))


# ------------------------------------------------------------------------------------- CRPS
@pytest.mark.parametrize("fair", [False, True])
def test_crps_point_mass_is_absolute_error(fair):
    samples = np.full((7, 3), 2.5)
    obs = np.array([2.5, 4.0, -1.0])
    np.testing.assert_allclose(crps_ensemble(samples, obs, fair=fair), [0.0, 1.5, 3.5])


@pytest.mark.parametrize("fair", [False, True])
def test_crps_ensemble_matches_bruteforce(fair):
    rng = np.random.default_rng(1)
    for S in (2, 3, 10, 57):
        x = rng.standard_t(3, size=S)
        y = rng.normal()
        got = crps_ensemble(x, y, fair=fair)
        assert got.shape == ()
        assert float(got) == pytest.approx(_crps_bruteforce(x, y, fair=fair), rel=1e-12, abs=1e-12)


def test_crps_ensemble_ties_and_unsorted_input():
    x = np.array([3.0, 1.0, 3.0, 2.0, 1.0])
    assert float(crps_ensemble(x, 2.2)) == pytest.approx(_crps_bruteforce(x, 2.2), abs=1e-12)


def test_crps_fair_vs_standard_relation():
    rng = np.random.default_rng(2)
    S = 9
    x = rng.normal(size=(S, 4))
    y = rng.normal(size=4)
    spread = np.abs(x[:, None, :] - x[None, :, :]).sum(axis=(0, 1)) / S**2
    std = crps_ensemble(x, y)
    fair = crps_ensemble(x, y, fair=True)
    np.testing.assert_allclose(fair, std - spread / (2 * (S - 1)), rtol=1e-12)
    assert np.all(fair < std)


def test_crps_fair_is_unbiased_standard_is_not():
    # Many small (S=4) ensembles from N(0, 1): the fair CRPS averages to the true CRPS, the
    # standard one exceeds it by E|X-X'|/(2S) = 1/(sqrt(pi) S) = 0.141.
    rng = np.random.default_rng(3)
    S, R, y = 4, 40000, 0.3
    x = rng.normal(size=(S, R))
    truth = float(crps_normal(0.0, 1.0, y))
    fair = crps_ensemble(x, y, fair=True)
    std = crps_ensemble(x, y)
    se = fair.std() / math.sqrt(R)
    assert abs(fair.mean() - truth) < 4 * se
    bias = 1.0 / (math.sqrt(math.pi) * S)
    assert abs(std.mean() - (truth + bias)) < 4 * se
    assert std.mean() - truth > 10 * se


def test_crps_ensemble_of_many_normal_draws_approaches_crps_normal():
    rng = np.random.default_rng(4)
    mu, sigma, S, R = 1.0, 2.0, 20000, 8
    for y in (0.5, 4.0, -5.0):
        est = crps_ensemble(rng.normal(mu, sigma, size=(S, R)), y)  # R replicate ensembles
        exact = float(crps_normal(mu, sigma, y))
        se = est.std(ddof=1) / math.sqrt(R)
        assert se < 0.01  # the check below is tight enough to fail
        assert abs(est.mean() - exact) < 4 * se + 1e-3, (y, est.mean(), exact, se)


@pytest.mark.parametrize("mu,sigma,y", [(0.0, 1.0, 0.0), (1.0, 2.0, 3.5), (-2.0, 0.3, -1.0), (5.0, 1.5, -2.0)])
def test_crps_normal_matches_numerical_integration(mu, sigma, y):
    def integrand(x):
        return (stats.norm.cdf(x, mu, sigma) - (x >= y)) ** 2

    lo, hi = mu - 40 * sigma, mu + 40 * sigma
    val = integrate.quad(integrand, min(lo, y - 1), y, limit=200)[0]
    val += integrate.quad(integrand, y, max(hi, y + 1), limit=200)[0]
    assert float(crps_normal(mu, sigma, y)) == pytest.approx(val, rel=1e-7, abs=1e-9)


def test_crps_normal_zero_std_is_absolute_error_and_broadcasts():
    out = crps_normal(np.array([0.0, 1.0]), np.array([[0.0], [1.0]]), 3.0)
    assert out.shape == (2, 2)
    np.testing.assert_allclose(out[0], [3.0, 2.0])
    assert out[1, 0] == pytest.approx(float(crps_normal(0.0, 1.0, 3.0)))


def test_crps_normal_far_tail_is_finite_and_close_to_abs_error():
    # Far in the tail CRPS -> |y - mu| - sigma/sqrt(pi); erf-based cdfs lose this to cancellation.
    val = float(crps_normal(0.0, 1.0, 40.0))
    assert val == pytest.approx(40.0 - 1 / math.sqrt(math.pi), rel=1e-12)


# ------------------------------------------------------------------------ intervals / quantiles
def test_coverage_hand_case_ignores_nan():
    lower = np.zeros(5)
    upper = np.ones(5)
    obs = np.array([0.5, 1.0, 1.5, np.nan, -0.1])
    assert coverage(lower, upper, obs) == pytest.approx(2 / 4)  # 0.5 and 1.0 (closed) inside
    per_col = coverage(np.zeros((2, 2)), np.ones((2, 2)), np.array([[0.5, np.nan], [2.0, np.nan]]), axis=0)
    np.testing.assert_array_equal(per_col, [0.5, np.nan])
    assert math.isnan(coverage(0.0, 1.0, np.nan))


def test_interval_width():
    np.testing.assert_allclose(interval_width([0.0, 1.0], [2.0, 1.5]), [2.0, 0.5])


def test_interval_score_hand_case():
    # alpha = 0.2, so the penalty factor is 2 / alpha = 10.
    out = interval_score(1.0, 3.0, np.array([2.0, 0.0, 4.5, 3.0, np.nan]), level=0.8)
    np.testing.assert_allclose(out, [2.0, 12.0, 17.0, 2.0, np.nan])


def test_pinball_hand_case():
    out = pinball_loss(2.0, np.array([5.0, 1.0, 2.0, np.nan]), level=0.9)
    np.testing.assert_allclose(out, [2.7, 0.1, 0.0, np.nan])
    # Median pinball is half the absolute error.
    np.testing.assert_allclose(pinball_loss([1.0, 4.0], [3.0, 1.0], 0.5), [1.0, 1.5])


def test_quantile_loss_is_mean_pinball_and_half_crps_limit():
    q = np.array([[1.0, 2.0], [3.0, 4.0]])  # [Q=2, 2]
    y = np.array([2.0, 2.0])
    expected = (pinball_loss(q[0], y, 0.1) + pinball_loss(q[1], y, 0.9)) / 2
    np.testing.assert_allclose(quantile_loss(q, y, [0.1, 0.9]), expected)
    # Dense levels: 2 * mean pinball of the exact Normal quantiles -> CRPS.
    taus = (np.arange(1, 2000) - 0.5) / 1999
    qs = stats.norm.ppf(taus, loc=0.5, scale=1.3)
    assert 2 * float(quantile_loss(qs, 1.7, taus)) == pytest.approx(float(crps_normal(0.5, 1.3, 1.7)), rel=2e-3)


# ------------------------------------------------------------------------------ point errors
def test_mae_rmse_ignore_nan():
    f = np.array([1.0, 2.0, 3.0, 4.0])
    y = np.array([2.0, 2.0, np.nan, 1.0])
    assert mae(f, y) == pytest.approx(4 / 3)
    assert rmse(f, y) == pytest.approx(math.sqrt(10 / 3))
    np.testing.assert_allclose(mae(f.reshape(2, 2), y.reshape(2, 2), axis=1), [0.5, 3.0])


def test_mase_hand_cases():
    # Naive diffs 1, 2, 3 -> scale 2; forecast errors 2, 0 -> MAE 1 -> MASE 0.5.
    assert mase([8.0, 9.0], [10.0, 9.0], [1.0, 2.0, 4.0, 7.0]) == pytest.approx(0.5)
    # Seasonal m=2: |2-1|, |6-5|, |3-2|, |7-6| -> scale 1; errors 0.5, 1 -> 0.75.
    assert mase([4.0, 8.0], [4.5, 7.0], [1.0, 5.0, 2.0, 6.0, 3.0, 7.0], season=2) == pytest.approx(0.75)
    # Same data with m=1: diffs 4,3,4,3,4 -> scale 3.6.
    assert mase([4.0, 8.0], [4.5, 7.0], [1.0, 5.0, 2.0, 6.0, 3.0, 7.0]) == pytest.approx(0.75 / 3.6)


def test_mase_per_dimension_scale_with_missing_insample():
    insample = np.array([[1.0, 10.0], [2.0, np.nan], [4.0, 30.0], [7.0, 40.0]])
    # dim 0: diffs 1, 2, 3 -> 2. dim 1: only the pair (30, 40) is observed -> 10.
    f = np.array([[8.0, 50.0], [0.0, 0.0]])
    y = np.array([[10.0, 45.0], [np.nan, np.nan]])
    np.testing.assert_allclose(mase(f, y, insample, axis=0), [1.0, 0.5])
    assert mase(f, y, insample) == pytest.approx(0.75)


def test_mase_constant_insample_warns_and_gives_nan():
    with pytest.warns(RuntimeWarning, match="naive error is 0"):
        out = mase([[1.0, 1.0]], [[2.0, 2.0]], np.array([[1.0, 1.0], [1.0, 2.0]]), axis=0)
    assert math.isnan(out[0]) and out[1] == pytest.approx(1.0)


# ------------------------------------------------------------------------------------- PIT
def test_pit_from_samples_hand_case():
    samples = np.array([1.0, 2.0, 2.0, 3.0])
    assert float(pit_from_samples(samples, 2.5)) == pytest.approx(0.75)
    assert float(pit_from_samples(samples, 2.0)) == pytest.approx(0.25 + 0.5 * 0.5)  # mid-PIT
    u = pit_from_samples(np.broadcast_to(samples[:, None], (4, 1000)), np.full(1000, 2.0), randomize=True, rng=0)
    assert u.min() >= 0.25 and u.max() <= 0.75 and abs(u.mean() - 0.5) < 0.03


def test_pit_of_true_distribution_is_uniform_and_of_wrong_one_is_not():
    rng = np.random.default_rng(5)
    n, S = 1000, 1000
    y = rng.normal(size=n)
    good = pit_from_samples(rng.normal(size=(S, n)), y)
    narrow = pit_from_samples(rng.normal(scale=0.5, size=(S, n)), y)
    biased = pit_from_samples(rng.normal(loc=0.5, size=(S, n)), y)
    assert pit_uniformity(good) > 0.01
    assert pit_uniformity(narrow) < 1e-6
    assert pit_uniformity(biased) < 1e-6
    assert pit_uniformity(pit_normal(0.0, 1.0, y)) > 0.01
    assert pit_uniformity(pit_normal(0.0, 2.0, y)) < 1e-6


def test_randomised_pit_for_poisson_counts_is_uniform():
    rng = np.random.default_rng(6)
    n, S, rate = 2000, 4000, 3.0
    y = rng.poisson(rate, size=n).astype(float)
    samples = rng.poisson(rate, size=(S, n)).astype(float)
    u = pit_from_samples(samples, y, randomize=True, rng=7)
    assert pit_uniformity(u) > 0.01
    # Without randomisation the PIT of counts sits on few values: KS rejects it.
    assert pit_uniformity(pit_from_samples(samples, y)) < 1e-6
    # Wrong rate is detected also after randomisation.
    wrong = pit_from_samples(rng.poisson(4.0, size=(S, n)).astype(float), y, randomize=True, rng=7)
    assert pit_uniformity(wrong) < 1e-6


def test_pit_randomize_is_reproducible_with_seed():
    s = np.random.default_rng(0).poisson(2.0, size=(50, 20)).astype(float)
    y = np.arange(20) % 4
    np.testing.assert_array_equal(
        pit_from_samples(s, y, randomize=True, rng=3), pit_from_samples(s, y, randomize=True, rng=3)
    )


def test_ks_fallback_matches_scipy():
    rng = np.random.default_rng(8)
    for n, a in [(50, 1.0), (200, 1.0), (500, 1.3), (1000, 0.8), (300, 1.1)]:
        u = rng.uniform(size=n) ** a
        ours = scores._ks_uniform_pvalue(u)
        ref = stats.kstest(u, "uniform").pvalue
        assert ours == pytest.approx(ref, abs=0.01), (n, a, ours, ref)


def test_pit_uniformity_without_scipy(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_scipy(name, *args, **kwargs):
        if name == "scipy" or name.startswith("scipy."):
            raise ImportError("no scipy")
        return real_import(name, *args, **kwargs)

    u = np.random.default_rng(9).uniform(size=400)
    ref = pit_uniformity(u)
    monkeypatch.setattr(builtins, "__import__", no_scipy)
    assert pit_uniformity(u) == pytest.approx(ref, abs=0.01)


# ---------------------------------------------------------------------- NaN, shapes, inputs
def test_nan_observations_are_nan_elementwise_and_ignored_in_aggregates():
    rng = np.random.default_rng(10)
    samples = rng.normal(size=(100, 5))
    obs = np.array([0.1, np.nan, -0.3, np.nan, 1.0])
    for out in (
        crps_ensemble(samples, obs),
        crps_ensemble(samples, obs, fair=True),
        crps_normal(0.0, 1.0, obs),
        interval_score(-1.0, 1.0, obs, 0.9),
        pinball_loss(0.0, obs, 0.3),
        pit_from_samples(samples, obs),
        pit_from_samples(samples, obs, randomize=True, rng=0),
        pit_normal(0.0, 1.0, obs),
    ):
        assert out.shape == (5,)
        np.testing.assert_array_equal(np.isnan(out), np.isnan(obs))
    u = pit_from_samples(samples, obs)
    assert pit_uniformity(u) == pytest.approx(pit_uniformity(u[~np.isnan(obs)]))
    assert coverage(-1.0, 1.0, obs) == pytest.approx(1.0)


def test_shapes_broadcast_over_batch_horizon_dim():
    rng = np.random.default_rng(11)
    S, B, H, D = 64, 3, 4, 2
    samples = rng.normal(size=(S, B, H, D))
    obs = rng.normal(size=(B, H, D))
    out = crps_ensemble(samples, obs)
    assert out.shape == (B, H, D)
    assert out[2, 1, 0] == pytest.approx(_crps_bruteforce(samples[:, 2, 1, 0], obs[2, 1, 0]))
    # Sample axis last gives the same numbers.
    np.testing.assert_allclose(crps_ensemble(np.moveaxis(samples, 0, -1), obs, axis=-1), out)
    # obs broadcast: one observation per dimension.
    assert crps_ensemble(samples, obs[0, 0]).shape == (B, H, D)
    assert pit_from_samples(samples, obs).shape == (B, H, D)
    assert crps_normal(np.zeros((B, H, D)), 1.0, obs).shape == (B, H, D)
    assert interval_score(-np.ones(D), np.ones(D), obs, 0.8).shape == (B, H, D)
    assert coverage(-np.ones(D), np.ones(D), obs, axis=(0, 1)).shape == (D,)
    q = np.quantile(samples, [0.1, 0.5, 0.9], axis=0)
    assert quantile_loss(q, obs, [0.1, 0.5, 0.9]).shape == (B, H, D)


def test_torch_tensors_accepted():
    x = torch.randn(200, 3, dtype=torch.float32, requires_grad=True)
    y = torch.zeros(3)
    out = crps_ensemble(x, y)
    assert isinstance(out, np.ndarray) and out.dtype == np.float64 and out.shape == (3,)
    np.testing.assert_allclose(out, crps_ensemble(x.detach().double().numpy(), np.zeros(3)), rtol=1e-6)
    assert isinstance(mae(torch.ones(3), torch.zeros(3)), float)


@pytest.mark.parametrize(
    "call,name",
    [
        (lambda: crps_ensemble(np.zeros((10, 3)), np.zeros(4)), "obs"),
        (lambda: crps_ensemble(np.zeros((1, 3)), np.zeros(3), fair=True), "samples"),
        (lambda: crps_ensemble(np.zeros((10, 3)), np.zeros(3), axis=2), "axis"),
        (lambda: crps_normal(np.zeros(3), np.ones(2), np.zeros(3)), "std"),
        (lambda: crps_normal(0.0, -1.0, 0.0), "std"),
        (lambda: pit_normal(0.0, 0.0, 0.0), "std"),
        (lambda: coverage(np.zeros(3), np.ones(3), np.zeros(2)), "obs"),
        (lambda: coverage(np.ones(3), np.zeros(3), np.zeros(3)), "lower"),
        (lambda: interval_width(np.zeros(3), np.ones(4)), "upper"),
        (lambda: interval_score(0.0, 1.0, 0.5, level=1.0), "level"),
        (lambda: interval_score(0.0, 1.0, 0.5, level=0.0), "level"),
        (lambda: pinball_loss(0.0, 1.0, level=1.5), "level"),
        (lambda: pinball_loss(np.zeros(2), np.zeros(3), level=0.5), "obs"),
        (lambda: quantile_loss(np.zeros((3, 2)), np.zeros(2), [0.1, 0.9]), "pred_quantiles"),
        (lambda: quantile_loss(np.zeros((2, 2)), np.zeros(2), [0.1, 1.9]), "levels"),
        (lambda: mae(np.zeros(3), np.zeros(2)), "obs"),
        (lambda: rmse(np.zeros(3), np.zeros(2)), "obs"),
        (lambda: mase(np.zeros(2), np.zeros(2), np.arange(5.0), season=0), "season"),
        (lambda: mase(np.zeros(2), np.zeros(2), np.arange(2.0), season=2), "insample"),
        (lambda: mase(np.zeros((2, 3)), np.zeros((2, 3)), np.ones((5, 2)).cumsum(0)), "insample"),
        (lambda: mase(np.zeros(2), np.zeros(2), np.full(5, np.nan)), "insample"),
        (lambda: pit_from_samples(np.zeros((5, 3)), np.zeros(2)), "obs"),
        (lambda: pit_uniformity([0.2, 1.2]), "pit"),
        (lambda: pit_uniformity([np.nan]), "pit"),
    ],
)
def test_bad_input_raises_value_error_naming_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call()


def test_non_numeric_input_raises_type_error():
    with pytest.raises(TypeError, match="obs"):
        crps_normal(0.0, 1.0, obs={"a": 1})
