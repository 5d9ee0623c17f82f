"""Posterior-collapse diagnostics: per-dimension KL, active units, gradient norms, the report."""

import json
import math

import pytest
import torch
from torch import nn

from deepstate.data import SequenceBatch
from deepstate.inference.diagnostics import (
    CollapseReport,
    active_units,
    gradient_norms,
    latent_kl,
    posterior_collapse_report,
)
from deepstate.inference.particle import particle_filter
from deepstate.models import build

D, Z = 3, 3
SMALL = dict(z_dim=Z, transition_dim=8, emission_dim=8, rnn_dim=8)


def _batch(lengths=(7, 5, 6, 3, 7, 4), seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return SequenceBatch.from_sequences([torch.randn(n, D, generator=g, dtype=dtype) for n in lengths], dtype=dtype)


def _dkf(guide="st-r", seed=0):
    torch.manual_seed(seed)
    return build("dkf", D, "gaussian", guide=guide, **SMALL).double()


# ------------------------------------------------------------------------------ (a) prior guide
def test_a_guide_equal_to_the_prior_has_zero_kl_and_no_active_units():
    lsm, batch = _dkf("prior"), _batch()
    kl = latent_kl(lsm, batch, num_samples=4)
    assert kl.shape == (Z,) and torch.equal(kl, torch.zeros(Z, dtype=kl.dtype))
    count, activity = active_units(lsm, batch, num_samples=2)
    assert count == 0 and activity.shape == (Z,)
    assert activity.max() < 1e-12  # common noise across sequences: identical trajectories
    report = posterior_collapse_report(lsm, batch)
    assert report.active_units == 0 and report.kl_total == 0.0 and report.inactive_dims == list(range(Z))


# ------------------------------------------------------------------------------ (b) activity follows the data
@pytest.mark.parametrize("guide", ["st-r", "mf-lr"])
def test_b_scaled_guide_loc_weights_give_more_active_units_than_zeroed(guide):
    batch = _batch()
    zeroed, scaled = _dkf(guide), _dkf(guide)
    with torch.no_grad():
        zeroed.guide_steps.head.weight[:Z].zero_()  # the loc rows of the fused head
        scaled.guide_steps.head.weight[:Z].mul_(20.0)
    n0, a0 = active_units(zeroed, batch)
    n1, a1 = active_units(scaled, batch)
    assert n0 == 0 and a0.max() < 1e-12  # the mean is the bias: it ignores the data
    assert n1 > n0 and n1 == Z
    assert (a1 > a0).all()
    # more data-dependence also shows as more KL
    assert latent_kl(scaled, batch, 8).sum() > latent_kl(zeroed, batch, 8).sum()


def test_active_units_centring_and_threshold():
    batch = _batch()
    lsm = _dkf("prior")
    # the prior's mean drifts with t: "global" centring counts that as activity, "step" does not
    _, a_global = active_units(lsm, batch, centre="global")
    _, a_step = active_units(lsm, batch, centre="step")
    assert (a_global > a_step).all()
    lsm = _dkf()
    count, activity = active_units(lsm, batch, threshold=0.0)
    assert count == int((activity > 0).sum())
    count_hi, _ = active_units(lsm, batch, threshold=1e9)
    assert count_hi == 0
    single = _batch(lengths=(9,))
    n, a = active_units(lsm, single, centre="global")  # one long series
    assert a.shape == (Z,) and torch.isfinite(a).all()
    with pytest.raises(ValueError, match="centre='global'"):
        active_units(lsm, single, centre="step")


# ------------------------------------------------------------------------------ (c) analytic vs Monte Carlo
@pytest.mark.parametrize("guide", ["st-r", "mf-lr"])
def test_c_analytic_per_dim_kl_matches_monte_carlo_within_standard_error(guide):
    lsm, batch = _dkf(guide, seed=3), _batch(lengths=(6, 4, 5, 6))
    with torch.no_grad():
        lsm.guide_steps.head.weight[:Z].mul_(3.0)  # a guide that moves away from the prior
    R, N = 8, 300
    est = {}
    for estimator in ("analytic", "mc"):
        reps = torch.stack([latent_kl(lsm, batch, N, estimator=estimator) for _ in range(R)])
        est[estimator] = (reps.mean(0), reps.std(0) / math.sqrt(R))
    (a, se_a), (m, se_m) = est["analytic"], est["mc"]
    se = (se_a**2 + se_m**2).sqrt()
    assert (a > 0).all()
    assert ((a - m).abs() < 4 * se + 1e-6).all(), (a, m, se)
    assert se_a.max() < se_m.max()  # the closed form removes the noise of z_t itself
    assert abs(float(a.sum() - m.sum())) < 4 * float(se.pow(2).sum().sqrt()) + 1e-6


def test_per_step_closed_form_is_the_gaussian_kl():
    """At t = 1 the mean-field proposal does not depend on sampled values: check the closed form."""
    lsm, batch = _dkf("mf-lr"), _batch(lengths=(1, 1, 1))
    ssm, guide = lsm.ssm, lsm.guide_steps
    with torch.no_grad():
        c = ssm.features(batch)
        e = guide.encode(batch, c)
        p = ssm.prior(ssm.initial((3,)), {})
        q = guide.proposal({}, None, {k: v[:, 0] for k, v in e.items()}, {}, p)
        mq, sq = q.base_dist.loc, q.base_dist.scale
        mp, sp = p.base_dist.loc, p.base_dist.scale
        expected = (torch.log(sp / sq) + (sq**2 + (mq - mp) ** 2) / (2 * sp**2) - 0.5).mean(0)
    torch.testing.assert_close(latent_kl(lsm, batch, 5), expected)


# ------------------------------------------------------------------------------ LGSSM: total KL, closed form
def test_lgssm_exact_guide_total_kl_matches_the_smoother():
    """For the exact posterior q, KL(q(z_{1:T}) || p(z_{1:T})) = E_q[log p(x | z)] - log p(x), in closed form
    from the RTS smoother's marginals; latent_kl's sum over steps estimates it."""
    torch.manual_seed(0)
    lsm = build("lgssm", D, guide="exact", z_dim=2, dtype=torch.float64)
    ssm = lsm.ssm
    batch = _batch(lengths=(8, 5, 7))
    with torch.no_grad():
        sm = ssm.smooth(batch)
        m, P = sm.mean, sm.cov  # [B, T, Z], [B, T, Z, Z]
        r, C = ssm.r, ssm.C
        resid = batch.x - m @ C.T
        quad = torch.einsum("dz,btzy,dy->btd", C, P, C)
        ell = -0.5 * (torch.log(2 * math.pi * r) + (resid**2 + quad) / r)  # [B, T, D]
        ell = (ell * batch.observed).sum()
        exact = float(ell - ssm.log_likelihood(batch).sum())
    with pytest.raises(ValueError, match="per_dim"):
        latent_kl(lsm, batch)  # MultivariateNormal: no per-dimension split
    R = 6
    reps = torch.stack([latent_kl(lsm, batch, 200, per_dim=False) * batch.num_frames for _ in range(R)])
    mean, se = float(reps.mean()), float(reps.std() / math.sqrt(R))
    assert exact > 0
    assert abs(mean - exact) < 4 * se + 1e-6 * exact, (mean, exact, se)
    report = posterior_collapse_report(lsm, batch)
    assert report.kl_per_dim is None and "n/a" in str(report) and report.kl_total > 0


def test_padding_changes_nothing():
    lsm, batch = _dkf(), _batch()
    padded = batch.pad_to(batch.max_length + 4)
    for fn in (lambda b: latent_kl(lsm, b, 3), lambda b: active_units(lsm, b, num_samples=3)[1]):
        torch.manual_seed(5)
        a = fn(batch)
        torch.manual_seed(5)
        b = fn(padded)
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("name,hyper", [("vrnn", dict(z_dim=2, rnn_dim=6, feature_dim=6, guide_rnn_dim=6)),
                                        ("srnn", dict(z_dim=2, rnn_dim=6, hidden_dim=6))])
def test_runs_on_other_models(name, hyper):
    torch.manual_seed(0)
    lsm = build(name, D, "gaussian", **hyper).double()
    batch = _batch()
    kl = latent_kl(lsm, batch, 2)
    assert kl.shape == (2,) and (kl >= 0).all() and torch.isfinite(kl).all()
    count, activity = active_units(lsm, batch)
    assert 0 <= count <= 2 and torch.isfinite(activity).all()


# ------------------------------------------------------------------------------ (d) gradient norms
def test_d_gradient_norms_after_backward():
    lsm, batch = _dkf(), _batch()
    lsm.zero_grad()
    assert gradient_norms(lsm)["total"] == 0.0
    loss = -particle_filter(lsm, batch, 2, resample="never").log_z.sum()
    loss.backward()
    norms = gradient_norms(lsm)
    assert list(norms)[-1] == "total"
    for key in ("ssm.transition", "ssm.emitter", "ssm.z_0", "guide_steps.rnns", "guide_steps.head"):
        assert key in norms and math.isfinite(norms[key]) and norms[key] > 0, (key, norms)
    grads = [p.grad for p in lsm.parameters() if p.grad is not None]
    expected = math.sqrt(sum(float(g.pow(2).sum()) for g in grads))
    assert norms["total"] == pytest.approx(expected, rel=1e-12)
    assert norms["total"] == pytest.approx(math.sqrt(sum(v**2 for k, v in norms.items() if k != "total")), rel=1e-12)
    assert norms["total"] == pytest.approx(float(nn.utils.clip_grad_norm_(lsm.parameters(), 1e12)), rel=1e-9)
    top = gradient_norms(lsm, depth=1)
    assert set(top) == {"ssm", "guide_steps", "total"}
    assert top["total"] == pytest.approx(norms["total"], rel=1e-12)

    report = posterior_collapse_report(lsm, batch)
    assert report.gradient_norms is not None and "gradient norms" in str(report)


# ------------------------------------------------------------------------------ report and errors
def test_report_summary():
    lsm, batch = _dkf(), _batch()
    report = posterior_collapse_report(lsm, batch, num_samples=2)
    assert isinstance(report, CollapseReport)
    assert report.z_dim == Z and report.frames == batch.num_frames and report.gradient_norms is None
    assert report.kl_per_dim.shape == (Z,) and report.kl_total == pytest.approx(float(report.kl_per_dim.sum()))
    text = str(report)
    assert "active units" in text and "KL" in text and len(text.splitlines()) >= Z + 2
    json.dumps(report.as_dict())


def test_errors_name_the_argument():
    lsm, batch = _dkf(), _batch()
    with pytest.raises(TypeError, match="lsm"):
        latent_kl(nn.Linear(2, 2), batch)
    with pytest.raises(TypeError, match="batch"):
        active_units(lsm, torch.zeros(2, 3, D))
    with pytest.raises(ValueError, match="batch"):
        latent_kl(lsm, _batch().__class__.from_sequences([torch.zeros(4, D + 1)]))
    with pytest.raises(ValueError, match="num_samples"):
        latent_kl(lsm, batch, 0)
    with pytest.raises(ValueError, match="estimator"):
        latent_kl(lsm, batch, estimator="exact")
    with pytest.raises(ValueError, match="threshold"):
        active_units(lsm, batch, threshold=-1.0)
    with pytest.raises(ValueError, match="centre"):
        active_units(lsm, batch, centre="time")
    with pytest.raises(TypeError, match="module"):
        gradient_norms("ssm")
    with pytest.raises(ValueError, match="depth"):
        gradient_norms(lsm, depth=0)
