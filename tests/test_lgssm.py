"""The exact linear-Gaussian oracle: Kalman filter vs statsmodels, exact-posterior guide, MLE, conformance."""

import numpy as np
import pytest
import torch
from pyro.infer import Trace_ELBO

from deepstate.data import SequenceBatch
from deepstate.data.synthetic import random_stable_lgssm, simulate_lgssm
from deepstate.inference.objectives import IWAE, ParticleELBO
from deepstate.models.base import LatentSequenceModel, PriorGuide
from deepstate.models.lgssm import ExactPosteriorGuide, LinearFilteringGuide, LinearGaussianSSM

from conformance import run_conformance
from oracles import statsmodels_ssm


def _ssm_from(params, **kw):
    return LinearGaussianSSM(
        params["A"].shape[0], params["C"].shape[0], A=params["A"], Q=params["Q"], C=params["C"], R=params["R"],
        m0=params["m0"], P0=params["P0"], dtype=torch.float64, **kw,
    )


def _random_batch(params, seed, T=60, B=3, missing_prob=0.1):
    lengths = [T, max(T // 2, 1), max(T - 7, 1)][:B]
    batch, _ = simulate_lgssm(**{k: params[k] for k in ("A", "Q", "C", "R", "m0", "P0")}, T=T, num_sequences=B,
                              seed=seed, lengths=lengths, missing_prob=missing_prob)
    return batch


@pytest.mark.parametrize("seed,Z,D,T", [(0, 1, 1, 200), (1, 2, 1, 50), (2, 3, 2, 120), (3, 4, 3, 200), (4, 2, 3, 17)])
def test_kalman_matches_statsmodels(seed, Z, D, T):
    params = random_stable_lgssm(Z, D, seed=seed)
    batch = _random_batch(params, seed, T=T, missing_prob=0.15)
    # a fully missing step and a partly missing one
    batch.observed[0, 3] = False
    batch.x[0, 3] = 0.0
    ssm = _ssm_from(params)
    ll = ssm.log_likelihood(batch.pad_to(T + 9))  # extra padded steps change nothing
    M = {k: v.detach().numpy() for k, v in ssm.matrices().items()}
    for b, seq in enumerate(batch.sequences()):
        ref = statsmodels_ssm(seq.numpy(), M).ssm.loglike()
        assert ll[b].item() == pytest.approx(ref, rel=1e-6, abs=1e-8)


def test_kalman_matches_statsmodels_univariate_smoothing():
    """Filtered and smoothed means agree with statsmodels too (not just the likelihood)."""
    params = random_stable_lgssm(2, 2, seed=11)
    batch = _random_batch(params, 11, T=40, B=1)
    ssm = _ssm_from(params)
    M = {k: v.detach().numpy() for k, v in ssm.matrices().items()}
    x = batch.sequences()[0].numpy()
    ref = statsmodels_ssm(x, M).ssm.smooth()
    sm_res = ssm.smooth(batch)
    kf = ssm.kalman(batch)
    np.testing.assert_allclose(kf.filtered_mean[0].detach().numpy(), ref.filtered_state.T, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(sm_res.mean[0].detach().numpy(), ref.smoothed_state.T, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(sm_res.cov[0].detach().numpy(), ref.smoothed_state_cov.transpose(2, 0, 1), rtol=1e-6, atol=1e-8)
    # cross-covariance Cov(z_{t+1}, z_t | x): statsmodels' smoothed_state_autocov[:, :, t] (lag-1, t+1 vs t)
    np.testing.assert_allclose(sm_res.cross_cov[0, 1:].detach().numpy(),
                               ref.smoothed_state_autocov.transpose(2, 0, 1)[:-1], rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("seed", [0, 1])
def test_exact_posterior_guide_every_elbo_sample_is_exact(seed):
    params = random_stable_lgssm(3, 2, seed=seed)
    batch = _random_batch(params, seed, T=40)
    ssm = _ssm_from(params)
    lsm = LatentSequenceModel(ssm, ExactPosteriorGuide(ssm))
    exact = ssm.log_likelihood(batch).detach()
    elbo = Trace_ELBO()
    for _ in range(5):
        loss = elbo.loss(lsm.model, lsm.guide, batch)
        assert -loss == pytest.approx(exact.sum().item(), rel=1e-6)
    # through the particle filter: every particle's weight equals log p(x)
    res = ParticleELBO(7).bound(lsm, batch)
    assert torch.allclose(res.log_weights, exact.expand(7, -1), rtol=1e-6)
    assert torch.allclose(IWAE(7).bound(lsm, batch).log_z, exact, rtol=1e-6)


def test_mle_recovers_true_loglikelihood():
    """ML fitting from a default start reaches (at least) the log-likelihood of the true parameters.

    A 1-D state observed in two channels: its likelihood has no spurious local optima (bigger
    state dims do, as for any LGSSM fitted from one start).
    """
    torch.manual_seed(0)
    P = dict(A=torch.tensor([[0.8]]), Q=torch.tensor([[0.3]]), C=torch.tensor([[1.0], [0.5]]),
             R=torch.diag(torch.tensor([0.2, 0.1])), m0=torch.zeros(1), P0=torch.eye(1))
    batch, _ = simulate_lgssm(**P, T=60, num_sequences=8, seed=5)
    true_ll = _ssm_from(P).log_likelihood(batch).sum().item() / batch.num_frames
    model = LinearGaussianSSM(1, 2, dtype=torch.float64)
    history = model.fit(batch, num_steps=15)
    init_ll, fit_ll = history[0], history[-1]
    print(f"nats/frame: start {init_ll:.4f}, true parameters {true_ll:.4f}, fitted {fit_ll:.4f}; A = {model.A.item():.3f}")
    assert init_ll < true_ll - 0.5  # the start is clearly worse
    # the MLE is at least as good as the truth on its own training data, and only a little better
    assert true_ll - 1e-3 < fit_ll < true_ll + 0.03, (init_ll, true_ll, fit_ll)
    assert model.A.item() == pytest.approx(0.8, abs=0.1)


def test_lgssm_sample_moments():
    """Ancestral sampling from the protocol matches the stationary variance of an AR(1)."""
    a, q, r = 0.8, 0.3, 0.1
    ssm = LinearGaussianSSM(1, 1, A=[[a]], Q=[[q]], C=[[1.0]], R=[r], P0=[[q / (1 - a * a)]], dtype=torch.float64)
    lsm = LatentSequenceModel(ssm)
    z, x = lsm.sample(4000, 5, generator=torch.Generator().manual_seed(0))
    var = x[:, -1, 0].var().item()
    assert var == pytest.approx(q / (1 - a * a) + r, rel=0.08)
    cov = torch.cov(torch.stack([x[:, -1, 0], x[:, -2, 0]])).numpy()[0, 1]
    assert cov == pytest.approx(a * q / (1 - a * a), rel=0.12)


def test_bad_input():
    with pytest.raises(ValueError, match="z_dim"):
        LinearGaussianSSM(0, 1)
    with pytest.raises(ValueError, match="A"):
        LinearGaussianSSM(2, 1, A=[[1.0]])
    with pytest.raises(ValueError, match="R"):
        LinearGaussianSSM(1, 2, R=[1.0, -1.0])
    ssm = LinearGaussianSSM(1, 1, u_dim=2)
    with pytest.raises(ValueError, match="batch.u"):
        ssm.log_likelihood(SequenceBatch.from_sequences([np.zeros(3)]))


def test_covariates_enter_kalman_and_steps_consistently():
    """With covariates, the exact-posterior ELBO still equals the Kalman likelihood (u reaches both)."""
    torch.manual_seed(1)
    ssm = LinearGaussianSSM(2, 1, u_dim=2, B=torch.randn(2, 2), D=torch.randn(1, 2), dtype=torch.float64)
    xs = [torch.randn(20, 1, dtype=torch.float64), torch.randn(12, 1, dtype=torch.float64)]
    us = [torch.randn(20, 2, dtype=torch.float64), torch.randn(12, 2, dtype=torch.float64)]
    batch = SequenceBatch.from_sequences(xs, covariates=us, dtype=torch.float64)
    lsm = LatentSequenceModel(ssm, ExactPosteriorGuide(ssm))
    exact = ssm.log_likelihood(batch)
    res = ParticleELBO(3).bound(lsm, batch)
    assert torch.allclose(res.log_weights, exact.detach().expand(3, -1), rtol=1e-6)
    # and differs from the likelihood ignoring covariates
    ssm0 = LinearGaussianSSM(2, 1, A=ssm.A, C=ssm.C, Q=ssm.matrices()["Q"], dtype=torch.float64)
    ssm0.load_state_dict({k: v for k, v in ssm.state_dict().items() if k not in ("B", "D")})
    assert not torch.allclose(ssm0.log_likelihood(batch), exact)


def _conformance_batches():
    params = random_stable_lgssm(2, 2, seed=3)
    batch = _random_batch(params, 3, T=12, B=3, missing_prob=0.2)
    other = _random_batch(params, 4, T=15, B=2, missing_prob=0.2)
    return params, batch, other


@pytest.mark.parametrize("guide", ["prior", "filtering", "exact"])
def test_lgssm_conformance(guide):
    params, batch, other = _conformance_batches()
    ssm = _ssm_from(params)
    g = {"prior": lambda: PriorGuide(), "filtering": lambda: LinearFilteringGuide(2, 2).double(),
         "exact": lambda: ExactPosteriorGuide(ssm)}[guide]()
    run_conformance(LatentSequenceModel(ssm, g), batch, other)


def test_lgssm_conformance_with_covariates():
    torch.manual_seed(0)
    ssm = LinearGaussianSSM(2, 2, u_dim=1, B=torch.randn(2, 1), D=torch.randn(2, 1), dtype=torch.float64)
    mk = lambda lens: SequenceBatch.from_sequences(  # noqa: E731
        [torch.randn(n, 2, dtype=torch.float64) for n in lens],
        covariates=[torch.randn(n, 1, dtype=torch.float64) for n in lens], dtype=torch.float64)
    run_conformance(LatentSequenceModel(ssm, LinearFilteringGuide(2, 2).double()), mk([9, 5]), mk([11]))
