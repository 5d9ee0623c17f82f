"""Deep models: every model x guide x emission passes the conformance suite; model-specific checks."""

import pyro
import pyro.optim
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO

from deepstate.data import SequenceBatch
from deepstate.inference.objectives import FIVO, ParticleELBO
from deepstate.models import build
from deepstate.models.nn import make_rnn, reverse_within_length, run_rnn

from conformance import run_conformance

SMALL = dict(z_dim=3, rnn_dim=6, transition_dim=6, emission_dim=6, feature_dim=6, hidden_dim=6)
COMBOS = [("dkf", g) for g in ("st-r", "st-l", "st-lr", "mf-lr", "mf-l")] + \
         [("vrnn", "filtering"), ("vrnn", "smoothing"), ("srnn", "smoothing"), ("srnn", "filtering")]
EMISSIONS = ["bernoulli", "gaussian", "studentt", "poisson"]


def _small_hyper(name):
    keep = {"dkf": ("z_dim", "rnn_dim", "transition_dim", "emission_dim"), "vrnn": ("z_dim", "rnn_dim", "feature_dim"),
            "srnn": ("z_dim", "rnn_dim", "hidden_dim")}[name]
    return {k: SMALL[k] for k in keep}


def make_batch(emission, lengths, D=4, seed=0, missing=0.15):
    g = torch.Generator().manual_seed(seed)
    seqs = []
    for n in lengths:
        if emission == "bernoulli":
            x = (torch.rand(n, D, generator=g) < 0.3).double()
        elif emission == "poisson":
            x = torch.poisson(torch.full((n, D), 2.0), generator=g).double()
        else:
            x = torch.randn(n, D, generator=g, dtype=torch.float64)
        x[torch.rand(n, D, generator=g) < missing] = float("nan")
        seqs.append(x)
    return SequenceBatch.from_sequences(seqs, dtype=torch.float64)


def _model(name, guide, emission, seed=0, **extra):
    torch.manual_seed(seed)
    return build(name, 4, emission, guide=guide, **_small_hyper(name), **extra).double()


@pytest.mark.parametrize("emission", EMISSIONS)
@pytest.mark.parametrize("name,guide", COMBOS)
def test_conformance(name, guide, emission):
    lsm = _model(name, guide, emission)
    run_conformance(lsm, make_batch(emission, [7, 4, 5], seed=1), make_batch(emission, [9, 2], seed=2))


@pytest.mark.parametrize("rnn", ["lstm", "rnn"])
def test_conformance_other_cells(rnn):
    run_conformance(_model("srnn", "smoothing", "gaussian", rnn=rnn), make_batch("gaussian", [6, 3]),
                    make_batch("gaussian", [8], seed=3))
    run_conformance(_model("vrnn", "smoothing", "gaussian", rnn=rnn), make_batch("gaussian", [6, 3]),
                    make_batch("gaussian", [8], seed=3))


def test_conformance_dmm_augmented():
    lsm = _model("dkf", "st-r", "bernoulli", augmented=True)
    run_conformance(lsm, make_batch("bernoulli", [7, 4]), make_batch("bernoulli", [5], seed=4))


@pytest.mark.parametrize("name,guide", [("dkf", "st-r"), ("vrnn", "filtering"), ("srnn", "smoothing")])
@pytest.mark.parametrize("elbo_cls", [Trace_ELBO, TraceMeanField_ELBO])
def test_trains_with_stock_pyro_svi(name, guide, elbo_cls):
    """Stock SVI with ClippedAdam lowers the loss on masked variable-length batches."""
    pyro.clear_param_store()
    lsm = _model(name, guide, "bernoulli")
    batch = make_batch("bernoulli", [10, 6, 8, 3], seed=5)
    svi = SVI(lsm.model, lsm.guide, pyro.optim.ClippedAdam({"lr": 0.02, "clip_norm": 10.0}), elbo_cls())
    losses = [svi.step(batch) for _ in range(40)]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first, (first, last)


def test_reverse_within_length_and_backward_rnn_ignore_padding():
    x = torch.arange(12.0).reshape(2, 6, 1)
    r = reverse_within_length(x, torch.tensor([6, 3]))
    assert r[0, :, 0].tolist() == [5, 4, 3, 2, 1, 0]
    assert r[1, :, 0].tolist() == [8, 7, 6, 9, 10, 11]
    torch.manual_seed(0)
    rnn = make_rnn("gru", 1, 4)
    full = run_rnn(rnn, x, torch.tensor([6, 3]), "backward")
    alone = run_rnn(rnn, x[1:, :3], torch.tensor([3]), "backward")
    assert torch.allclose(full[1, :3], alone[0], atol=1e-6)


def test_orthogonal_init_per_gate():
    rnn = make_rnn("gru", 3, 5)
    W = rnn.weight_hh_l0.detach()
    for k in range(3):
        blk = W[5 * k : 5 * (k + 1)]
        assert torch.allclose(blk @ blk.T, torch.eye(5), atol=1e-5)


def test_dkf_bounds_below_exact_lgssm_with_linear_maps():
    """A DMM whose transition and emission are linear-Gaussian is an LGSSM: its ELBO and FIVO never
    exceed the exact Kalman log-likelihood of the same parameters (beyond Monte Carlo error)."""
    from deepstate.models.lgssm import LinearGaussianSSM

    torch.manual_seed(0)
    Z, D = 2, 3
    lsm = build("dkf", D, "gaussian", guide="st-r", z_dim=Z, rnn_dim=8, transition_dim=4, emission_dim=4).double()
    ssm = lsm.ssm
    A = torch.tensor([[0.8, 0.1], [-0.2, 0.7]], dtype=torch.float64)
    C = torch.randn(D, Z, dtype=torch.float64)
    q, r = 0.4, 0.3
    with torch.no_grad():
        # gate fixed shut (sigmoid(-50) ~ 0): loc = skip(z) = A z; constant scale sqrt(q)
        for p in ssm.transition.gate_out.parameters():
            p.zero_()
        ssm.transition.gate_out.bias.fill_(-50.0)
        ssm.transition.skip.weight.copy_(A)
        ssm.transition.skip.bias.zero_()
        ssm.transition.scale.weight.zero_()
        ssm.transition.scale.bias.fill_(torch.log(torch.expm1(torch.tensor(q**0.5 - ssm.min_scale))).item())
        # emitter: linear path only (a ReLU MLP can be linear on a half-space; instead we replace it)
    ssm.emitter = _LinearGaussianEmitter(C, r)
    ssm.z_0.data.zero_()
    # z_1 = A z_0 + noise = N(0, q I): matches an LGSSM with m0 = 0, P0 = q I
    exact_model = LinearGaussianSSM(Z, D, A=A, Q=q * torch.eye(Z), C=C, R=torch.full((D,), r),
                                    m0=torch.zeros(Z), P0=q * torch.eye(Z), dtype=torch.float64)
    _, x = exact_model.as_latent_sequence_model().sample(6, 25, generator=torch.Generator().manual_seed(1))
    batch = SequenceBatch.from_sequences(list(x), dtype=torch.float64)
    exact = exact_model.log_likelihood(batch).detach()
    R = 30
    big = SequenceBatch.from_sequences(list(x) * R, dtype=torch.float64)
    with torch.no_grad():
        for obj in (ParticleELBO(1), FIVO(8)):
            lz = obj.bound(lsm, big).log_z.reshape(R, 6)
            mean, se = lz.mean(0), lz.std(0) / R**0.5
            assert (mean <= exact + 3 * se + 1e-6).all(), (obj, mean, exact)


class _LinearGaussianEmitter(torch.nn.Module):
    """Replaces the DMM's emitter MLP: raw = [C z, softplus^{-1}(sqrt(r) - floor)] for the Gaussian family."""

    def __init__(self, C, r):
        super().__init__()
        self.C = C
        self.raw_scale = torch.log(torch.expm1(torch.tensor(r**0.5 - 1e-3, dtype=C.dtype)))

    def forward(self, z):
        loc = z @ self.C.T
        return torch.cat([loc, self.raw_scale.expand_as(loc)], -1)


def test_build_rejects_bad_arguments():
    with pytest.raises(ValueError, match="name"):
        build("lstm-vae", 3)
    with pytest.raises(ValueError, match="input_dim"):
        build("dkf", 0)
    with pytest.raises(ValueError, match="likelihood"):
        build("dkf", 3, "gamma")
    with pytest.raises(ValueError, match="guide"):
        build("dkf", 3, guide="st-x")
    with pytest.raises(ValueError, match="hyper"):
        build("srnn", 3, zdim=4)
    with pytest.raises(ValueError, match="rnn"):
        build("vrnn", 3, rnn="transformer")


@pytest.mark.parametrize("name", ["dkf", "vrnn", "srnn"])
def test_sample_shapes_and_support(name):
    lsm = build(name, 5, "bernoulli", **_small_hyper(name))
    z, x = lsm.sample(3, 7, generator=torch.Generator().manual_seed(0))
    assert z.shape == (3, 7, 3) and x.shape == (3, 7, 5)
    assert set(x.unique().tolist()) <= {0.0, 1.0}


def test_orthogonal_parametrisation_through_build_keeps_blocks_orthogonal():
    """``orthogonal="parametrize"`` passes the conformance suite and stays orthogonal under FIVO training."""
    from deepstate.models.orthogonal import orthogonality_error

    lsm = _model("srnn", "smoothing", "gaussian", orthogonal="parametrize")
    run_conformance(lsm, make_batch("gaussian", [6, 3]), make_batch("gaussian", [8], seed=3))
    opt = torch.optim.Adam(lsm.parameters(), lr=0.1)
    batch = make_batch("gaussian", [6, 3])
    for _ in range(5):
        opt.zero_grad()
        FIVO(3).loss(lsm, batch)[0].backward()
        opt.step()
    assert float(orthogonality_error(lsm.ssm.d_rnn)) < 1e-6
    assert float(orthogonality_error(lsm.guide_steps.a_rnn)) < 1e-6


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn", "rnn_relu"])
def test_rnn_step_kernels_equal_the_sequence_module(kind):
    """rnn_step's one-step kernels give the sequence module's output and gradients (float64), for
    inputs with extra leading dims that broadcast against the state."""
    from deepstate.models.nn import _cell, rnn_step

    torch.manual_seed(0)
    rnn = make_rnn(kind, 5, 7, orthogonal=False).double()
    assert _cell(rnn) is not None and _cell(make_rnn(kind, 5, 7, orthogonal="parametrize")) is not None
    x = torch.randn(3, 5, dtype=torch.float64)                       # [B, F], shared by the particles
    state = {"h": torch.randn(2, 3, 7, dtype=torch.float64)}        # [N, B, H]
    if kind == "lstm":
        state["c"] = torch.randn(2, 3, 7, dtype=torch.float64)
    out = rnn_step(rnn, x, state)
    grads = torch.autograd.grad(sum(v.sum() ** 2 for v in out.values()), list(rnn.parameters()))
    xs = x.expand(2, 3, 5).reshape(6, 1, 5)
    hs = state["h"].reshape(1, 6, 7)
    if kind == "lstm":
        _, (h, c) = rnn(xs, (hs, state["c"].reshape(1, 6, 7)))
        ref = {"h": h.reshape(2, 3, 7), "c": c.reshape(2, 3, 7)}
    else:
        ref = {"h": rnn(xs, hs)[1].reshape(2, 3, 7)}
    ref_grads = torch.autograd.grad(sum(v.sum() ** 2 for v in ref.values()), list(rnn.parameters()))
    for k in ref:
        assert torch.allclose(out[k], ref[k], atol=1e-12), k
    for g, r in zip(grads, ref_grads):
        assert torch.allclose(g, r, atol=1e-10)
    # a configuration without a one-step kernel (two layers) still runs the module itself
    deep = torch.nn.GRU(5, 7, num_layers=2, batch_first=True).double()
    with pytest.raises(RuntimeError):  # the two-layer module needs a [2, ...] state: it was not bypassed
        rnn_step(deep, x, {"h": torch.randn(3, 7, dtype=torch.float64)})
