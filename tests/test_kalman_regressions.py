"""Regression tests for the exact (Kalman) path: issues #9 items 2-4 and #10 items 6-7.

* padded steps change no number, even when the prediction would overflow (float32 and float64);
* the RTS smoother and the exact-posterior guide stay positive definite in float32;
* the DeepState model's season phase follows each step's absolute position (chunks, windows,
  step-by-step continuation);
* a full (non-diagonal) observation covariance ``R``, with missing values, against statsmodels;
* one-step-ahead observation predictive moments, and H appended fully-missing steps as exact
  forecasts, against statsmodels' ``get_forecast``.
"""

import numpy as np
import pytest
import torch

from deepstate.data import SequenceBatch
from deepstate.inference.trainer import iterate_chunks
from deepstate.models import build
from deepstate.models.lgssm import ExactPosteriorGuide, LinearGaussianSSM

from oracles import statsmodels_ssm


# ---------------------------------------------------------------------------- 1. padding
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_long_padding_with_explosive_transition_changes_nothing(dtype):
    """|eig(A)| > 1 over ~1,000 padded steps: predictions used to overflow (0 * inf = NaN)."""
    ssm = LinearGaussianSSM(1, 1, A=[[1.05]], Q=[[0.1]], C=[[1.0]], R=[0.1], dtype=dtype)
    g = torch.Generator().manual_seed(0)
    long = torch.randn(1000, 1, generator=g, dtype=dtype) * 0.1
    short = torch.randn(10, 1, generator=g, dtype=dtype)
    both = SequenceBatch.from_sequences([long, short], dtype=dtype)
    alone = SequenceBatch.from_sequences([short], dtype=dtype)
    with torch.no_grad():
        ll = ssm.log_likelihood(both)
        ref = ssm.log_likelihood(alone)
        assert torch.isfinite(ref).all()
        assert torch.isfinite(ll[1]) and ll[1].item() == pytest.approx(ref[0].item(), rel=1e-5)
        sm_both, sm_alone = ssm.smooth(both), ssm.smooth(alone)
        assert torch.allclose(sm_both.mean[1, :10], sm_alone.mean[0], rtol=1e-4, atol=1e-5)
        assert torch.allclose(sm_both.cov[1, :10], sm_alone.cov[0], rtol=1e-4, atol=1e-6)
        # the padded steps hold the last moments (nothing overflows there either)
        kf = ssm.kalman(both)
        assert torch.isfinite(kf.predicted_cov[1]).all() and torch.isfinite(kf.filtered_cov[1]).all()
        assert torch.allclose(kf.filtered_cov[1, 10:], kf.filtered_cov[1, 9:10].expand(990, 1, 1), rtol=1e-5)
        assert torch.allclose(kf.predicted_mean[1, 10:], kf.filtered_mean[1, 9:10].expand(990, 1), rtol=1e-5)


# ---------------------------------------------------------------------------- 2. float32 PD
def _local_linear_trend(dtype):
    return LinearGaussianSSM(2, 1, A=[[1.0, 1.0], [0.0, 1.0]], Q=np.diag([1e-4, 1e-6]), C=[[1.0, 0.0]], R=[1e-2],
                             m0=[0.0, 0.0], P0=1e4 * np.eye(2), dtype=dtype)


def test_smoother_and_exact_guide_positive_definite_float32():
    rng = np.random.RandomState(0)
    series = np.cumsum(rng.randn(500)) * 10 + 1000
    batch = SequenceBatch.from_sequences([series], dtype=torch.float32)
    ssm = _local_linear_trend(torch.float32)
    with torch.no_grad():
        sm32 = ssm.smooth(batch)
        eig = torch.linalg.eigvalsh(sm32.cov.double())
        assert (eig > 0).all(), eig.min()
        enc = ExactPosteriorGuide(ssm).encode(batch, None)  # used to fail its Cholesky
        assert torch.isfinite(enc["scale_tril"]).all()
        # and agrees with float64
        sm64 = _local_linear_trend(torch.float64).smooth(batch.double())
    # (a stiff problem: P0 = 1e4 I against R = 1e-2, so float32 agrees only to a few digits)
    assert torch.allclose(sm32.mean.double(), sm64.mean, rtol=5e-3, atol=1e-2)


# ---------------------------------------------------------------------------- 3. season phase
def _season_index(c):
    return c["a"][..., 2:].argmax(-1)


def test_deepstate_season_phase_follows_absolute_position():
    torch.manual_seed(0)
    lsm = build("deepstate", 1, "gaussian", season_length=4, rnn_dim=3, hidden_dim=3)
    ssm = lsm.ssm
    b = SequenceBatch.from_sequences([torch.randn(10, 1), torch.randn(7, 1)])
    whole = _season_index(ssm.features(b))
    assert whole[0].tolist() == [t % 4 for t in range(10)]
    for chunk, rows in iterate_chunks(b, 3):
        t0 = int(chunk.offset[0])
        got = _season_index(ssm.features(chunk))
        for i, r in enumerate(rows.tolist()):
            L = int(chunk.lengths[i])
            assert got[i, :L].tolist() == whole[r, t0 : t0 + L].tolist()
    # step-by-step: continuing a history of T steps gives season T % S at step T
    f = ssm.feature_initial((2,), start=10)
    _, c = ssm.feature_step(f, torch.zeros(2, 1), torch.zeros(2, 1, dtype=torch.bool))
    assert _season_index(c).tolist() == [10 % 4, 10 % 4]
    # and stepping from 0 gives what features gives
    f = ssm.feature_initial((1,))
    idx = []
    for t in range(10):
        f, c = ssm.feature_step(f, torch.zeros(1, 1), torch.zeros(1, 1, dtype=torch.bool))
        idx.append(int(_season_index(c)[0]))
    assert idx == whole[0].tolist()


@pytest.mark.parametrize("method", ["parallel", "sequential"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_long_padding_both_methods(method, dtype):
    from deepstate.kalman import kalman_filter

    A, Q, C, r = (torch.tensor(v, dtype=dtype) for v in ([[1.05]], [[0.1]], [[1.0]], [0.1]))
    m0, P0 = torch.zeros(1, dtype=dtype), torch.eye(1, dtype=dtype)
    g = torch.Generator().manual_seed(0)
    b = SequenceBatch.from_sequences([torch.randn(1000, 1, generator=g) * 0.1, torch.randn(10, 1, generator=g)],
                                     dtype=dtype)
    kf = kalman_filter(b.x, b.observed, b.valid, A, Q, C, r, m0, P0, method=method)
    kf1 = kalman_filter(b.x[1:, :10], b.observed[1:, :10], b.valid[1:, :10], A, Q, C, r, m0, P0, method=method)
    assert torch.isfinite(kf.filtered_cov).all() and torch.isfinite(kf.predicted_cov).all()
    assert kf.log_likelihood[1].item() == pytest.approx(kf1.log_likelihood[0].item(), rel=1e-5)


# ---------------------------------------------------------------------------- parallel == sequential
@pytest.mark.parametrize("T", [37, 201])  # the T log T scan, and the O(T) odd/even scan (odd length)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 1e-3)])
def test_parallel_and_sequential_filters_agree(dtype, tol, T):
    """Time-varying matrices, a full R, offsets, missing values and padding: both algorithms agree."""
    from deepstate.kalman import kalman_filter, rts_smoother

    g = torch.Generator().manual_seed(3)
    B, Z, D = 3, 3, 2
    rn = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    A = 0.9 * torch.eye(Z, dtype=torch.float64) + 0.1 * rn(B, T, Z, Z)
    Lq = 0.3 * rn(B, T, Z, Z).tril()
    Q = Lq @ Lq.transpose(-1, -2) + 0.05 * torch.eye(Z, dtype=torch.float64)
    C = rn(B, T, D, Z)
    R = torch.tensor([[0.5, 0.2], [0.2, 0.3]], dtype=torch.float64)
    x = rn(B, T, D)
    observed = torch.rand(B, T, D, generator=g) > 0.2
    lengths = torch.tensor([T, 20, 5])
    valid = torch.arange(T)[None] < lengths[:, None]
    observed &= valid[..., None]
    args = [t.to(dtype) for t in (A, Q, C, R, torch.zeros(Z, dtype=torch.float64), torch.eye(Z, dtype=torch.float64),
                                  rn(B, T, Z), rn(D))]
    out = {}
    for method in ("parallel", "sequential"):
        kf = kalman_filter(x.to(dtype), observed, valid, *args[:6], b=args[6], d=args[7], method=method)
        out[method] = (kf, rts_smoother(kf))
    (kp, sp), (ks, ss) = out["parallel"], out["sequential"]
    for a, b in ((kp.log_likelihood, ks.log_likelihood), (kp.filtered_mean, ks.filtered_mean),
                 (kp.filtered_cov, ks.filtered_cov), (kp.predicted_obs_cov, ks.predicted_obs_cov),
                 (sp.mean, ss.mean), (sp.cov, ss.cov), (sp.cross_cov, ss.cross_cov)):
        assert torch.allclose(a, b, rtol=tol, atol=tol), (a - b).abs().max()
    with pytest.raises(ValueError, match="method"):
        kalman_filter(x, observed, valid, *[t.double() for t in args[:6]], method="fast")


# ---------------------------------------------------------------------------- 4. full R
def _full_R_model(dtype=torch.float64):
    R = np.array([[0.5, 0.3, -0.1], [0.3, 0.4, 0.05], [-0.1, 0.05, 0.2]])
    A = np.array([[0.9, 0.2], [-0.1, 0.7]])
    C = np.array([[1.0, 0.0], [0.5, 1.0], [-0.3, 0.8]])
    Q = np.array([[0.3, 0.05], [0.05, 0.2]])
    return LinearGaussianSSM(2, 3, A=A, Q=Q, C=C, R=R, m0=[0.5, -0.2], P0=np.eye(2) * 2.0, dtype=dtype), R


def _full_R_batch(dtype=torch.float64):
    rng = np.random.RandomState(1)
    xs = [rng.randn(40, 3), rng.randn(25, 3)]
    for x in xs:
        x[rng.rand(*x.shape) < 0.2] = np.nan  # partly missing steps
        x[4] = np.nan  # a fully missing step
    return SequenceBatch.from_sequences(xs, dtype=dtype)


def test_full_observation_covariance_matches_statsmodels_with_missing_values():
    ssm, R = _full_R_model()
    assert ssm.full_R and torch.allclose(ssm.R, torch.as_tensor(R))  # not reduced to its diagonal
    batch = _full_R_batch()
    M = {k: v.detach().numpy() for k, v in ssm.matrices().items()}
    ll = ssm.log_likelihood(batch.pad_to(45))
    for b, seq in enumerate(batch.sequences()):
        ref = statsmodels_ssm(seq.numpy(), M, obs_cov=R).ssm.loglike()
        assert ll[b].item() == pytest.approx(ref, rel=1e-6, abs=1e-8)
    # a diagonal-R model gives a different likelihood (the correlation matters)
    diag = LinearGaussianSSM(2, 3, A=M["A"], Q=M["Q"], C=M["C"], R=np.diag(np.diag(R)), m0=M["m0"], P0=M["P0"],
                             dtype=torch.float64)
    assert not diag.full_R
    assert not torch.allclose(diag.log_likelihood(batch), ll[:, ...])
    # the protocol steps refuse a full R instead of silently dropping the correlations
    with pytest.raises(ValueError, match="R"):
        ssm.likelihood(ssm.initial((1,)), torch.zeros(1, 2, dtype=torch.float64), {})
    with pytest.raises(ValueError, match="R"):
        LinearGaussianSSM(1, 2, R=[[1.0, 2.0], [2.0, 1.0]])  # not positive definite


def test_full_observation_covariance_learnable_float32_and_float64():
    batch = _full_R_batch()
    for dtype in (torch.float32, torch.float64):
        model = LinearGaussianSSM(2, 3, full_R=True, dtype=dtype)
        assert model.full_R and model.R.shape == (3, 3)
        b = batch.to(dtype)
        history = model.fit(b, num_steps=5)
        assert history[-1] > history[0]
        assert torch.isfinite(model.R_tril.off.grad).all()
    ref, _ = _full_R_model(torch.float32)
    assert torch.allclose(ref.log_likelihood(batch.to(torch.float32)).double(),
                          _full_R_model()[0].log_likelihood(batch), rtol=1e-4)


# ---------------------------------------------------------------------------- 5. observation predictive moments
@pytest.mark.parametrize("full", [False, True])
def test_predicted_observation_moments_and_forecasts_match_statsmodels(full):
    ssm, R = _full_R_model()
    if not full:
        R = np.diag(np.diag(R))
        ssm = LinearGaussianSSM(2, 3, A=ssm.A.detach(), Q=ssm.matrices()["Q"].detach(), C=ssm.C.detach(), R=R,
                                m0=ssm.m0.detach(), P0=ssm.matrices()["P0"].detach(), dtype=torch.float64)
    batch = _full_R_batch()[0]
    M = {k: v.detach().numpy() for k, v in ssm.matrices().items()}
    x = batch.sequences()[0].numpy()
    H = 6
    res = statsmodels_ssm(x, M, obs_cov=R).filter(np.array([]))
    fc = res.get_forecast(H)
    # history + H fully missing (valid) steps: the predictive moments there are the forecasts
    future = SequenceBatch.from_sequences([np.concatenate([x, np.full((H, 3), np.nan)])], dtype=torch.float64)
    kf = ssm.kalman(future)
    T = x.shape[0]
    np.testing.assert_allclose(kf.predicted_obs_mean[0, :T].detach().numpy(), res.filter_results.forecasts.T,
                               rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(kf.predicted_obs_cov[0, :T].detach().numpy(),
                               res.filter_results.forecasts_error_cov.transpose(2, 0, 1), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(kf.predicted_obs_mean[0, T:].detach().numpy(), np.asarray(fc.predicted_mean),
                               rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(kf.predicted_obs_cov[0, T:].detach().numpy(), np.asarray(fc.var_pred_mean),
                               rtol=1e-6, atol=1e-8)
    # the missing steps add nothing to the likelihood
    assert kf.log_likelihood.item() == pytest.approx(ssm.log_likelihood(batch).item(), rel=1e-10)


def test_parallel_gradients_equal_sequential_gradients():
    """Maximum-likelihood fitting differentiates the scan: its gradients equal the step-by-step filter's."""
    from deepstate.kalman import kalman_filter

    ssm, _ = _full_R_model()
    batch = _full_R_batch()
    grads = {}
    for method in ("parallel", "sequential"):
        ssm.zero_grad()
        M = ssm.matrices()
        kalman_filter(batch.x, batch.observed, batch.valid, M["A"], M["Q"], M["C"], M["r"], M["m0"], M["P0"],
                      method=method).log_likelihood.sum().backward()
        grads[method] = [p.grad.clone() for p in ssm.parameters()]
    for a, b in zip(grads["parallel"], grads["sequential"]):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-10)
