"""deepstate.data: constructors, masks, minibatching, windows, standardisation, synthetic LGSSM."""

from __future__ import annotations

import collections

import numpy as np
import pandas as pd
import pytest
import torch

from deepstate.data import (
    SequenceBatch,
    SequenceDataset,
    Standardizer,
    concat_batches,
    extend_index,
    from_numpy,
    from_pandas,
    minibatches,
    padding_fraction,
    random_stable_lgssm,
    simulate_lgssm,
    sliding_windows,
    split_series,
    with_covariates,
)


def _ragged(n=40, dim=2, seed=0, max_len=60):
    rng = np.random.default_rng(seed)
    lens = rng.integers(1, max_len, size=n)
    seqs = [rng.normal(size=(L, dim)) for L in lens]
    return SequenceBatch.from_sequences(seqs, names=list(range(n)), dtype=torch.float64), seqs


# ---------------------------------------------------------------------------- from_numpy
@pytest.mark.parametrize(
    "shape,expected",
    [((7,), (1, 7, 1)), ((7, 3), (1, 7, 3)), ((4, 7, 3), (4, 7, 3))],
)
def test_from_numpy_shapes(shape, expected):
    b = from_numpy(np.ones(shape))
    assert tuple(b.x.shape) == expected
    assert b.valid.all() and b.observed.all()
    assert b.lengths.tolist() == [expected[1]] * expected[0]


def test_from_numpy_nan_and_lengths():
    a = np.arange(24, dtype=float).reshape(2, 4, 3)
    a[0, 1, 2] = np.nan
    a[1, 3] = np.inf  # in padding: ignored
    b = from_numpy(a, lengths=[4, 3], dtype=torch.float64)
    assert not b.observed[0, 1, 2] and b.x[0, 1, 2] == 0
    assert b.observed.sum() == 4 * 3 + 3 * 3 - 1
    assert b.valid.tolist() == [[True] * 4, [True, True, True, False]]
    assert (b.x[1, 3] == 0).all() and not b.observed[1, 3].any()
    assert torch.isfinite(b.x).all()
    assert b.x.dtype == torch.float64


def test_from_numpy_index_and_covariates():
    idx = pd.date_range("2020-01-01", periods=5, freq="D")
    b = from_numpy(np.zeros((2, 5, 1)), lengths=[5, 3], index=idx, covariates=np.ones((5, 2)))
    assert list(b.index[1]) == list(idx[:3])
    assert b.u.shape == (2, 5, 2) and b.u[1, 3:].abs().sum() == 0 and b.u[0].eq(1).all()
    assert list(extend_index(b.index[0], 2)) == list(pd.date_range("2020-01-06", periods=2, freq="D"))


@pytest.mark.parametrize(
    "array,kwargs,exc,match",
    [
        (np.zeros((2, 3, 4, 5)), {}, ValueError, "array"),
        (np.float64(3.0), {}, ValueError, "array"),
        (np.zeros(0), {}, ValueError, "array.*time step"),
        (np.zeros((0, 3, 1)), {}, ValueError, "array.*sequence"),
        (np.zeros((3, 0)), {}, ValueError, "array.*dimension"),
        (np.array(["a", "b"]), {}, TypeError, "array.*numeric"),
        (np.array([1.0, np.inf]), {}, ValueError, "array.*infinite"),
        (np.zeros((2, 4, 1)), {"lengths": [4]}, ValueError, "lengths"),
        (np.zeros((2, 4, 1)), {"lengths": [4, 0]}, ValueError, "lengths"),
        (np.zeros((2, 4, 1)), {"lengths": [4, 5]}, ValueError, "lengths"),
        (np.zeros((4, 1)), {"lengths": [4]}, ValueError, "lengths"),
        (np.zeros((2, 4, 1)), {"names": ["a"]}, ValueError, "names"),
        (np.zeros((2, 4, 1)), {"index": range(3)}, ValueError, "index"),
        (np.zeros((2, 4, 1)), {"covariates": np.zeros((3, 1))}, ValueError, "covariates"),
        (np.zeros((2, 4, 1)), {"covariates": np.full((4, 1), np.nan)}, ValueError, "covariates.*finite"),
        (np.zeros(4), {"dtype": torch.int64}, TypeError, "dtype"),
    ],
)
def test_from_numpy_bad_input(array, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        from_numpy(array, **kwargs)


# ---------------------------------------------------------------------------- from_pandas
def test_from_pandas_wide_nan():
    idx = pd.Index([2000, 2001, 2002], name="year")
    df = pd.DataFrame({"a": [1.0, np.nan, 3.0], "b": [4.0, 5.0, np.nan]}, index=idx)
    b = from_pandas(df)
    assert tuple(b.x.shape) == (2, 3, 1) and b.names == ["a", "b"]
    assert b.observed[:, :, 0].tolist() == [[True, False, True], [True, True, False]]
    assert b.x[0, 1, 0] == 0 and b.x[1, 2, 0] == 0
    assert torch.isfinite(b.x).all()
    assert list(b.index[0]) == [2000, 2001, 2002]
    m = from_pandas(df, as_multivariate=True)
    assert tuple(m.x.shape) == (1, 3, 2)
    assert m.observed[0].tolist() == [[True, True], [False, True], [True, False]]
    assert list(extend_index(m.index[0], 2)) == [2003, 2004]
    # a Series, and trailing NaN as padding
    s = from_pandas(df["b"], trim_trailing_nan=False)
    assert s.names == ["b"] and s.lengths.tolist() == [3]
    t = from_pandas(df, trim_trailing_nan=True)
    assert t.lengths.tolist() == [3, 2] and len(t.index[1]) == 2


def test_from_pandas_long():
    df = pd.DataFrame(
        {
            "id": ["b", "b", "a", "a", "a"],
            "t": [2, 1, 1, 3, 2],
            "v": [20.0, 10.0, 1.0, 3.0, np.nan],
            "w": [0.0, 0.0, 1.0, 1.0, 1.0],
            "c": [9.0, 8.0, 1.0, 3.0, 2.0],
        }
    )
    b = from_pandas(df, id_col="id", time_col="t", value_cols=["v", "w"], covariate_cols="c", dtype=torch.float64)
    assert b.names == ["b", "a"] and b.lengths.tolist() == [2, 3]
    assert b.x[0, :2, 0].tolist() == [10.0, 20.0]  # sorted by time
    assert b.x[1, :, 0].tolist() == [1.0, 0.0, 3.0]
    assert b.observed[1, :, 0].tolist() == [True, False, True] and b.observed[1, :, 1].all()
    assert b.u[1, :, 0].tolist() == [1.0, 2.0, 3.0] and b.u[0, 2, 0] == 0
    assert list(b.index[1]) == [1, 2, 3] and not b.valid[0, 2]


@pytest.mark.parametrize(
    "data,kwargs,exc,match",
    [
        (np.zeros(3), {}, TypeError, "data"),
        (pd.DataFrame(), {}, ValueError, "data"),
        (pd.DataFrame({"a": []}, dtype=float), {}, ValueError, "data.*row"),
        (pd.DataFrame({"a": [1.0], "s": ["x"]}), {}, TypeError, "non-numeric.*'s'"),
        (pd.DataFrame({"a": [1.0, np.inf]}), {}, ValueError, "infinite"),
        (pd.DataFrame({"a": [np.nan]}), {"trim_trailing_nan": True}, ValueError, "all NaN"),
        (pd.DataFrame({"a": [1.0]}), {"value_cols": "a"}, ValueError, "value_cols.*id_col"),
        (pd.DataFrame({"id": [1], "v": [1.0]}), {"id_col": "id"}, ValueError, "value_cols"),
        (pd.DataFrame({"id": [1], "v": [1.0]}), {"id_col": "id", "value_cols": "nope"}, ValueError, "value_cols.*'nope'"),
        (pd.DataFrame({"id": [1], "v": [1.0]}), {"id_col": "id", "value_cols": []}, ValueError, "value_cols"),
        (pd.DataFrame({"id": [1, 1], "t": [0, 0], "v": [1.0, 2.0]}), {"id_col": "id", "time_col": "t", "value_cols": "v"},
         ValueError, "duplicate"),
        (pd.DataFrame({"id": [1], "v": ["x"]}), {"id_col": "id", "value_cols": "v"}, TypeError, "value_cols"),
        (pd.DataFrame({"a": [1.0, 2.0]}), {"covariates": np.zeros((3, 1))}, ValueError, "covariates"),
    ],
)
def test_from_pandas_bad_input(data, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        from_pandas(data, **kwargs)


# ---------------------------------------------------------------------------- SequenceBatch core
@pytest.mark.parametrize(
    "seqs,kwargs,exc,match",
    [
        ([], {}, ValueError, "sequences.*empty"),
        (np.zeros((2, 3)), {}, TypeError, "sequences"),
        ([np.zeros((0, 2))], {}, ValueError, r"sequences\[0\].*length 0"),
        ([np.zeros((3, 2)), np.zeros((3, 3))], {}, ValueError, r"sequences\[1\]"),
        ([np.zeros((3, 2, 2))], {}, ValueError, r"sequences\[0\]"),
        ([np.array(["a"])], {}, TypeError, r"sequences\[0\]"),
        ([np.zeros(3)], {"covariates": [np.zeros(2)]}, ValueError, r"covariates\[0\]"),
        ([np.zeros(3)], {"index": [range(2)]}, ValueError, r"index\[0\]"),
    ],
)
def test_from_sequences_bad_input(seqs, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        SequenceBatch.from_sequences(seqs, **kwargs)


def test_classmethods_and_getitem_keep_names_index():
    b = SequenceBatch.from_pandas(pd.DataFrame({"a": [1.0, 2.0], "b": [3.0, 4.0]}))
    sub = b[1]
    assert sub.names == ["b"] and list(sub.index[0]) == [0, 1]
    assert b[torch.tensor([True, False])].names == ["a"]
    assert b[np.int64(0)].names == ["a"] and b[-1].names == ["b"]
    with pytest.raises(IndexError, match="key"):
        b[[5]]
    assert SequenceBatch.from_numpy(np.zeros(3)).x.shape == (1, 3, 1)


def test_concat_batches_pads_and_keeps_values():
    a = from_numpy(np.arange(3.0), names=["a"])
    b = from_numpy(np.arange(12.0).reshape(2, 3, 2)[:, :, :1].repeat(2, axis=1)[:, :5], names=["b", "c"], lengths=[5, 2])
    c = concat_batches([a, b])
    assert c.x.shape == (3, 5, 1) and c.lengths.tolist() == [3, 5, 2] and c.names == ["a", "b", "c"]
    assert torch.equal(c.x[0, :3], a.x[0]) and not c.valid[0, 3:].any()
    for bad, exc in [([], ValueError), (a, TypeError), ([a, "x"], TypeError), ([a, from_numpy(np.zeros((3, 2)))], ValueError),
                     ([a, a.double()], TypeError), ([a, a.with_covariates(np.zeros(3))], ValueError)]:
        with pytest.raises(exc, match="batches"):
            concat_batches(bad)


def test_with_covariates():
    b, _ = _ragged(n=3, dim=1, max_len=6)
    u_list = [np.full((int(L), 2), float(i)) for i, L in enumerate(b.lengths)]
    ub = with_covariates(b, u_list)
    assert ub.u.shape == (3, b.max_length, 2) and ub.u.dtype == b.x.dtype
    assert (ub.u[~b.valid] == 0).all() and ub.u[2, 0, 0] == 2.0
    with pytest.raises(TypeError, match="batch"):
        with_covariates(np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match="u"):
        with_covariates(b, u_list[:2])
    with pytest.raises(ValueError, match="u"):
        b.with_covariates(np.zeros((b.max_length + 1, 1)))


# ---------------------------------------------------------------------------- minibatching
def _names(batches):
    return [n for mb in batches for n in mb.names]


def test_minibatches_bucketing_same_sequences_less_padding():
    full, seqs = _ragged(n=101, seed=1)
    plain = list(minibatches(full, 8, seed=3))
    bucket = list(minibatches(full, 8, seed=3, bucket_by_length=True))
    assert sorted(_names(plain)) == list(range(101)) == sorted(_names(bucket))
    assert collections.Counter(_names(bucket)) == collections.Counter(range(101))
    for mb in bucket:  # every sub-batch carries exactly the original sequences, trimmed
        assert mb.max_length == int(mb.lengths.max())
        for name, s in zip(mb.names, mb.sequences()):
            np.testing.assert_array_equal(s.numpy(), seqs[name])
    assert padding_fraction(bucket) < 0.5 * padding_fraction(plain)
    # batch order is shuffled (not sorted by length) and lengths within a bucket are close
    maxes = [mb.max_length for mb in bucket]
    assert maxes != sorted(maxes)


def test_minibatches_deterministic_and_no_global_rng():
    full, _ = _ragged(n=30)
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    runs = [_names(minibatches(full, 4, seed=7, bucket_by_length=b)) for b in (False, False, True, True)]
    assert torch.equal(torch_state, torch.get_rng_state())
    assert np.array_equal(np_state[1], np.random.get_state()[1])
    assert runs[0] == runs[1] and runs[2] == runs[3]
    assert _names(minibatches(full, 4, seed=8)) != runs[0]
    assert _names(minibatches(full, 4, shuffle=False)) == list(range(30))
    assert [len(mb) for mb in minibatches(full, 4, shuffle=False, drop_last=True)] == [4] * 7


def test_sequence_dataset_and_bad_input():
    full, seqs = _ragged(n=10)
    ds = SequenceDataset(seqs)
    assert len(ds) == 10 and ds.num_frames == full.num_frames and ds.num_batches(3) == 4
    assert sum(len(mb) for mb in ds.batches(3, seed=0)) == 10
    for kwargs, exc, match in [
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"batch_size": 2.5}, ValueError, "batch_size"),
        ({"batch_size": 2, "seed": "x"}, TypeError, "seed"),
    ]:
        with pytest.raises(exc, match=match):
            list(minibatches(full, **kwargs))
    with pytest.raises(TypeError, match="data"):
        list(minibatches(np.zeros((3, 4)), 2))
    with pytest.raises(ValueError, match="sequences"):
        list(minibatches([], 2))


# ---------------------------------------------------------------------------- windows and splits
def test_split_series_contiguous():
    s = pd.Series(np.arange(100.0), index=pd.RangeIndex(1900, 2000), name="y")
    sp = split_series(s, valid_fraction=0.1, test_fraction=0.2)
    assert [sp[k].max_length for k in ("train", "valid", "test")] == [70, 10, 20]
    assert sp["valid"].x[0, 0, 0] == 70 and sp["test"].x[0, -1, 0] == 99
    assert sp["valid"].index[0][0] == 1970 and list(extend_index(sp["train"].index[0], 1)) == [1970]
    assert split_series(np.arange(10.0), 0.0, 0.3)["valid"] is None
    for args, exc, match in [
        ((0.5, 0.5), ValueError, "valid_fraction, test_fraction"),
        ((-0.1, 0.1), ValueError, "valid_fraction"),
        ((0.1, "x"), TypeError, "test_fraction"),
        ((0.01, 0.1), ValueError, "valid_fraction"),
    ]:
        with pytest.raises(exc, match=match):
            split_series(np.arange(20.0), *args)
    with pytest.raises(ValueError, match="series"):
        split_series(np.zeros((2, 3, 1)), 0.1, 0.1)


def test_sliding_windows():
    x = np.stack([np.arange(10.0), -np.arange(10.0)], axis=1)
    x[4, 1] = np.nan
    w = sliding_windows(x, window=4, stride=3)
    assert w.x.shape == (3, 4, 2) and w.names == [0, 3, 6]
    assert w.x[1, :, 0].tolist() == [3.0, 4.0, 5.0, 6.0]
    assert not w.observed[1, 1, 1] and w.observed[1, 1, 0]
    assert sliding_windows(x, 10).x.shape == (1, 10, 2)
    for kwargs, match in [({"window": 11}, "window"), ({"window": 0}, "window"), ({"window": 2, "stride": 0}, "stride")]:
        with pytest.raises(ValueError, match=match):
            sliding_windows(x, **kwargs)
    with pytest.raises(ValueError, match="series"):
        sliding_windows(from_numpy(np.zeros((2, 5, 1))), 2)


# ---------------------------------------------------------------------------- standardisation
def test_standardizer_roundtrip_fit_on_train_only():
    rng = np.random.default_rng(0)
    train = rng.normal(loc=[5.0, -3.0], scale=[2.0, 0.5], size=(6, 30, 2))
    train[0, 3, 0] = np.nan
    tb = from_numpy(train, lengths=[30, 10, 30, 20, 30, 5], dtype=torch.float64)
    vb = from_numpy(rng.normal(loc=100.0, size=(2, 30, 2)), dtype=torch.float64)
    sc = Standardizer().fit(tb)
    # statistics: observed values only (padding and NaN ignored)
    assert not tb.observed[0, 3, 0] and not tb.valid[1, 10:].any()
    for d in range(2):
        vals = tb.x[..., d][tb.observed[..., d]].numpy()
        assert np.isclose(sc.mean[d].item(), vals.mean()) and np.isclose(sc.std[d].item(), vals.std())
    z = sc.transform(tb)
    assert abs(float(z.x[..., 0][z.observed[..., 0]].mean())) < 1e-10
    assert (z.x[~z.observed] == 0).all() and torch.equal(z.observed, tb.observed)
    back = sc.inverse_transform(z)
    assert torch.allclose(back.x[tb.observed], tb.x[tb.observed], atol=1e-12)
    assert torch.equal(back.observed, tb.observed) and (back.x[~tb.observed] == 0).all()
    # fitted on train only: valid is transformed with train's statistics, not its own
    zv = sc.transform(vb)
    assert float(zv.x[..., 0].mean()) > 10
    # tensors / arrays [..., D]
    pred = torch.randn(7, 3, 2, dtype=torch.float64)
    assert torch.allclose(sc.inverse_transform(pred), pred * sc.std + sc.mean)
    assert np.allclose(sc.inverse_transform(pred.numpy()), (pred * sc.std + sc.mean).numpy())
    assert torch.allclose(sc.inverse_transform_scale(torch.ones(2, dtype=torch.float64)), sc.std)
    # persistence
    sc2 = Standardizer().load_state_dict(sc.state_dict())
    assert torch.equal(sc2.transform(vb).x, zv.x)


def test_standardizer_floor_and_errors():
    b = from_numpy(np.ones((1, 5, 1)) * 3.0)
    sc = Standardizer(min_std=1e-3).fit(b)
    assert sc.std.item() == pytest.approx(1e-3)
    assert torch.isfinite(sc.transform(b).x).all()
    with pytest.raises(RuntimeError, match="not fitted"):
        Standardizer().transform(b)
    with pytest.raises(TypeError, match="batch"):
        Standardizer().fit(np.zeros((3, 1)))
    with pytest.raises(ValueError, match="D=1"):
        sc.inverse_transform(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="D=1"):
        sc.transform(from_numpy(np.zeros((3, 2))))
    with pytest.raises(ValueError, match="min_std"):
        Standardizer(min_std=0)
    with pytest.raises(ValueError, match="state"):
        Standardizer().load_state_dict({"mean": torch.zeros(2)})
    with pytest.raises(ValueError, match="state"):
        Standardizer().load_state_dict({"mean": torch.zeros(2), "std": torch.zeros(2)})


# ---------------------------------------------------------------------------- synthetic LGSSM
def test_simulate_ar1_statistics():
    a, q, r = 0.8, 0.36, 0.25  # stationary state variance q / (1 - a^2) = 1
    batch, z = simulate_lgssm(A=[[a]], Q=[[q]], C=[[1.0]], R=[[r]], m0=[0.0], P0=[[1.0]], T=20, num_sequences=4000, seed=0)
    assert batch.x.dtype == torch.float64 and batch.x.shape == (4000, 20, 1) and z.shape == (4000, 20, 1)
    x = batch.x[..., 0]
    assert abs(float(x.mean())) < 0.05
    assert float(x.var()) == pytest.approx(1.0 + r, abs=0.06)
    lag1 = float((x[:, 1:] * x[:, :-1]).mean())
    assert lag1 == pytest.approx(a, abs=0.06)
    lag2 = float((x[:, 2:] * x[:, :-2]).mean())
    assert lag2 == pytest.approx(a * a, abs=0.06)
    assert float((batch.x - z).var()) == pytest.approx(r, abs=0.02)
    again, z2 = simulate_lgssm(A=a, Q=q, C=1.0, R=r, m0=0.0, P0=1.0, T=20, num_sequences=4000, seed=0)
    assert torch.equal(again.x, batch.x) and torch.equal(z2, z)


def test_simulate_full_R_lengths_missing():
    p = random_stable_lgssm(3, 2, seed=4)
    R = torch.tensor([[0.5, 0.3], [0.3, 0.4]], dtype=torch.float64)
    batch, z = simulate_lgssm(p["A"], p["Q"], p["C"], R, p["m0"], p["P0"], T=30, num_sequences=400, seed=1,
                              lengths=[30, 10] * 200, missing_prob=0.3)
    v = batch.observed.all(-1)
    resid = (batch.x - z @ p["C"].T)[v]
    assert torch.allclose(torch.cov(resid.T), R, atol=0.04)
    assert not batch.valid[1, 10:].any() and (z[1, 10:] == 0).all() and (batch.x[1, 10:] == 0).all()
    frac = 1 - batch.observed[batch.valid].double().mean()
    assert float(frac) == pytest.approx(0.3, abs=0.02)
    assert (batch.x[~batch.observed] == 0).all()
    # initial state ~ N(m0, P0)
    assert torch.allclose(z[:, 0].mean(0), p["m0"], atol=0.2)


def test_random_stable_lgssm():
    for seed in range(5):
        p = random_stable_lgssm(4, 3, seed=seed)
        assert all(t.dtype == torch.float64 for t in p.values())
        assert float(torch.linalg.eigvals(p["A"]).abs().max()) < 1
        assert float(torch.linalg.eigvalsh(p["Q"]).min()) > 0 and float(torch.linalg.eigvalsh(p["P0"]).min()) > 0
        assert torch.equal(p["R"], torch.diag(torch.diagonal(p["R"]))) and (torch.diagonal(p["R"]) > 0).all()
        assert p["C"].shape == (3, 4) and p["m0"].shape == (4,)
    assert torch.equal(random_stable_lgssm(2, 2, seed=1)["A"], random_stable_lgssm(2, 2, seed=1)["A"])
    with pytest.raises(ValueError, match="state_dim"):
        random_stable_lgssm(0, 2)
    with pytest.raises(ValueError, match="max_spectral_radius"):
        random_stable_lgssm(2, 2, max_spectral_radius=1.5)


@pytest.mark.parametrize(
    "change,exc,match",
    [
        ({"A": np.zeros((2, 3))}, ValueError, "A"),
        ({"Q": np.array([[-1.0]])}, ValueError, "Q.*semi-definite"),
        ({"Q": np.zeros((2, 2))}, ValueError, "Q"),
        ({"C": np.zeros((1, 2))}, ValueError, "C"),
        ({"R": np.array([[1.0, 2.0], [0.0, 1.0]])}, ValueError, "R"),
        ({"m0": np.zeros(2)}, ValueError, "m0"),
        ({"P0": np.array([[np.nan]])}, ValueError, "P0"),
        ({"A": np.array([["a"]])}, TypeError, "A"),
        ({"T": 0}, ValueError, "T"),
        ({"num_sequences": 0}, ValueError, "num_sequences"),
        ({"lengths": [3]}, ValueError, "lengths"),
        ({"lengths": [6, 1]}, ValueError, "lengths"),
        ({"missing_prob": 1.0}, ValueError, "missing_prob"),
        ({"dtype": torch.int32}, TypeError, "dtype"),
    ],
)
def test_simulate_bad_input(change, exc, match):
    kwargs = dict(A=[[0.5]], Q=[[1.0]], C=[[1.0]], R=[[1.0]], m0=[0.0], P0=[[1.0]], T=5, num_sequences=2, seed=0)
    kwargs.update(change)
    with pytest.raises(exc, match=match):
        simulate_lgssm(**kwargs)
