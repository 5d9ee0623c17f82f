"""The single-sample ELBO with closed-form KL terms (``analytic_kl``): Krishnan et al.'s estimator on the
particle path, checked against Pyro's own ``TraceMeanField_ELBO`` and against the sampled-KL ELBO."""

import pyro
import pytest
import torch
from pyro.infer import TraceMeanField_ELBO

from deepstate.inference.objectives import get_objective
from deepstate.inference.particle import particle_filter, reparameterized_sample
from deepstate.inference.trainer import Trainer
from deepstate.models import build

from test_training_recipes import SMALL, _pyro_terms, make_data, tiny_model

MODELS = {
    "dkf": dict(SMALL),  # fused rollout of the structured guide
    "vrnn": dict(z_dim=2, rnn_dim=4, feature_dim=4),  # step loop
    "srnn": dict(z_dim=2, rnn_dim=4, hidden_dim=4),  # Resq guide: reads the prior inside the loop
}


def small(kind, seed=1):
    torch.manual_seed(seed)
    return build(kind, 4, "gaussian", **MODELS[kind]).double()


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_analytic_kl_equals_pyro_tracemeanfield(kind):
    """On the guide's own draws, the bound and its gradient equal Pyro's ``TraceMeanField_ELBO`` (which
    takes ``kl_divergence(q, p)`` site by site from its traces) for the same model and guide."""
    lsm, batch = small(kind), make_data()
    pyro.set_rng_seed(3)
    Z, _, _ = _pyro_terms(lsm, batch)
    pyro.set_rng_seed(3)  # the same draws again, inside Pyro's estimator
    pyro_loss = TraceMeanField_ELBO().differentiable_loss(lsm.model, lsm.guide, batch)
    res = particle_filter(lsm, batch, 1, resample="never", sampler=lambda t, q, shape: Z[t], analytic_kl=True)
    ours = -res.log_z.sum()
    torch.testing.assert_close(ours, pyro_loss, rtol=1e-10, atol=1e-10)
    params = [p for p in lsm.parameters() if p.requires_grad]
    g_pyro = torch.autograd.grad(pyro_loss, params, allow_unused=True)
    g_ours = torch.autograd.grad(ours, params, allow_unused=True)
    for a, b in zip(g_ours, g_pyro):
        if b is not None:
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_analytic_kl_differs_from_the_sampled_terms():
    """Not the same numbers as the sampled ELBO on the same draws (else the option would do nothing)."""
    lsm, batch = tiny_model(), make_data()
    pyro.set_rng_seed(3)
    Z, lik, latent = _pyro_terms(lsm, batch)
    res = particle_filter(lsm, batch, 1, resample="never", sampler=lambda t, q, shape: Z[t], split_latent=True,
                          analytic_kl=True)
    torch.testing.assert_close(res.log_z - res.latent_log_weights[0], lik, rtol=1e-10, atol=1e-10)
    assert float((res.latent_log_weights[0] - latent).detach().abs().max()) > 1e-2


def test_fused_rollout_gives_the_step_loops_analytic_kl():
    lsm, batch = tiny_model(), make_data()
    N = 3
    torch.manual_seed(11)
    fused = particle_filter(lsm, batch, N, resample="never", split_latent=True, analytic_kl=True)
    torch.manual_seed(11)
    eps = torch.randn(batch.max_length, N, batch.batch_size, SMALL["z_dim"], dtype=torch.float64)
    step = particle_filter(lsm, batch, N, resample="never", split_latent=True, analytic_kl=True,
                           sampler=lambda t, q, shape: reparameterized_sample(q, eps[t]))
    torch.testing.assert_close(fused.latent_log_weights, step.latent_log_weights, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(fused.log_z, step.log_z, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kind", ["dkf", "srnn"])
def test_analytic_and_sampled_kl_estimate_the_same_elbo(kind):
    """Both are unbiased estimators of one ELBO: over many independent particles their means agree within
    Monte Carlo error, and the closed form has the smaller spread."""
    lsm, batch = small(kind), make_data(lengths=(5, 3))
    N = 4000
    with torch.no_grad():
        torch.manual_seed(0)
        mc = particle_filter(lsm, batch, N, resample="never").log_weights  # [N, B] single-sample ELBOs
        torch.manual_seed(1)
        ak = particle_filter(lsm, batch, N, resample="never", analytic_kl=True).log_weights
    se = (mc.var(0) / N + ak.var(0) / N).sqrt()
    assert bool(((mc.mean(0) - ak.mean(0)).abs() < 4 * se).all()), (mc.mean(0), ak.mean(0), se)
    assert bool((ak.std(0) < mc.std(0)).all())


def test_annealing_scales_the_closed_form_kl():
    """``kl_scale`` multiplies the closed-form latent part: with the draws replayed, the annealed loss is
    ``-(lik - beta KL) / frames``, where ``lik`` comes from the sampled path's split on the same draws."""
    lsm, batch = tiny_model(), make_data()
    pyro.set_rng_seed(5)
    Z, _, _ = _pyro_terms(lsm, batch)
    replay = dict(sampler=lambda t, q, shape: Z[t], split_latent=True)
    sampled = particle_filter(lsm, batch, 1, resample="never", **replay)
    lik = (sampled.log_weights - sampled.latent_log_weights)[0]
    closed = particle_filter(lsm, batch, 1, resample="never", analytic_kl=True, **replay)
    neg_kl = closed.latent_log_weights[0]
    torch.testing.assert_close(closed.log_z - neg_kl, lik, rtol=1e-10, atol=1e-10)
    assert bool((neg_kl < 0).all())  # -KL of distinct Gaussians
    beta = 0.3
    loss, _ = get_objective("elbo", 1, analytic_kl=True).loss(lsm, batch, kl_scale=beta,
                                                              sampler=lambda t, q, shape: Z[t])
    torch.testing.assert_close(loss, -(lik + beta * neg_kl).sum() / batch.num_frames, rtol=1e-10, atol=1e-12)


def test_trainer_with_truncated_bptt_and_analytic_kl():
    tr = Trainer(tiny_model(), objective="particle_elbo", num_particles=2, batch_size=4, progress=False, seed=1,
                 analytic_kl=True, tbptt=3)
    hist = tr.fit(make_data(), epochs=2)
    assert len(hist) == 2 and all(torch.isfinite(torch.tensor(h["train_bound"])) for h in hist)
    assert tr._settings()["analytic_kl"] is True


def test_particle_elbo_objective_and_trainer_take_analytic_kl():
    obj = get_objective("elbo", 2, analytic_kl=True)
    assert "analytic_kl=True" in repr(obj)
    train = make_data()
    tr = Trainer(tiny_model(), objective="particle_elbo", num_particles=1, batch_size=7, progress=False, seed=2,
                 analytic_kl=True, annealing={"start": 0.2, "warmup_steps": 10})
    assert tr._objective.analytic_kl
    records = []
    tr.fit(train, epochs=2, callback=lambda t, r: records.append(r))
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    # annealing scales the closed-form KL: the loss is not the logged (unannealed) bound
    assert abs(records[0]["loss"] * tr.normalizer / train.num_frames + records[0]["bound_per_frame"]) > 1e-3


def test_analytic_kl_refused_where_it_is_not_an_elbo():
    with pytest.raises(ValueError, match="analytic_kl"):
        particle_filter(tiny_model(), make_data(), 2, resample="ess", analytic_kl=True)
    for obj in ("fivo", "iwae", "elbo"):
        with pytest.raises(ValueError, match="analytic_kl"):
            Trainer(tiny_model(), objective=obj, analytic_kl=True)
    with pytest.raises(TypeError, match="analytic_kl"):
        Trainer(tiny_model(), objective="particle_elbo", analytic_kl="yes")
    with pytest.raises(TypeError, match="analytic_kl"):
        get_objective("elbo", 1, analytic_kl=1)
