r"""Reproduce the published JSB chorales results: one command per row, resumable, within a wall-time budget.

Usage::

    python benchmarks/jsb.py --list                                  # the rows and their sources
    python benchmarks/jsb.py dmm [--minutes 150] [--out runs/jsb]    # train (or continue) and evaluate one row
    python benchmarks/jsb.py dmm --evaluate-only                     # evaluate the row's best checkpoint again
    python benchmarks/jsb.py dmm --seed 1                            # another seed, in <out>/dmm-seed1
    python benchmarks/jsb.py --report [--plot curve.png] [--row dmm] # the table of finished rows, a learning curve

A row trains until its budget of **wall time spent training** (``--minutes``, default 150, counted by
the :class:`~deepstate.inference.Trainer` over interruptions: it is stored in the checkpoint) is used,
its epochs are done, or early stopping on the validation bound fires. Started again, a row continues
from ``<out>/<row>/checkpoint.pt`` exactly where it stopped; a row whose training is over goes straight
to evaluation. Logs (``metrics.jsonl``), checkpoints and ``result.json`` stay under ``--out`` (default
``runs/jsb``, outside git).

**Evaluation** (the same code for every row; the papers' unit, nats per frame = total over the split
/ total frames, 4,725 test frames): the model of the best validation epoch, on the test split,

* ``-ELBO``: minus the single-sample ELBO, averaged over ``--elbo-particles`` independent draws
  (same expectation as one draw, less noise);
* ``NLL``: minus the IWAE bound with ``K`` particles for each ``K`` in ``--iwae`` (default 10, 100,
  500, 1000): the importance-sampled estimate of the papers, with its convergence in ``K`` shown.

Run one row at a time on this 2-core machine: two trainings slow each other many-fold.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

JSB_BATCHES = 12  # minibatches of 20 in the 229 training chorales

#: Pyro's examples/dmm.py recipe as it stood when its tutorial reported test -ELBO 6.87 (the argparse
#: defaults of examples/dmm/dmm.py at pyro commit 4dc044b, 2017-10-31, when the tutorial's sentence was
#: written): ClippedAdam lr 4e-4, betas (0.96, 0.999), element-wise clamp 20, lr decay 0.99996 per step,
#: L2 weight decay 0.6 on the summed minibatch loss, batch 20, KL annealing linear from 0.1 over 1,000
#: epochs; minibatches drawn by a fresh permutation every epoch (no length bucketing).
PYRO_DMM_2017 = dict(optimizer="clipped_adam", lr=4e-4, clip_norm=None, loss_scale="sum", bucket_by_length=False,
                     optimizer_args={"betas": (0.96, 0.999), "clip_norm": 20.0, "lrd": 0.99996, "weight_decay": 0.6},
                     annealing={"start": 0.1, "warmup_steps": 1000 * JSB_BATCHES})
#: the same file's defaults since 2019 (pyro commits 23f096f, 2eb3566: "more conservative hyperparameters"):
#: lr 3e-4, clamp 10, weight decay 2.0, annealing from 0.2; never reported at 6.87. The ``dmm_2019`` row.
PYRO_DMM_2019 = dict(optimizer="clipped_adam", lr=3e-4, clip_norm=None, loss_scale="sum",
                     optimizer_args={"betas": (0.96, 0.999), "clip_norm": 10.0, "lrd": 0.99996, "weight_decay": 2.0},
                     annealing={"start": 0.2, "warmup_steps": 1000 * JSB_BATCHES})
#: Pyro's DMM: z 100, gated transition 200, emitter 100, guide RNN 600 with ReLU (``nn.RNN(nonlinearity="relu")``)
#: and a learned initial state, fed the notes alone, PyTorch's default initialisation
DMM = dict(z_dim=100, transition_dim=200, emission_dim=100, rnn_dim=600, rnn="rnn_relu", orthogonal=False,
           observed_channel=False, learn_h0=True)
#: the first run's guide (``dmm_2019``): deepstate's defaults for the encoder (observed-mask channel,
#: orthogonal recurrent initialisation, zero initial state)
DMM_2019 = dict(z_dim=100, transition_dim=200, emission_dim=100, rnn_dim=600, rnn="rnn_relu")
#: the VRNN of FIVO's reference code (see deepstate.models.vrnn), at the FIVO paper's JSB size
FIVO_VRNN = dict(z_dim=32, rnn_dim=32, feature_dim=32, rnn="lstm", orthogonal=False, linear_features=True,
                 scale_bias=0.5, observed_channel=False, glorot=True, data_offsets=True, residual=True)
ROWS = {
    "dmm": dict(
        model="dkf", hyper=DMM, guide="st-r", objective="particle_elbo", num_particles=1, batch_size=20,
        epochs=5000, **PYRO_DMM_2017,
        published="test -ELBO 6.926, NLL 6.388 (Krishnan et al. 2017, Table 3, DKS + KL annealing); "
                  "Pyro examples/dmm.py 6.87 after 5,000 epochs",
        anchor_elbo=6.926, anchor_nll=6.388),
    "dmm_2019": dict(
        model="dkf", hyper=DMM_2019, guide="st-r", objective="particle_elbo", num_particles=1, batch_size=20,
        epochs=5000, **PYRO_DMM_2019,
        published="as the dmm row; Pyro's defaults since 2019 and deepstate's encoder, bucketed batches",
        anchor_elbo=6.926, anchor_nll=6.388),
    # the dmm row's recipe with the latent terms of the ELBO in closed form, -KL(q_t || p_t) given the sampled
    # past, as Krishnan et al.'s own code computes them (stinfmodel_fast/dkf.py, _getTemporalKL) and Pyro's
    # TraceMeanField_ELBO: the same bound, lower-variance gradients. Only this changes.
    "dmm_analytic": dict(
        model="dkf", hyper=DMM, guide="st-r", objective="particle_elbo", num_particles=1, batch_size=20,
        epochs=5000, analytic_kl=True, **PYRO_DMM_2017,
        published="as the dmm row (Krishnan et al.'s code uses the closed-form KL)",
        anchor_elbo=6.926, anchor_nll=6.388),
    "dmm_aug": dict(
        model="dkf", hyper=dict(DMM, augmented=True), guide="st-r", objective="particle_elbo", num_particles=1,
        batch_size=20, epochs=5000, **PYRO_DMM_2017,
        published="test -ELBO 6.773, NLL 6.288 (Krishnan et al. 2017, Table 3, DMM-Aug)",
        anchor_elbo=6.773, anchor_nll=6.288),
    # the dmm row's model and optimiser trained with FIVO (N = 4), selected like the dmm row on the validation
    # -ELBO (the yardstick of the row it is compared with; its test FIVO(4) and IWAE figures are reported too)
    "dmm_fivo": dict(
        model="dkf", hyper=DMM, guide="st-r", objective="fivo", num_particles=4, batch_size=20, epochs=5000,
        **{k: v for k, v in PYRO_DMM_2017.items() if k != "annealing"},  # no annealing of a normalised bound
        published="no published DMM+FIVO figure; compare with the dmm row",
        anchor_elbo=None, anchor_nll=None),
    # FIVO paper setting (Maddison et al. 2017, section 6.1) as its reference code runs it
    # (tensorflow/models research/fivo: models/vrnn.py create_vrnn, runners.py; the README's JSB command;
    # the differences left are listed in deepstate.models.vrnn's VRNN docstring):
    # VRNN with latent, feature and LSTM state of 32 units, N = 4 particles for IWAE/FIVO and one sample
    # for the ELBO, batch 4 drawn at random (no length buckets), Adam lr 1e-4, no gradient clipping,
    # Glorot weights, scales softplus(raw + 0.5), residual proposal mean, the training mean subtracted
    # from the recurrence's inputs and its logit added to the emission's; each row keeps the parameters
    # of its best validation value of its own objective
    **{f"vrnn_{obj}": dict(
        model="vrnn", hyper=FIVO_VRNN, guide="filtering", init_from_data=True,
        objective={"elbo": "particle_elbo"}.get(obj, obj), num_particles=1 if obj == "elbo" else 4,
        batch_size=4, epochs=100_000, optimizer="adam", lr=1e-4, clip_norm=None, bucket_by_length=False,
        valid_objective=obj, valid_num_particles=1 if obj == "elbo" else 4,
        published=f"test bound {b} ({obj.upper()}, N = 4; FIVO paper Table 1 ordering: FIVO > IWAE > ELBO)",
        anchor_elbo=b, anchor_nll=None) for obj, b in (("elbo", 8.69), ("iwae", 8.01), ("fivo", 7.51))},
    # the first VRNN pair: the paper's sizes with deepstate's VRNN defaults (GRU, ReLU features, PyTorch
    # initialisation, observed-mask channel, no data offsets), 4-sample ELBO, clipping at 10, length
    # buckets, every row selected by the validation ELBO
    **{f"vrnn_{obj}_defaults": dict(
        model="vrnn", hyper=dict(z_dim=32, rnn_dim=32, feature_dim=32), guide=None,
        objective={"elbo": "particle_elbo"}.get(obj, obj), num_particles=4, batch_size=4, epochs=5000,
        optimizer="adam", lr=1e-4, clip_norm=10.0,
        published=f"test bound {b} ({obj.upper()}, N = 4-5; FIVO paper Table 1 ordering: FIVO > IWAE > ELBO)",
        anchor_elbo=b, anchor_nll=None) for obj, b in (("elbo", 8.69), ("iwae", 8.01), ("fivo", 7.51))},
    # SRNN (Fraccaro et al. 2016) as its reference code trains on music (github.com/marcofraccaro/srnn,
    # MainSRNN_midi.py, ml/models/SRNN_midi.py, ml/training/decay.py): z 100, GRU d and backward-GRU a of 300,
    # MLPs of 500, smoothing guide with Resq; Adam lr 1e-3 (eps 1e-4), batch 16, gradient norm clipped at 1,
    # 50 epochs with the lr constant for 20 and then divided by 1.2 every epoch (ExponentialDecaySchedule,
    # decay=1.2, no_decay_epochs=20), single-sample ELBO with the KL in closed form and its temperature rising
    # from 0.2 to 1 over the first 20 epochs. On the standard chorales that schedule underfits (test -ELBO
    # 8.67) and a constant lr overfits from about epoch 55 (8.17 early-stopped, the ``srnn_elbo_constant_lr``
    # row; BENCHMARKS.md). Not taken: its data (a re-sampled JSB at twice the frame
    # rate, cut into 100-frame chunks of one concatenated stream); here whole chorales and length buckets. Its
    # clipped leaky-ReLU MLPs and two-layer input embedding are not built. The FIVO row trains the same model
    # with FIVO (N = 4, no annealing of a normalised bound) and is selected on its own bound.
    **{f"srnn_{obj}{suffix}": dict(
        model="srnn", hyper=dict(z_dim=100, rnn_dim=300, hidden_dim=500), guide=None,
        objective={"elbo": "particle_elbo"}.get(obj, obj), num_particles=1 if obj == "elbo" else 4,
        batch_size=16, optimizer="adam", optimizer_args={"eps": 1e-4}, lr=1e-3, clip_norm=1.0,
        **(dict(epochs=5000) if suffix else dict(epochs=50, lr_decay=1 / 1.2, lr_decay_after=20)), valid_every=1,
        **({"annealing": {"start": 0.2, "warmup_steps": 20 * 15}, "analytic_kl": True}  # 15 minibatches per epoch
           if obj == "elbo" else {}),
        valid_objective=obj, valid_num_particles=1 if obj == "elbo" else 4,
        published="4.74 (smooth + Resq) on a re-sampled JSB with per-sequence averaging: not comparable"
                  + ("; the reference recipe at a constant lr, early-stopped" if suffix else ""),
        anchor_elbo=None, anchor_nll=None)
       for obj, suffix in (("elbo", ""), ("fivo", ""), ("elbo", "_constant_lr"))},
}

#: ablation of the ELBO-trained reference VRNN's posterior collapse (BENCHMARKS.md): the ``vrnn_elbo`` row with
#: one setting changed, hypothesis by hypothesis (the proposal starting at the prior; the emission starting at
#: the notes' frequencies; one sample instead of four), each recording the validation KL and active units at
#: every validation (``Trainer(track_posterior=True)``). Meant for a short budget (``--minutes 30``).
VRNN_ELBO_ABLATIONS = {
    "reference": ({}, {}),
    "no_residual": ({"residual": False}, {}),
    "no_offsets": ({"data_offsets": False}, {"init_from_data": False}),
    "4_samples": ({}, {"num_particles": 4, "valid_num_particles": 1}),
}
ROWS.update({
    f"ablate_vrnn_elbo_{name}": dict(
        ROWS["vrnn_elbo"], hyper=dict(FIVO_VRNN, **hyper), track_posterior=True, anchor_elbo=None,
        published="ablation of vrnn_elbo's collapse (not a published row): " + (
            ", ".join(f"{k}={v}" for k, v in {**hyper, **row}.items() if k != "valid_num_particles")
            or "the vrnn_elbo settings"), **row)
    for name, (hyper, row) in VRNN_ELBO_ABLATIONS.items()})

TRAINER_KEYS = ("objective", "num_particles", "batch_size", "annealing", "optimizer", "optimizer_args", "lr",
                "clip_norm", "loss_scale", "bucket_by_length", "analytic_kl", "lr_decay", "lr_decay_after")


def load(data_dir):
    from deepstate.data import load_polyphonic

    return load_polyphonic("jsb_chorales", data_dir=data_dir, download=False)


def build_row(row: dict, seed: int):
    from deepstate.models import build

    torch.manual_seed(seed)
    return build(row["model"], 88, "bernoulli", guide=row["guide"], **row["hyper"])


def run_dir(out: Path, name: str, seed: int = 0) -> Path:
    """Where a run keeps its checkpoint, log and result: ``<out>/<row>`` for seed 0 (the table's run),
    ``<out>/<row>-seed<seed>`` for the others, so that seeds never overwrite each other."""
    return Path(out) / (name if seed == 0 else f"{name}-seed{seed}")


def parse_run(label: str) -> tuple:
    """``"dmm_analytic-seed1"`` -> ``("dmm_analytic", 1)``; a bare row name is seed 0."""
    name, _, seed = label.partition("-seed")
    if name not in ROWS or (seed and not seed.isdigit()):
        raise ValueError(f"unknown run {label!r}: expected ROW or ROW-seedN with ROW one of {sorted(ROWS)}")
    return name, int(seed or 0)


def make_trainer(name: str, row: dict, out: Path, seed: int, patience: int, valid_every: int,
                 track_posterior: bool = False):
    from deepstate.inference import Trainer

    lsm = build_row(row, seed)
    kw = {k: row[k] for k in TRAINER_KEYS if k in row}
    d = run_dir(out, name, seed)
    return Trainer(lsm, checkpoint_dir=d, metrics_path=d / "metrics.jsonl", seed=seed,
                   valid_objective=row.get("valid_objective", "elbo"),
                   valid_num_particles=row.get("valid_num_particles", 1),
                   valid_every=valid_every or row.get("valid_every", 10),
                   early_stopping_patience=patience, progress=False, checkpoint_every=200,
                   track_posterior=bool(track_posterior or row.get("track_posterior", False)), **kw)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def evaluate_row(trainer, test, elbo_particles: int, iwae: list, seed: int, fivo: list = ()) -> dict:
    """The test numbers of the best validation epoch's parameters (see the module docstring)."""
    from deepstate.inference import evaluate

    lsm = trainer.lsm
    if trainer.best_state is not None:
        lsm.load_state_dict(trainer.best_state)
    res = {}
    t0 = time.perf_counter()
    e = evaluate(lsm, test, objective="elbo", num_particles=elbo_particles, seed=seed)
    res["test_neg_elbo"] = -e["nats_per_frame"]
    res["elbo_particles"] = elbo_particles
    res["frames"] = e["frames"]
    log(f"test -ELBO {res['test_neg_elbo']:.4f} nats/frame (mean of {elbo_particles} single-sample ELBOs, "
        f"{time.perf_counter() - t0:.0f} s)")
    # the IWAE estimate of the NLL at K particles, and the FIVO bound with N particles (the same
    # yardstick for rows trained with any objective)
    for objective, key, counts, label, offset in (("iwae", "test_nll_iwae", iwae, "NLL (IWAE, K = {})", 0),
                                                  ("fivo", "test_neg_fivo", fivo, "-FIVO bound (N = {})", 6)):
        res[key] = {}
        for n in counts:
            t0 = time.perf_counter()
            r = evaluate(lsm, test, objective=objective, num_particles=n, seed=seed + (1 + offset) * n, batch_size=8)
            res[key][str(n)] = -r["nats_per_frame"]
            log(f"test {label.format(n)} {-r['nats_per_frame']:.4f} nats/frame ({time.perf_counter() - t0:.0f} s)")
    res.update(posterior_use(lsm, test))
    log(f"test KL {res['test_kl_per_frame']:.4f} nats/frame, active units {res['active_units']} of {res['z_dim']}")
    return res


def posterior_use(lsm, test) -> dict:
    """How much the model uses its latent state on ``test``: the KL term of the ELBO in nats per frame
    (``KL(q_t || p_t)`` given the sampled past, :func:`~deepstate.inference.diagnostics.latent_kl`) and
    Burda et al.'s active units (``Cov_x(E_q[z_u]) > 0.01``). A KL near zero with no active unit is a
    collapsed posterior: every bound then equals the ELBO, and the latent state is not used."""
    from deepstate.inference.diagnostics import posterior_use as use_of

    use = use_of(lsm, test)
    return {"test_kl_per_frame": use["kl_per_frame"], "active_units": use["active_units"], "z_dim": use["z_dim"]}


def collapse_row(args) -> int:
    """``--collapse``: :func:`posterior_use` of the row's best parameters, printed and added to its result.json."""
    name, row, out = args.row, ROWS[args.row], Path(args.out)
    torch.set_num_threads(args.threads)
    data = load(args.data_dir)
    trainer = make_trainer(name, row, out, args.seed, args.patience, args.valid_every)
    trainer.load_checkpoint()
    if trainer.best_state is not None:
        trainer.lsm.load_state_dict(trainer.best_state)
    use = posterior_use(trainer.lsm, data["test"])
    log(f"{name}: test KL {use['test_kl_per_frame']:.4f} nats/frame, active units {use['active_units']} of {use['z_dim']}")
    result_path = run_dir(out, name, args.seed) / "result.json"
    if result_path.is_file():
        from deepstate.atomic import write_text_atomic

        res = json.loads(result_path.read_text())
        res.update(use)
        write_text_atomic(result_path, json.dumps(res, indent=2) + "\n")
    return 0


def train_row(args) -> int:
    name = args.row
    row = ROWS[name]
    data = load(args.data_dir)
    out = Path(args.out)
    run_dir(out, name, args.seed).mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    trainer = make_trainer(name, row, out, args.seed, args.patience, args.valid_every, args.track_posterior)
    if row.get("init_from_data"):  # a resumed run's checkpoint then restores the same offsets
        trainer.lsm.ssm.init_from_data(data["train"])
    epochs = args.epochs or row["epochs"]
    budget = args.minutes * 60.0
    result_path = run_dir(out, name, args.seed) / "result.json"

    last_print = [time.perf_counter()]

    def progress(tr, rec):
        if time.perf_counter() - last_print[0] > args.print_every and tr.history:
            h = tr.history[-1]
            vb = next((x["valid_bound"] for x in reversed(tr.history) if x["valid_bound"] is not None), None)
            log(f"epoch {h['epoch']} train bound {h['train_bound']:.4f} valid {vb if vb is None else round(vb, 4)} "
                f"best {tr.best_valid if tr.best_valid is None else round(tr.best_valid, 4)} "
                f"annealing {h['annealing']:.3f} lr {h['lr']:.2e} elapsed {tr.elapsed / 60:.1f} min")
            last_print[0] = time.perf_counter()

    if not args.evaluate_only:
        if trainer.checkpoint_path.is_file():
            log(f"{name}: continuing from {trainer.checkpoint_path}")
        log(f"{name}: training up to {epochs} epochs, budget {args.minutes:g} min of training wall time, "
            f"{torch.get_num_threads()} thread(s)")
        trainer.fit(data["train"], data["valid"], epochs=epochs, max_seconds=budget, callback=progress)
        done = trainer.epoch >= epochs or trainer.stopped_early or trainer.elapsed >= budget
        log(f"{name}: stopped at epoch {trainer.epoch} after {trainer.elapsed / 60:.1f} min "
            f"(best valid {trainer.best_valid}, early stop {trainer.stopped_early})")
        if not done:
            return 0
    else:
        trainer.load_checkpoint()
    res = evaluate_row(trainer, data["test"], args.elbo_particles, args.iwae, args.seed, args.fivo)
    best_epoch = max((h for h in trainer.history if h["valid_bound"] is not None), key=lambda h: h["valid_bound"],
                     default=None)
    res.update(row=name, seed=args.seed, epochs=trainer.epoch, minutes=trainer.elapsed / 60, best_valid=trainer.best_valid,
               best_epoch=None if best_epoch is None else best_epoch["epoch"], stopped_early=trainer.stopped_early,
               published=row["published"], anchor_elbo=row["anchor_elbo"], anchor_nll=row["anchor_nll"],
               settings={k: v for k, v in row.items() if k not in ("published", "anchor_elbo", "anchor_nll")},
               threads=torch.get_num_threads(), command=" ".join([Path(sys.argv[0]).name] + sys.argv[1:]))
    from deepstate.atomic import write_text_atomic

    write_text_atomic(result_path, json.dumps(res, indent=2) + "\n")
    log(f"{name}: wrote {result_path}")
    return 0


def curve(out: Path, label: str):
    """``[(minutes, minus the validation bound)]`` (the -ELBO unless the row selects on another bound) of a run's validated epochs (``ROW`` or ``ROW-seedN``), from its
    checkpoint's history."""
    ck = torch.load(run_dir(out, *parse_run(label)) / "checkpoint.pt", map_location="cpu", weights_only=False)
    pts = [(h["elapsed"] / 60, -h["valid_bound"]) for h in ck["history"]
           if h.get("valid_bound") is not None and h.get("elapsed") is not None]
    return pts


def plot_objectives(out: Path, rows: list, path: str) -> None:
    """Two panels for rows trained with different objectives: each row's own training bound against
    epochs (progress per epoch), and the validation -ELBO against wall-clock minutes (the same yardstick
    at equal budget)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from deepstate.plots._save import save_figure

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.4), constrained_layout=True)
    for name in rows:
        ck_path = run_dir(out, *parse_run(name)) / "checkpoint.pt"
        if not ck_path.is_file():
            continue
        ck = torch.load(ck_path, map_location="cpu", weights_only=False)
        h = ck["history"]
        row = ROWS[parse_run(name)[0]]
        objective = {"particle_elbo": "ELBO"}.get(row["objective"], row["objective"].upper())
        if row["objective"] != "particle_elbo":
            objective += f" (N = {row['num_particles']})"
        ax1.plot([x["epoch"] for x in h], [-x["train_bound"] for x in h], lw=0.8,
                 label=f"{name}: training -{objective}")
        pts = curve(out, name)
        vo = row.get("valid_objective", "elbo").upper()
        vo += f" (N = {row['valid_num_particles']})" if row.get("valid_num_particles", 1) > 1 else ""
        ax2.plot([m for m, _ in pts], [v for _, v in pts], label=f"{name}: validation -{vo}")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("training bound of its own objective, nats per frame")
    ax1.set_title("progress per epoch")
    ax2.set_xlabel("wall-clock minutes of training (2-core CPU)")
    ax2.set_ylabel("minus the validation bound, nats per frame")
    ax2.set_title("at equal wall-clock budget")
    for ax in (ax1, ax2):
        ax.set_ylim(top=min(ax.get_ylim()[1], 12))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("JSB chorales: rows trained with different objectives (lower is better)")
    save_figure(fig, path)
    print(f"wrote {path}")


def plot_posterior(out: Path, rows: list, path: str) -> None:
    """Two panels for runs that recorded it (``track_posterior``): the validation KL per frame and the
    active units against wall-clock minutes, i.e. when (and whether) each posterior collapses."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from deepstate.plots._save import save_figure

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.4), constrained_layout=True)
    drawn = 0
    for name in rows:
        ck_path = run_dir(out, *parse_run(name)) / "checkpoint.pt"
        if not ck_path.is_file():
            continue
        ck = torch.load(ck_path, map_location="cpu", weights_only=False)
        pts = [(h["elapsed"] / 60, h["valid_kl_per_frame"], h["valid_active_units"]) for h in ck["history"]
               if h.get("valid_kl_per_frame") is not None and h.get("elapsed") is not None]
        if not pts:
            continue
        drawn += 1
        minutes, kl, active = zip(*pts)
        ax1.plot(minutes, kl, marker=".", label=name)
        ax2.plot(minutes, active, marker=".", label=name)
    if not drawn:
        plt.close(fig)
        raise ValueError(f"--plot-posterior: none of {rows} recorded the KL (train them with --track-posterior)")
    ax1.set_yscale("symlog", linthresh=1e-3)  # a collapsed posterior's KL of 1e-4 and a used one's 1 on one axis
    ax1.set_ylabel("validation KL(q || p), nats per frame")
    ax2.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax2.set_ylabel("active latent units (Burda et al.)")
    for ax in (ax1, ax2):
        ax.set_xlabel("wall-clock minutes of training (2-core CPU)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("JSB chorales: how much each run uses its latent state (near 0: a collapsed posterior)")
    save_figure(fig, path)
    print(f"wrote {path}")


def nll_limit(nll: dict):
    """The IWAE NLL extrapolated to infinitely many particles, ``2 NLL(K) - NLL(K/2)`` at the largest
    ``K`` whose half was also evaluated, or ``None``.

    The IWAE bound's gap to ``log p(x)`` shrinks as ``Var(w) / (2 K E[w]^2) + O(1/K^2)`` (Maddison et al.
    2017, Nowozin 2018); if ``gap(K) = c / K``, then ``gap(K/2) - gap(K) = c / K = gap(K)``, so one
    jackknife step removes the first-order bias. It says how far the largest ``K`` is from
    converged: ``NLL(K) - limit`` is the remaining first-order gap."""
    ks = sorted(int(k) for k in nll)
    pairs = [k for k in ks if k % 2 == 0 and k // 2 in ks]
    if not pairs:
        return None
    k = pairs[-1]
    return k, 2 * nll[str(k)] - nll[str(k // 2)]


def seeds_of(out: Path, name: str) -> list:
    """The seeds run for a row under ``out``: 0 if ``<out>/<row>`` exists, then every ``<row>-seedN``."""
    out = Path(out)
    seeds = [0] if (out / name).is_dir() else []
    if out.is_dir():
        seeds += sorted(int(d.name.rpartition("-seed")[2]) for d in out.glob(f"{name}-seed*")
                        if d.is_dir() and d.name.rpartition("-seed")[2].isdigit())
    return seeds


def report(args) -> int:
    """Print the table: one line per run (seed 0 first), and for a row with two or more evaluated seeds
    a line with the mean and the standard deviation across them."""
    import statistics

    out = Path(args.out)
    print("| row | test -ELBO | test -FIVO (N: value) | NLL (IWAE K: value) | published | epochs | minutes | "
          "best validation value (the row's selection bound) |")
    print("|---|---|---|---|---|---|---|---|")
    for name in ROWS:
        seeds = seeds_of(out, name)
        if not seeds:
            print(f"| {name} | not run yet | | | {ROWS[name]['published']} | | | |")
            continue
        done = []
        for seed in seeds:
            label = name if seed == 0 else f"{name} (seed {seed})"
            d = run_dir(out, name, seed)
            p = d / "result.json"
            if not p.is_file():
                if not (d / "checkpoint.pt").is_file():
                    print(f"| {label} | not run yet | | | {ROWS[name]['published']} | | | |")
                    continue
                ck = torch.load(d / "checkpoint.pt", map_location="cpu", weights_only=False)  # stopped mid-training
                best = "-" if ck.get("best_valid") is None else f"{-ck['best_valid']:.3f}"
                print(f"| {label} | unfinished (continue it to evaluate) | | | {ROWS[name]['published']} | "
                      f"{ck['epoch']} | {ck.get('elapsed', 0.0) / 60:.0f} | {best} |")
                continue
            r = json.loads(p.read_text())
            done.append(r)
            nll = ", ".join(f"{k}: {v:.3f}" for k, v in r["test_nll_iwae"].items())
            limit = nll_limit(r["test_nll_iwae"])
            if limit is not None:
                nll += f"; K -> inf (jackknife from {limit[0] // 2}, {limit[0]}): {limit[1]:.3f}"
            best = "-" if r["best_valid"] is None else f"{-r['best_valid']:.3f}"
            fivo = ", ".join(f"{k}: {v:.3f}" for k, v in r.get("test_neg_fivo", {}).items()) or "-"
            use = "" if "active_units" not in r else \
                f" (KL {r['test_kl_per_frame']:.3f}, {r['active_units']}/{r['z_dim']} active units)"
            print(f"| {label} | {r['test_neg_elbo']:.3f}{use} | {fivo} | {nll} | {r['published']} | {r['epochs']} | "
                  f"{r['minutes']:.0f} | {best} |")
        if len(done) >= 2:
            def spread(values):
                return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"

            k_max = max(done[0]["test_nll_iwae"], key=int)
            nlls = [r["test_nll_iwae"][k_max] for r in done if k_max in r["test_nll_iwae"]]
            print(f"| {name}: mean ± sd over {len(done)} seeds | {spread([r['test_neg_elbo'] for r in done])} | | "
                  f"{k_max}: {spread(nlls) if len(nlls) >= 2 else '-'} | | | | |")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from deepstate.plots._save import save_figure

        fig, ax = plt.subplots(figsize=(7, 4))
        anchors = set()
        for name in args.row_plot:
            if not (run_dir(out, *parse_run(name)) / "checkpoint.pt").is_file():
                continue
            pts = curve(out, name)
            row = ROWS[parse_run(name)[0]]
            ax.plot([m for m, _ in pts], [v for _, v in pts],
                    label=f"{name}: validation -{row.get('valid_objective', 'elbo').upper()}")
            anchor = row["anchor_elbo"]
            if anchor and anchor not in anchors:  # rows sharing a published figure draw it once
                anchors.add(anchor)
                ax.axhline(anchor, ls="--", lw=1, color="grey", label=f"published test bound {anchor}")
        ax.axhline(7.0, ls=":", lw=1, color="red", label="goal: 7.0")
        ax.set_xlabel("wall-clock minutes of training (2-core CPU)")
        ax.set_ylabel("-ELBO, nats per frame (lower is better)")
        ax.set_title("JSB chorales: validation bound against training time")
        ax.set_ylim(top=min(ax.get_ylim()[1], 12))
        ax.legend()
        ax.grid(alpha=0.3)
        save_figure(fig, args.plot)
        print(f"wrote {args.plot}")
    if args.plot_objectives:
        plot_objectives(out, args.row_plot, args.plot_objectives)
    if args.plot_posterior:
        plot_posterior(out, args.row_plot, args.plot_posterior)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("row", nargs="?", choices=sorted(ROWS), help="the row to train and evaluate")
    ap.add_argument("--list", action="store_true", help="list the rows with their settings and sources")
    ap.add_argument("--report", action="store_true", help="print the table of evaluated rows")
    ap.add_argument("--plot", default=None, help="with --report: PNG of validation bound against minutes")
    ap.add_argument("--plot-objectives", default=None,
                    help="with --report: PNG of each --row-plot row's training bound per epoch and validation "
                         "bound (the row's selection bound) per minute (rows trained with different objectives)")
    ap.add_argument("--plot-posterior", default=None,
                    help="with --report: PNG of each --row-plot run's validation KL per frame and active units per "
                         "minute (runs trained with --track-posterior, e.g. the ablate_vrnn_elbo_* rows)")
    ap.add_argument("--row-plot", default="dmm", help="with --plot / --plot-objectives / --plot-posterior: comma-separated runs to draw, ROW or ROW-seedN "
                         "(default dmm)")
    ap.add_argument("--out", default="runs/jsb", help="folder for checkpoints, logs and results (default runs/jsb)")
    ap.add_argument("--data-dir", default=os.environ.get("DEEPSTATE_DATA"), help="folder with jsb_chorales.pickle")
    ap.add_argument("--minutes", type=float, default=150.0, help="training wall-time budget of the row (default 150)")
    ap.add_argument("--epochs", type=int, default=None, help="override the row's epoch count")
    ap.add_argument("--patience", type=int, default=100, help="early stopping: validations without improvement (100)")
    ap.add_argument("--valid-every", type=int, default=None,
                    help="validate every this many epochs (default: the row's, else 10)")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the initial parameters, minibatch order and draws (default 0); a seed other "
                         "than 0 runs in <out>/<row>-seed<N>, and --report adds the mean and sd over seeds")
    ap.add_argument("--track-posterior", action="store_true",
                    help="record the validation KL per frame and active units at every validation (the "
                         "ablate_* rows always do)")
    ap.add_argument("--evaluate-only", action="store_true", help="evaluate the checkpoint's best epoch again")
    ap.add_argument("--collapse", action="store_true",
                    help="print the test KL per frame and active units of the row's best parameters (posterior "
                         "collapse) and add them to its result.json")
    ap.add_argument("--elbo-particles", type=int, default=10, help="single-sample ELBOs averaged on test (10)")
    ap.add_argument("--iwae", default="10,100,500,1000", help="IWAE particle counts for the test NLL")
    ap.add_argument("--fivo", default="4", help="particle counts of the test FIVO bound (default 4; '' for none)")
    ap.add_argument("--print-every", type=float, default=60.0, help="seconds between progress lines")
    args = ap.parse_args(argv)
    args.iwae = [int(k) for k in str(args.iwae).split(",") if k]
    args.fivo = [int(n) for n in str(args.fivo).split(",") if n]
    args.row_plot = [r for r in args.row_plot.split(",") if r]
    for label in args.row_plot:
        try:
            parse_run(label)
        except ValueError as err:
            ap.error(f"--row-plot: {err}")
    if args.list:
        for name, row in ROWS.items():
            settings = {k: row[k] for k in TRAINER_KEYS if k in row}
            print(f"{name}: {row['model']} {row['hyper']} guide={row['guide']} {settings}\n    published: {row['published']}")
        return 0
    if args.row is None and not args.report:
        ap.error("give a row (see --list), --list or --report")
    try:
        if args.report:
            return report(args)
        return collapse_row(args) if args.collapse else train_row(args)
    except (FileNotFoundError, ValueError) as err:  # missing data, a checkpoint of another row: one line
        print(f"jsb.py: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
