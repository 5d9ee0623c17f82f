"""Input validation audit of the Python API (issue #14, item 4), and the emission support checks.

One table of bad inputs across the API -- data constructors, ``Standardizer``, ``Estimator``
arguments, ``fit`` / ``log_likelihood`` / ``forecast`` / ``sample`` arguments, ``build``
hyperparameters, ``Trainer`` arguments, ``evaluate``, checkpoints, the scores, ``backtest`` --
each with the exception type expected and a fragment of the message naming the argument. (The CLI's
own bad-input table is ``tests/test_cli_errors.py``: every bad command there must end with exactly
one ``deepstate: ...`` line; it is not repeated here.)

Then the support of the emission families ("found when tried as a new user would"): Bernoulli data
must be 0/1 and Poisson data non-negative integers; other values are refused with a ``ValueError``
naming the likelihood and the offending values at ``Estimator.fit`` (and ``log_likelihood`` /
``forecast``), ``Trainer.fit`` and ``evaluate`` -- instead of training on them and reporting a
meaningless, even positive, bound. The CLI prints that in one line.
"""

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from deepstate import scores
from deepstate.data import SequenceBatch, Standardizer, concat_batches, from_numpy, from_pandas, sliding_windows, split_series
from deepstate.estimator import Estimator
from deepstate.forecasting.backtest import backtest
from deepstate.inference.checkpoint import load_checkpoint
from deepstate.inference.evaluation import evaluate
from deepstate.inference.trainer import Trainer
from deepstate.models import build

TINY = dict(z_dim=2, rnn_dim=4, transition_dim=4, emission_dim=4)
RNG = np.random.default_rng(0)
SERIES = np.sin(np.arange(40) / 3.0) + 0.1 * RNG.normal(size=40)


@pytest.fixture(scope="module")
def est():
    return Estimator("dkf", objective="iwae", num_particles=2, **TINY).fit(SERIES, epochs=1, window=10,
                                                                         progress=False)


@pytest.fixture(scope="module")
def lsm():
    return build("dkf", 1, "gaussian", **TINY)


def _batch(D=1):
    return SequenceBatch.from_sequences([RNG.normal(size=(6, D)), RNG.normal(size=(4, D))])


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def _flip(path):
    """Corrupt a saved file where it matters: one byte of the last tensor's data (the tensors are
    stored last in torch's zip file, before the central directory)."""
    import zipfile

    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.header_offset)
    raw = bytearray(path.read_bytes())
    header = 30 + len(info.filename.encode()) + int.from_bytes(raw[info.header_offset + 28: info.header_offset + 30],
                                                                 "little")
    raw[info.header_offset + header] ^= 0x01
    path.write_bytes(bytes(raw))


# (id, function of (est, lsm, tmp_path), exception type, fragment of the message)
CASES = [
    # ---- data constructors
    ("from_sequences-empty", lambda e, m, p: SequenceBatch.from_sequences([]), ValueError, "sequences"),
    ("from_sequences-array", lambda e, m, p: SequenceBatch.from_sequences(np.zeros((2, 3, 1))), TypeError, "sequences"),
    ("from_sequences-zero-length", lambda e, m, p: SequenceBatch.from_sequences([np.zeros((0, 1))]), ValueError, "sequences[0]"),
    ("from_sequences-dims-differ", lambda e, m, p: SequenceBatch.from_sequences([np.zeros((3, 1)), np.zeros((3, 2))]),
     ValueError, "sequences[1]"),
    ("from_sequences-inf", lambda e, m, p: SequenceBatch.from_sequences([np.array([1.0, np.inf])]), ValueError, "infinite"),
    ("from_sequences-strings", lambda e, m, p: SequenceBatch.from_sequences([np.array(["a", "b"])]), TypeError, "sequences[0]"),
    ("from_sequences-covariates-count", lambda e, m, p: SequenceBatch.from_sequences([np.zeros(3)], covariates=[]),
     ValueError, "covariates"),
    ("from_numpy-4d", lambda e, m, p: from_numpy(np.zeros((2, 3, 4, 5))), ValueError, "array"),
    ("from_pandas-list", lambda e, m, p: from_pandas([1.0, 2.0]), TypeError, "data"),
    ("from_pandas-no-rows", lambda e, m, p: from_pandas(pd.DataFrame({"a": []})), ValueError, "data"),
    ("from_pandas-time_col-wide", lambda e, m, p: from_pandas(pd.DataFrame({"a": [1.0]}), time_col="t"), ValueError,
     "time_col"),
    ("concat-empty", lambda e, m, p: concat_batches([]), ValueError, "batches"),
    ("sliding_windows-window", lambda e, m, p: sliding_windows(SERIES, 0), ValueError, "window"),
    ("split_series-fraction", lambda e, m, p: split_series(SERIES, valid_fraction=1.5), ValueError, "valid_fraction"),
    ("standardizer-not-batch", lambda e, m, p: Standardizer().fit(np.zeros((3, 2))), TypeError, "batch"),
    ("standardizer-unfitted", lambda e, m, p: Standardizer().transform(_batch()), RuntimeError, "not fitted"),
    ("standardizer-dim", lambda e, m, p: Standardizer().fit(_batch(1)).transform(_batch(2)), ValueError, "D=1"),
    # ---- Estimator arguments
    ("estimator-model", lambda e, m, p: Estimator("lstm"), ValueError, "model"),
    ("estimator-likelihood", lambda e, m, p: Estimator(likelihood="cauchy"), ValueError, "likelihood"),
    ("estimator-exact-dkf", lambda e, m, p: Estimator("dkf", objective="exact"), ValueError, "objective"),
    ("estimator-num_particles", lambda e, m, p: Estimator(num_particles=0), ValueError, "num_particles"),
    ("estimator-seed", lambda e, m, p: Estimator(seed=1.5), ValueError, "seed"),
    ("estimator-device", lambda e, m, p: Estimator(device="tpu"), ValueError, "device"),
    ("estimator-hyper-negative", lambda e, m, p: Estimator(z_dim=-4), ValueError, "z_dim"),
    ("estimator-hyper-unknown", lambda e, m, p: Estimator(zdim=4), ValueError, "zdim"),
    # ---- fit / log_likelihood / forecast / sample
    ("fit-data-kind", lambda e, m, p: Estimator(**TINY).fit("series.csv"), TypeError, "data"),
    ("fit-empty-list", lambda e, m, p: Estimator(**TINY).fit([]), ValueError, "data"),
    ("fit-all-nan", lambda e, m, p: Estimator(**TINY).fit(np.full(20, np.nan)), ValueError, "data: has no observed value"),
    ("fit-valid-all-nan", lambda e, m, p: Estimator(**TINY).fit(SERIES, valid_data=np.full(5, np.nan)), ValueError,
     "valid_data: has no observed value"),
    ("fit-strings", lambda e, m, p: Estimator(**TINY).fit(["a", "b"]), TypeError, "data"),
    ("fit-window", lambda e, m, p: Estimator(**TINY).fit(SERIES, window=0), ValueError, "window"),
    ("fit-stride-alone", lambda e, m, p: Estimator(**TINY).fit(SERIES, stride=2), ValueError, "stride"),
    ("fit-unknown-trainer-arg", lambda e, m, p: Estimator(**TINY).fit(SERIES, tbtt=5), ValueError, "tbtt"),
    ("fit-epochs", lambda e, m, p: Estimator(**TINY).fit(SERIES, epochs=0, progress=False), ValueError, "epochs"),
    ("fit-valid-dims", lambda e, m, p: Estimator(**TINY).fit(SERIES, valid_data=np.zeros((1, 5, 2))), ValueError,
     "valid_data"),
    ("log_likelihood-unfitted", lambda e, m, p: Estimator(**TINY).log_likelihood(SERIES), RuntimeError, "not fitted"),
    ("log_likelihood-objective", lambda e, m, p: e.log_likelihood(SERIES, objective="exact"), ValueError, "objective"),
    ("log_likelihood-num_particles", lambda e, m, p: e.log_likelihood(SERIES, num_particles=0), ValueError,
     "num_particles"),
    ("log_likelihood-dims", lambda e, m, p: e.log_likelihood(np.zeros((1, 5, 3))), ValueError, "data"),
    ("log_likelihood-seed", lambda e, m, p: e.log_likelihood(SERIES, seed="0"), TypeError, "seed"),
    ("log_likelihood-history-count", lambda e, m, p: e.log_likelihood(np.zeros((2, 5, 1)), history=SERIES[:10]),
     ValueError, "history"),
    ("forecast-horizon", lambda e, m, p: e.forecast(SERIES, horizon=0), ValueError, "horizon"),
    ("forecast-levels", lambda e, m, p: e.forecast(SERIES, horizon=2, levels=(0.5, 1.5)), ValueError, "levels"),
    ("forecast-num_samples", lambda e, m, p: e.forecast(SERIES, horizon=2, num_samples=0), ValueError, "num_samples"),
    ("forecast-method", lambda e, m, p: e.forecast(SERIES, horizon=2, method="magic"), ValueError, "method"),
    ("forecast-seed", lambda e, m, p: e.forecast(SERIES, horizon=2, seed="x"), TypeError, "seed"),
    ("sample-length", lambda e, m, p: e.sample(2, 0), ValueError, "length"),
    ("sample-seed", lambda e, m, p: e.sample(2, 3, seed=1.5), TypeError, "seed"),
    ("generate-seed", lambda e, m, p: e.generate(2, 3, seed="1"), TypeError, "seed"),
    ("check-seed", lambda e, m, p: e.check(SERIES, num_samples=2, seed=[1]), TypeError, "seed"),
    ("generate-num_particles", lambda e, m, p: e.generate(2, 3, prefix=SERIES, num_particles=0), ValueError,
     "num_particles"),
    # ---- build hyperparameters
    ("build-name", lambda e, m, p: build("lstm", 3), ValueError, "name"),
    ("build-input_dim", lambda e, m, p: build("dkf", 0), ValueError, "input_dim"),
    ("build-z_dim-float", lambda e, m, p: build("dkf", 3, z_dim=2.5), ValueError, "z_dim"),
    ("build-rnn_dim-zero", lambda e, m, p: build("vrnn", 3, rnn_dim=0), ValueError, "rnn_dim"),
    ("build-min_scale", lambda e, m, p: build("dkf", 3, min_scale=-1.0), ValueError, "min_scale"),
    ("build-augmented", lambda e, m, p: build("dkf", 3, augmented="yes"), ValueError, "augmented"),
    ("build-rnn-kind", lambda e, m, p: build("srnn", 3, rnn="transformer"), ValueError, "rnn"),
    ("build-guide", lambda e, m, p: build("dkf", 3, guide="st-x"), ValueError, "guide"),
    ("build-lgssm-bernoulli", lambda e, m, p: build("lgssm", 3, "bernoulli"), ValueError, "likelihood"),
    # ---- Trainer arguments and fit
    ("trainer-lsm", lambda e, m, p: Trainer("dkf"), TypeError, "lsm"),
    ("trainer-objective", lambda e, m, p: Trainer(m, objective="vi"), ValueError, "objective"),
    ("trainer-lr", lambda e, m, p: Trainer(m, lr=0), ValueError, "lr"),
    ("trainer-lr-nan", lambda e, m, p: Trainer(m, lr=float("nan")), ValueError, "lr"),
    ("trainer-lr_decay", lambda e, m, p: Trainer(m, lr_decay=1.5), ValueError, "lr_decay"),
    ("trainer-batch_size", lambda e, m, p: Trainer(m, batch_size=0), ValueError, "batch_size"),
    ("trainer-tbptt-pyro", lambda e, m, p: Trainer(m, objective="elbo", tbptt=10), ValueError, "tbptt"),
    ("trainer-annealing-particle", lambda e, m, p: Trainer(m, objective="fivo", annealing=100), ValueError, "annealing"),
    ("trainer-checkpoint_dir-file", lambda e, m, p: Trainer(m, checkpoint_dir=_write(p / "f", b"x")), ValueError,
     "checkpoint_dir"),
    ("trainer-checkpoint_every", lambda e, m, p: Trainer(m, checkpoint_every=-1), ValueError, "checkpoint_every"),
    ("trainer-seed", lambda e, m, p: Trainer(m, seed=-1), ValueError, "seed"),
    ("trainer-valid_objective", lambda e, m, p: Trainer(m, valid_objective="exact"), ValueError, "valid_objective"),
    ("trainer-fit-not-batch", lambda e, m, p: Trainer(m, progress=False).fit(np.zeros((2, 5, 1))), TypeError, "train"),
    ("trainer-fit-dims", lambda e, m, p: Trainer(m, progress=False).fit(_batch(2)), ValueError, "train"),
    ("trainer-fit-patience-no-valid", lambda e, m, p: Trainer(m, early_stopping_patience=2, progress=False).fit(_batch()),
     ValueError, "valid"),
    ("trainer-fit-all-nan", lambda e, m, p: Trainer(m, progress=False).fit(SequenceBatch.from_sequences([np.full(4, np.nan)])),
     ValueError, "train: has no observed value"),
    ("trainer-fit-callback", lambda e, m, p: Trainer(m, progress=False).fit(_batch(), callback=3), TypeError, "callback"),
    # ---- evaluate
    ("evaluate-objective", lambda e, m, p: evaluate(m, _batch(), objective="exact"), ValueError, "objective"),
    ("evaluate-max_elements", lambda e, m, p: evaluate(m, _batch(), max_elements=0), ValueError, "max_elements"),
    ("evaluate-data", lambda e, m, p: evaluate(m, np.zeros((2, 3, 1))), TypeError, "data"),
    # ---- checkpoints and saved estimators
    ("checkpoint-missing", lambda e, m, p: load_checkpoint(p / "nope.pt"), FileNotFoundError, "path"),
    ("checkpoint-garbage", lambda e, m, p: load_checkpoint(_write(p / "g.pt", bytes(range(256)) * 4)), ValueError,
     "not a readable deepstate checkpoint"),
    ("checkpoint-folder", lambda e, m, p: load_checkpoint(p), ValueError, "path"),
    ("checkpoint-other-kind", lambda e, m, p: (torch.save({"format": "x"}, p / "o.pt"),
                                               load_checkpoint(p / "o.pt", kind="deepstate.trainer_checkpoint")),
     ValueError, "deepstate.trainer_checkpoint"),
    ("estimator-load-trainer-checkpoint", lambda e, m, p: (Trainer(m, progress=False).save_checkpoint(p / "t.pt"),
                                                           Estimator.load(p / "t.pt")), ValueError, "deepstate.estimator"),
    ("estimator-load-corrupted", lambda e, m, p: (e.save(p / "e.pt"), _flip(p / "e.pt"), Estimator.load(p / "e.pt")),
     ValueError, "checksum"),
    ("estimator-save-unfitted", lambda e, m, p: Estimator(**TINY).save(p / "e.pt"), RuntimeError, "not fitted"),
    ("trainer-load_checkpoint-no-dir", lambda e, m, p: Trainer(m, progress=False).load_checkpoint(), ValueError, "path"),
    # ---- scores
    ("crps_ensemble-shape", lambda e, m, p: scores.crps_ensemble(np.zeros((10, 3)), np.zeros(4)), ValueError, "obs"),
    ("crps_normal-std", lambda e, m, p: scores.crps_normal(0.0, -1.0, 0.0), ValueError, "std"),
    ("interval_score-level", lambda e, m, p: scores.interval_score(0.0, 1.0, 0.5, level=1.5), ValueError, "level"),
    ("coverage-crossed", lambda e, m, p: scores.coverage(1.0, 0.0, 0.5), ValueError, "lower"),
    ("mase-season", lambda e, m, p: scores.mase(np.zeros(3), np.zeros(3), np.arange(10.0), season=0), ValueError,
     "season"),
    ("pinball-level", lambda e, m, p: scores.pinball_loss(0.0, 0.0, level=0.0), ValueError, "level"),
    ("pit_uniformity-range", lambda e, m, p: scores.pit_uniformity(np.array([0.2, 1.5])), ValueError, "pit"),
    # ---- backtest
    ("backtest-horizon", lambda e, m, p: backtest(None, SERIES, horizon=0, test_size=10), ValueError, "horizon"),
    ("backtest-test_size", lambda e, m, p: backtest(None, SERIES, horizon=2, test_size=100), ValueError, "test_size"),
    ("backtest-origins", lambda e, m, p: backtest(None, SERIES, horizon=2, origins=[39]), ValueError, "origins"),
    ("backtest-baselines", lambda e, m, p: backtest(None, SERIES, horizon=2, test_size=6, baselines=["prophet"]),
     ValueError, "baselines"),
    ("backtest-estimator", lambda e, m, p: backtest("dkf", SERIES, horizon=2, test_size=6), TypeError, "estimator"),
    ("backtest-unfitted", lambda e, m, p: backtest(Estimator(**TINY), SERIES, horizon=2, test_size=6), ValueError,
     "estimator"),
]


def test_table_is_large_enough():
    assert len(CASES) >= 30
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("fn,exc,fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(fn, exc, fragment, est, lsm, tmp_path):
    with pytest.raises(exc) as info:
        fn(est, lsm, tmp_path)
    assert fragment in str(info.value), f"{type(info.value).__name__}: {info.value}"


# ---------------------------------------------------------------------------- emission support
REAL = RNG.normal(size=(3, 12, 2))
BINARY = (RNG.random((3, 12, 2)) < 0.3).astype(float)
COUNTS = RNG.poisson(2.0, size=(3, 12, 2)).astype(float)


@pytest.mark.parametrize("likelihood,data,shown", [
    ("bernoulli", REAL, "bernoulli likelihood needs binary values 0 or 1"),
    ("bernoulli", np.where(BINARY == 1, 2.0, 0.0), "(e.g. 2)"),
    ("bernoulli", COUNTS, "bernoulli"),
    ("poisson", -COUNTS - 1, "poisson likelihood needs non-negative integer counts"),
    ("poisson", COUNTS + 0.5, "(e.g. 0.5"),
    ("poisson", REAL, "poisson"),
])
def test_estimator_fit_refuses_data_outside_the_support(likelihood, data, shown):
    with pytest.raises(ValueError, match="^data: ") as info:
        Estimator(likelihood=likelihood, **TINY).fit(data, epochs=1, progress=False)
    assert shown in str(info.value)
    valid = BINARY if likelihood == "bernoulli" else COUNTS
    with pytest.raises(ValueError, match="^valid_data: .*" + likelihood):
        Estimator(likelihood=likelihood, **TINY).fit(valid, valid_data=data, epochs=1, progress=False)


@pytest.mark.parametrize("likelihood,good", [("bernoulli", BINARY), ("poisson", COUNTS)])
def test_data_in_the_support_fits_and_missing_values_are_not_checked(likelihood, good):
    data = good.copy()
    data[0, 3, 1] = np.nan  # missing: not observed, not checked
    est = Estimator(likelihood=likelihood, objective="iwae", num_particles=2, **TINY).fit(data, epochs=1,
                                                                                         progress=False)
    assert np.isfinite(est.log_likelihood(data))
    with pytest.raises(ValueError, match=f"^data: the {likelihood} likelihood"):
        est.log_likelihood(data - 0.25)
    with pytest.raises(ValueError, match=f"^history: the {likelihood} likelihood"):
        est.forecast(data - 0.25, horizon=2, num_samples=5, num_particles=5)


@pytest.mark.parametrize("likelihood,bad", [("bernoulli", REAL), ("poisson", -COUNTS - 1)])
def test_trainer_and_evaluate_refuse_data_outside_the_support(likelihood, bad):
    lsm = build("dkf", 2, likelihood, **TINY)
    batch = SequenceBatch.from_sequences(list(bad))
    with pytest.raises(ValueError, match=f"^train: the {likelihood} likelihood"):
        Trainer(lsm, progress=False).fit(batch, epochs=1)
    good = SequenceBatch.from_sequences(list(BINARY if likelihood == "bernoulli" else COUNTS))
    with pytest.raises(ValueError, match=f"^valid: the {likelihood} likelihood"):
        Trainer(lsm, progress=False).fit(good, batch, epochs=1)
    with pytest.raises(ValueError, match=f"^data: the {likelihood} likelihood"):
        evaluate(lsm, batch, num_particles=2)


def test_gaussian_and_lgssm_accept_any_real_values():
    big = 1e6 * REAL
    assert np.isfinite(Estimator("lgssm", objective="exact", standardize=False, z_dim=2).fit(
        big, epochs=2, progress=False).log_likelihood(big, objective="exact"))
    Estimator(likelihood="studentt", objective="iwae", num_particles=2, **TINY).fit(REAL, epochs=1, progress=False)


def test_cli_bernoulli_on_real_data_is_one_line(tmp_path):
    """``deepstate fit data.csv --likelihood bernoulli`` on real values: one line naming the likelihood."""
    pd.DataFrame({"t": range(30), "y": SERIES[:30]}).to_csv(tmp_path / "data.csv", index=False)
    for likelihood in ("bernoulli", "poisson"):
        r = subprocess.run([sys.executable, "-m", "deepstate", "fit", "data.csv", "--likelihood", likelihood,
                            "--epochs", "1", "--quiet", "--out", "m.pt"], cwd=tmp_path, capture_output=True,
                           text=True, timeout=120, env={**os.environ, "MPLBACKEND": "Agg"})
        assert r.returncode != 0 and "Traceback" not in r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"deepstate: data: the {likelihood} likelihood needs"), r.stderr
        assert not (tmp_path / "m.pt").exists()
    r = subprocess.run([sys.executable, "-m", "deepstate", "fit", "data.csv", "--set", "z_dim=-4", "--epochs", "1",
                        "--quiet", "--out", "m.pt"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "MPLBACKEND": "Agg"})
    assert r.returncode != 0 and r.stderr.strip() == "deepstate: z_dim: expected a positive int, got -4", r.stderr
