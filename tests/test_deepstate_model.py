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


@pytest.mark.parametrize("hyper", [dict(season_length=4), dict(trend=False), dict(season_length=3, u_dim=2)])
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
