"""The VRNN's options for FIVO's reference code (tensorflow/models research/fivo): data offsets,
residual proposal, Glorot initialisation, linear features, scale bias; all pass the conformance suite."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from deepstate.models import build
from deepstate.models.vrnn import glorot_init_

from conformance import run_conformance
from test_models import make_batch

REFERENCE = dict(z_dim=3, rnn_dim=5, feature_dim=6, rnn="lstm", orthogonal=False, linear_features=True,
                 scale_bias=0.5, observed_channel=False, glorot=True, data_offsets=True, residual=True)


def reference_vrnn(likelihood="bernoulli", seed=0, **over):
    torch.manual_seed(seed)
    return build("vrnn", 4, likelihood, guide="filtering", **dict(REFERENCE, **over)).double()


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_the_reference_configuration_passes_the_conformance_suite(likelihood):
    lsm = reference_vrnn(likelihood)
    lsm.ssm.init_from_data(make_batch(likelihood, [9, 6, 3], seed=5))
    assert lsm.guide_steps.uses_prior and float(lsm.ssm.x_mean.abs().sum()) > 0
    run_conformance(lsm, make_batch(likelihood, [7, 4, 5], seed=1), make_batch(likelihood, [9, 2], seed=2))


def test_init_from_data_uses_observed_values_only_and_sets_the_logit():
    batch = make_batch("bernoulli", [9, 6, 3], seed=5, missing=0.3)
    lsm = reference_vrnn()
    lsm.ssm.init_from_data(batch)
    x = batch.x.numpy()
    keep = batch.observed.numpy() & batch.valid.numpy()[..., None]
    expected = np.array([x[..., d][keep[..., d]].mean() for d in range(4)])
    np.testing.assert_allclose(lsm.ssm.x_mean.numpy(), expected, rtol=1e-12)
    p = np.clip(expected, 1e-4, 1 - 1e-4)
    np.testing.assert_allclose(lsm.ssm.emission_offset.numpy(), np.log(p / (1 - p)), rtol=1e-10)
    # with the decoder's last layer at zero, every key's probability is its training frequency
    nn.init.zeros_(lsm.ssm.decoder[-1].weight)
    s = lsm.ssm.initial((2,))
    z = torch.randn(2, 3, dtype=torch.float64)
    np.testing.assert_allclose(lsm.ssm.likelihood(s, z, {}).probs.detach().numpy(), np.tile(p, (2, 1)), rtol=1e-10)


def test_the_recurrence_reads_centred_notes_and_the_buffers_are_saved():
    lsm = reference_vrnn()
    lsm.ssm.init_from_data(make_batch("bernoulli", [9, 6], seed=5))
    plain = reference_vrnn(data_offsets=False)
    plain.load_state_dict({k: v for k, v in lsm.state_dict().items() if "x_mean" not in k and "offset" not in k})
    s, z = lsm.ssm.initial((3,)), torch.randn(3, 3, dtype=torch.float64)
    x = (torch.rand(3, 4) < 0.5).double()
    a = lsm.ssm.update(s, z, x, {})
    b = plain.ssm.update(s, z, x - lsm.ssm.x_mean, {})
    assert torch.allclose(a["h"], b["h"]) and torch.allclose(a["c"], b["c"])
    assert not torch.allclose(a["h"], plain.ssm.update(s, z, x, {})["h"])
    fresh = reference_vrnn(seed=1)
    fresh.load_state_dict(lsm.state_dict())
    assert torch.equal(fresh.ssm.x_mean, lsm.ssm.x_mean) and torch.equal(fresh.ssm.emission_offset,
                                                                        lsm.ssm.emission_offset)


def test_the_residual_proposal_starts_at_the_prior_mean():
    lsm = reference_vrnn()
    nn.init.zeros_(lsm.guide_steps.encoder[-1].weight)  # delta = 0, raw scale = 0 (Glorot biases are zero)
    batch = make_batch("bernoulli", [5, 3], seed=2, missing=0.0)
    s = lsm.ssm.initial((2,))
    e = {k: v[:, 0] for k, v in lsm.guide_steps.encode(batch, {}).items()}
    p = lsm.ssm.prior(s, {})
    q = lsm.guide_steps.proposal(lsm.guide_steps.initial((2,)), s, e, {}, p)
    assert torch.allclose(q.mean, p.mean)
    assert torch.allclose(q.base_dist.scale, torch.full_like(q.base_dist.scale, math.log1p(math.exp(0.5)) + 1e-3))


def test_glorot_init_matches_tensorflows_bounds():
    torch.manual_seed(0)
    lstm, lin = nn.LSTM(30, 20, batch_first=True), nn.Linear(30, 50)
    glorot_init_(nn.ModuleList([lstm, lin]))
    wi, wh, bi, bh, w, b = (t.detach() for t in (lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0,
                                                   lstm.bias_hh_l0, lin.weight, lin.bias))
    bound = math.sqrt(6 / (30 + 20 + 80))  # TF's one [I + H, 4H] kernel
    for m in (wi, wh):
        assert bound * 0.95 < float(m.abs().max()) <= bound
    assert float(bh.abs().sum()) == 0 and torch.equal(bi[20:40], torch.ones(20))  # forget gate at 1
    assert float(bi[:20].abs().sum()) == 0 and float(b.abs().sum()) == 0
    assert float(w.abs().max()) <= math.sqrt(6 / 80)
    assert w.std().item() == pytest.approx(math.sqrt(6 / 80) / math.sqrt(3), rel=0.1)


def test_linear_features_and_the_observed_channel():
    lsm = reference_vrnn()
    assert isinstance(lsm.ssm.feature_act, nn.Identity) and len(lsm.ssm.phi_z) == 3
    assert lsm.ssm.phi_x[0].in_features == 4  # the notes alone, no observed-mask channel
    default = build("vrnn", 4, "bernoulli", z_dim=3, rnn_dim=5, feature_dim=6)
    assert default.ssm.phi_x[0].in_features == 8 and len(default.ssm.phi_z) == 1
    assert default.ssm.x_mean is None and not default.guide_steps.uses_prior


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="data_offsets"):
        build("vrnn", 4, "poisson", z_dim=3, rnn_dim=5, feature_dim=6, data_offsets=True)
    with pytest.raises(ValueError, match="data_offsets=True"):
        build("vrnn", 4, "bernoulli", z_dim=3, rnn_dim=5, feature_dim=6).ssm.init_from_data(
            make_batch("bernoulli", [3]))


def test_the_estimator_sets_the_offsets_from_its_training_data():
    from deepstate.estimator import Estimator

    g = torch.Generator().manual_seed(0)
    rolls = (torch.rand(3, 12, 4, generator=g) < torch.tensor([0.05, 0.2, 0.5, 0.9])).double().numpy()
    est = Estimator("vrnn", likelihood="bernoulli", objective="particle_elbo", num_particles=1,
                    **dict(REFERENCE, z_dim=2, rnn_dim=4, feature_dim=4)).fit(rolls, epochs=1, batch_size=3, progress=False)
    np.testing.assert_allclose(est.model_.ssm.x_mean.numpy(), rolls.mean((0, 1)), rtol=1e-6)


@pytest.mark.parametrize("option", ["linear_features", "observed_channel", "glorot", "data_offsets", "residual"])
def test_on_off_options_must_be_booleans(option):
    with pytest.raises((TypeError, ValueError), match=option):
        build("vrnn", 4, "bernoulli", z_dim=3, rnn_dim=5, feature_dim=6, **{option: "False"})


def test_glorot_is_refused_with_a_parametrised_orthogonal_rnn():
    with pytest.raises(ValueError, match="glorot"):
        build("vrnn", 4, "bernoulli", z_dim=3, rnn_dim=5, feature_dim=6, glorot=True, orthogonal="parametrize")


@pytest.mark.parametrize("name,guide", [("dkf", "st-r"), ("srnn", "smoothing")])
def test_dkf_and_srnn_start_their_emission_at_the_training_mean(name, guide):
    """The same emission offsets on the other deep models: with the emitter's last layer at zero, an
    untrained model's key probabilities are the training frequencies; conformance holds."""
    from test_models import _model

    lsm = _model(name, guide, "bernoulli", data_offsets=True)
    train = make_batch("bernoulli", [9, 6, 3], seed=5, missing=0.2)
    lsm.ssm.init_from_data(train)
    assert getattr(lsm.ssm, "x_mean", None) is None  # only the VRNN centres a recurrence's inputs
    last = (lsm.ssm.emitter if name == "dkf" else lsm.ssm.decoder)[-1]
    run_conformance(lsm, make_batch("bernoulli", [7, 4, 5], seed=1), make_batch("bernoulli", [9, 2], seed=2))
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    x = train.x.numpy()
    keep = train.observed.numpy() & train.valid.numpy()[..., None]
    p = np.clip([x[..., d][keep[..., d]].mean() for d in range(4)], 1e-4, 1 - 1e-4)
    c = {k: v[:, 0] for k, v in lsm.ssm.features(train).items()}
    probs = lsm.ssm.likelihood(lsm.ssm.initial((3,)), torch.zeros(3, 3, dtype=torch.float64), c).probs
    np.testing.assert_allclose(probs.detach().numpy(), np.tile(p, (3, 1)), rtol=1e-10)
    plain = _model(name, guide, "bernoulli")
    with pytest.raises(ValueError, match="data_offsets=True"):
        plain.ssm.init_from_data(train)
