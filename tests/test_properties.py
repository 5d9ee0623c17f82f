"""Property-based invariants (issue #14, item 3), with hypothesis.

* per-sequence particle bounds do not depend on padding, on other sequences in the batch, or on the
  order of the sequences (noise and resampling uniforms injected, float64, exact up to round-off);
* resampling: normalised weights (the CDF ends at 1), ancestors in range, ESS in [1, N];
* particle bounds (FIVO, IWAE) never above the exact Kalman log-likelihood beyond Monte Carlo error;
* ``SequenceBatch`` round trips: list -> batch -> list, pandas -> batch -> pandas;
* ``Standardizer``: standardise -> inverse is the identity on observed values.

Every test is derandomised (``derandomize=True``) with about 20 examples, so the file is
deterministic and stays within the CI budget.
"""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deepstate.data import SequenceBatch, Standardizer, concat_batches, from_pandas
from deepstate.data.synthetic import random_stable_lgssm
from deepstate.inference.objectives import FIVO, IWAE
from deepstate.inference.particle import particle_filter, reparameterized_sample
from deepstate.inference.resampling import (
    _cdf,
    effective_sample_size,
    multinomial_resample,
    systematic_resample,
)
from deepstate.models import build
from deepstate.models.base import LatentSequenceModel
from deepstate.models.lgssm import LinearGaussianSSM

PROPS = settings(derandomize=True, deadline=None, max_examples=20)
TINY = dict(z_dim=2, rnn_dim=4, transition_dim=4, emission_dim=4)

lengths_st = st.lists(st.integers(1, 10), min_size=1, max_size=4)
resample_st = st.sampled_from(["never", "ess", "always"])


@pytest.fixture(scope="module")
def dkf():
    torch.manual_seed(0)
    return build("dkf", 2, "gaussian", **TINY).double().eval()


def _batch(lengths, seed, D=2):
    rng = np.random.default_rng(seed)
    seqs = [rng.normal(size=(L, D)) for L in lengths]
    return SequenceBatch.from_sequences(seqs, dtype=torch.float64)


def _noise(T, N, B, Z, seed):
    g = torch.Generator().manual_seed(seed)
    eps = torch.randn(T, N, B, Z, generator=g, dtype=torch.float64)
    uni = torch.rand(T, N, B, generator=g, dtype=torch.float64)
    return eps, uni


def _sampler(eps):
    def sampler(t, q, shape):
        return reparameterized_sample(q, eps[t, : shape[0], : shape[1]])

    return sampler


def _log_z(lsm, batch, N, resample, eps, uni):
    with torch.no_grad():
        return particle_filter(lsm, batch, N, resample=resample, sampler=_sampler(eps), uniforms=uni).log_z


# ---------------------------------------------------------------------------- particle bounds
@PROPS
@given(lengths=lengths_st, extra_steps=st.integers(1, 6), others=st.lists(st.integers(1, 12), max_size=2),
       resample=resample_st, seed=st.integers(0, 2**16), N=st.integers(1, 5))
def test_bounds_invariant_to_padding_and_other_sequences(dkf, lengths, extra_steps, others, resample, seed, N):
    batch = _batch(lengths, seed)
    big = batch if not others else concat_batches([batch, _batch(others, seed + 1)])
    big = big.pad_to(big.max_length + extra_steps)
    B, T = big.valid.shape
    eps, uni = _noise(T, N, B, dkf.z_dim, seed)
    small = _log_z(dkf, batch, N, resample, eps, uni[:, :, : batch.batch_size])
    padded = _log_z(dkf, big, N, resample, eps, uni)
    assert torch.isfinite(small).all()
    torch.testing.assert_close(padded[: batch.batch_size], small, rtol=1e-10, atol=1e-10)


@PROPS
@given(lengths=st.lists(st.integers(1, 10), min_size=2, max_size=5), resample=resample_st,
       seed=st.integers(0, 2**16), N=st.integers(1, 5), data=st.data())
def test_bounds_invariant_to_batch_order(dkf, lengths, resample, seed, N, data):
    batch = _batch(lengths, seed)
    perm = data.draw(st.permutations(range(len(lengths))))
    B, T = batch.valid.shape
    eps, uni = _noise(T, N, B, dkf.z_dim, seed)
    ref = _log_z(dkf, batch, N, resample, eps, uni)
    p = torch.as_tensor(perm)
    shuffled = _log_z(dkf, batch[list(perm)], N, resample, eps[:, :, p], uni[:, :, p])
    torch.testing.assert_close(shuffled, ref[p], rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------- resampling
@PROPS
@given(N=st.integers(1, 100), B=st.integers(1, 4), scale=st.sampled_from([1e-3, 1.0, 30.0, 1e3]),
       seed=st.integers(0, 2**16), scheme=st.sampled_from(["multinomial", "systematic"]))
def test_resampling_weights_normalised(N, B, scale, seed, scheme):
    g = torch.Generator().manual_seed(seed)
    lw = scale * torch.randn(N, B, generator=g, dtype=torch.float64) - 500.0  # far from 0: normalisation matters
    cdf = _cdf(lw)
    w = torch.softmax(lw, 0)
    assert torch.isfinite(cdf).all() and (w >= 0).all()
    torch.testing.assert_close(cdf[-1], torch.ones(B, dtype=torch.float64), rtol=0, atol=1e-12)
    assert (cdf[1:] >= cdf[:-1]).all()
    uni = torch.rand(N, B, generator=g, dtype=torch.float64)
    resample = multinomial_resample if scheme == "multinomial" else systematic_resample
    anc = resample(lw, uni)
    assert anc.shape == (N, B) and anc.dtype == torch.int64
    assert int(anc.min()) >= 0 and int(anc.max()) <= N - 1
    # every ancestor has positive weight: nothing is drawn from a zero-probability particle
    assert (torch.gather(w, 0, anc) > 0).all()
    ess = effective_sample_size(lw)
    assert (ess >= 1 - 1e-9).all() and (ess <= N + 1e-9).all()
    # ESS is invariant to a constant shift of the log-weights (the weights are normalised)
    torch.testing.assert_close(effective_sample_size(lw + 1e4), ess)


# ---------------------------------------------------------------------------- bounds vs exact
@PROPS
@given(seed=st.integers(0, 2**16), T=st.integers(2, 25), N=st.sampled_from([1, 3, 10]),
       objective=st.sampled_from(["fivo", "iwae"]))
def test_particle_bounds_below_exact_lgssm_likelihood(seed, T, N, objective):
    params = random_stable_lgssm(2, 1, seed=seed)
    ssm = LinearGaussianSSM(2, 1, A=params["A"], Q=params["Q"], C=params["C"], R=torch.diagonal(params["R"]),
                            m0=params["m0"], P0=params["P0"], dtype=torch.float64)
    lsm = LatentSequenceModel(ssm)  # bootstrap proposal
    _, x = lsm.sample(1, T, generator=torch.Generator().manual_seed(seed))
    R = 32  # independent repeats of the estimator, as copies of the sequence in one batch
    batch = SequenceBatch.from_sequences([x[0]] * R, dtype=torch.float64)
    torch.manual_seed(seed)
    obj = FIVO(N) if objective == "fivo" else IWAE(N)
    with torch.no_grad():
        exact = float(ssm.log_likelihood(batch)[0])
        lz = obj.bound(lsm, batch).log_z
    assert torch.isfinite(lz).all()
    mean, se = float(lz.mean()), float(lz.std()) / math.sqrt(R)
    assert mean <= exact + 4 * se + 1e-8, (objective, N, T, mean, se, exact)


# ---------------------------------------------------------------------------- SequenceBatch round trips
def _nan_equal(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return a.shape == b.shape and np.array_equal(np.isnan(a), np.isnan(b)) and np.array_equal(
        np.nan_to_num(a), np.nan_to_num(b))


@PROPS
@given(lengths=st.lists(st.integers(1, 12), min_size=1, max_size=5), D=st.integers(1, 3),
       nan_frac=st.sampled_from([0.0, 0.2, 0.6]), seed=st.integers(0, 2**16))
def test_sequence_batch_list_round_trip(lengths, D, nan_frac, seed):
    rng = np.random.default_rng(seed)
    seqs = []
    for L in lengths:
        a = rng.normal(scale=10.0 ** rng.integers(-3, 6), size=(L, D))
        a[rng.random((L, D)) < nan_frac] = np.nan
        seqs.append(a)
    batch = SequenceBatch.from_sequences(seqs, dtype=torch.float64)
    assert batch.lengths.tolist() == lengths
    back = batch.sequences()
    assert len(back) == len(seqs)
    for a, b in zip(seqs, back):
        assert _nan_equal(a, b.numpy())
    # and the batch built again from the returned list is the same batch
    again = SequenceBatch.from_sequences(back, dtype=torch.float64)
    for f in ("x", "valid", "observed", "lengths"):
        assert torch.equal(getattr(again, f), getattr(batch, f)), f


def _to_frame(batch, multivariate, columns):
    """A wide DataFrame rebuilt from a batch made by ``from_pandas`` (index and names kept)."""
    seqs = batch.sequences()
    if multivariate:
        return pd.DataFrame(seqs[0].numpy(), index=batch.index[0], columns=columns)
    return pd.DataFrame({name: pd.Series(s[:, 0].numpy(), index=ix) for name, s, ix in
                         zip(batch.names, seqs, batch.index)})


@PROPS
@given(T=st.integers(1, 30), C=st.integers(1, 4), multivariate=st.booleans(),
       kind=st.sampled_from(["range", "dates", "floats"]), nan_frac=st.sampled_from([0.0, 0.3]),
       seed=st.integers(0, 2**16))
def test_pandas_round_trip(T, C, multivariate, kind, nan_frac, seed):
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(T, C)) * 10.0 ** rng.integers(-2, 5)
    values[rng.random((T, C)) < nan_frac] = np.nan
    index = {"range": pd.RangeIndex(T), "dates": pd.date_range("2000-01-01", periods=T, freq="D"),
             "floats": pd.Index(np.cumsum(rng.random(T) + 0.1))}[kind]
    df = pd.DataFrame(values, index=index, columns=[f"c{i}" for i in range(C)])
    batch = from_pandas(df, as_multivariate=multivariate, dtype=torch.float64)
    assert batch.x.shape == ((1, T, C) if multivariate else (C, T, 1))
    back = _to_frame(batch, multivariate, df.columns)
    pd.testing.assert_frame_equal(back, df, check_freq=False, check_exact=True)
    # a Series too
    s = df["c0"]
    b1 = from_pandas(s, dtype=torch.float64)
    pd.testing.assert_series_equal(pd.Series(b1.sequences()[0][:, 0].numpy(), index=b1.index[0], name=b1.names[0]),
                                   s, check_freq=False, check_exact=True)


# ---------------------------------------------------------------------------- Standardizer
@PROPS
@given(lengths=st.lists(st.integers(1, 15), min_size=1, max_size=4), D=st.integers(1, 3),
       log_scale=st.integers(-4, 6), shift=st.sampled_from([0.0, -3.0, 1e4]), constant=st.booleans(),
       seed=st.integers(0, 2**16))
def test_standardize_then_inverse_is_identity(lengths, D, log_scale, shift, constant, seed):
    rng = np.random.default_rng(seed)
    seqs = []
    for L in lengths:
        a = shift + (np.full((L, D), 2.5) if constant else rng.normal(size=(L, D))) * 10.0 ** log_scale
        a[rng.random((L, D)) < 0.2] = np.nan
        seqs.append(a)
    batch = SequenceBatch.from_sequences(seqs, dtype=torch.float64)
    std = Standardizer().fit(batch)
    z = std.transform(batch)
    assert torch.isfinite(z.x).all()
    back = std.inverse_transform(z)
    obs = batch.observed
    assert torch.equal(back.observed, obs) and torch.equal(back.valid, batch.valid)
    scale = max(1.0, float(batch.x.abs().max()))
    torch.testing.assert_close(back.x[obs], batch.x[obs], rtol=1e-12, atol=1e-12 * scale)
    assert (back.x[~obs] == 0).all()
    # the tensor path agrees with the batch path
    torch.testing.assert_close(std.inverse_transform(z.x)[obs], back.x[obs])
