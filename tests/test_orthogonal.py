"""Orthogonal parametrisation of recurrent matrices: the forward pass really uses it, gradients reach
the underlying parameter, orthogonality survives training, and caching computes it once per pass."""

import copy

import pytest
import torch
from torch import nn

from deepstate.data import SequenceBatch
from deepstate.inference.particle import particle_filter
from deepstate.models import build
from deepstate.models.nn import make_rnn, rnn_initial, rnn_step, run_rnn
from deepstate.models.orthogonal import (
    BlockOrthogonal,
    cached_parametrizations,
    is_orthogonal_parametrized,
    orthogonal_parametrize_,
    orthogonality_error,
    rebase_,
    remove_orthogonal_parametrization_,
)

KINDS = ["gru", "lstm", "rnn"]
GATES = {"gru": 3, "lstm": 4, "rnn": 1}


def _original(rnn, name="weight_hh_l0"):
    return rnn.parametrizations[name].original


def _plain_copy_with(rnn, kind):
    """An unparametrised RNN with the same weights as ``rnn`` (its computed ``weight_hh`` copied in)."""
    plain = make_rnn(kind, rnn.input_size, rnn.hidden_size)
    with torch.no_grad():
        for name in ("weight_ih_l0", "bias_ih_l0", "bias_hh_l0", "weight_hh_l0"):
            getattr(plain, name).copy_(getattr(rnn, name))
    return plain


@pytest.mark.parametrize("kind", KINDS)
def test_registration_keeps_the_function_and_every_block_is_orthogonal(kind):
    rnn = make_rnn(kind, 3, 6)
    x = torch.randn(2, 5, 3)
    before = rnn(x)[0]
    W0 = rnn.weight_hh_l0.detach().clone()
    orthogonal_parametrize_(rnn)
    assert is_orthogonal_parametrized(rnn)
    names = [n for n, _ in rnn.named_parameters()]
    assert "parametrizations.weight_hh_l0.original" in names and "weight_hh_l0" not in names
    assert _original(rnn).shape == (GATES[kind] * 6, 6)
    torch.testing.assert_close(rnn.weight_hh_l0, W0, atol=1e-6, rtol=0)
    torch.testing.assert_close(rnn(x)[0], before, atol=1e-6, rtol=0)
    blocks = rnn.weight_hh_l0.detach().reshape(GATES[kind], 6, 6)
    eye = torch.eye(6).expand_as(blocks)
    torch.testing.assert_close(blocks.transpose(-1, -2) @ blocks, eye, atol=1e-5, rtol=0)
    assert orthogonality_error(rnn) < 1e-5


@pytest.mark.parametrize("kind", KINDS)
def test_forward_uses_the_parametrised_weight_and_gradients_reach_the_parameter(kind):
    rnn = orthogonal_parametrize_(make_rnn(kind, 3, 5))
    x = torch.randn(2, 4, 3)
    y1 = rnn(x)[0]
    with torch.no_grad():
        _original(rnn).normal_(0, 0.5)
    y2 = rnn(x)[0]
    assert (y2 - y1).abs().max() > 1e-3  # the output follows the underlying parameter
    # ... and equals a plain RNN holding the computed weight: forward uses exactly that weight
    torch.testing.assert_close(y2, _plain_copy_with(rnn, kind)(x)[0], atol=1e-6, rtol=0)
    y2.pow(2).sum().backward()
    g = _original(rnn).grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    # only the strict upper triangle of each block is used: the rest gets exactly zero gradient
    blocks = g.reshape(GATES[kind], 5, 5)
    assert torch.equal(blocks.tril(), torch.zeros_like(blocks))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("map", ["cayley", "expm"])
def test_orthogonality_holds_after_training(kind, map):
    torch.manual_seed(1)
    x, target = torch.randn(4, 6, 3), torch.randn(4, 6, 5)
    rnn = orthogonal_parametrize_(make_rnn(kind, 3, 5), map=map)
    control = make_rnn(kind, 3, 5)  # unconstrained: drifts away from orthogonal
    W0 = rnn.weight_hh_l0.detach().clone()
    for module in (rnn, control):
        opt = torch.optim.Adam(module.parameters(), lr=0.1)
        for _ in range(15):
            opt.zero_grad()
            with cached_parametrizations():
                loss = (run_rnn(module, x, torch.full((4,), 6)) - target).pow(2).mean()
            loss.backward()
            opt.step()
    assert (rnn.weight_hh_l0 - W0).abs().max() > 0.1  # it did move
    assert orthogonality_error(rnn) < 1e-5
    assert orthogonality_error(control) > 1e-2


@pytest.mark.parametrize("kind", KINDS)
def test_cached_step_by_step_pass_computes_the_weight_once(kind, monkeypatch):
    calls = []
    inner = BlockOrthogonal.forward

    def counting(self, X):
        calls.append(1)
        return inner(self, X)

    monkeypatch.setattr(BlockOrthogonal, "forward", counting)
    rnn = orthogonal_parametrize_(make_rnn(kind, 3, 5))
    with torch.no_grad():
        _original(rnn).normal_(0, 0.3)
    x = torch.randn(2, 7, 3)
    full = run_rnn(rnn, x, torch.full((2,), 7))
    calls.clear()

    def stepwise():
        state = rnn_initial(rnn, (2,), x)
        hs = []
        for t in range(7):
            state = rnn_step(rnn, x[:, t], state)
            hs.append(state["h"])
        return torch.stack(hs, 1)

    with cached_parametrizations():
        h_cached = stepwise()
    assert len(calls) == 1
    calls.clear()
    h_uncached = stepwise()
    assert len(calls) >= 7  # recomputed at every step without the cache
    torch.testing.assert_close(h_cached, full, atol=1e-6, rtol=0)
    torch.testing.assert_close(h_uncached, full, atol=1e-6, rtol=0)
    # gradients through the cached weight equal those of the uncached pass
    grads = []
    for cached in (True, False):
        rnn.zero_grad()
        if cached:
            with cached_parametrizations():
                loss = stepwise().sum()
        else:
            loss = stepwise().sum()
        loss.backward()
        grads.append(_original(rnn).grad.clone())
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)


def test_an_uncached_call_evaluates_once_and_a_failing_call_leaves_no_cache(monkeypatch):
    calls = []
    inner = BlockOrthogonal.forward
    monkeypatch.setattr(BlockOrthogonal, "forward", lambda self, X: calls.append(1) or inner(self, X))
    rnn = orthogonal_parametrize_(make_rnn("gru", 3, 5))
    x = torch.randn(2, 4, 3)
    calls.clear()
    y = rnn(x)[0]
    assert len(calls) == 1  # nn.GRU reads the weight 4 times per call; the per-call cache makes it one
    with pytest.raises(RuntimeError):
        rnn(torch.randn(2, 4, 7))  # wrong input size: forward raises after reading the weights
    with torch.no_grad():
        _original(rnn).normal_(0, 0.5)
    assert (rnn(x)[0] - y).abs().max() > 1e-3  # not served a stale cached weight
    remove_orthogonal_parametrization_(rnn)
    assert not rnn._forward_pre_hooks and not rnn._forward_hooks


def test_multilayer_bidirectional_and_cells():
    rnn = orthogonal_parametrize_(nn.LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=True))
    assert sorted(rnn.parametrizations.keys()) == ["weight_hh_l0", "weight_hh_l0_reverse", "weight_hh_l1",
                                                    "weight_hh_l1_reverse"]
    out = rnn(torch.randn(2, 3, 3))[0]
    out.sum().backward()
    assert all(rnn.parametrizations[k].original.grad is not None for k in rnn.parametrizations.keys())
    cell = orthogonal_parametrize_(nn.GRUCell(3, 4))
    assert orthogonality_error(cell) < 1e-5
    cell(torch.randn(2, 3), torch.randn(2, 4)).sum().backward()  # hx != 0, else weight_hh gets no gradient
    assert cell.parametrizations.weight_hh.original.grad.abs().sum() > 0


def test_float64_and_non_orthogonal_start_is_projected():
    rnn = nn.GRU(2, 4, batch_first=True).double()  # PyTorch's uniform init: not orthogonal
    assert orthogonality_error(rnn) > 1e-2
    orthogonal_parametrize_(rnn)
    assert rnn.weight_hh_l0.dtype == torch.float64
    assert orthogonality_error(rnn) < 1e-12


def test_deepcopy_state_dict_rebase_and_remove():
    rnn = orthogonal_parametrize_(make_rnn("gru", 3, 5))
    with torch.no_grad():
        _original(rnn).normal_(0, 0.3)
    x = torch.randn(2, 4, 3)
    y = rnn(x)[0]  # leaves the computed (non-leaf) weight in rnn._flat_weights
    clone = copy.deepcopy(rnn)
    torch.testing.assert_close(clone(x)[0], y)
    with torch.no_grad():
        _original(clone).zero_()
    assert (clone(x)[0] - y).abs().max() > 1e-3 and torch.equal(rnn(x)[0], y)  # independent copies

    fresh = orthogonal_parametrize_(make_rnn("gru", 3, 5))
    fresh.load_state_dict(rnn.state_dict())
    torch.testing.assert_close(fresh(x)[0], y)

    rebase_(rnn)
    assert torch.equal(_original(rnn), torch.zeros_like(_original(rnn)))
    torch.testing.assert_close(rnn(x)[0], y, atol=1e-6, rtol=0)
    assert orthogonality_error(rnn) < 1e-6

    remove_orthogonal_parametrization_(rnn)
    assert not is_orthogonal_parametrized(rnn)
    assert isinstance(rnn.weight_hh_l0, nn.Parameter)
    torch.testing.assert_close(rnn(x)[0], y, atol=1e-6, rtol=0)


def test_inside_a_model_with_the_particle_filter():
    """VRNN steps its model RNN with rnn_step at every step: cached pass, gradients reach the parameter."""
    lsm = build("vrnn", 3, "gaussian", z_dim=2, rnn_dim=6, feature_dim=6, guide_rnn_dim=6)
    rnn = orthogonal_parametrize_(lsm.ssm.rnn)
    batch = SequenceBatch.from_sequences([torch.randn(5, 3), torch.randn(3, 3)])
    opt = torch.optim.Adam(lsm.parameters(), lr=0.05)
    for _ in range(3):
        opt.zero_grad()
        with cached_parametrizations():
            loss = -particle_filter(lsm, batch, 2, resample="never").log_z.sum()
        loss.backward()
        assert _original(rnn).grad.abs().sum() > 0
        opt.step()
    assert torch.isfinite(loss)
    assert orthogonality_error(rnn) < 1e-5
    copy.deepcopy(lsm)  # snapshots of a model holding a parametrised RNN still work


def test_errors_name_the_argument():
    with pytest.raises(TypeError, match="rnn"):
        orthogonal_parametrize_(nn.Linear(3, 3))
    with pytest.raises(ValueError, match="map"):
        orthogonal_parametrize_(make_rnn("gru", 3, 4), map="householder")
    rnn = orthogonal_parametrize_(make_rnn("gru", 3, 4))
    with pytest.raises(ValueError, match="already"):
        orthogonal_parametrize_(rnn)
    with pytest.raises(ValueError, match="proj_size"):
        orthogonal_parametrize_(nn.LSTM(3, 4, proj_size=2))
    with pytest.raises(ValueError, match="not orthogonally parametrised"):
        remove_orthogonal_parametrization_(make_rnn("gru", 3, 4))
    with pytest.raises(ValueError, match="not orthogonally parametrised"):
        rebase_(make_rnn("gru", 3, 4))
    with pytest.raises(ValueError, match="map"):
        BlockOrthogonal(3, 4, map="svd")
