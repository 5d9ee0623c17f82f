"""Training recipes of the papers (issue 13): KL annealing on the particle ELBO, Pyro's ClippedAdam
semantics, the summed-loss scale, a wall-time budget that survives resumes, sparse validation."""

import math

import pyro
import pytest
import torch
from pyro import poutine
from pyro.optim.clipped_adam import ClippedAdam

from deepstate.data import SequenceBatch
from deepstate.inference.objectives import get_objective
from deepstate.inference.particle import particle_filter, reparameterized_sample
from deepstate.inference.trainer import Trainer
from deepstate.models import build

SMALL = dict(z_dim=2, rnn_dim=4, transition_dim=4, emission_dim=4)


def tiny_model(seed=1, **hyper):
    torch.manual_seed(seed)
    return build("dkf", 4, "gaussian", **{**SMALL, **hyper}).double()


def make_data(lengths=(8, 7, 6, 5, 4, 3, 2), seed=0, D=4):
    """Lengths in decreasing order, so the fused path keeps the batch order (no permutation)."""
    g = torch.Generator().manual_seed(seed)
    return SequenceBatch.from_sequences([torch.randn(n, D, generator=g, dtype=torch.float64) for n in lengths],
                                        dtype=torch.float64)


def _pyro_terms(lsm, batch):
    """The guide's draws ``Z [T, 1, B, Z]`` and, from Pyro's own traces of the model and guide, the
    likelihood and latent parts of the single-sample ELBO per sequence (``[B]`` each)."""
    guide_tr = poutine.trace(lsm.guide).get_trace(batch)
    model_tr = poutine.trace(poutine.replay(lsm.model, trace=guide_tr)).get_trace(batch)
    T = batch.max_length
    guide_tr.compute_log_prob()  # per-sequence log-densities with the sites' masks applied
    model_tr.compute_log_prob()
    lik = sum(model_tr.nodes[f"x_{t}"]["log_prob"] for t in range(T))
    latent = sum(model_tr.nodes[f"z_{t}"]["log_prob"] - guide_tr.nodes[f"z_{t}"]["log_prob"] for t in range(T))
    Z = torch.stack([guide_tr.nodes[f"z_{t}"]["value"] for t in range(T)]).unsqueeze(1)
    return Z, lik, latent


def test_latent_split_matches_pyro_traces():
    """The particle path's latent part ``log p(z) - log q(z)`` and likelihood part, on the guide's own
    draws, equal the site-wise log-densities of Pyro's traces of the same model and guide."""
    lsm, batch = tiny_model(), make_data()
    pyro.set_rng_seed(3)
    Z, lik, latent = _pyro_terms(lsm, batch)
    res = particle_filter(lsm, batch, 1, resample="never", sampler=lambda t, q, shape: Z[t], split_latent=True)
    torch.testing.assert_close(res.latent_log_weights[0], latent, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(res.log_weights[0] - res.latent_log_weights[0], lik, rtol=1e-10, atol=1e-10)
    assert float(latent.detach().abs().min()) > 1e-3  # both parts are non-trivial

    beta = 0.3
    loss, out = get_objective("elbo", 1).loss(lsm, batch, kl_scale=beta, sampler=lambda t, q, shape: Z[t])
    expected = -(lik + beta * latent).sum() / batch.num_frames
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out.log_z, lik + latent, rtol=1e-10, atol=1e-10)  # the bound stays unannealed


def test_fused_path_splits_like_the_step_loop():
    """The DMM guide's fused rollout and the step-by-step loop give the same latent part on the same noise."""
    lsm, batch = tiny_model(), make_data()
    N = 3
    torch.manual_seed(11)
    fused = particle_filter(lsm, batch, N, resample="never", split_latent=True)
    torch.manual_seed(11)
    eps = torch.randn(batch.max_length, N, batch.batch_size, SMALL["z_dim"], dtype=torch.float64)
    step = particle_filter(lsm, batch, N, resample="never", split_latent=True,
                           sampler=lambda t, q, shape: reparameterized_sample(q, eps[t]))
    torch.testing.assert_close(fused.latent_log_weights, step.latent_log_weights, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(fused.log_weights, step.log_weights, rtol=1e-9, atol=1e-9)


def test_split_latent_refused_with_resampling():
    with pytest.raises(ValueError, match="split_latent"):
        particle_filter(tiny_model(), make_data(), 2, resample="ess", split_latent=True)


def test_annealed_particle_elbo_trains_and_logs_the_unannealed_bound():
    train = make_data()
    tr = Trainer(tiny_model(), objective="particle_elbo", num_particles=1, batch_size=7, progress=False, seed=2,
                 annealing={"start": 0.2, "warmup_steps": 10})
    records = []
    tr.fit(train, epochs=1, callback=lambda t, r: records.append(r))
    # the loss is annealed (latent terms scaled by 0.2), the logged bound is not: they must differ
    assert records[0]["annealing"] == pytest.approx(0.2)
    assert abs(records[0]["loss"] * tr.normalizer / train.num_frames + records[0]["bound_per_frame"]) > 1e-3
    assert tr.annealing.num_steps == 1
    for obj in ("iwae", "fivo"):
        with pytest.raises(ValueError, match="annealing"):
            Trainer(tiny_model(), objective=obj, annealing=10)


def test_clipped_adam_is_pyros_and_decays_per_step():
    tr = Trainer(tiny_model(), objective="particle_elbo", num_particles=1, lr=1e-2, batch_size=3, progress=False,
                 optimizer="clipped_adam", optimizer_args={"betas": (0.96, 0.999), "clip_norm": 10.0, "lrd": 0.9,
                                                           "weight_decay": 2.0}, loss_scale="sum", clip_norm=None)
    assert isinstance(tr.optimizer, ClippedAdam)
    tr.fit(make_data(), epochs=1)  # 3 minibatches
    assert tr.global_step == 3
    assert tr.optimizer.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.9 ** 3)


def test_clipped_adam_clamps_each_gradient_element():
    """One step of Pyro's ClippedAdam from Adam's zero moments moves every parameter by lr * g / (|g| + eps')
    with g clamped; weight decay added after the clamp. Checked on a clamp far below the gradients."""
    lsm = tiny_model()
    before = {k: v.detach().clone() for k, v in lsm.named_parameters()}
    grads = {}
    tr = Trainer(lsm, objective="particle_elbo", num_particles=1, lr=1e-3, batch_size=7, progress=False,
                 optimizer="clipped_adam", optimizer_args={"clip_norm": 1e-12}, clip_norm=None)
    for name, p in lsm.named_parameters():
        p.register_hook(lambda g, name=name: grads.__setitem__(name, g.detach().clone()))
    tr.fit(make_data(), epochs=1)
    moved = 0
    for name, p in lsm.named_parameters():
        g = grads[name].clamp(-1e-12, 1e-12)
        # Adam step 1: m = (1-b1) g, v = (1-b2) g^2, update = lr * (m / (1-b1)) / (sqrt(v / (1-b2)) + eps)
        # (ClippedAdam's eps sits outside the bias correction: lr * m_hat / (sqrt(v) + eps) * sqrt(1-b2))
        b1, b2, eps = 0.9, 0.999, 1e-8
        m, v = (1 - b1) * g, (1 - b2) * g * g
        step = 1e-3 * math.sqrt(1 - b2) / (1 - b1) * m / (v.sqrt() + eps)
        torch.testing.assert_close(before[name] - p.detach(), step, rtol=1e-6, atol=1e-15)
        moved += int((step.abs() > 0).sum())
    assert moved > 0


def test_summed_loss_scale_multiplies_the_gradient_by_the_normalizer():
    grads = {}
    for scale in ("frames", "sum"):
        lsm = tiny_model()
        tr = Trainer(lsm, objective="particle_elbo", num_particles=1, batch_size=7, progress=False, seed=4,
                     loss_scale=scale, clip_norm=None)
        p = next(lsm.parameters())
        p.register_hook(lambda g, scale=scale: grads.__setitem__(scale, g.detach().clone()))
        tr.fit(make_data(), epochs=1)
        norm = tr.normalizer
    torch.testing.assert_close(grads["sum"], grads["frames"] * norm, rtol=1e-10, atol=1e-12)
    assert norm > 1


def _first_step_grads(objective, loss_scale, data, **kw):
    """Every parameter's gradient at the trainer's first step (one minibatch of all sequences)."""
    lsm = tiny_model()
    tr = Trainer(lsm, objective=objective, num_particles=3, batch_size=data.batch_size, progress=False, seed=5,
                 loss_scale=loss_scale, clip_norm=None, **kw)
    grads = {}
    for name, p in lsm.named_parameters():
        p.register_hook(lambda g, name=name: grads.setdefault(name, g.detach().clone()))
    tr.fit(data, epochs=1)
    return grads, tr


@pytest.mark.parametrize("objective", ["particle_elbo", "fivo"])
def test_per_sequence_loss_equals_per_frame_loss_on_equal_lengths(objective):
    """With every sequence of length T, ``mean_b bound_b / T`` (FIVO's weighting) is the per-frame loss."""
    data = make_data(lengths=(6,) * 5)
    g_seq, tr = _first_step_grads(objective, "sequences", data)
    g_frames, _ = _first_step_grads(objective, "frames", data)
    assert tr.normalizer == 5.0  # sequences per minibatch
    for name in g_frames:
        torch.testing.assert_close(g_seq[name], g_frames[name], rtol=1e-10, atol=1e-14)


def test_per_sequence_loss_is_the_mean_of_bounds_per_frame():
    """Unequal lengths: the first step's gradient is that of ``-mean_b log Z_b / T_b``, computed here from
    the IWAE bound on the same draws; the per-frame loss's gradient differs from it."""
    data = make_data()
    g_seq, _ = _first_step_grads("iwae", "sequences", data)
    g_frames, _ = _first_step_grads("iwae", "frames", data)
    lsm = tiny_model()
    pyro.set_rng_seed(5)  # the trainer's first step draws right after seeding with its seed
    log_z = get_objective("iwae", 3).bound(lsm, data).log_z
    loss = -(log_z / data.lengths.to(log_z)).mean()
    names, params = zip(*lsm.named_parameters())
    expected = torch.autograd.grad(loss, params, allow_unused=True)
    differs = 0.0
    for name, e in zip(names, expected):
        if e is None:
            assert name not in g_seq
            continue
        torch.testing.assert_close(g_seq[name], e, rtol=1e-9, atol=1e-13)
        differs = max(differs, float((g_frames[name] - e).abs().max()))
    assert differs > 1e-4


def test_per_sequence_weights_use_whole_lengths_under_tbptt():
    """A TBPTT chunk is weighed by 1 / its sequence's whole length, not the chunk's."""
    data = make_data()
    tr = Trainer(tiny_model(), objective="fivo", num_particles=2, batch_size=7, progress=False, tbptt=3,
                 loss_scale="sequences")
    seen, loss = [], tr._objective.loss

    def spy(lsm, batch, normalizer, weights=None, **kw):
        seen.append((batch.lengths.clone(), weights.clone()))
        return loss(lsm, batch, normalizer, weights, **kw)

    tr._objective.loss = spy
    tr.fit(data, epochs=1)
    assert len(seen) == 3  # chunks 0:3, 3:6, 6:8
    for t0, (chunk_lengths, weights) in zip((0, 3, 6), seen):
        whole = (1.0 / weights).round().long()
        # the sequences still running at t0, in the minibatch's (shuffled) order, each paired with its chunk
        assert sorted(whole.tolist()) == sorted(n for n in data.lengths.tolist() if n > t0)
        assert torch.equal((whole - t0).clamp(max=3), chunk_lengths.long())


def test_per_sequence_loss_needs_a_particle_objective():
    with pytest.raises(ValueError, match="loss_scale.*particle"):
        Trainer(tiny_model(), objective="elbo", loss_scale="sequences")


def test_objective_weights_must_have_one_entry_per_sequence():
    with pytest.raises(ValueError, match="weights"):
        get_objective("iwae", 2).loss(tiny_model(), make_data(), weights=torch.ones(3, dtype=torch.float64))


@pytest.mark.parametrize("kwargs,name", [
    (dict(optimizer="sgd"), "optimizer"), (dict(optimizer_args=[1]), "optimizer_args"),
    (dict(optimizer_args={"lr": 1.0}), "optimizer_args"), (dict(optimizer_args={"bogus": 1}), "optimizer_args"),
    (dict(loss_scale="mean"), "loss_scale"), (dict(valid_every=0), "valid_every"),
])
def test_bad_recipe_arguments(kwargs, name):
    with pytest.raises((ValueError, TypeError), match=name):
        Trainer(tiny_model(), **kwargs)


def test_wall_time_budget_survives_a_resume(tmp_path):
    train = make_data()
    kw = dict(objective="particle_elbo", num_particles=1, batch_size=2, progress=False, checkpoint_dir=tmp_path)
    tr = Trainer(tiny_model(), **kw)
    tr.fit(train, epochs=50, max_seconds=1e-9)  # the budget is spent after the first step
    assert tr.global_step == 1 and tr.elapsed > 0
    spent = tr.elapsed
    again = Trainer(tiny_model(), **kw)
    again.fit(train, epochs=50, max_seconds=1e-9)  # resumed: already over budget, nothing more is trained
    assert again.global_step == 1 and again.elapsed >= spent
    third = Trainer(tiny_model(), **kw)
    third.fit(train, epochs=2, max_seconds=3600)
    assert third.epoch == 2 and third.history[-1]["elapsed"] > spent
    assert third.history[-1]["elapsed"] >= third.history[0]["elapsed"]
    with pytest.raises(ValueError, match="max_seconds"):
        third.fit(train, epochs=3, max_seconds=0)


def test_validation_every_k_epochs_and_after_the_last():
    train = make_data()
    tr = Trainer(tiny_model(), objective="particle_elbo", num_particles=1, batch_size=7, progress=False,
                 valid_every=3, early_stopping_patience=5)
    hist = tr.fit(train, train, epochs=7)
    validated = [h["epoch"] for h in hist if h["valid_bound"] is not None]
    assert validated == [3, 6, 7]
