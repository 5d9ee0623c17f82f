"""Would ``torch.compile`` pay for FIVO's per-step resampling weights? (a measurement, not used by the library)

Usage::

    python benchmarks/compile_weights.py

Times, without gradient, one step of the weights the particle filter computes for its resampling
decision (the DMM's prior and emission log-densities for N = 4 particles x B = 20 sequences, Pyro's
example sizes), eagerly and compiled with ``torch.compile(dynamic=True)``, and the compile time.
"""

from __future__ import annotations

import time

import pyro
import torch

from jsb_setup import benchmark_model


def main():
    ssm = benchmark_model("dkf", pyro_config=True).ssm

    def weigh(z_prev, z, x, observed, log_q):
        s = {"z": z_prev}
        log_lik = (ssm.likelihood(s, z, {}).log_prob(x) * observed).sum(-1)
        return ssm.prior(s, {}).log_prob(z) - log_q + log_lik

    args = (torch.randn(4, 20, 100), torch.randn(4, 20, 100), torch.bernoulli(torch.rand(20, 88)),
            torch.ones(20, 88), torch.randn(4, 20))
    with pyro.validation_enabled(False), torch.no_grad():
        t0 = time.perf_counter()
        compiled = torch.compile(weigh, dynamic=True)
        compiled(*args)
        print(f"compile_seconds={time.perf_counter() - t0:.1f} max_abs_diff={(compiled(*args) - weigh(*args)).abs().max():.2e}")
        for name, f in [("eager", weigh), ("compiled", compiled)] * 2:
            for _ in range(10):
                f(*args)
            t0 = time.perf_counter()
            for _ in range(300):
                f(*args)
            print(f"{name}_us_per_step={(time.perf_counter() - t0) / 300 * 1e6:.0f}")


if __name__ == "__main__":
    main()
