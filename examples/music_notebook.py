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
# # Polyphonic music: DKF, VRNN and SRNN on JSB chorales, trained with ELBO, IWAE and FIVO
#
# The classic benchmark of deep state-space models (Boulanger-Lewandowski et al. 2012): 382 Bach
# chorales as piano rolls, one frame per quarter note, 88 keys, each key on or off. Every model
# emits independent Bernoulli probabilities per key given its latent state, so `log p(x)` is in
# **nats per frame** (per time step, summed over the 88 keys); higher is better. Papers report
# about -7 (VRNN/SRNN with FIVO) to -8 nats per frame on the test set after long training.
#
# Three models:
#
# * **DKF** / DMM (Krishnan et al. 2017): a Markov latent chain with a gated transition;
# * **VRNN** (Chung et al. 2015): a deterministic RNN whose state also depends on the latents;
# * **SRNN** (Fraccaro et al. 2016): a deterministic RNN over the inputs feeding a stochastic layer.
#
# Three training objectives, all lower bounds on `log p(x)` (see the Kalman sanity notebook):
# the particle **ELBO** (1 particle), **IWAE** (N particles, no resampling) and **FIVO**
# (N particles, resampling when the effective sample size falls below N/2).
#
# Every trained model is then scored on the test chorales with all three bounds, and the best one
# generates a chorale, saved as MIDI and as a piano-roll image.
#
# Data: `jsb_chorales.pickle` under `$DEEPSTATE_DATA` (else the user cache, downloading it once
# when not in CI). `DEEPSTATE_FAST=1` uses 4 training chorales, small networks and two epochs
# (seconds; the numbers then only show the code runs). Without it: the whole dataset, the
# models' default (paper) sizes and `DEEPSTATE_EPOCHS` epochs (default 20: hours on a CPU; a
# GPU is used when there is one, or set `DEEPSTATE_DEVICE`).

# %%
import os
import time
from pathlib import Path

from deepstate.notebook import notebook_setup

# fast mode, output folder, tables (one torch thread in fast mode only: full mode trains paper-size models)
FAST, OUT, display, show = notebook_setup("music", single_thread=os.environ.get("DEEPSTATE_FAST", "") not in ("", "0"))
import matplotlib.pyplot as plt
import pandas as pd
import torch

from deepstate.data import load_polyphonic
from deepstate.data.midi import piano_roll_to_midi
from deepstate.inference import Trainer, evaluate
from deepstate.models import build
from deepstate.plots.music import piano_roll

IN_CI = os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")

CFG = dict(
    n_train=4 if FAST else None, n_eval=4 if FAST else None,   # None: the whole split
    epochs=2 if FAST else int(os.environ.get("DEEPSTATE_EPOCHS", "20")),
    lr=1e-2 if FAST else 1e-3, batch_size=2 if FAST else 20,
    train_particles=4,
    eval_particles=4 if FAST else 100,
    gen_length=32 if FAST else 96,
)
# small networks in fast mode; the defaults of `build` (the papers' sizes) otherwise
SIZES = {
    "dkf": dict(z_dim=8, rnn_dim=16, transition_dim=16, emission_dim=16),
    "vrnn": dict(z_dim=8, rnn_dim=16, feature_dim=16),
    "srnn": dict(z_dim=8, rnn_dim=16, hidden_dim=16),
} if FAST else {"dkf": {}, "vrnn": {}, "srnn": {}}
# full mode runs on a GPU when there is one (or DEEPSTATE_DEVICE=cpu / cuda:1 ...)
DEVICE = os.environ.get("DEEPSTATE_DEVICE", "cuda" if torch.cuda.is_available() and not FAST else "cpu")
OBJECTIVES = {"ELBO": "particle_elbo", "IWAE": "iwae", "FIVO": "fivo"}
print("fast mode" if FAST else "full mode", CFG, "device", DEVICE)


# %% [markdown]
# ## 1. Load the chorales
#
# In CI the data must come from `$DEEPSTATE_DATA` (nothing is downloaded there): a missing file
# stops the notebook here with a message saying what is missing.

# %%
data_env = os.environ.get("DEEPSTATE_DATA", "")
if IN_CI and not (data_env and (Path(data_env) / "jsb_chorales.pickle").is_file()):
    raise FileNotFoundError(
        f"music_notebook needs jsb_chorales.pickle under $DEEPSTATE_DATA (={data_env!r}) when CI=true; "
        "point DEEPSTATE_DATA at the shared data folder (e.g. ../shared/data)")
jsb = load_polyphonic("jsb_chorales", download=not IN_CI)
train, valid, test = jsb["train"], jsb["valid"], jsb["test"]
if CFG["n_train"]:
    train, valid, test = train[: CFG["n_train"]], valid[: CFG["n_eval"]], test[: CFG["n_eval"]]
for name, split in (("train", train), ("valid", valid), ("test", test)):
    print(f"{name}: {split.batch_size} chorales, {int(split.valid.sum())} frames, "
          f"mean {float(split.x.sum() / split.valid.sum()):.1f} notes per frame")
show(piano_roll(test.x[0, : int(test.lengths[0])], titles=["a test chorale"]), "data_chorale.png")

# %% [markdown]
# ## 2. Train every model with every objective
#
# Adam, learning rate 1e-3, minibatches of 20 chorales (fast mode: a large learning rate and
# minibatches of 2, to move at all in a few steps); ELBO with 1 particle, IWAE and FIVO with 4.
# The validation bound per epoch is FIVO with 4 particles.

# %%
models, rows = {}, []
for model in ("dkf", "vrnn", "srnn"):
    for label, objective in OBJECTIVES.items():
        torch.manual_seed(0)
        lsm = build(model, 88, "bernoulli", **SIZES[model])
        n = 1 if objective == "particle_elbo" else CFG["train_particles"]
        trainer = Trainer(lsm, objective=objective, num_particles=n, lr=CFG["lr"], batch_size=CFG["batch_size"],
                          progress=False, valid_objective="fivo", valid_num_particles=4, seed=0, device=DEVICE)
        t0 = time.perf_counter()
        history = trainer.fit(train, valid, epochs=CFG["epochs"])
        models[(model, label)] = lsm
        rows.append(dict(model=model, trained_with=label, epochs=len(history), seconds=time.perf_counter() - t0,
                         train_bound=history[-1]["train_bound"], valid_fivo4=history[-1]["valid_bound"]))
        print(f"{model:5s} {label:5s}: valid FIVO(4) {history[-1]['valid_bound']:8.3f} nats/frame "
              f"({rows[-1]['seconds']:.1f}s)", flush=True)
display(pd.DataFrame(rows).set_index(["model", "trained_with"]).round(3))

# %% [markdown]
# ## 3. Test bounds in nats per frame
#
# Each trained model is scored on the test chorales with the three bounds at the same number of
# particles. For any one model, ELBO <= IWAE and (usually) IWAE <= FIVO, since they are
# successively tighter estimates of the same `log p(x)`; across rows the training objective
# changes what the model (and its proposal) learned.

# %%
scores = {}
for (model, label), lsm in models.items():
    scores[(model, label)] = {
        f"test {ev.upper()} (N={1 if ev == 'elbo' else CFG['eval_particles']})":
            evaluate(lsm, test, objective=ev, num_particles=1 if ev == "elbo" else CFG["eval_particles"],
                     seed=0)["nats_per_frame"]
        for ev in ("elbo", "iwae", "fivo")
    }
bounds = pd.DataFrame.from_dict(scores, orient="index")
bounds.index.names = ["model", "trained with"]
bounds.to_csv(OUT / "test_bounds.csv")
display(bounds.round(3))

# %%
# dots, not bars: the bounds are large negative numbers that differ by a few nats
fig, ax = plt.subplots(figsize=(8, 3.5))
fivo_col = bounds.columns[-1]
for k, label in enumerate(OBJECTIVES):
    vals = [bounds.loc[(m, label), fivo_col] for m in ("dkf", "vrnn", "srnn")]
    ax.plot([i + 0.15 * (k - 1) for i in range(3)], vals, "o", ms=9, label=label)
ax.set_xticks(range(3), ["DKF", "VRNN", "SRNN"])
ax.set(ylabel=f"{fivo_col}\n(nats per frame)", title="Test bound by model and training objective (higher is better)")
ax.grid(axis="y", alpha=0.3)
ax.legend(title="trained with")
show(fig, "test_bounds.png")

# %% [markdown]
# ## 4. Generate a chorale
#
# Ancestral sampling from the best model (by test FIVO): draw `z_1`, then each `x_t` from its
# Bernoulli emission, feed it back, draw `z_{t+1}`, and so on. The roll is written as a MIDI file
# (one frame = half a second) and drawn next to a real chorale.

# %%
best = bounds.iloc[:, -1].idxmax()
lsm = models[best]
gen = torch.Generator().manual_seed(0)
with torch.no_grad():
    _, x = lsm.sample(1, CFG["gen_length"], generator=gen)
roll = x[0].detach().cpu()
midi_path = piano_roll_to_midi(roll, OUT / f"generated_{best[0]}_{best[1].lower()}.mid", frame_seconds=0.5)
print(f"best: {best[0]} trained with {best[1]}; {int(roll.sum())} notes over {len(roll)} frames -> {midi_path}")
show(piano_roll([test.x[0, : int(test.lengths[0])], roll],
                titles=["a test chorale", f"generated by {best[0].upper()} ({best[1]})"]), "generated_chorale.png")

# %% [markdown]
# ## What to read from this
#
# * The table is the comparison of the FIVO paper (Maddison et al. 2017) in miniature: the same
#   models trained with tighter bounds, scored with the same bounds.
# * After two epochs on four chorales (fast mode) the models have learned next to nothing: the
#   generated roll is close to noise, with far too many keys on. Full mode trains on all 229 training
#   chorales; expect test bounds in the -7 to -9 nats per frame range after long training.
