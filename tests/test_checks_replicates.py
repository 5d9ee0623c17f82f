"""Replicates of every kind for every model, calibration of the check with a true and a misspecified LGSSM,
ArviZ plots and netCDF round trip, MIDI of a generated chorale, and bad input."""

import numpy as np
import pytest
import torch

from deepstate.checks import (
    REPLICATE_MODES,
    default_statistics,
    posterior_predictive_check,
    replicate,
)
from deepstate.data import SequenceBatch
from deepstate.data.synthetic import simulate_lgssm
from deepstate.models import build

SMALL = {"dkf": dict(z_dim=2, rnn_dim=6, transition_dim=6, emission_dim=6),
         "vrnn": dict(z_dim=2, rnn_dim=6, feature_dim=6),
         "srnn": dict(z_dim=2, rnn_dim=6, hidden_dim=6),
         "deepstate": {}, "lgssm": dict(z_dim=2)}

A = [[0.9, 0.1], [0.0, 0.7]]
Q = [[0.3, 0.0], [0.0, 0.2]]
C = [[1.0, 0.5], [0.2, 1.0]]
R = [0.25, 0.4]
M0, P0 = [0.0, 0.0], [[1.0, 0.0], [0.0, 1.0]]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def _batch(D, seed=0):
    g = torch.Generator().manual_seed(seed)
    seqs = [torch.randn(n, D, generator=g, dtype=torch.float64) for n in (7, 4, 6)]
    seqs[1][1, 0] = float("nan")  # a missing value
    return SequenceBatch.from_sequences(seqs)


def _model(name, D):
    torch.manual_seed(0)
    return build(name, D, "gaussian", **SMALL[name]).double()


@pytest.mark.parametrize("name", ["dkf", "vrnn", "srnn", "deepstate", "lgssm"])
def test_every_kind_for_every_model(name):
    D = 1 if name == "deepstate" else 2
    lsm, batch = _model(name, D), _batch(D)
    for kind in REPLICATE_MODES:
        r = replicate(lsm, batch, kind, num_samples=5, seed=0, t0=3 if kind == "free" else None)
        assert r.kind == kind and r.x_rep.shape == (5, 3, 7, D)
        assert np.isfinite(r.x_rep).all()
        assert (r.x_rep[:, ~batch.valid.numpy()] == 0).all()  # padding holds zeros
        if kind == "one-step":
            assert r.log_likelihood.shape == (5, 3, 7) and np.isfinite(r.log_likelihood).all()
            obs = (batch.observed & batch.valid[..., None]).numpy()
            assert np.isnan(r.pit[~obs]).all() and ((r.pit[obs] >= 0) & (r.pit[obs] <= 1)).all()
        else:
            assert r.log_likelihood is None
        if kind == "free":  # the first t0 steps were conditioned on: they are the data
            assert np.allclose(r.x_rep[:, :, :3], batch.x[None, :, :3].numpy())
        again = replicate(lsm, batch, kind, num_samples=5, seed=0, t0=3 if kind == "free" else None)
        assert np.array_equal(again.x_rep, r.x_rep)  # seeded


def _simulated(seed=0, B=20, T=30):
    lengths = torch.randint(T // 2, T + 1, (B,), generator=torch.Generator().manual_seed(seed))
    batch, _ = simulate_lgssm(A, Q, C, R, M0, P0, T=T, num_sequences=B, seed=seed, lengths=lengths)
    return batch


def _lgssm(r, q=Q):
    return build("lgssm", 2, z_dim=2, A=A, Q=q, C=C, R=r, m0=M0, P0=P0, dtype=torch.float64)


@pytest.mark.parametrize("kind", REPLICATE_MODES)
def test_true_model_is_calibrated_and_misspecified_model_is_flagged(kind):
    batch = _simulated(seed=1)
    table, _ = posterior_predictive_check(_lgssm(R), batch, kind, num_samples=100, seed=1)
    assert len(table) >= 2
    assert ((table.p_value > 0.01) & (table.p_value < 0.99)).all(), table
    # the same dynamics with 20-40x too little noise
    bad, _ = posterior_predictive_check(_lgssm([0.01, 0.01], [[0.01, 0.0], [0.0, 0.01]]), batch, kind,
                                        num_samples=100, seed=1)
    assert ((bad.p_value < 0.01) | (bad.p_value > 0.99)).any(), bad


def test_one_step_replicates_are_not_sequences():
    """Why one-step defaults are per-step statistics: temporal ones are extreme even for the true model."""
    batch = _simulated(seed=1)
    table, _ = posterior_predictive_check(_lgssm(R), batch, "one-step", num_samples=100, seed=1,
                                          statistics=("variance", "autocorrelation"))
    assert table.loc["autocorrelation", "p_value"] < 0.01
    assert set(default_statistics(_lgssm(R), "one-step")) == {"mean", "mean_square"}


def test_gaussian_model_on_piano_rolls_is_flagged():
    g = torch.Generator().manual_seed(0)
    rolls = [(torch.rand(n, 88, generator=g) < 0.05).double() for n in (20, 16)]
    batch = SequenceBatch.from_sequences(rolls)
    lsm = build("lgssm", 88, z_dim=2, dtype=torch.float64)
    table, _ = posterior_predictive_check(lsm, batch, "free", num_samples=30, seed=0,
                                          statistics=("notes_per_frame", "mean_note_duration"))
    assert ((table.p_value < 0.01) | (table.p_value > 0.99)).any(), table


def test_inference_data_plots_and_netcdf_roundtrip(tmp_path):
    import arviz as az
    import matplotlib

    matplotlib.use("Agg")
    batch = _simulated(seed=2, B=6, T=12)
    table, idata = posterior_predictive_check(_lgssm(R), batch, "one-step", num_samples=20, seed=0)
    assert {"observed_data", "posterior_predictive", "log_likelihood"} <= set(idata.groups())
    n_obs = int((batch.observed & batch.valid[..., None]).sum())
    assert idata.posterior_predictive["x"].shape == (1, 20, n_obs)
    az.plot_ppc(idata, num_pp_samples=10)
    az.plot_bpv(idata, kind="t_stat", t_stat="mean")
    az.plot_bpv(idata, kind="p_value")
    path = tmp_path / "ppc.nc"
    idata.to_netcdf(str(path))
    back = az.from_netcdf(str(path))
    np.testing.assert_allclose(back.posterior_predictive["x"].values, idata.posterior_predictive["x"].values)
    np.testing.assert_allclose(back.log_likelihood["x"].values, idata.log_likelihood["x"].values)
    assert back.observed_data.attrs["replicate_kind"] == "one-step"


def test_standardizer_puts_values_on_the_original_scale():
    from deepstate.data import Standardizer

    batch = _simulated(seed=3, B=5, T=10)
    raw = SequenceBatch(x=torch.where(batch.observed, batch.x * 10 + 100, batch.x * 0), valid=batch.valid,
                        observed=batch.observed, lengths=batch.lengths)
    std = Standardizer().fit(raw)
    table, idata = posterior_predictive_check(_lgssm(R), std.transform(raw), "free", num_samples=10, seed=0,
                                              standardizer=std, statistics=("mean",))
    assert table.loc["mean", "observed"] > 50 and table.loc["mean", "replicated_mean"] > 50
    assert float(idata.observed_data["x"].mean()) > 50 and float(idata.posterior_predictive["x"].mean()) > 50


def test_generated_chorale_midi_round_trip(tmp_path):
    from deepstate.checks.statistics import mean_note_duration
    from deepstate.data.midi import midi_to_piano_roll, piano_roll_to_midi, roll_to_notes
    from deepstate.models.rollout import RolloutState, rollout

    torch.manual_seed(0)
    lsm = build("dkf", 88, "bernoulli", **SMALL["dkf"])
    x = rollout(lsm.ssm, RolloutState.prior(lsm.ssm, 1, 1), 24).x[0, 0].numpy()  # [24, 88] sampled 0/1
    assert x.sum() > 0 and set(np.unique(x)) <= {0.0, 1.0}
    path = piano_roll_to_midi(x, tmp_path / "chorale.mid", frame_seconds=0.4)
    back = midi_to_piano_roll(path, frame_seconds=0.4)
    assert back.shape == x.shape
    assert np.array_equal(back, x)  # same notes, same onsets and durations
    assert roll_to_notes(back) == roll_to_notes(x)
    valid = np.ones((1, 24), bool)
    assert mean_note_duration(back[None], valid) == pytest.approx(mean_note_duration(x[None], valid))


def test_estimator_generate_and_check_midi_refusal(tmp_path):
    from deepstate.cli import _is_piano_roll
    from deepstate.estimator import Estimator

    rng = np.random.default_rng(0)
    y = np.cumsum(rng.normal(size=(60, 1)), 0)
    est = Estimator("dkf", **SMALL["dkf"]).fit(y, epochs=1, window=20, progress=False)
    assert est.generate(3, 7).shape == (3, 7, 1)
    assert est.generate(2, 5, prefix=[y[:10], y[:20]]).shape == (2, 2, 5, 1)
    table, idata = est.check(y[:40], kind="reconstruction", num_samples=5)
    assert np.isfinite(table.p_value).all() and "posterior_predictive" in idata.groups()
    assert not _is_piano_roll(est)
    with pytest.raises(ValueError, match="data"):
        est.check(np.zeros((10, 3)), kind="free")


@pytest.mark.parametrize("kwargs, match", [
    (dict(kind="everything"), "kind"),
    (dict(kind="one-step", num_samples=0), "num_samples"),
    (dict(kind="free", num_samples=-3), "num_samples"),
    (dict(kind="free", t0=-1), "t0"),
])
def test_bad_input(kwargs, match):
    lsm, batch = _model("dkf", 2), _batch(2)
    with pytest.raises(ValueError, match=match):
        replicate(lsm, batch, **kwargs)


def test_wrong_dimension_and_unknown_statistic():
    lsm = _model("dkf", 2)
    with pytest.raises(ValueError, match="batch.*D = 3"):
        replicate(lsm, _batch(3), "one-step", 5)
    with pytest.raises(ValueError, match="batch"):
        posterior_predictive_check(lsm, _batch(1), "free", 5)
    with pytest.raises(ValueError, match="statistics"):
        posterior_predictive_check(lsm, _batch(2), "free", 5, statistics=("nope",))


def test_free_running_check_compares_only_the_replicated_stretch():
    """With t0 > 0 the first t0 steps are the data (conditioned on): statistics cover the rest only."""
    batch = _simulated(seed=2, B=6, T=20)
    table, idata = posterior_predictive_check(_lgssm(R), batch, "free", num_samples=20, seed=0, t0=15,
                                              statistics=("mean",))
    x = batch.x.numpy()
    per_seq = [x[b, 15:int(batch.lengths[b])].mean(0) for b in range(6) if int(batch.lengths[b]) > 15]
    assert table.loc["mean", "observed"] == pytest.approx(float(np.mean(per_seq)), rel=1e-9)
    n_free = int(sum(max(0, int(L) - 15) for L in batch.lengths)) * 2  # D = 2
    assert idata.observed_data["x"].size == n_free
