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
import statsmodels.api as sm
import torch

from deepstate.data import SequenceBatch
from deepstate.inference.trainer import iterate_chunks
from deepstate.models import build
from deepstate.models.lgssm import ExactPosteriorGuide, LinearGaussianSSM


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
