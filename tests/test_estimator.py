"""Evaluation (exact against the Kalman filter, batching-invariant) and the user-facing Estimator."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from deepstate.data import SequenceBatch, load_dataset
from deepstate.estimator import Estimator, _to_batch
from deepstate.inference.checkpoint import atomic_save, load_checkpoint
from deepstate.inference.evaluation import evaluate
from deepstate.models import build

TINY = dict(z_dim=2, rnn_dim=4, transition_dim=4, emission_dim=4)


# ---------------------------------------------------------------------------- evaluate
@pytest.fixture(scope="module")
def lgssm_and_data():
    torch.manual_seed(0)
    lsm = build("lgssm", 2, guide="exact", z_dim=2, dtype=torch.float64)
    _, x = lsm.sample(5, 12)
    seqs = [x[b, :L].clone() for b, L in enumerate([12, 7, 3, 10, 1])]
    seqs[1][2, 0] = float("nan")  # a missing value
    batch = SequenceBatch.from_sequences(seqs, dtype=torch.float64)
    with torch.no_grad():
        exact = lsm.ssm.log_likelihood(batch)
    return lsm, batch, exact


@pytest.mark.parametrize("objective", ["iwae", "elbo"])
def test_evaluate_with_exact_posterior_equals_kalman(lgssm_and_data, objective):
    """Without resampling, the exact smoothing posterior as proposal makes every particle's whole-sequence
    weight equal log p(x): the estimate is the Kalman log-likelihood for any batching."""
    lsm, batch, exact = lgssm_and_data
    res = evaluate(lsm, batch, objective=objective, num_particles=4, batch_size=2)
    assert res["frames"] == batch.num_frames == 33
    assert torch.allclose(res["per_sequence"], exact, atol=1e-8)
    assert res["total"] == pytest.approx(float(exact.sum()), abs=1e-7)
    assert res["nats_per_frame"] == pytest.approx(float(exact.sum()) / 33, abs=1e-9)


@pytest.mark.parametrize("objective", ["iwae", "elbo"])
def test_evaluate_is_independent_of_batching_and_particle_chunks(lgssm_and_data, objective):
    lsm, batch, exact = lgssm_and_data
    ref = evaluate(lsm, batch, objective=objective, num_particles=6, batch_size=5)["nats_per_frame"]
    assert ref == pytest.approx(float(exact.sum()) / 33, abs=1e-9)
    for bs, cap in ((1, 100_000), (3, 100_000), (2, 6), (4, 3), (5, 2)):
        # cap < 6: IWAE/ELBO split each sequence's 6 particles over 2 or 3 rows and recombine them
        res = evaluate(lsm, batch, objective=objective, num_particles=6, batch_size=bs, max_elements=cap)
        assert res["nats_per_frame"] == pytest.approx(ref, abs=1e-9), (bs, cap)


def test_evaluate_fivo_near_kalman_for_any_batching(lgssm_and_data):
    """FIVO resamples on per-step weights, which vary even under the exact smoothing posterior (only the
    whole-sequence weight is constant), so it is a Monte Carlo estimate: close to exact, whatever the batching."""
    lsm, batch, exact = lgssm_and_data
    for bs, cap in ((1, 100_000), (2, 100_000), (5, 100_000), (5, 256), (5, 10)):
        with pytest.warns(RuntimeWarning, match="max_elements") if cap < 256 else _no_warning():
            res = evaluate(lsm, batch, "fivo", num_particles=256, batch_size=bs, max_elements=cap)
        assert res["nats_per_frame"] == pytest.approx(float(exact.sum()) / 33, abs=0.02), (bs, cap)


class _no_warning:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("objective", ["iwae", "elbo"])
def test_evaluate_recombines_particle_chunks_exactly(monkeypatch, lgssm_and_data, objective):
    """N particles split over K rows of n: IWAE takes logmeanexp over the rows, the ELBO their mean,
    and every sequence gets its own rows back. A fake objective returns, for the k-th row of a
    sequence whose first value is f, the estimate f + k."""
    import types

    import deepstate.inference.evaluation as ev

    lsm, batch, _ = lgssm_and_data
    seen, sizes = {}, []

    class Fake:
        def __init__(self, n):
            sizes.append(n)

        def bound(self, lsm, mb):
            out = []
            for f in mb.x[:, 0, 0].tolist():
                out.append(f + seen.get(f, 0))
                seen[f] = seen.get(f, 0) + 1
            return types.SimpleNamespace(log_z=torch.tensor(out, dtype=torch.float64))

    monkeypatch.setattr(ev, "get_objective", lambda name, n, **kw: Fake(n))
    res = evaluate(lsm, batch, objective=objective, num_particles=12, batch_size=2, max_elements=5)
    assert sizes == [4]  # the largest divisor of 12 not above 5: 3 rows of 4 particles per sequence
    k = torch.arange(3, dtype=torch.float64)
    offset = float(torch.logsumexp(k, 0) - math.log(3)) if objective == "iwae" else 1.0
    assert torch.allclose(res["per_sequence"], batch.x[:, 0, 0] + offset, atol=1e-12)


def test_evaluate_seed_is_reproducible_and_leaves_global_rng(lgssm_and_data):
    torch.manual_seed(0)
    lsm = build("dkf", 2, "gaussian", **TINY).double()
    batch = lgssm_and_data[1]
    torch.manual_seed(5)
    state = torch.random.get_rng_state()
    a = evaluate(lsm, batch, "fivo", num_particles=3, seed=11)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = evaluate(lsm, batch, "fivo", num_particles=3, seed=11)
    assert torch.equal(a["per_sequence"], b["per_sequence"])
    assert lsm.training


def test_evaluate_bad_arguments(lgssm_and_data):
    lsm, batch, _ = lgssm_and_data
    with pytest.raises(ValueError, match="objective"):
        evaluate(lsm, batch, objective="vi")
    with pytest.raises(ValueError, match="num_particles"):
        evaluate(lsm, batch, num_particles=0)
    with pytest.raises(ValueError, match="max_elements"):
        evaluate(lsm, batch, max_elements=0)
    with pytest.raises(TypeError, match="data"):
        evaluate(lsm, np.zeros((3, 2)))
    with pytest.raises(ValueError, match="data"):
        evaluate(lsm, SequenceBatch.from_sequences([np.zeros((3, 5))], dtype=torch.float64))


# ---------------------------------------------------------------------------- Estimator
def small_series(seed=0, B=4, T=12, D=2):
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.normal(size=(B, T, D)), axis=1) * 3.0 + 10.0


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    est = Estimator("dkf", objective="iwae", num_particles=2, dtype=torch.float64, **TINY)
    est.fit(small_series(), epochs=2, batch_size=2, lr=1e-2, progress=False)
    return est


def test_save_load_round_trip(fitted, tmp_path):
    data = small_series(seed=1, B=3)
    path = tmp_path / "sub" / "est.pt"
    fitted.save(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["est.pt"]
    loaded = Estimator.load(path)
    assert loaded.get_params() == fitted.get_params()
    assert loaded.history_ == fitted.history_
    for obj in ("fivo", "iwae"):
        assert loaded.log_likelihood(data, objective=obj, num_particles=5) == \
            fitted.log_likelihood(data, objective=obj, num_particles=5)
    assert np.array_equal(loaded.sample(2, 6, seed=3), fitted.sample(2, 6, seed=3))
    assert torch.equal(loaded.standardizer_.std, fitted.standardizer_.std)


def test_load_rejects_mismatched_or_corrupted_files(fitted, tmp_path):
    path = tmp_path / "est.pt"
    fitted.save(path)
    state = load_checkpoint(path)
    state["config"]["z_dim"] = 3  # a config that does not fit the saved parameters
    atomic_save(state, tmp_path / "edited.pt")
    with pytest.raises(ValueError, match="does not match the saved parameters"):
        Estimator.load(tmp_path / "edited.pt")
    raw = path.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="not a readable"):
        Estimator.load(tmp_path / "truncated.pt")
    atomic_save({"format": "something.else"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="deepstate.estimator"):
        Estimator.load(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError):
        Estimator.load(tmp_path / "missing.pt")


def test_log_likelihood_is_on_the_original_scale():
    """Standardised models of x and of a x + b are the same model, so the original-scale bounds differ
    by exactly -log|a| per observed value (the change of variables)."""
    x = small_series(B=3, T=8, D=1)
    lls = []
    for scale, shift in ((1.0, 0.0), (10.0, -4.0)):
        est = Estimator("dkf", objective="iwae", num_particles=2, dtype=torch.float64, **TINY)
        est.fit(x * scale + shift, epochs=1, batch_size=3, progress=False)
        lls.append(est.log_likelihood(x * scale + shift, objective="iwae", num_particles=3))
    assert lls[1] - lls[0] == pytest.approx(-math.log(10.0), abs=1e-6)


def test_sample_is_on_the_original_scale(fitted):
    s = fitted.sample(50, 4, seed=0)
    assert s.shape == (50, 4, 2) and s.dtype == np.float64
    # the training data are centred near 10: standardised samples would be centred near 0
    assert abs(s.mean() - float(fitted.standardizer_.mean.mean())) < 5.0 and s.mean() > 3.0
    z, x = fitted.sample(2, 3, seed=0, return_latents=True)
    assert z.shape == (2, 3, 2) and np.array_equal(x, fitted.sample(2, 3, seed=0))


def test_fit_on_sunspots_lowers_the_training_loss():
    series = load_dataset("sunspots").series
    est = Estimator("dkf", objective="iwae", num_particles=2, seed=0, z_dim=2, rnn_dim=8, transition_dim=8,
                    emission_dim=8)
    est.fit(series, epochs=8, window=30, stride=15, batch_size=10, lr=2e-2, progress=False)
    losses = [h["train_loss"] for h in est.history_]
    assert len(losses) == 8 and losses[-1] < losses[0] - 0.1, losses
    assert math.isfinite(est.log_likelihood(series, num_particles=2))


def test_data_kinds_are_converted():
    arr = np.arange(12.0).reshape(6, 2)
    assert _to_batch(arr, "data").x.shape == (1, 6, 2)
    assert _to_batch(arr[None].repeat(3, 0), "data").x.shape == (3, 6, 2)
    assert _to_batch([arr, arr[:4]], "data").lengths.tolist() == [6, 4]
    assert _to_batch(pd.DataFrame(arr, columns=["a", "b"]), "data").x.shape == (1, 6, 2)
    assert _to_batch(pd.Series(arr[:, 0]), "data").x.shape == (1, 6, 1)
    assert _to_batch([1.0, 2.0, np.nan], "data").observed.sum() == 2
    b = SequenceBatch.from_sequences([arr])
    assert _to_batch(b, "data").x.dtype == torch.float64
    with pytest.raises(TypeError, match="data"):
        _to_batch("not data", "data")
    est = Estimator("dkf", objective="iwae", num_particles=2, **TINY)
    est.fit([arr, arr[:4]], epochs=1, progress=False)
    assert est.input_dim_ == 2 and est.model_.config["input_dim"] == 2


def test_bernoulli_data_is_not_standardised():
    x = (np.random.default_rng(0).random((3, 6, 3)) < 0.3).astype(float)
    est = Estimator("dkf", likelihood="bernoulli", objective="iwae", num_particles=2, **TINY)
    est.fit(x, epochs=1, progress=False)
    assert est.standardizer_ is None
    assert set(np.unique(est.sample(2, 3, seed=0))) <= {0.0, 1.0}


@pytest.mark.parametrize("kwargs,name", [
    (dict(model="hmm"), "model"), (dict(likelihood="cauchy"), "likelihood"), (dict(objective="vi"), "objective"),
    (dict(num_particles=0), "num_particles"), (dict(seed=-2), "seed"), (dict(zdim=3), "hyper"),
    (dict(dtype=torch.int64), "dtype"), (dict(dtype="float16x"), "dtype"), (dict(standardize="yes"), "standardize"),
])
def test_estimator_bad_arguments(kwargs, name):
    with pytest.raises((ValueError, TypeError), match=name):
        Estimator(**kwargs)


def test_estimator_takes_dtype_names():
    """``dtype="float64"`` (what the CLI's ``--set dtype=float64`` passes) is ``torch.float64``."""
    assert Estimator("lgssm", objective="exact", dtype="float64").dtype is torch.float64
    assert Estimator("dkf", dtype="float32").dtype is torch.float32


def test_estimator_bad_call_arguments(fitted):
    with pytest.raises(RuntimeError, match="not fitted"):
        Estimator(**TINY).log_likelihood(small_series())
    with pytest.raises(ValueError, match="epochs"):
        Estimator(**TINY).fit(small_series(), epochs=0, progress=False)
    with pytest.raises(ValueError, match="window"):
        Estimator(**TINY).fit(small_series(), window=0)
    with pytest.raises(ValueError, match="trainer_kwargs"):
        Estimator(**TINY).fit(small_series(), learning_rate=0.1)
    with pytest.raises(ValueError, match="objective"):
        fitted.log_likelihood(small_series(), objective="meanfield_elbo")
    with pytest.raises(ValueError, match="data"):
        fitted.log_likelihood(small_series(D=3))
    with pytest.raises(ValueError, match="num_sequences"):
        fitted.sample(0, 3)
    with pytest.raises(ValueError, match="horizon"):
        fitted.forecast(small_series(), 0)
    with pytest.raises(ValueError, match="levels"):
        fitted.forecast(small_series(), 3, levels=(0.5, 1.2))
    with pytest.raises(ValueError, match="history"):
        fitted.forecast(small_series(D=3), 3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_gpu_trained_estimator_loads_on_cpu(tmp_path):
    est = Estimator("dkf", objective="iwae", num_particles=2, device="cuda", **TINY)
    est.fit(small_series(), epochs=1, progress=False)
    est.save(tmp_path / "gpu.pt")
    cpu = Estimator.load(tmp_path / "gpu.pt")
    assert next(cpu.model_.parameters()).device.type == "cpu"
    data = small_series(seed=2)
    assert cpu.log_likelihood(data) == pytest.approx(est.log_likelihood(data), abs=1e-4)


def test_fit_resumes_from_checkpoint_dir(tmp_path):
    data = small_series(B=3, T=8)
    kw = dict(objective="iwae", num_particles=2, dtype=torch.float64, **TINY)
    full = Estimator(**kw).fit(data, epochs=3, batch_size=2, progress=False)
    Estimator(**kw).fit(data, epochs=2, batch_size=2, checkpoint_dir=tmp_path, progress=False)
    resumed = Estimator(**kw).fit(data, epochs=3, batch_size=2, checkpoint_dir=tmp_path, progress=False)
    assert len(resumed.history_) == 3
    for k, v in full.model_.state_dict().items():
        assert torch.equal(v, resumed.model_.state_dict()[k]), k
