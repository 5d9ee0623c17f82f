"""Early stopping of exact maximum-likelihood fits on a held-out end (``fit(..., holdout=k)``): the score is
the conditional predictive log-likelihood of the last k steps, checked against statsmodels; the fit never
sees the held-out values; the best iterate is the one returned."""

import dataclasses

import numpy as np
import pytest
import torch

from deepstate.data.synthetic import simulate_lgssm
from deepstate.estimator import Estimator
from deepstate.models.lgssm import LinearGaussianSSM, held_out_end

from oracles import statsmodels_ssm

P = dict(A=torch.tensor([[0.9, 0.2], [-0.3, 0.7]]), Q=0.2 * torch.eye(2), C=torch.tensor([[1.0, 0.4]]),
         R=torch.tensor([[0.3]]), m0=torch.zeros(2), P0=torch.eye(2))


def data(seed=0, T=80, B=2):
    batch, _ = simulate_lgssm(**P, T=T, num_sequences=B, seed=seed, lengths=[T, T - 13][:B])
    return batch


def test_held_out_end_masks_the_last_steps_of_each_sequence():
    batch = data()
    h = held_out_end(batch, 5)
    for b, L in enumerate(batch.lengths.tolist()):
        assert bool(h.observed[b, : L - 5].eq(batch.observed[b, : L - 5]).all())
        assert not bool(h.observed[b, L - 5:].any())
        assert bool((h.x[b, L - 5:] == 0).all())
    assert torch.equal(h.valid, batch.valid)


def test_holdout_score_is_the_conditional_log_likelihood_of_statsmodels():
    batch, k = data(), 7
    model = LinearGaussianSSM(2, 1, dtype=torch.float64)
    model.fit(batch, num_steps=6, holdout=k)
    M = {n: v.detach().numpy() for n, v in model.matrices().items()}
    expected = 0.0
    for b, L in enumerate(batch.lengths.tolist()):
        expected += statsmodels_ssm(batch.x[b, :L].numpy(), M).ssm.loglikeobs()[L - k:].sum()
    assert model.valid_history_[-1] == pytest.approx(expected / (k * batch.batch_size), rel=1e-9, abs=1e-9)


def test_the_fit_never_sees_the_held_out_values_and_returns_the_best_iterate():
    batch, k = data(seed=3), 10
    changed = held_out_end(batch, k)
    tail = batch.observed & ~changed.observed
    shifted = dataclasses.replace(batch, x=batch.x + 5.0 * tail)  # only the held-out values move
    runs = []
    for b in (batch, shifted):
        torch.manual_seed(0)
        model = LinearGaussianSSM(3, 1, dtype=torch.float64)
        history = model.fit(b, num_steps=25, holdout=k, tol=0)
        runs.append((model, history))
    (m1, h1), (m2, h2) = runs
    # the training iterates are identical; only their held-out scores differ
    n = min(len(h1), len(h2)) - 1
    assert h1[:n] == pytest.approx(h2[:n], rel=1e-12)
    assert m1.valid_history_[0] != pytest.approx(m2.valid_history_[0], rel=1e-3)
    for m, h in runs:
        v = m.valid_history_
        assert len(v) == len(h)
        assert v[-1] == pytest.approx(max(v[:-1] + [v[-1]]))  # the returned parameters score best
        assert v[m.best_iteration_] == pytest.approx(v[-1])
    with torch.no_grad():  # and they really are the returned parameters' score
        again = float((m1.log_likelihood(batch) - m1.log_likelihood(changed)).sum()) / (k * batch.batch_size)
    assert again == pytest.approx(m1.valid_history_[-1], rel=1e-10)


def test_patience_stops_after_that_many_iterations_without_a_better_score():
    batch, k = data(seed=1), 20
    torch.manual_seed(2)
    model = LinearGaussianSSM(4, 1, dtype=torch.float64)
    model.fit(batch, num_steps=60, holdout=k, tol=0)
    torch.manual_seed(2)
    model2 = LinearGaussianSSM(4, 1, dtype=torch.float64)
    stopped = model2.fit(batch, num_steps=60, holdout=k, tol=0, patience=3)
    v = model.valid_history_[:-1]
    # where the full run first went 3 iterations without beating its best, the patient run stopped
    best, best_at, stop = -np.inf, 0, None
    for i, s in enumerate(v):
        if s > best:
            best, best_at = s, i
        elif i - best_at >= 3:
            stop = i
            break
    assert stop is not None  # this seed's held-out score does stall (else the test would check nothing)
    assert len(stopped) == stop + 1  # the iterations before the stop, then the returned (best) parameters
    assert model2.valid_history_[-1] == pytest.approx(best, rel=1e-10)


def test_valid_sequences_are_scored_as_fresh_sequences():
    train, valid = data(seed=4), data(seed=5)
    model = LinearGaussianSSM(2, 1, dtype=torch.float64)
    model.fit(train, num_steps=5, valid=valid)
    with torch.no_grad():
        fresh = float(model.log_likelihood(valid).sum()) / valid.num_frames
    assert model.valid_history_[-1] == pytest.approx(fresh, rel=1e-10)


def test_estimator_exact_fit_with_holdout_and_bad_input():
    series = data(B=1).x[0, :, 0].numpy()
    est = Estimator("lgssm", objective="exact", z_dim=2, dtype=torch.float64, seed=0)
    est.fit(series, epochs=8, holdout=10, progress=False)
    assert all("valid_bound" in h for h in est.history_)
    assert est.history_[-1]["valid_bound"] == pytest.approx(max(h["valid_bound"] for h in est.history_))
    model = LinearGaussianSSM(2, 1, dtype=torch.float64)
    batch = data()
    for bad in (-1, True, 1.5, 67):
        with pytest.raises(ValueError, match="holdout"):
            model.fit(batch, num_steps=2, holdout=bad)
    with pytest.raises(ValueError, match="patience"):
        model.fit(batch, num_steps=2, holdout=3, patience=0)
    with pytest.raises(ValueError, match="patience"):
        model.fit(batch, num_steps=2, patience=3)  # nothing held out to stop on
    with pytest.raises(ValueError, match="holdout"):
        Estimator("lgssm", objective="exact", z_dim=2).fit(series, epochs=2, holdout=5, window=20, progress=False)
    with pytest.raises(TypeError, match="valid"):
        model.fit(batch, num_steps=2, valid=np.zeros((3, 4)))
    with pytest.raises(ValueError, match="holdout"):
        Estimator("dkf", z_dim=2, rnn_dim=4).fit(series, epochs=1, holdout=5, progress=False)


def test_estimator_holdout_values_set_neither_the_scale_nor_the_fit():
    """With ``holdout`` the Estimator's standardiser and every fitted parameter are the same whatever the
    held-out values are; only the recorded held-out scores differ."""
    series = data(B=1).x[0, :, 0].numpy()
    other = series.copy()
    other[-10:] += 50.0
    fits = [Estimator("lgssm", objective="exact", z_dim=2, dtype=torch.float64, seed=0).fit(
        s, epochs=6, holdout=10, progress=False) for s in (series, other)]
    a, b = fits
    assert torch.equal(a.standardizer_.mean, b.standardizer_.mean) and torch.equal(a.standardizer_.std, b.standardizer_.std)
    assert abs(float(a.standardizer_.mean) - float(np.mean(series[:-10]))) < 1e-9
    # every training iterate is the same (the last entry is at the returned, best-scoring parameters)
    assert [h["train_bound"] for h in a.history_[:-1]] == [h["train_bound"] for h in b.history_[:-1]]
    assert len(a.history_) == 7
    assert a.history_[0]["valid_bound"] != b.history_[0]["valid_bound"]
