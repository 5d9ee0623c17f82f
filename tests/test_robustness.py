"""Numerical robustness with extreme inputs (issue #14, item 2): finite bounds or a clear error.

* all-zero piano rolls (Bernoulli), a constant series (with and without standardisation), values
  of 1e6 without standardisation, large Poisson counts: training gives finite bounds, evaluation
  finite numbers;
* one series of T = 100,000 steps trained with truncated BPTT and scored (``slow``);
* ``evaluate`` keeps particle rows x steps of a pass under ``max_particle_steps`` (what its memory
  grows with), and the split changes nothing but the chunking.

The 20-seed sweep of short trainings per objective is ``benchmarks/robustness.py``.
"""

import math
import types

import numpy as np
import pytest
import torch

from deepstate.data import SequenceBatch
from deepstate.estimator import Estimator
from deepstate.inference.evaluation import evaluate
from deepstate.models import build

TINY = dict(z_dim=2, rnn_dim=8, transition_dim=8, emission_dim=8)


def _finite_history(est):
    for h in est.history_:
        assert h["train_bound"] is not None and math.isfinite(h["train_bound"]), est.history_
        assert h["skipped"] == 0, est.history_


@pytest.mark.parametrize("objective", ["fivo", "iwae", "elbo"])
def test_all_zero_piano_rolls(objective):
    rolls = np.zeros((4, 30, 88))
    est = Estimator("dkf", likelihood="bernoulli", objective=objective, num_particles=2, **TINY)
    est.fit(rolls, epochs=3, lr=1e-2, progress=False)
    _finite_history(est)
    ll = est.log_likelihood(rolls, num_particles=4)
    assert math.isfinite(ll) and ll <= 0
    assert est.history_[-1]["train_bound"] > est.history_[0]["train_bound"]  # it learns "all keys off"


@pytest.mark.parametrize("standardize", [True, False])
def test_constant_series(standardize):
    x = np.full(200, 3.25)
    est = Estimator("dkf", objective="fivo", num_particles=2, standardize=standardize, **TINY)
    est.fit(x, epochs=2, window=50, progress=False)
    _finite_history(est)
    assert math.isfinite(est.log_likelihood(x))
    fc = est.forecast(x, horizon=3, num_samples=20, num_particles=20)
    assert np.isfinite(fc.samples).all()


def test_constant_series_exact_lgssm():
    x = np.full(100, -7.0)
    est = Estimator("lgssm", objective="exact", z_dim=1, dtype=torch.float64).fit(x, epochs=5, progress=False)
    assert math.isfinite(est.log_likelihood(x, objective="exact"))


def test_values_of_1e6_without_standardisation():
    rng = np.random.default_rng(0)
    x = 1e6 + 1e5 * rng.normal(size=(3, 40, 1)).cumsum(1) / 6
    est = Estimator("dkf", objective="fivo", num_particles=2, standardize=False, **TINY)
    est.fit(x, epochs=2, lr=1e-2, progress=False)
    _finite_history(est)  # huge (negative) but finite: no skipped step, no divergence
    ll = est.log_likelihood(x)
    assert math.isfinite(ll)
    # standardising (the default) is the remedy, and gives sensible numbers on the original scale
    est2 = Estimator("dkf", objective="fivo", num_particles=2, **TINY).fit(x, epochs=2, progress=False)
    ll2 = est2.log_likelihood(x)
    assert math.isfinite(ll2) and ll2 > ll


def test_large_poisson_counts():
    x = np.random.default_rng(1).poisson(5e4, size=(3, 30, 2)).astype(float)
    est = Estimator("dkf", likelihood="poisson", objective="iwae", num_particles=2, **TINY)
    est.fit(x, epochs=2, lr=1e-2, progress=False)
    _finite_history(est)
    assert math.isfinite(est.log_likelihood(x))


@pytest.mark.slow
def test_one_series_of_100k_steps_with_truncated_bptt():
    """T = 100,000: one epoch with tbptt=50 (2,000 optimiser steps on one sequence), then scored."""
    rng = np.random.default_rng(0)
    x = np.sin(np.arange(100_000) / 20.0) + 0.3 * rng.normal(size=100_000)
    est = Estimator("dkf", objective="fivo", num_particles=4, z_dim=2, rnn_dim=8, transition_dim=8, emission_dim=8)
    est.fit(x, epochs=1, lr=3e-3, tbptt=50, progress=False)
    _finite_history(est)
    res = est.log_likelihood(x, num_particles=4, return_dict=True)
    assert res["frames"] == 100_000 and math.isfinite(res["nats_per_frame"])


# ---------------------------------------------------------------------------- evaluate's memory cap
@pytest.mark.parametrize("objective,N,cap", [("iwae", 12, 60), ("iwae", 12, 500), ("elbo", 8, 100),
                                             ("fivo", 8, 100), ("iwae", 12, None)])
def test_evaluate_caps_particle_steps_per_pass(monkeypatch, objective, N, cap):
    import deepstate.inference.evaluation as ev

    lens = [3, 25, 7, 12, 25, 1, 18]
    batch = SequenceBatch.from_sequences([torch.full((L, 1), float(i)) for i, L in enumerate(lens)])
    lsm = build("dkf", 1, "gaussian", **TINY)
    passes = []

    class Fake:
        def __init__(self, n):
            self.n = n

        def bound(self, lsm, mb):
            passes.append((mb.batch_size, self.n, mb.max_length))
            return types.SimpleNamespace(log_z=mb.x[:, 0, 0].to(torch.float64) * 10 + mb.lengths.to(torch.float64))

    monkeypatch.setattr(ev, "get_objective", lambda name, n, **kw: Fake(n))
    res = evaluate(lsm, batch, objective=objective, num_particles=N, max_particle_steps=cap)
    assert sum(p[0] for p in passes) == len(lens) * (N // passes[0][1])  # every row once
    if cap is not None:
        for rows, n, T in passes:
            assert rows == 1 or rows * n * T <= cap, passes
        if objective != "fivo":
            assert max(n * T for _, n, T in passes) <= max(cap, N) or passes[0][1] == 1
    expect = torch.tensor([10.0 * i + L for i, L in enumerate(lens)], dtype=torch.float64)
    torch.testing.assert_close(res["per_sequence"], expect)  # each sequence got its own rows back
