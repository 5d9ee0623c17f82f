# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Posterior predictive checks, and a misspecified model that they catch
#
# A good likelihood number does not say *how* a model is wrong. A **posterior predictive check**
# (Gelman, Meng & Stern 1996) does: let the fitted model replicate the data many times, compute a
# test statistic `T` (mean, variance, autocorrelation, longest run, fraction of zeros...) on the data
# and on every replicate, and ask where the observed value falls among the replicated ones. The
# **Bayesian p-value** `p = P(T(x_rep) >= T(x_obs))` is near 0 or 1 when the model cannot produce
# data like the observed in that respect; values in between say nothing is wrong *with that
# statistic*.
#
# deepstate makes three kinds of replicate (`deepstate.checks.replicate`):
#
# * `"free"`: the model runs on its own from its initial state, feeding back its own samples: do
#   sequences *generated* by the model look like the data? (long-run behaviour);
# * `"one-step"`: `x_rep_t ~ p(x_t | x_obs_<t)`: is the forecaster calibrated? Only per-step
#   statistics are fair here (a replicated "sequence" is a set of one-step draws, not a sequence);
# * `"reconstruction"`: latent paths from the amortised guide given the whole sequence.
#
# The plan: data simulated from a known linear-Gaussian state-space model (LGSSM); the true model
# passes the checks; a model with the right dynamics but far too little noise fails them; and on
# **count data** a Gaussian model fitted by maximum likelihood, the usual shortcut, is caught by
# statistics a Gaussian cannot reproduce (zeros, a minimum of 0), while a Poisson model is not.
#
# `DEEPSTATE_FAST=1` runs small sizes (seconds); without it more sequences, replicates and training.

# %%

from deepstate.notebook import notebook_setup

FAST, OUT, display, show = notebook_setup("checks")  # fast mode, output folder, tables
import arviz as az
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from deepstate.checks import posterior_predictive_check
from deepstate.checks.statistics import mean as stat_mean
from deepstate.data.synthetic import simulate_lgssm
from deepstate.estimator import Estimator
from deepstate.models.lgssm import LinearGaussianSSM
from deepstate.plots.checks import ppc_panels

B, T = (6, 40) if FAST else (20, 100)
S = 60 if FAST else 500                       # replicates
EPOCHS = dict(lgssm=20 if FAST else 100, poisson=8 if FAST else 150)
print("fast mode" if FAST else "full mode", dict(sequences=B, steps=T, replicates=S, epochs=EPOCHS))



def flagged(table, alpha=0.01):
    """Statistics whose Bayesian p-value is extreme (below alpha or above 1 - alpha)."""
    return list(table.index[(table.p_value < alpha) | (table.p_value > 1 - alpha)])

# %% [markdown]
# ## 1. Data from a known linear-Gaussian model
#
# `z_t = A z_{t-1} + N(0, Q)`, `x_t = C z_t + N(0, R)`, two latent and two observed dimensions.

# %%
A = torch.tensor([[0.9, 0.1], [0.0, 0.7]])
Q = torch.tensor([[0.3, 0.0], [0.0, 0.2]])
C = torch.tensor([[1.0, 0.5], [0.2, 1.0]])
R = torch.tensor([0.25, 0.4])
m0, P0 = torch.zeros(2), torch.eye(2)
batch, _ = simulate_lgssm(A, Q, C, R, m0, P0, T=T, num_sequences=B, seed=1)


def lgssm(Q, R):
    return LinearGaussianSSM(2, 2, A=A, Q=Q, C=C, R=R, m0=m0, P0=P0, dtype=torch.float64).as_latent_sequence_model()


true_model = lgssm(Q, R)
bad_model = lgssm(0.05 * Q, 0.05 * R)   # the right dynamics, 20x too little noise
print(f"{B} sequences x {T} steps, 2 dimensions")

# %% [markdown]
# ## 2. The true model passes
#
# Free-running replicates with the default statistics (per-sequence mean, variance, lag-1
# autocorrelation, max, min, longest run above the mean; each averaged over sequences and
# dimensions). Each panel shows the replicated values of one statistic and the observed value as a
# red line: for the true model the line falls inside the histograms.

# %%
table_true, idata_true = posterior_predictive_check(true_model, batch, kind="free", num_samples=S, seed=0)
display(table_true.round(3))

# %%
show(ppc_panels(table_true, title="True LGSSM, free-running replicates"), "ppc_true.png")

# %% [markdown]
# The same check with one-step-ahead replicates (the forecaster's view; only per-step statistics).

# %%
table_true_1s, idata_true_1s = posterior_predictive_check(true_model, batch, kind="one-step", num_samples=S, seed=0)
display(table_true_1s.round(3))

# %% [markdown]
# ## 3. A misspecified model fails
#
# The same dynamics with 20 times too little noise. Its free-running sequences are far too
# quiet: the variance, max and min are out of reach of the replicates, and the checks flag them
# with p-values of 0 or 1. The one-step check flags it too (each step's predictive is too narrow
# for what then happens).

# %%
table_bad, idata_bad = posterior_predictive_check(bad_model, batch, kind="free", num_samples=S, seed=0)
table_bad_1s, _ = posterior_predictive_check(bad_model, batch, kind="one-step", num_samples=S, seed=0)
pvals = pd.DataFrame({
    "true, free": table_true.p_value, "misspecified, free": table_bad.p_value,
}).join(pd.DataFrame({"true, one-step": table_true_1s.p_value, "misspecified, one-step": table_bad_1s.p_value}),
        how="outer")
print("flagged for the true model:", flagged(table_true) + flagged(table_true_1s))
print("flagged for the misspecified model:", flagged(table_bad) + flagged(table_bad_1s))
assert flagged(table_bad), "the misspecified model was not caught"
display(pvals.round(3))

# %%
show(ppc_panels(table_bad, title="Misspecified LGSSM (noise / 20), free-running replicates"), "ppc_misspecified.png")

# %% [markdown]
# ### ArviZ views of the same checks
#
# `posterior_predictive_check` also returns an `arviz.InferenceData` (observed values and
# replicates flattened over sequences, steps and dimensions; the one-step kind adds pointwise log
# predictive densities), so every ArviZ plot works:
#
# * `az.plot_ppc`: the distribution of all observed values (black) against that of each replicate
#   (blue) -- the misspecified model's replicates are far too concentrated;
# * `az.plot_bpv(kind="u_value")`: the distribution over observations of the marginal p-values
#   `P(x_rep <= x_obs)`, which is uniform (flat, inside the grey band) for a calibrated model;
#   the misspecified model's pile up at 0 and 1 (observations more extreme than any replicate);
# * `az.plot_bpv(kind="t_stat")`: one statistic (here the standard deviation) of the replicates
#   with the observed value (ArviZ's `bpv` is `P(T_rep <= T_obs)`, the complement of the p-value
#   in deepstate's tables).

# %%
n_pp = 30 if FAST else 100
fig, axes = plt.subplots(2, 3, figsize=(14, 7))
for row, (name, idata) in enumerate((("true", idata_true), ("misspecified", idata_bad))):
    az.plot_ppc(idata, num_pp_samples=n_pp, ax=axes[row, 0], random_seed=0)
    az.plot_bpv(idata, kind="u_value", ax=axes[row, 1])
    az.plot_bpv(idata, kind="t_stat", t_stat="std", ax=axes[row, 2])
    axes[row, 0].set_title(f"{name}: plot_ppc (free-running)")
    axes[row, 1].set_title(f"{name}: marginal p-values")
    axes[row, 2].set_title(f"{name}: std of replicates vs observed")
fig.tight_layout()
show(fig, "arviz_true_vs_misspecified.png")

# %% [markdown]
# ## 4. A Gaussian model on counts: fitted by maximum likelihood, and still caught
#
# The commonest misspecification in practice is not a wrong noise level but a wrong *kind* of
# likelihood. Counts with a low rate (a latent AR(1) log-rate, Poisson observations) have many
# zeros and are never negative. A Gaussian LGSSM fitted to them by exact maximum likelihood gets the
# mean and the variance right -- those checks pass (the autocorrelation roughly) -- but its
# replicates are continuous and go below zero: the fraction of exact zeros and the minimum are
# flagged.
#
# A custom statistic is any function `f(x [*, B, T, D], valid [B, T], observed [B, T, D]) -> [*, B, K]`.

# %%
rng = np.random.default_rng(0)
log_rate = np.zeros((B, T))
for t in range(T):
    prev = log_rate[:, t - 1] if t else rng.normal(0.0, 0.5, B)
    log_rate[:, t] = 0.8 * prev + rng.normal(0.0, 0.4, B)
counts = rng.poisson(np.exp(log_rate - 0.2))[..., None].astype(np.float64)  # [B, T, 1]
print(f"counts: mean {counts.mean():.2f}, {np.mean(counts == 0):.0%} zeros, max {counts.max():.0f}")


def zero_fraction(x, valid, observed):
    """Per sequence: the fraction of observed values that are exactly 0."""
    return stat_mean((np.asarray(x) == 0).astype(np.float64), valid, observed)


count_stats = {"mean": "mean", "variance": "variance", "autocorrelation": "autocorrelation", "min": "min",
               "zero fraction": zero_fraction}

gauss = Estimator("lgssm", objective="exact", z_dim=2, dtype=torch.float64, seed=0)
gauss.fit(counts, epochs=EPOCHS["lgssm"], progress=False)
table_gauss, idata_gauss = gauss.check(counts, kind="free", num_samples=S, statistics=count_stats)
print("Gaussian LGSSM on counts, flagged:", flagged(table_gauss))
assert {"min", "zero fraction"} & set(flagged(table_gauss)), "the Gaussian model on counts was not caught"
display(table_gauss.round(3))

# %% [markdown]
# The remedy is a count likelihood: a deep Kalman filter with Poisson emissions (fitted by FIVO).
# Its replicates are counts, so zeros and the minimum are within reach. (In fast mode it is barely
# trained, so its other statistics may still be off.)

# %%
poisson = Estimator("dkf", likelihood="poisson", z_dim=2, rnn_dim=16, transition_dim=16, emission_dim=16,
                    num_particles=4, seed=0)
poisson.fit(counts, epochs=EPOCHS["poisson"], lr=1e-2, batch_size=B, progress=False)
table_pois, idata_pois = poisson.check(counts, kind="free", num_samples=S, statistics=count_stats)
print("Poisson DKF on counts, flagged:", flagged(table_pois))
display(pd.DataFrame({"Gaussian LGSSM": table_gauss.p_value, "Poisson DKF": table_pois.p_value}).round(3))

# %%
show(ppc_panels(table_gauss, title="Gaussian LGSSM on counts (free-running)"), "ppc_counts_gaussian.png")
show(ppc_panels(table_pois, title="Poisson DKF on counts (free-running)"), "ppc_counts_poisson.png")
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
for ax, (name, idata) in zip(axes, (("Gaussian LGSSM", idata_gauss), ("Poisson DKF", idata_pois))):
    az.plot_ppc(idata, num_pp_samples=n_pp, ax=ax, random_seed=0)
    ax.set_title(f"{name}: counts vs replicates")
fig.tight_layout()
show(fig, "arviz_counts.png")

# %% [markdown]
# ## What to read from this
#
# * A check is only as sharp as its statistic: the Gaussian model on counts passes on mean and
#   variance (it was fitted to match them) and fails on what a Gaussian cannot produce. Choose statistics for the features that matter for the use of the model.
# * A p-value near 0 or 1 is evidence against the model in that respect; a middling one is not
#   evidence *for* the model.
# * `Estimator.check` does all of this on the original scale of the data (the standardiser is
#   undone); the CLI's `deepstate check` writes the same table, the panels and the
#   `InferenceData` (netCDF) for a saved model.

# %%
idata_bad.to_netcdf(str(OUT / "ppc_misspecified.nc"))
print("figures and netCDF in", OUT.resolve())
