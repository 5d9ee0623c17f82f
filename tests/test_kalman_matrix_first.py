"""The matrix-first parallel Kalman filter (``method="parallel"``) against the step-by-step filter, an
independent numpy filter and statsmodels, on the edge cases of its layout and thresholds:

* state sizes Z = 1, 2 (closed-form inverse), 3, 5, 6 (``torch.linalg.inv``; ``_mmf`` matmul path
  for inner dims > ``_SMALL = 4``), observation sizes D = 1, 2 (closed-form SPD inverse), 3 (Cholesky);
* diagonal and full R, shared and per-step A/Q/C/r, shared / per-step / absent offsets b and d;
* partially and fully unobserved steps, padding (different lengths), T = 1, 2, 3, odd and even T;
* the Hillis-Steele / Blelloch switch (``B*T*Z*Z`` vs 4096) and the ``_mmf`` broadcast / addcmul switch
  (matrices per product vs ``_FEW = 4096``); float32 and float64; gradients; the RTS smoother.
"""

import itertools

import numpy as np
import pytest
import statsmodels.api as sm
import torch

from deepstate import kalman as K
from deepstate.kalman import kalman_filter, rts_smoother

FIELDS = ("log_likelihood", "step_log_likelihood", "predicted_mean", "predicted_cov", "filtered_mean",
          "filtered_cov", "predicted_obs_mean", "predicted_obs_cov")
SMOOTH = ("mean", "cov", "cross_cov")
F64 = torch.float64


# ---------------------------------------------------------------------------- random models
def _model(B, T, Z, D, seed, *, tv=True, full_R=False, offsets="step", miss=0.25, lengths=None,
           dtype=F64, batched_init=True):
    """Random stable model and data. ``tv``: per-step [B, T, ...] A/Q/C/r (else shared);
    ``offsets``: "step" ([B, T, .]), "shared" ([.]) or None."""
    g = torch.Generator().manual_seed(seed)
    rn = lambda *s: torch.randn(*s, generator=g, dtype=F64)  # noqa: E731
    sh = (B, T) if tv else ()
    A = 0.8 * torch.eye(Z, dtype=F64) + 0.15 * rn(*sh, Z, Z)
    Lq = 0.3 * rn(*sh, Z, Z).tril()
    Q = Lq @ Lq.mT + 0.1 * torch.eye(Z, dtype=F64)
    C = rn(*sh, D, Z)
    if full_R:
        Lr = 0.4 * rn(*sh, D, D).tril()
        r = Lr @ Lr.mT + 0.2 * torch.eye(D, dtype=F64)
    else:
        r = 0.2 + rn(*sh, D).abs()
    ib = (B,) if batched_init else ()
    m0 = rn(*ib, Z)
    Lp = 0.5 * rn(*ib, Z, Z).tril()
    P0 = Lp @ Lp.mT + 0.5 * torch.eye(Z, dtype=F64)
    b = {"step": lambda: rn(B, T, Z), "shared": lambda: rn(Z), None: lambda: None}[offsets]()
    d = {"step": lambda: rn(B, T, D), "shared": lambda: rn(D), None: lambda: None}[offsets]()
    x = rn(B, T, D)
    observed = torch.rand(B, T, D, generator=g) >= miss
    if T > 1:
        observed[0, 1] = False  # a fully unobserved step
    if lengths is None:
        lengths = [max(T - 3 * i, 1) for i in range(B)]
    valid = torch.arange(T)[None] < torch.tensor(lengths)[:, None]
    cv = lambda t: None if t is None else t.to(dtype)  # noqa: E731
    return dict(x=cv(x), observed=observed, valid=valid, A=cv(A), Q=cv(Q), C=cv(C), r=cv(r), m0=cv(m0),
                P0=cv(P0), b=cv(b), d=cv(d))


def _run(kw, method):
    kf = kalman_filter(**kw, method=method)
    return kf, rts_smoother(kf)


def _close(a, b, rtol, atol, what=""):
    assert a.shape == b.shape, (what, a.shape, b.shape)
    assert torch.isfinite(a).all(), what
    err = ((a - b).abs() - atol - rtol * b.abs()).max().item() if a.numel() else -1.0
    assert err <= 0, f"{what}: max |diff| {(a - b).abs().max().item():.3e}"


def _agree(kw, rtol=1e-8, atol=1e-10, ref=None):
    """Every KalmanResult field and the smoother: parallel vs sequential (or vs ``ref``)."""
    kp, sp = _run(kw, "parallel")
    ks, ss = ref if ref is not None else _run(kw, "sequential")
    for f in FIELDS:
        _close(getattr(kp, f), getattr(ks, f).to(getattr(kp, f).dtype), rtol, atol, f)
    for f in SMOOTH:
        _close(getattr(sp, f), getattr(ss, f).to(getattr(sp, f).dtype), rtol, atol, "smoother " + f)
    for f in ("A", "Q"):
        assert torch.equal(getattr(kp, f), getattr(ks, f).to(getattr(kp, f).dtype)), f
    return kp, sp


# ---------------------------------------------------------------------------- an independent reference
def _at(M, b, t, rank):
    return M[b, t] if M.ndim == rank + 2 else M


def _numpy_filter(kw):
    """Textbook filter per sequence in numpy (observed sub-vector selected explicitly; padded steps hold the
    filtered moments; predictive observation moments use the full C, R and d)."""
    np_ = {k: (None if v is None else v.detach().double().numpy()) for k, v in kw.items()}
    x, obs, valid = np_["x"], kw["observed"].numpy(), kw["valid"].numpy()
    B, T, D = x.shape
    Z = np_["m0"].shape[-1]
    out = {"step_log_likelihood": np.zeros((B, T)), "predicted_mean": np.zeros((B, T, Z)),
           "predicted_cov": np.zeros((B, T, Z, Z)), "filtered_mean": np.zeros((B, T, Z)),
           "filtered_cov": np.zeros((B, T, Z, Z)), "predicted_obs_mean": np.zeros((B, T, D)),
           "predicted_obs_cov": np.zeros((B, T, D, D))}
    r = np_["r"]
    for bi in range(B):
        m = np_["m0"][bi] if np_["m0"].ndim == 2 else np_["m0"]
        P = np_["P0"][bi] if np_["P0"].ndim == 3 else np_["P0"]
        for t in range(T):
            if t > 0 and valid[bi, t]:
                A = _at(np_["A"], bi, t, 2)
                m = A @ m + (0 if np_["b"] is None else _at(np_["b"], bi, t, 1))
                P = A @ P @ A.T + _at(np_["Q"], bi, t, 2)
            out["predicted_mean"][bi, t], out["predicted_cov"][bi, t] = m, P
            C = _at(np_["C"], bi, t, 2)
            R = _at(r, bi, t, 2) if r.ndim in (2, 4) else np.diag(_at(r, bi, t, 1))
            d = 0 if np_["d"] is None else _at(np_["d"], bi, t, 1)
            out["predicted_obs_mean"][bi, t] = C @ m + d
            out["predicted_obs_cov"][bi, t] = C @ P @ C.T + R
            o = obs[bi, t] & valid[bi, t]
            if o.any():
                Co = C[o]
                S = Co @ P @ Co.T + R[np.ix_(o, o)]
                v = (x[bi, t] - d)[o] - Co @ m
                Kg = P @ Co.T @ np.linalg.inv(S)
                m, P = m + Kg @ v, P - Kg @ S @ Kg.T
                out["step_log_likelihood"][bi, t] = -0.5 * (v @ np.linalg.solve(S, v) + np.linalg.slogdet(S)[1]
                                                            + o.sum() * np.log(2 * np.pi))
            out["filtered_mean"][bi, t], out["filtered_cov"][bi, t] = m, P
    out["log_likelihood"] = out["step_log_likelihood"].sum(1)
    return out


def _matches_numpy(kw, kf, rtol=1e-8, atol=1e-10):
    ref = _numpy_filter(kw)
    for f in FIELDS:
        np.testing.assert_allclose(getattr(kf, f).detach().double().numpy(), ref[f], rtol=rtol, atol=atol, err_msg=f)


# ---------------------------------------------------------------------------- 1. sizes x T, all fields
@pytest.mark.parametrize("Z,D", list(itertools.product([1, 2, 3, 5, 6], [1, 2, 3])))
def test_all_fields_agree_over_state_and_observation_sizes(Z, D):
    """Per-step A/Q/C/r and offsets, missing values and padding, T = 1, 2, 3 and odd/even T; diagonal and full R."""
    for T, full_R in ((1, False), (2, True), (3, False), (3, True), (8, False), (9, True)):
        kw = _model(3, T, Z, D, seed=100 * Z + 10 * D + T, full_R=full_R, lengths=[T, max(T - 1, 1), 1])
        kp, _ = _agree(kw)
        _matches_numpy(kw, kp)


@pytest.mark.parametrize("Z,D", [(1, 1), (2, 2), (3, 1), (5, 3), (6, 2)])
def test_shared_and_mixed_arguments(Z, D):
    """Shared A/Q/C/r, shared or absent offsets, shared m0/P0, and every mix of shared and per-step arguments."""
    T = 7
    for full_R, offsets, batched_init in itertools.product((False, True), ("shared", None, "step"), (False, True)):
        kw = _model(2, T, Z, D, seed=Z + D, tv=False, full_R=full_R, offsets=offsets, batched_init=batched_init)
        kp, _ = _agree(kw)
        _matches_numpy(kw, kp)
    # mixes: each of A, Q, C, r per-step while the others are shared (and the converse)
    for full_R in (False, True):
        shared = _model(2, T, Z, D, seed=7, tv=False, full_R=full_R)
        step = _model(2, T, Z, D, seed=7, tv=True, full_R=full_R)
        for name in ("A", "Q", "C", "r"):
            for base, other in ((shared, step), (step, shared)):
                kw = dict(base, **{name: other[name]})
                kp, _ = _agree(kw)
                _matches_numpy(kw, kp)


# ---------------------------------------------------------------------------- 2. the scan and product thresholds
@pytest.mark.parametrize("Z,D,B,T", [
    (2, 1, 1, 1024),  # B*T*Z*Z == 4096: Hillis-Steele (the last size that takes it)
    (2, 1, 1, 1025),  # 4100: Blelloch, odd T
    (2, 2, 2, 520),   # Blelloch, even T
    (1, 2, 2, 2049),  # Z = 1 Blelloch; B*T > _FEW: the addcmul products
    (3, 3, 4, 1031),  # B*T > _FEW with K = 3 (addcmul), Cholesky S, odd T
    (4, 2, 3, 1400),  # K = 4 == _SMALL (the last elementwise size), addcmul path
    (5, 2, 2, 201),   # K = 5: matmul path, Blelloch
    (6, 3, 1, 114),   # 4104: Blelloch with K = 6
    (6, 1, 1, 113),   # 4068: Hillis-Steele with K = 6
    (2, 2, 1100, 1),  # T = 1, many sequences: Blelloch base case
    (2, 1, 600, 2),   # T = 2, Blelloch
    (3, 2, 200, 3),   # T = 3, Blelloch
])
def test_scan_and_product_thresholds(Z, D, B, T):
    lengths = [T - (5 * i) % max(T, 1) if T > 5 else T for i in range(B)]
    for full_R in (False, True):
        kw = _model(B, T, Z, D, seed=Z * T + B, full_R=full_R, tv=full_R, lengths=lengths, miss=0.2)
        _agree(kw)


@pytest.mark.parametrize("Z,D,B,T", [(1, 1, 2, 9), (2, 2, 3, 8), (3, 3, 2, 5), (5, 1, 2, 6), (6, 2, 2, 3),
                                     (2, 1, 4, 1030), (3, 2, 2, 240)])
def test_float32_agrees_with_float64(Z, D, B, T):
    """float32 parallel vs float64 sequential (and float32 sequential), both scans."""
    for full_R in (False, True):
        kw64 = _model(B, T, Z, D, seed=Z + D + T, full_R=full_R)
        kw32 = {k: (v.float() if v is not None and v.is_floating_point() else v) for k, v in kw64.items()}
        ref = _run(kw64, "sequential")
        kp, sp = _agree(kw32, rtol=2e-3, atol=2e-3, ref=ref)
        assert kp.filtered_cov.dtype == torch.float32
        _agree(kw32, rtol=2e-3, atol=2e-3)
        # the Joseph-form elements keep every covariance positive definite in float32
        for P in (kp.filtered_cov, kp.predicted_cov, sp.cov):
            assert (torch.linalg.eigvalsh(P.double()) > 0).all()


# ---------------------------------------------------------------------------- 3. missing values and padding
@pytest.mark.parametrize("Z,D", [(1, 1), (2, 2), (3, 3), (5, 2), (2, 3)])
def test_missing_patterns(Z, D):
    T = 10
    for full_R in (False, True):
        kw = _model(3, T, Z, D, seed=Z * D, full_R=full_R, miss=0.0, lengths=[T, T, 6])
        obs = kw["observed"]
        obs[0, 0] = False          # the first step unobserved
        obs[0, 4:7] = False        # a run of unobserved steps
        obs[1, :, 0] = False       # one dimension never observed
        obs[1, 3, -1] = False      # partially observed step
        obs[2] = False             # nothing observed at all
        kw["x"] = torch.where(obs, kw["x"], torch.full_like(kw["x"], 1e6))  # ignored values
        kp, _ = _agree(kw)
        _matches_numpy(kw, kp)
        assert (kp.step_log_likelihood[0, 4:7] == 0).all() and (kp.log_likelihood[2] == 0).all()
        # nothing observed: the filter is the prior's prediction
        _close(kp.filtered_mean[2], kp.predicted_mean[2], 1e-12, 1e-14, "unobserved filtered mean")
        _close(kp.filtered_cov[2], kp.predicted_cov[2], 1e-12, 1e-14, "unobserved filtered cov")


@pytest.mark.parametrize("method", ["parallel", "sequential"])
@pytest.mark.parametrize("Z,D,T", [(2, 1, 9), (3, 3, 8), (5, 2, 7), (2, 2, 530)])
def test_padding_is_the_truncated_sequence(method, Z, D, T):
    """A padded sequence gives the numbers of the same sequence alone; padded steps hold the last filtered moments."""
    L = T // 2 + 1
    kw = _model(2, T, Z, D, seed=T + Z, full_R=True, lengths=[T, L])
    kw["x"][1, L:] = 1e6  # garbage in the padding
    kf, sm_ = _run(kw, method)
    alone = {k: (v[1:, :L] if v is not None and v.dim() >= 3 and v.shape[:2] == (2, T) else v) for k, v in kw.items()}
    alone["valid"] = kw["valid"][1:, :L]
    alone["m0"], alone["P0"] = kw["m0"][1:], kw["P0"][1:]
    k1, s1 = _run(alone, method)
    for f in FIELDS[1:]:
        _close(getattr(kf, f)[1:, :L], getattr(k1, f), 1e-9, 1e-11, f)
    _close(kf.log_likelihood[1:], k1.log_likelihood, 1e-9, 1e-11, "log_likelihood")
    for f in ("mean", "cov"):
        _close(getattr(sm_, f)[1:, :L], getattr(s1, f), 1e-9, 1e-11, f)
    assert (kf.step_log_likelihood[1, L:] == 0).all()
    for f, last in (("filtered_mean", kf.filtered_mean), ("filtered_cov", kf.filtered_cov),
                    ("predicted_mean", kf.filtered_mean), ("predicted_cov", kf.filtered_cov)):
        held = last[1, L - 1].expand_as(getattr(kf, f)[1, L:])
        _close(getattr(kf, f)[1, L:], held, 1e-12, 1e-14, f + " held")


# ---------------------------------------------------------------------------- 4. gradients
def _grads(kw, method, names=("A", "Q", "C", "r", "m0", "P0", "b", "d")):
    kw = {k: (v.detach().clone().requires_grad_() if k in names and v is not None else v) for k, v in kw.items()}
    kf = kalman_filter(**kw, method=method)
    sm_ = rts_smoother(kf)
    loss = (kf.log_likelihood.sum() + 0.1 * kf.filtered_mean.sum() + 0.05 * kf.predicted_obs_cov.sum()
            + 0.1 * sm_.mean.sum() + 0.05 * sm_.cov.sum())
    loss.backward()
    out = {}
    for k in names:
        if kw[k] is None:
            continue
        gk = kw[k].grad
        # a covariance argument is symmetric: only the symmetric part of its gradient is defined by the model
        if k in ("Q", "P0") or (k == "r" and kw["r"].dim() in (2, 4)):
            gk = 0.5 * (gk + gk.mT)
        out[k] = gk
    return out


@pytest.mark.parametrize("Z,D,B,T", [(1, 1, 2, 5), (2, 2, 3, 8), (3, 3, 2, 5), (5, 1, 2, 6), (6, 2, 2, 3),
                                     (2, 1, 4, 260), (3, 2, 2, 230)])  # the last two: Blelloch
@pytest.mark.parametrize("full_R", [False, True])
def test_gradients_agree(Z, D, B, T, full_R):
    for tv in (False, True):
        kw = _model(B, T, Z, D, seed=Z + T, tv=tv, full_R=full_R)
        gp, gs = _grads(kw, "parallel"), _grads(kw, "sequential")
        assert gp.keys() == gs.keys()
        for k in gp:
            scale = gs[k].abs().max().item() + 1.0
            _close(gp[k], gs[k], 0, 1e-8 * scale, f"grad {k}")
        # and in float32, against the float64 gradients
        kw32 = {k: (v.float() if v is not None and v.is_floating_point() else v) for k, v in kw.items()}
        g32 = _grads(kw32, "parallel")
        for k in g32:
            scale = gs[k].abs().max().item() + 1.0
            _close(g32[k].double(), gs[k], 0, 5e-3 * scale, f"float32 grad {k}")


# ---------------------------------------------------------------------------- 5. statsmodels, time-varying
@pytest.mark.parametrize("Z,D", [(2, 2), (3, 3), (5, 1)])
def test_time_varying_offsets_full_R_match_statsmodels(Z, D):
    T = 15
    kw = _model(1, T, Z, D, seed=Z * D, full_R=True, lengths=[T], miss=0.2)
    kw["observed"][0, 4] = False
    kf, sm_ = _agree(kw)
    n = lambda t: t[0].detach().numpy()  # noqa: E731
    A, Q, C, R, b, d = n(kw["A"]), n(kw["Q"]), n(kw["C"]), n(kw["r"]), n(kw["b"]), n(kw["d"])
    x = np.where(n(kw["observed"]), n(kw["x"]), np.nan)
    mod = sm.tsa.statespace.MLEModel(x, k_states=Z)
    # statsmodels' transition[..., t] maps state t to t + 1: it is our A_{t+1} (likewise b, Q)
    nxt = lambda M: np.concatenate([M[1:], M[-1:]], 0)  # noqa: E731
    mod["design"] = C.transpose(1, 2, 0)
    mod["obs_intercept"] = d.T
    mod["obs_cov"] = R.transpose(1, 2, 0)
    mod["transition"] = nxt(A).transpose(1, 2, 0)
    mod["state_intercept"] = nxt(b).T
    mod["selection"] = np.eye(Z)
    mod["state_cov"] = nxt(Q).transpose(1, 2, 0)
    mod.initialize_known(n(kw["m0"]), n(kw["P0"]))
    res = mod.smooth(np.array([]))
    tol = dict(rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(kf.log_likelihood.item(), res.llf, **tol)
    np.testing.assert_allclose(n(kf.step_log_likelihood), res.llf_obs, **tol)
    np.testing.assert_allclose(n(kf.filtered_mean), res.filtered_state.T, **tol)
    np.testing.assert_allclose(n(kf.filtered_cov), res.filtered_state_cov.transpose(2, 0, 1), **tol)
    np.testing.assert_allclose(n(kf.predicted_mean), res.predicted_state[:, :T].T, **tol)
    np.testing.assert_allclose(n(kf.predicted_cov), res.predicted_state_cov[..., :T].transpose(2, 0, 1), **tol)
    np.testing.assert_allclose(n(kf.predicted_obs_mean), res.forecasts.T, **tol)
    np.testing.assert_allclose(n(kf.predicted_obs_cov), res.forecasts_error_cov.transpose(2, 0, 1), **tol)
    np.testing.assert_allclose(n(sm_.mean), res.smoothed_state.T, **tol)
    np.testing.assert_allclose(n(sm_.cov), res.smoothed_state_cov.transpose(2, 0, 1), **tol)


# ---------------------------------------------------------------------------- 6. layout details
def test_output_layout_symmetry_and_cached_identity():
    kw = _model(3, 11, 3, 2, seed=0, full_R=True)
    # non-contiguous (transposed / expanded) inputs give the same numbers
    kw_nc = dict(kw)
    kw_nc["x"] = kw["x"].transpose(0, 1).contiguous().transpose(0, 1)
    kw_nc["C"] = kw["C"].mT.contiguous().mT
    kw_nc["A"] = kw["A"][0, 0].expand(3, 11, 3, 3)
    kw_ref = dict(kw, A=kw["A"][0, 0].expand(3, 11, 3, 3).contiguous())
    kn = kalman_filter(**kw_nc)
    kr = kalman_filter(**kw_ref, method="sequential")
    for f in FIELDS:
        assert getattr(kn, f).is_contiguous(), f
        _close(getattr(kn, f), getattr(kr, f), 1e-8, 1e-10, f)
    # covariances are symmetric (predicted ones exactly; the filtered ones to rounding)
    assert torch.equal(kn.predicted_cov, kn.predicted_cov.mT)
    assert torch.equal(kn.predicted_obs_cov, kn.predicted_obs_cov.mT)
    _close(kn.filtered_cov, kn.filtered_cov.mT, 1e-12, 1e-14, "filtered_cov symmetric")
    # the identity cached by _eyef: a first call in inference mode, then float32, then gradients
    K._EYES.clear()
    with torch.inference_mode():
        kalman_filter(**kw)
    kw32 = {k: (v.float() if v is not None and v.is_floating_point() else v) for k, v in kw.items()}
    k32 = kalman_filter(**kw32)
    assert k32.filtered_cov.dtype == torch.float32
    g = _grads(kw, "parallel", names=("A",))["A"]
    assert torch.allclose(g, _grads(kw, "sequential", names=("A",))["A"], rtol=1e-8, atol=1e-10)
    # "auto" is the parallel filter
    ka, kp = kalman_filter(**kw, method="auto"), kalman_filter(**kw, method="parallel")
    for f in FIELDS:
        assert torch.equal(getattr(ka, f), getattr(kp, f)), f


def test_nan_at_missing_and_padded_values_is_ignored():
    """The docstring says values where ``observed`` is False are ignored: NaN there too."""
    from deepstate.kalman import kalman_filter

    g = torch.Generator().manual_seed(0)
    B, T, D, Z = 2, 7, 2, 2
    x = torch.randn(B, T, D, generator=g, dtype=torch.float64)
    observed = torch.rand(B, T, D, generator=g) > 0.3
    valid = torch.ones(B, T, dtype=torch.bool)
    valid[1, 5:] = False
    A = 0.9 * torch.eye(Z, dtype=torch.float64)
    Q = 0.1 * torch.eye(Z, dtype=torch.float64)
    C = torch.randn(D, Z, generator=g, dtype=torch.float64)
    r = torch.tensor([0.5, 0.2], dtype=torch.float64)
    m0, P0 = torch.zeros(Z, dtype=torch.float64), torch.eye(Z, dtype=torch.float64)
    clean = kalman_filter(x, observed, valid, A, Q, C, r, m0, P0)
    hide = ~(observed & valid[..., None])
    for method in ("parallel", "sequential"):
        nan = kalman_filter(x.masked_fill(hide, float("nan")), observed, valid, A, Q, C, r, m0, P0, method=method)
        torch.testing.assert_close(nan.log_likelihood, clean.log_likelihood, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(nan.filtered_mean, clean.filtered_mean, rtol=1e-10, atol=1e-10)


def test_full_2x2_R_gets_a_symmetric_gradient():
    from deepstate.kalman import kalman_filter

    g = torch.Generator().manual_seed(1)
    B, T, D, Z = 1, 6, 2, 2
    x = torch.randn(B, T, D, generator=g, dtype=torch.float64)
    ones = torch.ones(B, T, D, dtype=torch.bool)
    R = torch.tensor([[0.5, 0.1], [0.1, 0.4]], dtype=torch.float64, requires_grad=True)
    eye = torch.eye(Z, dtype=torch.float64)
    kalman_filter(x, ones, ones[..., 0], 0.9 * eye, 0.1 * eye, torch.eye(D, Z, dtype=torch.float64), R,
                  torch.zeros(Z, dtype=torch.float64), eye).log_likelihood.sum().backward()
    assert torch.allclose(R.grad, R.grad.T, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------- the shared-covariance path
def _shared_model(B, T, Z, D, seed, full_R=False, offsets="shared", dtype=F64):
    """Shared parameters, everything observed, no padding: where ``method="shared"`` applies."""
    return _model(B, T, Z, D, seed, tv=False, full_R=full_R, offsets=offsets, miss=0.0, lengths=[T] * B,
                  batched_init=False, dtype=dtype) | {"observed": torch.ones(B, T, D, dtype=torch.bool)}


@pytest.mark.parametrize("Z,D,B,T", [(1, 1, 3, 7), (2, 1, 5, 300), (2, 2, 4, 33), (3, 2, 2, 64), (5, 3, 3, 17),
                                     (2, 1, 2, 1)])
@pytest.mark.parametrize("full_R,offsets", [(False, None), (True, "shared")])
def test_shared_path_agrees_with_the_step_filter(Z, D, B, T, full_R, offsets):
    kw = _shared_model(B, T, Z, D, seed=Z * 7 + T, full_R=full_R, offsets=offsets)
    ks = _run(kw, "sequential")
    kh = kalman_filter(**kw, method="shared")
    for f in FIELDS:  # shapes too: the shared covariances come back expanded to [B, T, ...]
        _close(getattr(kh, f), getattr(ks[0], f), 1e-8, 1e-10, f)
    _agree(kw, ref=ks)  # and the full scan, for completeness
    sh = rts_smoother(kh)
    for f in SMOOTH:
        _close(getattr(sh, f), getattr(ks[1], f), 1e-8, 1e-10, f"smoother {f}")


@pytest.mark.parametrize("Z,D,B,T", [(2, 1, 4, 40), (3, 2, 3, 9)])
def test_shared_path_gradients_agree(Z, D, B, T):
    kw = _shared_model(B, T, Z, D, seed=T, full_R=True)
    gh, gs = _grads(kw, "shared"), _grads(kw, "sequential")
    assert gh.keys() == gs.keys()
    for k in gh:
        _close(gh[k], gs[k], 0, 1e-8 * (gs[k].abs().max().item() + 1.0), f"grad {k}")


def test_auto_takes_the_shared_path_only_where_it_applies(monkeypatch):
    calls = []
    real = K._filter_shared
    monkeypatch.setattr(K, "_filter_shared", lambda *a: calls.append(1) or real(*a))
    kw = _shared_model(8, 200, 2, 1, seed=3)
    ref = kalman_filter(**kw, method="sequential").log_likelihood
    _close(kalman_filter(**kw).log_likelihood, ref, 1e-10, 1e-10, "auto")
    assert calls == [1]  # B T = 1,600 >= 1,024
    kalman_filter(**_shared_model(1, 2000, 2, 1, seed=3))
    assert calls == [1]  # one sequence: the full scan
    # a missing value, padding, per-step matrices or per-sequence initial moments: the full scan, same numbers
    missing = kw | {"observed": kw["observed"].clone()}
    missing["observed"][2, 5, 0] = False
    padded = kw | {"valid": kw["valid"].clone()}
    padded["valid"][1, 150:] = False
    per_step = kw | {"A": kw["A"].expand(8, 200, 2, 2)}
    per_seq = kw | {"m0": kw["m0"].expand(8, 2)}
    for case in (missing, padded, per_step, per_seq):
        _close(kalman_filter(**case).log_likelihood, kalman_filter(**case, method="sequential").log_likelihood,
               1e-10, 1e-10, "fallback")
        with pytest.raises(ValueError, match="method: 'shared' needs"):
            kalman_filter(**case, method="shared")
    assert calls == [1]


def test_shared_path_float32():
    kw = _shared_model(6, 300, 2, 1, seed=11, full_R=True, offsets="shared")
    ref = kalman_filter(**kw, method="sequential")
    kw32 = {k: (v.float() if v is not None and v.is_floating_point() else v) for k, v in kw.items()}
    k32 = kalman_filter(**kw32, method="shared")
    _close(k32.log_likelihood.double(), ref.log_likelihood, 1e-4, 1e-3, "float32 log-likelihood")
    _close(k32.filtered_mean.double(), ref.filtered_mean, 1e-3, 1e-3, "float32 filtered mean")
