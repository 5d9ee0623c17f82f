"""The DeepState-style model: exact likelihood through the protocol, conformance, parameter recovery."""

import pytest
import torch

from deepstate.data import SequenceBatch
from deepstate.data.synthetic import simulate_lgssm
from deepstate.inference.objectives import ParticleELBO
from deepstate.models import build
from deepstate.models.lgssm import LinearGaussianSSM

from conformance import run_conformance


def _series(lengths, seed=0, u_dim=0):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(n, 1, generator=g, dtype=torch.float64).cumsum(0) for n in lengths]
    for x in xs:
        x[2] = float("nan")
    us = [torch.randn(n, u_dim, generator=g, dtype=torch.float64) for n in lengths] if u_dim else None
    return SequenceBatch.from_sequences(xs, covariates=us, dtype=torch.float64)


@pytest.mark.parametrize("hyper", [dict(season_length=4), dict(trend=False), dict(season_length=3, u_dim=2),
                                   dict(season_length=3, cycle_period=7.5)])
def test_exact_guide_elbo_equals_kalman(hyper):
    torch.manual_seed(0)
    lsm = build("deepstate", 1, rnn_dim=5, hidden_dim=5, **hyper).double()
    batch = _series([15, 9], u_dim=hyper.get("u_dim", 0))
    exact = lsm.ssm.log_likelihood(batch).detach()
    w = ParticleELBO(4).bound(lsm, batch).log_weights
    assert torch.allclose(w, exact.expand(4, -1), rtol=1e-6)


def test_no_season_no_trend_equals_local_level_lgssm():
    """With a constant parameter head, the model is a local-level LGSSM: same Kalman likelihood."""
    lsm = build("deepstate", 1, trend=False, rnn_dim=3, hidden_dim=3).double()
    ssm = lsm.ssm
    batch = _series([12, 7])
    # a zero last layer makes the head's output constant whatever the RNN state
    with torch.no_grad():
        for p in ssm.head[-1].parameters():
            p.zero_()
    c = ssm.features(batch)
    q, r = c["q"][0, 0, 0].item(), c["obs_scale"][0, 0, 0].item() ** 2
    ref = LinearGaussianSSM(1, 1, A=[[1.0]], Q=[[q]], C=[[1.0]], R=[r], m0=[0.0], P0=[[1.0]], dtype=torch.float64)
    assert torch.allclose(ssm.log_likelihood(batch), ref.log_likelihood(batch), rtol=1e-8)


@pytest.mark.parametrize("guide", ["exact", "prior"])
def test_deepstate_conformance(guide):
    torch.manual_seed(0)
    lsm = build("deepstate", 1, guide=guide, season_length=3, u_dim=1, rnn_dim=4, hidden_dim=4, rnn="gru").double()
    run_conformance(lsm, _series([8, 5], seed=1, u_dim=1), _series([10], seed=2, u_dim=1))


def test_recovers_local_level_noise_variances():
    q, r = 0.1, 0.5
    batch, _ = simulate_lgssm(A=[[1.0]], Q=[[q]], C=[[1.0]], R=[[r]], m0=[0.0], P0=[[1.0]], T=80,
                              num_sequences=12, seed=1)
    torch.manual_seed(0)
    lsm = build("deepstate", 1, trend=False, rnn_dim=6, hidden_dim=6).double()
    history = lsm.ssm.fit(batch, num_steps=20)
    assert history[-1] > history[0] + 0.02
    c = lsm.ssm.features(batch)
    q_hat = c["q"][batch.valid].mean().item()
    r_hat = (c["obs_scale"] ** 2)[batch.valid].mean().item()
    print(f"state noise {q_hat:.4f} (true {q}), observation noise {r_hat:.4f} (true {r})")
    assert q_hat == pytest.approx(q, rel=0.4) and r_hat == pytest.approx(r, rel=0.3), (q_hat, r_hat)


def test_bad_arguments():
    with pytest.raises(ValueError, match="x_dim"):
        build("deepstate", 2)
    with pytest.raises(ValueError, match="season_length"):
        build("deepstate", 1, season_length=1)
    with pytest.raises(ValueError, match="likelihood"):
        build("deepstate", 1, "bernoulli")
    for bad in (2, -1.0, True, "11"):
        with pytest.raises(ValueError, match="cycle_period"):
            build("deepstate", 1, cycle_period=bad)


def test_cycle_equals_statsmodels_damped_cycle():
    """Level + damped stochastic cycle with a constant head: the exact log-likelihood equals that of
    statsmodels' UnobservedComponents(level, stochastic damped cycle) at the same parameters, and the
    likelihood's gradient reaches the cycle's period and damping."""
    sm = pytest.importorskip("statsmodels.api")
    import numpy as np

    lsm = build("deepstate", 1, trend=False, cycle_period=9.0, rnn_dim=3, hidden_dim=3).double()
    ssm = lsm.ssm
    with torch.no_grad():
        for p in ssm.head[-1].parameters():
            p.zero_()
        ssm.head[-1].bias.copy_(torch.tensor([-1.0, 0.5, 0.3, 0.0], dtype=torch.float64))
        ssm.cycle_period_raw.fill_(1.7)
        ssm.cycle_damping_raw.fill_(1.2)
        ssm.m0.copy_(torch.tensor([0.4, -0.2, 0.1], dtype=torch.float64))
        ssm.log_p0.copy_(torch.tensor([0.5, 0.0, -0.3], dtype=torch.float64))
    rng = np.random.default_rng(0)
    y = np.sin(np.arange(60) * 2 * np.pi / 10) * 3 + rng.standard_normal(60).cumsum() * 0.2
    batch = SequenceBatch.from_sequences([torch.tensor(y[:, None])], dtype=torch.float64)
    c = ssm.features(batch)
    q = c["q"][0, 0].detach().numpy()
    r = c["obs_scale"][0, 0, 0].item() ** 2
    period, rho = ssm.cycle_period.item(), ssm.cycle_damping.item()
    assert q[1] == pytest.approx(q[2])  # one noise variance for both cycle states
    mod = sm.tsa.UnobservedComponents(y, level="llevel", cycle=True, stochastic_cycle=True, damped_cycle=True)
    # statsmodels' order: irregular, level, cycle variances, cycle frequency, damping
    mod.update(np.array([r, q[0], q[1], 2 * np.pi / period, rho]))
    mod.ssm.initialize_known(ssm.m0.detach().numpy(), np.diag(ssm.log_p0.exp().detach().numpy()))
    mod.ssm.loglikelihood_burn = 0  # a known initial state: every step counts (statsmodels burns k_states)
    ref = mod.ssm.loglike()
    ll = ssm.log_likelihood(batch)
    assert ll.item() == pytest.approx(ref, rel=1e-9)
    ll.sum().backward()
    assert ssm.cycle_period_raw.grad.abs() > 0 and ssm.cycle_damping_raw.grad.abs() > 0


def test_lbfgs_fit_does_not_stall_on_a_rejected_unit_step():
    """Regression: torch's LBFGS(max_iter=1) defaults to max_eval=1, which leaves the strong-Wolfe line
    search no evaluation after the unit step: one rejected unit step returned t = 0 and every later
    iteration repeated it, so the fit stopped at a point with a large gradient. Fitted here, the
    likelihood keeps improving."""
    import numpy as np

    rng = np.random.default_rng(0)
    t = np.arange(150)
    y = 2.0 * np.sin(2 * np.pi * t / 10.5) + 0.3 * rng.standard_normal(150).cumsum() + 0.3 * rng.standard_normal(150)
    batch = SequenceBatch.from_sequences([torch.tensor((y - y.mean()) / y.std())[:, None]], dtype=torch.float64)
    torch.manual_seed(0)
    ssm = build("deepstate", 1, trend=False, cycle_period=11.0, rnn_dim=8, hidden_dim=8).double().ssm
    history = ssm.fit(batch, num_steps=60)
    # before the fix: 6 entries (it stopped after the stall's two unchanged iterations)
    assert len(history) > 10 and history[-1] > history[1] + 0.1, history[:8]
