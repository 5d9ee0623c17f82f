"""The conformance suite: checks that any model + guide written as protocol steps must pass.

Each ``check_*`` function raises ``AssertionError`` on failure. Test modules call them on a model
factory (the LGSSM here; every deep model later), so a new model gets the whole suite in a few lines.
"""

from __future__ import annotations

import copy

import pyro
import pyro.optim
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO

from deepstate.data import SequenceBatch
from deepstate.inference.objectives import FIVO
from deepstate.inference.particle import particle_filter, reparameterized_sample
from deepstate.models.base import LatentSequenceModel, slice_time


def pyro_log_weights(lsm: LatentSequenceModel, batch: SequenceBatch):
    """Per-step ``log p - log q`` ``[B, T]`` from Pyro's own traces, and the guide trace."""
    guide_tr = poutine.trace(lsm.guide).get_trace(batch)
    model_tr = poutine.trace(poutine.replay(lsm.model, trace=guide_tr)).get_trace(batch)
    guide_tr.compute_log_prob()
    model_tr.compute_log_prob()
    T = batch.max_length
    cols = []
    for t in range(T):
        lw = model_tr.nodes[f"z_{t}"]["log_prob"] + model_tr.nodes[f"x_{t}"]["log_prob"] - guide_tr.nodes[f"z_{t}"]["log_prob"]
        cols.append(lw)
    return torch.stack(cols, -1), guide_tr


def check_replay_equality(lsm, batch, atol=1e-5):
    """The particle filter's N=1 log-weight increments equal Pyro's ``log p - log q`` on a replayed trajectory."""
    pyro_lw, guide_tr = pyro_log_weights(lsm, batch)

    def replay(t, q, shape):
        return guide_tr.nodes[f"z_{t}"]["value"].expand(*shape, -1)

    res = particle_filter(lsm, batch, 1, resample="never", sampler=replay, record=True)
    pf_lw = res.increments[0]
    assert pf_lw.shape == pyro_lw.shape
    assert torch.allclose(pf_lw, pyro_lw, atol=atol, rtol=1e-5), (pf_lw - pyro_lw).abs().max()
    assert torch.allclose(res.log_z, pyro_lw.sum(-1), atol=atol * batch.max_length, rtol=1e-5)


def _injected(eps_full):
    def sampler(t, q, shape):
        return reparameterized_sample(q, eps_full[t, : shape[0], : shape[1]])

    return sampler


def check_padding_invariance(lsm, batch: SequenceBatch, other: SequenceBatch, num_particles=4, extra_steps=5,
                             seed=0, atol=1e-5):
    """Extra padded steps and extra sequences in the batch change no log-weight (injected noise).

    ``other``: sequences appended to the batch (their presence must not change ``batch``'s numbers).
    """
    from deepstate.data import concat_batches

    g = torch.Generator().manual_seed(seed)
    big = concat_batches([batch, other]).pad_to(max(batch.max_length, other.max_length) + extra_steps)
    B, T = big.valid.shape
    N = num_particles
    eps = torch.randn(T, N, B, lsm.z_dim, generator=g, dtype=batch.x.dtype)
    uni = torch.rand(T, N, B, generator=g, dtype=batch.x.dtype)
    for resample in ("never", "always", "ess"):
        small_res = particle_filter(lsm, batch, N, resample=resample, sampler=_injected(eps),
                                    uniforms=uni[:, :, : batch.batch_size], record=True)
        big_res = particle_filter(lsm, big, N, resample=resample, sampler=_injected(eps), uniforms=uni, record=True)
        b = batch.batch_size
        assert torch.allclose(small_res.log_z, big_res.log_z[:b], atol=atol, rtol=1e-5), (resample, small_res.log_z, big_res.log_z[:b])
        Ts = batch.max_length
        assert torch.allclose(small_res.increments, big_res.increments[:, :b, :Ts], atol=atol, rtol=1e-5)
        assert (big_res.increments[:, :b, Ts:] == 0).all()


def _changed(before, module):
    return [n for n, p in module.named_parameters() if torch.equal(before[n], p.detach())]


def check_all_parameters_update(lsm, batch, lr=1e-2, num_particles=4):
    """One stock-Pyro SVI step and one FIVO step each change every parameter."""
    pyro.clear_param_store()
    m = copy.deepcopy(lsm)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    svi = SVI(m.model, m.guide, pyro.optim.Adam({"lr": lr}), Trace_ELBO())
    svi.step(batch)
    unchanged = _changed(before, m)
    assert not unchanged, f"SVI step left unchanged: {unchanged}"

    m = copy.deepcopy(lsm)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    opt = torch.optim.Adam(m.parameters(), lr=lr)
    loss, _ = FIVO(num_particles).loss(m, batch)
    loss.backward()
    opt.step()
    unchanged = _changed(before, m)
    assert not unchanged, f"FIVO step left unchanged: {unchanged}"


def check_leading_dims(lsm, batch, num_particles=3, steps=4, atol=1e-5):
    """Steps accept ``[B]`` and ``[N, B]`` carries and agree when the particles are identical."""
    ssm, guide = lsm.ssm, lsm.guide_steps
    B, N = batch.batch_size, num_particles
    c = ssm.features(batch)
    e = guide.encode(batch, c)
    s1, g1 = ssm.initial((B,)), guide.initial((B,))
    s2, g2 = ssm.initial((N, B)), guide.initial((N, B))
    for t in range(min(steps, batch.max_length)):
        c_t, e_t = slice_time(c, t), slice_time(e, t)
        p1, p2 = ssm.prior(s1, c_t), ssm.prior(s2, c_t)
        q1, q2 = guide.proposal(g1, s1, e_t, c_t, p1), guide.proposal(g2, s2, e_t, c_t, p2)
        assert tuple(q2.batch_shape) == (N, B) or tuple(q2.batch_shape) == (B,), q2.batch_shape
        z1 = q1.sample()
        z2 = z1.expand(N, *z1.shape)
        for a, b in ((p1, p2), (q1, q2)):
            assert torch.allclose(a.log_prob(z1).expand(N, B), b.log_prob(z2), atol=atol)
        l1, l2 = ssm.likelihood(s1, z1, c_t), ssm.likelihood(s2, z2, c_t)
        x = batch.x[:, t]
        assert torch.allclose(l1.log_prob(x).expand(N, B, -1), l2.log_prob(x), atol=atol)
        o = batch.observed[:, t]
        s1, s2 = ssm.update(s1, z1, x, c_t, o), ssm.update(s2, z2, x, c_t, o)
        g1, g2 = guide.update(g1, z1, e_t), guide.update(g2, z2, e_t)
        for k in s1:
            assert s2[k].shape[:2] == (N, B), (k, s2[k].shape)
            assert torch.allclose(s1[k].expand_as(s2[k]).to(s2[k].dtype), s2[k], atol=atol), k


def check_features_parallel_equals_sequential(ssm, batch, atol=1e-5):
    """``features`` over whole sequences equals ``feature_step`` run step by step on observed data."""
    c = ssm.features(batch)
    B, T, D = batch.x.shape
    f = ssm.feature_initial((B,))
    x_prev = torch.zeros(B, D, dtype=batch.x.dtype)
    o_prev = torch.zeros(B, D, dtype=torch.bool)
    for t in range(T):
        f, c_t = ssm.feature_step(f, x_prev, o_prev, None if batch.u is None else batch.u[:, t])
        assert set(c_t) == set(c), (set(c_t), set(c))
        v = batch.valid[:, t]
        for k in c:
            assert torch.allclose(c[k][:, t][v], c_t[k][v], atol=atol), (k, t)
        x_prev, o_prev = batch.x[:, t], batch.observed[:, t]


def run_conformance(lsm, batch, other):
    """The whole suite on one model + guide."""
    check_replay_equality(lsm, batch)
    check_padding_invariance(lsm, batch, other)
    check_all_parameters_update(lsm, batch)
    check_leading_dims(lsm, batch)
    check_features_parallel_equals_sequential(lsm.ssm, batch)
