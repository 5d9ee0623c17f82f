"""Speed of the exact (Kalman) path: deepstate against statsmodels, in one run.

Times, for a 2-dim state and 1-dim observations (a random stable LGSSM, float64):

* ``LinearGaussianSSM.log_likelihood`` (forward only, with the parameters requiring gradients and
  under ``torch.no_grad()`` as scoring and forecasting run it, and forward + backward, the cost of
  one maximum-likelihood evaluation) for B = 1 and B = 100 series of T = 300 and 3,000 steps;
* statsmodels' Kalman filter log-likelihood (``MLEModel.ssm.loglike()``, Cython) per series,
  looped over the B series;
* the sunspots maximum-likelihood fit as ``deepstate demo`` runs it
  (``Estimator("lgssm", objective="exact", z_dim=2, dtype=float64).fit(train, epochs=50)``).

Prints medians (over ``--repeats`` runs) and the ratio deepstate / statsmodels.

Usage::

    python benchmarks/kalman_speed.py [--repeats 7] [--threads 1] [--skip-fit]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import statsmodels.api as sm
import torch

from deepstate.data import SequenceBatch
from deepstate.data.synthetic import random_stable_lgssm, simulate_lgssm
from deepstate.models.lgssm import LinearGaussianSSM


def _median_time(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _statsmodels_models(batch: SequenceBatch, M: dict):
    Z = M["A"].shape[0]
    mods = []
    for seq in batch.sequences():
        mod = sm.tsa.statespace.MLEModel(seq.numpy(), k_states=Z)
        mod["design"] = M["C"]
        mod["transition"] = M["A"]
        mod["selection"] = np.eye(Z)
        mod["state_cov"] = M["Q"]
        mod["obs_cov"] = np.diag(M["r"]) if M["r"].ndim == 1 else M["r"]
        mod.initialize_known(M["m0"], M["P0"])
        mods.append(mod)
    return mods


def bench_loglike(T: int, B: int, repeats: int):
    params = random_stable_lgssm(2, 1, seed=0)
    batch, _ = simulate_lgssm(**{k: params[k] for k in ("A", "Q", "C", "R", "m0", "P0")}, T=T, num_sequences=B,
                              seed=1)
    batch = batch.double()
    ssm = LinearGaussianSSM(2, 1, A=params["A"], Q=params["Q"], C=params["C"], R=params["R"], m0=params["m0"],
                            P0=params["P0"], dtype=torch.float64)
    M = {k: v.detach().numpy() for k, v in ssm.matrices().items()}
    mods = _statsmodels_models(batch, M)
    ours = ssm.log_likelihood(batch).detach().numpy()
    ref = np.array([m.ssm.loglike() for m in mods])
    assert np.allclose(ours, ref, rtol=1e-6), (ours[:3], ref[:3])

    def fwd():
        ssm.log_likelihood(batch)

    def fwd_nograd():  # scoring, forecasting, backtests: no gradient needed (as statsmodels' loglike)
        with torch.no_grad():
            ssm.log_likelihood(batch)

    def fwd_bwd():
        ssm.zero_grad()
        ssm.log_likelihood(batch).sum().backward()

    def ref_loop():
        for m in mods:
            m.ssm.loglike()

    t_f = _median_time(fwd, repeats)
    t_ng = _median_time(fwd_nograd, repeats)
    t_fb = _median_time(fwd_bwd, repeats)
    t_sm = _median_time(ref_loop, repeats)
    print(f"T={T:5d} B={B:4d}  deepstate forward {t_f * 1e3:8.2f} ms (no grad {t_ng * 1e3:8.2f} ms)  "
          f"forward+backward {t_fb * 1e3:8.2f} ms  statsmodels (looped) {t_sm * 1e3:8.2f} ms  "
          f"ratio forward/statsmodels {t_f / t_sm:6.2f} (no grad {t_ng / t_sm:6.2f}, fwd+bwd {t_fb / t_sm:6.2f})")


def bench_sunspots_fit(repeats: int):
    from deepstate.data import load_dataset, split_series
    from deepstate.estimator import Estimator

    series = load_dataset("sunspots").batch
    train = split_series(series, valid_fraction=0.0, test_fraction=0.2)["train"]
    times, final = [], None
    for _ in range(repeats):
        torch.manual_seed(0)
        est = Estimator("lgssm", objective="exact", z_dim=2, seed=0, dtype=torch.float64)
        t0 = time.perf_counter()
        est.fit(train, epochs=50, progress=False)
        times.append(time.perf_counter() - t0)
        final = est.history_[-1]["train_bound"]
    print(f"sunspots LGSSM maximum-likelihood fit (demo settings, 50 iterations): median {statistics.median(times):.2f} s "
          f"over {repeats} runs; final train bound {final:.4f} nats/year")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--skip-fit", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); statsmodels {sm.__version__}")
    for T in (300, 3000):
        for B in (1, 100):
            bench_loglike(T, B, args.repeats)
    if not args.skip_fit:
        bench_sunspots_fit(max(1, args.repeats // 2))


if __name__ == "__main__":
    main()
