"""Particle filter, resampling and the particle objectives, checked against exact answers."""

import math

import numpy as np
import pytest
import torch
from pyro.infer import RenyiELBO
from scipy import stats

from deepstate.data import SequenceBatch
from deepstate.inference.objectives import FIVO, IWAE, ParticleELBO, get_objective
from deepstate.inference.particle import particle_filter
from deepstate.inference.resampling import effective_sample_size, multinomial_resample, systematic_resample
from deepstate.models.base import LatentSequenceModel
from deepstate.models.lgssm import LinearGaussianSSM


def _local_level(T=100, seed=0):
    """A 1-D AR(1) state observed in noise, and one simulated sequence from it (float64)."""
    ssm = LinearGaussianSSM(1, 1, A=[[0.9]], Q=[[0.5]], C=[[1.0]], R=[0.5], P0=[[1.0]], dtype=torch.float64)
    lsm = LatentSequenceModel(ssm)  # bootstrap proposal
    _, x = lsm.sample(1, T, generator=torch.Generator().manual_seed(seed))
    return ssm, lsm, x[0]


@pytest.fixture(scope="module")
def bootstrap_estimates():
    """Mean and standard error of FIVO / IWAE with the bootstrap proposal, T = 100, for N = 1..1000.

    R = 24 independent repeats are run as 24 copies of the same sequence in one batch.
    """
    torch.manual_seed(1234)
    ssm, lsm, x = _local_level()
    R = 24
    batch = SequenceBatch.from_sequences([x] * R, dtype=torch.float64)
    exact = ssm.log_likelihood(batch)[0].item()
    out = {}
    with torch.no_grad():
        for N in (1, 10, 100, 1000):
            for obj in (FIVO(N), IWAE(N)):
                lz = obj.bound(lsm, batch).log_z
                out[obj.name, N] = (lz.mean().item(), lz.std().item() / math.sqrt(R))
    return exact, out


def test_bootstrap_bounds_never_exceed_exact(bootstrap_estimates):
    exact, out = bootstrap_estimates
    for (name, N), (mean, se) in out.items():
        assert mean <= exact + 3 * se + 1e-9, (name, N, mean, se, exact)


def test_bootstrap_bounds_approach_exact_as_n_grows(bootstrap_estimates):
    exact, out = bootstrap_estimates
    for name in ("fivo", "iwae"):
        gaps = [exact - out[name, N][0] for N in (1, 10, 100, 1000)]
        assert gaps[0] > gaps[1] > gaps[2] > gaps[3] > -1e-6, (name, gaps)
    # FIVO at N = 1000 is within half a nat of the exact total log-likelihood (of about -150 nats)
    assert exact - out["fivo", 1000][0] < 0.5


def test_fivo_tighter_than_iwae_at_n100(bootstrap_estimates):
    exact, out = bootstrap_estimates
    (f, fse), (i, ise) = out["fivo", 100], out["iwae", 100]
    assert f - i > 3 * math.hypot(fse, ise), (f, i)


def test_n1_bounds_coincide():
    """With one particle, FIVO never resamples (ESS = 1 is N/1) and IWAE = ELBO, sample by sample."""
    ssm, lsm, x = _local_level(T=30)
    batch = SequenceBatch.from_sequences([x, x[:20]], dtype=torch.float64)
    for obj in (FIVO(1), IWAE(1), ParticleELBO(1)):
        torch.manual_seed(3)
        r = obj.bound(lsm, batch)
        if obj.name == "iwae":
            ref = r.log_z
        elif obj.name == "elbo":
            assert torch.allclose(r.log_z, ref)
        assert int(r.num_resamples.sum()) == 0


def test_iwae_agrees_with_pyro_renyi_alpha0():
    """IWAE equals Pyro's RenyiELBO(alpha=0, num_particles=N) in expectation (B = 1: Renyi weights the whole batch)."""
    torch.manual_seed(0)
    ssm, lsm, x = _local_level(T=15)
    batch = SequenceBatch.from_sequences([x], dtype=torch.float64)
    N, R = 8, 400
    renyi = RenyiELBO(alpha=0, num_particles=N, vectorize_particles=True, max_plate_nesting=1)
    pyro_vals = np.array([-renyi.loss(lsm.model, lsm.guide, batch) for _ in range(R)])
    big = SequenceBatch.from_sequences([x] * R, dtype=torch.float64)
    ours = IWAE(N).bound(lsm, big).log_z.detach().numpy()
    se = math.hypot(pyro_vals.std() / math.sqrt(R), ours.std() / math.sqrt(R))
    assert abs(pyro_vals.mean() - ours.mean()) < 3 * se, (pyro_vals.mean(), ours.mean(), se)
    # and both sit below the exact value
    assert ours.mean() < ssm.log_likelihood(batch).item()


@pytest.mark.parametrize("resampler", [multinomial_resample, systematic_resample])
def test_resampling_draws_ancestors_with_weight_probability(resampler):
    torch.manual_seed(0)
    N, M = 6, 4000
    w = torch.tensor([0.05, 0.3, 0.1, 0.25, 0.2, 0.1], dtype=torch.float64)
    lw = (w.log()[:, None] + 3.0).expand(N, M)  # a constant shift must not matter
    anc = resampler(lw)
    counts = torch.bincount(anc.flatten(), minlength=N).numpy()
    _, p = stats.chisquare(counts, f_exp=(w * N * M).numpy())
    assert p > 1e-3, (counts, p)
    # a wrong scheme fails the same test
    _, p_bad = stats.chisquare(counts, f_exp=np.full(N, N * M / N))
    assert p_bad < 1e-6


def test_systematic_keeps_every_heavy_particle():
    """Systematic resampling gives particle i between floor(N w_i) and ceil(N w_i) offspring."""
    lw = torch.log(torch.tensor([0.5, 0.25, 0.125, 0.125]))[:, None].expand(4, 1000)
    anc = systematic_resample(lw)
    for i, nw in enumerate([2, 1, 0.5, 0.5]):
        c = (anc == i).sum(0)
        assert ((c >= math.floor(nw)) & (c <= math.ceil(nw))).all()


def test_ess():
    lw = torch.log(torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 0.0]]))
    assert torch.allclose(effective_sample_size(lw), torch.tensor([3.0, 1.0]))


def test_fivo_gradients_flow_and_ess_resampling_happens():
    ssm, lsm, x = _local_level(T=60)
    batch = SequenceBatch.from_sequences([x, x[:40]], dtype=torch.float64)
    loss, res = FIVO(16).loss(lsm, batch)
    loss.backward()
    assert res.num_resamples.min() > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in ssm.parameters())
    always = particle_filter(lsm, batch, 16, resample="always")
    # resampling at every step before the last valid one
    assert always.num_resamples.tolist() == [59, 39]


def test_bad_arguments():
    ssm, lsm, x = _local_level(T=5)
    batch = SequenceBatch.from_sequences([x], dtype=torch.float64)
    with pytest.raises(ValueError, match="num_particles"):
        particle_filter(lsm, batch, 0)
    with pytest.raises(ValueError, match="resample"):
        particle_filter(lsm, batch, 2, resample="sometimes")
    with pytest.raises(ValueError, match="scheme"):
        particle_filter(lsm, batch, 2, scheme="stratified-ish")
    with pytest.raises(ValueError, match="objective"):
        get_objective("vi")
    with pytest.raises(ValueError, match="num_particles"):
        IWAE(-1)


@pytest.mark.parametrize("objective", ["elbo", "iwae"])
def test_chunked_filter_adds_up_to_whole_sequence(objective):
    """Continuing from a previous chunk's state: chunk bounds sum to the whole sequence's bound
    exactly (common random numbers; no resampling, so the chunk boundary changes nothing)."""
    from deepstate.inference.particle import reparameterized_sample

    ssm, lsm, x = _local_level(T=40)
    batch = SequenceBatch.from_sequences([x, x[:30]], dtype=torch.float64)
    N = 4
    eps = torch.randn(40, N, 2, 1, dtype=torch.float64)
    obj = get_objective(objective, N)
    whole = obj.bound(lsm, batch, sampler=lambda t, q, sh: reparameterized_sample(q, eps[t])).log_z
    first = SequenceBatch.from_sequences([x[:20], x[:20]], dtype=torch.float64)
    second = SequenceBatch.from_sequences([x[20:], x[20:30]], dtype=torch.float64)
    r1 = obj.bound(lsm, first, sampler=lambda t, q, sh: reparameterized_sample(q, eps[t]))
    r2 = obj.bound(lsm, second, sampler=lambda t, q, sh: reparameterized_sample(q, eps[20 + t]), initial_state=r1.state)
    assert torch.allclose(r1.log_z + r2.log_z, whole, atol=1e-9)
    assert not torch.allclose(r1.log_z, whole, atol=1e-3)
