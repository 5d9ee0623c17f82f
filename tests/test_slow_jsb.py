"""Slow checks on the JSB chorales benchmark (run with ``pytest -m slow``)."""

import pytest
import torch

from deepstate.data import load_polyphonic
from deepstate.inference import Trainer, evaluate
from deepstate.models import build

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", ["dkf", "vrnn", "srnn"])
@pytest.mark.parametrize("objective", ["particle_elbo", "iwae", "fivo"])
def test_short_training_lowers_the_validation_bound(data_dir, name, objective):
    """Two epochs on 60 training chorales raise the validation FIVO bound of every model x objective."""
    jsb = load_polyphonic("jsb_chorales", data_dir=data_dir)
    train, valid = jsb["train"][:60], jsb["valid"][:20]
    torch.manual_seed(0)
    width = {"dkf": dict(transition_dim=64, emission_dim=64), "vrnn": dict(feature_dim=64),
             "srnn": dict(hidden_dim=64)}[name]
    lsm = build(name, 88, "bernoulli", z_dim=16, rnn_dim=64, **width)
    before = evaluate(lsm, valid, objective="fivo", num_particles=4, seed=0)["nats_per_frame"]
    Trainer(lsm, objective=objective, num_particles=1 if objective == "particle_elbo" else 4, lr=3e-3,
            progress=False).fit(train, epochs=2)
    after = evaluate(lsm, valid, objective="fivo", num_particles=4, seed=0)["nats_per_frame"]
    assert after > before + 1.0, (before, after)
