"""The fused (hand-written backward) guide rollout equals autograd through the step-by-step loop."""

import pytest
import torch

from deepstate.data import SequenceBatch
from deepstate.inference.particle import particle_filter, reparameterized_sample
from deepstate.models import build
from deepstate.models.fused import combiner_rollout


def test_combiner_rollout_gradcheck():
    torch.manual_seed(0)
    T, N, B, Z, H = 5, 2, 3, 3, 4
    d = torch.float64
    c = torch.randn(T, B, 2 * Z, dtype=d, requires_grad=True)
    eps = torch.randn(T, N, B, Z, dtype=d)
    z0 = torch.randn(N, B, Z, dtype=d, requires_grad=True)
    w_z = torch.randn(H, Z, dtype=d, requires_grad=True)
    b_z = torch.randn(H, dtype=d, requires_grad=True)
    w_o = torch.randn(2 * Z, H, dtype=d, requires_grad=True)

    def f(c, z0, w_z, b_z, w_o):
        return combiner_rollout(c, eps, z0, w_z, b_z, w_o, 1e-3)

    assert torch.autograd.gradcheck(f, (c, z0, w_z, b_z, w_o))


def _batch(B=4, T=9, D=5, seed=0, lengths=None):
    g = torch.Generator().manual_seed(seed)
    if lengths is None:
        lengths = torch.randint(3, T + 1, (B,), generator=g)
        lengths[0] = T
    seqs = [torch.randn(int(L), D, generator=g, dtype=torch.float64) for L in lengths]
    batch = SequenceBatch.from_sequences(seqs)
    obs = batch.observed.clone()
    obs[1, 2, :2] = False  # some missing values
    return SequenceBatch(batch.x.double(), batch.valid, obs, batch.lengths)


@pytest.mark.parametrize("kind", ["st-r", "st-l", "st-lr", "mf-lr", "mf-l"])
@pytest.mark.parametrize("N,resample", [(1, "never"), (3, "never"), (3, "ess"), (4, "always")])
def test_fused_particle_path_equals_step_loop(kind, N, resample):
    torch.manual_seed(1)
    lsm = build("dkf", 5, "gaussian", guide=kind, z_dim=3, transition_dim=6, emission_dim=7, rnn_dim=8).double()
    batch = _batch()
    B, T = batch.valid.shape
    uniforms = torch.rand(T, N, B, dtype=torch.float64)
    results = []
    for fused in (True, False):
        torch.manual_seed(7)
        # the fused path sorts the batch by decreasing length and draws the same noise in that order
        order = torch.argsort(batch.lengths, descending=True, stable=True)
        eps = torch.randn(T, N, B, 3, dtype=torch.float64)[:, :, torch.argsort(order)]
        torch.manual_seed(7)
        sampler = None if fused else (lambda t, q, shape: reparameterized_sample(q, eps[t]))
        lsm.zero_grad()
        r = particle_filter(lsm, batch, N, resample=resample, sampler=sampler, uniforms=uniforms, record=True)
        r.log_z.sum().backward()
        results.append((r.log_z.detach(), [p.grad.clone() for p in lsm.parameters()], r.state["g"], r.num_resamples))
    (lz_f, g_f, st_f, nr_f), (lz_l, g_l, st_l, nr_l) = results
    assert torch.equal(nr_f, nr_l)
    if resample != "never":
        assert int(nr_f.sum()) > 0
    torch.testing.assert_close(lz_f, lz_l, rtol=1e-10, atol=1e-10)
    assert sum(float(g.abs().sum()) for g in g_f) > 0
    for a, b in zip(g_f, g_l):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
    full = batch.valid[:, -1]  # the state is specified for the sequences running at the last step
    assert full.sum() >= 1
    for k in st_l:
        torch.testing.assert_close(st_f[k][:, full], st_l[k][:, full])


@pytest.mark.parametrize("resample", ["never", "ess"])
def test_fused_path_continues_chunks_like_the_step_loop(resample):
    """Truncated-BPTT chunks on the fused path (which sorts each chunk by length and skips ended
    sequences) carry the same state into the next chunk as the step-by-step loop."""
    from deepstate.inference.trainer import iterate_chunks, select_state

    torch.manual_seed(2)
    lsm = build("dkf", 5, "gaussian", z_dim=3, transition_dim=6, emission_dim=7, rnn_dim=8).double()
    # chunks of 4 steps: lengths (4, 2, 4, 3, 4) in the second chunk and (2, 1, 2) in the third are unsorted
    batch = _batch(lengths=[10, 6, 9, 7, 10], seed=3)
    N = 3
    totals = []
    for fused in (True, False):
        state, prev_rows, total = None, None, torch.zeros(5, dtype=torch.float64)
        for c, (chunk, rows) in enumerate(iterate_chunks(batch, 4)):
            Tc, Bc = chunk.valid.shape[1], chunk.batch_size
            torch.manual_seed(100 + c)
            order = torch.argsort(chunk.lengths, descending=True, stable=True)
            eps = torch.randn(Tc, N, Bc, 3, dtype=torch.float64)[:, :, torch.argsort(order)]
            uniforms = torch.rand(Tc, N, Bc, dtype=torch.float64)
            torch.manual_seed(100 + c)
            sampler = None if fused else (lambda t, q, shape, eps=eps: reparameterized_sample(q, eps[t]))
            init = None if state is None else select_state(state, torch.searchsorted(prev_rows, rows))
            r = particle_filter(lsm, chunk, N, resample=resample, sampler=sampler, uniforms=uniforms, initial_state=init)
            total[rows] += r.log_z.detach()
            state, prev_rows = r.state, rows
        totals.append(total)
    torch.testing.assert_close(totals[0], totals[1], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_elman_rnn_gradcheck(nonlinearity):
    from deepstate.models.fused import elman_rnn

    torch.manual_seed(1)
    d = torch.float64
    x = torch.randn(3, 6, 4, dtype=d, requires_grad=True)
    lengths = torch.tensor([4, 6, 2])
    w_ih = torch.randn(5, 4, dtype=d, requires_grad=True)
    w_hh = torch.randn(5, 5, dtype=d, requires_grad=True) / 2
    b = torch.randn(5, dtype=d, requires_grad=True)
    h0 = torch.randn(3, 5, dtype=d, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: elman_rnn(*a[:1], lengths, *a[1:], nonlinearity),
                                    (x, w_ih, w_hh.detach().requires_grad_(), b, h0))


@pytest.mark.parametrize("direction", ["forward", "backward"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("learned_h0", [False, True])
def test_run_rnn_fused_path_equals_nn_rnn(direction, nonlinearity, learned_h0, monkeypatch):
    """run_rnn trains a one-layer nn.RNN through elman_rnn: outputs and every gradient equal those of
    torch's own nn.RNN over packed sequences (padding included, lengths unsorted)."""
    from torch import nn

    from deepstate.models import nn as dsnn

    torch.manual_seed(2)
    rnn = nn.RNN(7, 5, batch_first=True, nonlinearity=nonlinearity).double()
    x = torch.randn(4, 9, 7, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([3, 9, 1, 6])
    h0 = torch.randn(5, dtype=torch.float64, requires_grad=True) if learned_h0 else None
    assert dsnn._fused_applies(rnn, x)
    out = dsnn.run_rnn(rnn, x, lengths, direction, h0)
    params = [x, *rnn.parameters()] + ([h0] if learned_h0 else [])
    g = torch.randn_like(out)
    grads = torch.autograd.grad((out * g).sum(), params)
    # the reference: torch's nn.RNN, with the fused path switched off
    with torch.no_grad():
        assert not dsnn._fused_applies(rnn, x)
    monkeypatch.setattr(dsnn, "_fused_applies", lambda rnn, x: False)
    ref = dsnn.run_rnn(rnn, x, lengths, direction, h0)
    ref_grads = torch.autograd.grad((ref * g).sum(), params)
    assert torch.allclose(out, ref, atol=1e-12)
    assert (out[2, 1:] == 0).all()  # padded steps output zeros, as pad_packed_sequence gives
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, atol=1e-10)
