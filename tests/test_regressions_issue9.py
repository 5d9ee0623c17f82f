"""Regressions from issue #9: exact fits at float32, FIVO on sorted padded batches, resume after restore_best."""

import math

import numpy as np
import pytest
import torch

from deepstate.data import SequenceBatch, concat_batches, from_numpy
from deepstate.estimator import _EXACT_MODELS, Estimator
from deepstate.inference.objectives import FIVO
from deepstate.inference.particle import particle_filter
from deepstate.inference.trainer import Trainer
from deepstate.models import MODELS, build

# tiny hyperparameters for every Estimator model (each takes its own subset)
_TINY = {
    "dkf": dict(z_dim=2, rnn_dim=4, transition_dim=4, emission_dim=4),
    "dmm": dict(z_dim=2, rnn_dim=4, transition_dim=4, emission_dim=4),
    "vrnn": dict(z_dim=2, rnn_dim=4, feature_dim=4),
    "srnn": dict(z_dim=2, rnn_dim=4, hidden_dim=4),
    "deepstate": dict(rnn_dim=4),
    "lgssm": dict(z_dim=1),
}


def test_every_estimator_model_has_tiny_hyperparameters():
    assert set(_TINY) == set(MODELS)


# ---------------------------------------------------------------------------- 1. float32 exact fits
@pytest.mark.parametrize("model", sorted(MODELS))
def test_estimator_default_dtype_fits_and_scores(model):
    """Every model at the Estimator's default dtype (float32): fit a couple of epochs, then score (fivo for
    all, exact for the Kalman models). The exact branch used to hand the model float64 batches."""
    series = np.cumsum(np.random.default_rng(0).standard_normal(30))
    objectives = ["fivo"] + (["exact"] if model in _EXACT_MODELS else [])
    for objective in objectives:
        est = Estimator(model, objective=objective, num_particles=2, **_TINY[model])
        assert est.dtype == torch.float32
        est.fit(series, epochs=2, progress=False)
        assert next(est.model_.parameters()).dtype == torch.float32
        scores = ["fivo"] + (["exact"] if model in _EXACT_MODELS else [])
        for score in scores:
            ll = est.log_likelihood(series, objective=score, num_particles=2)
            assert isinstance(ll, float) and math.isfinite(ll), (objective, score, ll)


@pytest.mark.parametrize("model", _EXACT_MODELS)
def test_exact_fit_issue_repro(model):
    hyper = dict(z_dim=1) if model == "lgssm" else dict(rnn_dim=4)
    est = Estimator(model, objective="exact", **hyper).fit(np.cumsum(np.random.randn(60)), epochs=3, progress=False)
    assert all(math.isfinite(h["train_bound"]) for h in est.history_)


# ---------------------------------------------------------------------------- 2. FIVO fused path, padded tails
def _dkf():
    torch.manual_seed(0)
    return build("dkf", 2, "gaussian", z_dim=2, transition_dim=4, emission_dim=4, rnn_dim=5)


def _sorted_padded_batch():
    return from_numpy(np.random.default_rng(1).standard_normal((2, 8, 2)), lengths=[5, 3])


@pytest.mark.parametrize("resample", ["ess", "always"])
def test_fivo_on_sorted_batch_ending_in_padding(resample):
    lsm, batch = _dkf(), _sorted_padded_batch()
    assert batch.valid.shape == (2, 8) and batch.lengths.tolist() == [5, 3]  # sorted, last 3 steps all padding
    res = particle_filter(lsm, batch, 4, resample=resample, record=True)
    assert torch.isfinite(res.log_z).all()
    assert res.increments.shape == (4, 2, 8) and res.ess.shape == (2, 8)
    loss = -res.log_z.sum()
    loss.backward()  # and it trains


def test_fivo_issue_repro_and_padding_invariance():
    """The issue's repro, plus: the padded tail, pad_to and concat_batches change no number (same seed)."""
    lsm, batch = _dkf(), _sorted_padded_batch()
    FIVO(4).bound(lsm, batch)
    trimmed = batch[[0, 1]]  # trims T to the longest sequence
    assert trimmed.max_length == 5
    outs = []
    for b in (trimmed, batch, trimmed.pad_to(11), concat_batches([trimmed[[0]], trimmed[[1]].pad_to(7)])):
        torch.manual_seed(5)
        outs.append(particle_filter(lsm, b, 4, resample="always", record=True))
    for r in outs[1:]:
        assert torch.allclose(r.log_z, outs[0].log_z, atol=1e-5)
        assert torch.equal(r.num_resamples, outs[0].num_resamples)


def test_record_outputs_keep_the_input_length_when_resorted():
    """An unsorted batch is sorted (and trimmed) internally; increments and ess come back at the input's T,
    in the input's order, with increments 0 and ess N on padded steps."""
    lsm = _dkf()
    x = np.random.default_rng(2).standard_normal((3, 9, 2))
    batch = from_numpy(x, lengths=[3, 6, 2])  # unsorted, and T = 9 > the longest length
    N = 4
    torch.manual_seed(3)
    res = particle_filter(lsm, batch, N, resample="always", record=True)
    assert res.increments.shape == (N, 3, 9) and res.ess.shape == (3, 9)
    pad = ~batch.valid
    assert (res.increments[:, pad] == 0).all()
    assert (res.ess[pad] == N).all()
    assert (res.increments[:, batch.valid] != 0).all()
    # the same sequences given sorted give the same numbers, in the caller's order
    order = [1, 0, 2]
    torch.manual_seed(3)
    ref = particle_filter(lsm, batch[order].pad_to(9), N, resample="always", record=True)
    inv = np.argsort(order)
    assert torch.allclose(res.log_z, ref.log_z[inv], atol=1e-5)
    assert torch.allclose(res.increments, ref.increments[:, inv], atol=1e-5)
    assert torch.allclose(res.ess, ref.ess[inv], atol=1e-4)


@pytest.mark.parametrize("fused", [True, False])
def test_ess_shape_is_b_by_t_and_last_step_is_current(fused):
    """``ess [B, T]``: the ESS of the weights after step t (before any resampling after it); at a sequence's
    last valid step it is the final weights' ESS, on padded steps N."""
    lsm = _dkf()
    if not fused:  # the step-by-step path: a sampler forces it
        sampler = lambda t, q, shape: q.expand(shape).rsample()  # noqa: E731
    else:
        sampler = None
    batch = from_numpy(np.random.default_rng(4).standard_normal((3, 6, 2)), lengths=[6, 4, 1])
    N = 5
    torch.manual_seed(0)
    res = particle_filter(lsm, batch, N, resample="never", record=True, sampler=sampler)
    assert res.ess.shape == (3, 6)
    # without resampling the weights are the running sums of the increments
    lw = res.increments.cumsum(-1)  # [N, B, T]
    w = torch.softmax(lw, 0)
    expected = 1.0 / (w ** 2).sum(0)
    valid = batch.valid
    assert torch.allclose(res.ess[valid], expected[valid], rtol=1e-4)
    assert (res.ess[~valid] == N).all()
    # at each sequence's last step it is the ESS of the final weights
    final = torch.softmax(res.log_weights, 0)
    assert torch.allclose(res.ess[torch.arange(3), batch.lengths - 1], 1.0 / (final ** 2).sum(0), rtol=1e-4)


# ---------------------------------------------------------------------------- 3. resume after restore_best
def _lgssm_data():
    g = torch.Generator().manual_seed(0)
    tr = SequenceBatch.from_sequences([torch.randn(n, 1, generator=g, dtype=torch.float64) for n in (6, 4, 5, 3)],
                                      dtype=torch.float64)
    va = SequenceBatch.from_sequences([torch.randn(n, 1, generator=g, dtype=torch.float64) for n in (5, 4)],
                                      dtype=torch.float64)
    return tr, va


def _lgssm_trainer():
    torch.manual_seed(0)
    lsm = build("lgssm", 1, guide="filtering", z_dim=1).double()
    return Trainer(lsm, objective="iwae", num_particles=2, lr=1.0, batch_size=2, progress=False, seed=0)


def test_fit_after_restore_best_continues_the_run_bit_for_bit():
    tr, va = _lgssm_data()
    full = _lgssm_trainer()
    full.fit(tr, va, epochs=6)
    split = _lgssm_trainer()
    split.fit(tr, va, epochs=3, restore_best=True)
    best_epoch = max(range(3), key=lambda e: split.history[e]["valid_bound"])
    assert best_epoch != 2, "the test needs a run whose best epoch is not the last"
    # after the first fit the model holds the best epoch's parameters (as documented)
    assert all(torch.equal(v, split.best_state[k]) for k, v in split.lsm.state_dict().items())
    split.fit(tr, va, epochs=6)
    for k, v in full.lsm.state_dict().items():
        assert torch.equal(split.lsm.state_dict()[k], v), k
    strip = lambda h: [{k: v for k, v in e.items() if k not in ("seconds", "elapsed")} for e in h]  # noqa: E731
    assert strip(split.history) == strip(full.history)


def test_checkpoint_after_restore_best_holds_the_last_state(tmp_path):
    """A checkpoint written after restore_best continues the run (the last epoch's parameters), so a new
    trainer resuming from it also matches the uninterrupted run."""
    tr, va = _lgssm_data()
    full = _lgssm_trainer()
    full.fit(tr, va, epochs=6)
    first = _lgssm_trainer()
    first.checkpoint_dir = tmp_path
    first.fit(tr, va, epochs=3, restore_best=True)
    first.save_checkpoint()
    resumed = _lgssm_trainer()
    resumed.checkpoint_dir = tmp_path
    resumed.fit(tr, va, epochs=6)
    for k, v in full.lsm.state_dict().items():
        assert torch.equal(resumed.lsm.state_dict()[k], v), k
