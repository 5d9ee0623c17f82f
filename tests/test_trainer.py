"""Trainer: objectives, exact resume, divergence guard, annealing, TBPTT, checkpoints, metrics."""

import copy
import json
import math
import os

import pytest
import torch
from pyro.infer import Trace_ELBO

import deepstate.inference.trainer as trainer_mod
from deepstate.data import SequenceBatch
from deepstate.inference.annealing import KLAnnealing
from deepstate.inference.checkpoint import atomic_save, load_checkpoint
from deepstate.inference.objectives import get_objective
from deepstate.inference.particle import reparameterized_sample
from deepstate.inference.trainer import (
    Trainer,
    TrainingDiverged,
    iterate_chunks,
    select_state,
    time_slice,
)
from deepstate.models import build

SMALL = dict(z_dim=2, rnn_dim=4, transition_dim=4, emission_dim=4)


def tiny_model(seed=1, guide=None):
    torch.manual_seed(seed)
    return build("dkf", 4, "gaussian", guide=guide, **SMALL).double()


def make_data(lengths=(5, 3, 8, 4, 6, 2, 7), seed=0, D=4):
    g = torch.Generator().manual_seed(seed)
    return SequenceBatch.from_sequences([torch.randn(n, D, generator=g, dtype=torch.float64) for n in lengths],
                                        dtype=torch.float64)


def states_equal(a, b):
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------- objectives
@pytest.mark.parametrize("objective", ["elbo", "meanfield_elbo", "particle_elbo", "iwae", "fivo"])
def test_every_objective_trains_every_parameter(objective):
    lsm = tiny_model()
    before = copy.deepcopy(lsm.state_dict())
    tr = Trainer(lsm, objective=objective, num_particles=2, batch_size=7, progress=False, lr=1e-2)
    hist = tr.fit(make_data(), epochs=1)
    assert len(hist) == 1 and math.isfinite(hist[0]["train_bound"]) and hist[0]["train_bound"] < 0
    for k, v in lsm.state_dict().items():
        assert not torch.equal(v, before[k]), k


def test_loss_uses_fixed_normalizer():
    train = make_data()
    tr = Trainer(tiny_model(), objective="iwae", num_particles=2, batch_size=3, progress=False)
    records = []
    tr.fit(train, epochs=1, callback=lambda t, r: records.append(r))
    assert tr.normalizer == train.num_frames / 3  # 7 sequences in 3 batches
    frames = [sum(int(train.lengths[i]) for i in idx) for idx in tr.epoch_batches(train, 0)]
    for r, f in zip(records, frames):
        # loss = -(batch bound total) / c with the same c for every batch, whatever its frame count
        assert r["loss"] == pytest.approx(-r["bound_per_frame"] * f / tr.normalizer, rel=1e-12)


def test_minibatch_order_is_a_function_of_seed_and_epoch():
    train = make_data()
    a = Trainer(tiny_model(), seed=3, batch_size=2, progress=False)
    b = Trainer(tiny_model(seed=5), seed=3, batch_size=2, progress=False)
    torch.manual_seed(123)  # global RNG state must not matter
    orders = [[x.tolist() for x in a.epoch_batches(train, e)] for e in range(3)]
    assert orders == [[x.tolist() for x in b.epoch_batches(train, e)] for e in range(3)]
    assert orders[0] != orders[1]
    assert sorted(i for mb in orders[0] for i in mb) == list(range(7))


# ---------------------------------------------------------------------------- resume
def _run(tmp, objective, annealing=None, **fit_kw):
    n = 1 if objective == "elbo" else 3  # Trace_ELBO(num_particles=n) runs n sequential passes
    tr = Trainer(tiny_model(seed=fit_kw.pop("init_seed", 1)), objective=objective, num_particles=n, batch_size=3,
                 lr=1e-2, lr_decay=0.9, annealing=annealing, checkpoint_dir=tmp, progress=False, seed=7,
                 checkpoint_every=fit_kw.pop("checkpoint_every", None))
    return tr, tr.fit(make_data(), make_data((4, 6), seed=9), epochs=3, **fit_kw)


@pytest.mark.parametrize("objective,annealing", [("fivo", None), ("elbo", {"start": 0.2, "warmup_steps": 5})])
def test_resume_mid_epoch_is_bit_for_bit(tmp_path, objective, annealing):
    full, hist_full = _run(tmp_path / "full", objective, annealing)
    assert full.global_step == 9
    part, _ = _run(tmp_path / "part", objective, annealing, max_steps=4)  # stops after step 1 of epoch 2
    assert (part.epoch, part.step_in_epoch, part.global_step) == (1, 1, 4)
    torch.manual_seed(999)  # whatever happens in between must not matter
    resumed, hist_res = _run(tmp_path / "part", objective, annealing, init_seed=42)
    assert resumed.global_step == 9
    assert states_equal(resumed.lsm.state_dict(), full.lsm.state_dict())
    strip = lambda h: [{k: v for k, v in e.items() if k not in ("seconds", "elapsed")} for e in h]  # noqa: E731
    assert strip(hist_res) == strip(hist_full)
    if annealing is not None:
        assert resumed.annealing.num_steps == full.annealing.num_steps == 9


def test_delayed_lr_decay_follows_the_srnn_schedule_across_a_resume(tmp_path):
    """lr of epoch e (from 0) = lr * decay ** max(0, e - after + 1): constant for ``after`` epochs, then
    one factor per epoch (Fraccaro et al.'s ExponentialDecaySchedule with no_decay_epochs=after); a run
    stopped and resumed mid-schedule continues it (the epoch count and scheduler are checkpointed)."""
    def run(tmp, epochs):
        tr = Trainer(tiny_model(), objective="fivo", num_particles=2, batch_size=4, lr=1e-2, lr_decay=0.5,
                     lr_decay_after=2, checkpoint_dir=tmp, progress=False, seed=7)
        return [e["lr"] for e in tr.fit(make_data(), epochs=epochs) if e.get("kind", "epoch") == "epoch"]

    expected = [1e-2 * 0.5 ** max(0, e - 1) for e in range(5)]
    assert run(tmp_path / "full", 5) == pytest.approx(expected)
    assert run(tmp_path / "part", 3) == pytest.approx(expected[:3])
    assert run(tmp_path / "part", 5)[-2:] == pytest.approx(expected[3:])


def test_resume_after_crash_from_periodic_checkpoint(tmp_path):
    full, _ = _run(tmp_path / "full", "iwae")

    def crash(trainer, record):
        if trainer.global_step == 5:
            raise KeyboardInterrupt("simulated crash")

    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "crash", "iwae", checkpoint_every=2, callback=crash)
    saved = load_checkpoint(tmp_path / "crash" / "checkpoint.pt")
    assert saved["global_step"] == 4 and saved["step_in_epoch"] == 1
    assert os.listdir(tmp_path / "crash") == ["checkpoint.pt"]  # no temp files left behind
    resumed, _ = _run(tmp_path / "crash", "iwae", init_seed=3)
    assert states_equal(resumed.lsm.state_dict(), full.lsm.state_dict())


def test_resume_refuses_other_model_or_data(tmp_path):
    tr = Trainer(tiny_model(), batch_size=3, checkpoint_dir=tmp_path, progress=False)
    tr.fit(make_data(), epochs=1, max_steps=1)
    torch.manual_seed(0)
    other = build("dkf", 4, "gaussian", z_dim=3, rnn_dim=4, transition_dim=4, emission_dim=4).double()
    with pytest.raises(ValueError, match="config"):
        Trainer(other, batch_size=3, checkpoint_dir=tmp_path, progress=False).fit(make_data(), epochs=1)
    with pytest.raises(ValueError, match="train"):
        Trainer(tiny_model(), batch_size=3, checkpoint_dir=tmp_path, progress=False).fit(make_data((3, 4)), epochs=1)


# ---------------------------------------------------------------------------- divergence guard
def test_nan_gradient_is_rolled_back_and_skipped(tmp_path):
    lsm = tiny_model()
    calls = {"n": 0}

    def poison(grad):
        calls["n"] += 1
        return grad * float("nan") if calls["n"] == 2 else grad

    lsm.ssm.z_0.register_hook(poison)
    params_at = {}

    def cb(trainer, record):
        params_at[record["global_step"]] = copy.deepcopy(trainer.lsm.state_dict())

    tr = Trainer(lsm, objective="fivo", num_particles=2, batch_size=3, progress=False, lr=1e-2)
    with pytest.warns(RuntimeWarning, match="non-finite"):
        hist = tr.fit(make_data(), epochs=2, callback=cb)
    assert hist[0]["skipped"] == 1 and hist[0]["steps"] == 2 and hist[1]["skipped"] == 0
    assert states_equal(params_at[2], params_at[1])  # the poisoned step changed nothing
    assert not states_equal(params_at[3], params_at[2])  # and training went on
    assert all(torch.isfinite(p).all() for p in lsm.parameters())
    assert tr.consecutive_bad == 0


def test_always_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    tr = Trainer(tiny_model(), objective="iwae", num_particles=2, batch_size=3, checkpoint_dir=tmp_path,
                 progress=False)
    tr.fit(make_data(), epochs=1)
    good = copy.deepcopy(tr.lsm.state_dict())
    on_disk = (tmp_path / "checkpoint.pt").read_bytes()
    original = tr._objective.loss

    def nan_loss(*args, **kwargs):
        loss, result = original(*args, **kwargs)
        return loss * float("nan"), result

    tr._objective.loss = nan_loss
    with pytest.warns(RuntimeWarning), pytest.raises(TrainingDiverged, match="3 consecutive"):
        tr.fit(make_data(), epochs=3)
    assert isinstance(TrainingDiverged("x"), RuntimeError)
    assert states_equal(tr.lsm.state_dict(), good)
    assert (tmp_path / "checkpoint.pt").read_bytes() == on_disk
    assert states_equal(load_checkpoint(tmp_path / "checkpoint.pt")["model"], good)


# ---------------------------------------------------------------------------- annealing
def test_annealing_schedule_and_refusal():
    a = KLAnnealing(start=0.1, warmup_steps=4)
    assert [round(a.factor_at(s), 3) for s in range(6)] == [0.1, 0.325, 0.55, 0.775, 1.0, 1.0]
    for obj in ("fivo", "iwae"):  # particle_elbo takes it: tests/test_training_recipes.py
        with pytest.raises(ValueError, match="annealing"):
            Trainer(tiny_model(), objective=obj, annealing=10)
    with pytest.raises(ValueError, match="start"):
        KLAnnealing(start=1.5)
    with pytest.raises(ValueError, match="start"):
        KLAnnealing(start=0.0)
    with pytest.raises(ValueError, match="warmup_steps"):
        KLAnnealing(warmup_steps=0)


def test_int_annealing_trains_with_pyro_elbo():
    """``annealing=<int>`` used to start at a scale of 0, which Pyro's poutine.scale refuses."""
    tr = Trainer(tiny_model(), objective="elbo", annealing=10, batch_size=3, progress=False, seed=0)
    assert tr.annealing.factor == pytest.approx(0.1)
    history = tr.fit(make_data(), epochs=1)
    assert math.isfinite(history[-1]["train_bound"])


def test_annealed_training_logs_the_unannealed_bound():
    import pyro

    train = make_data()
    lsm = tiny_model()
    initial = copy.deepcopy(lsm)
    tr = Trainer(lsm, objective="elbo", batch_size=3, annealing={"start": 0.1, "warmup_steps": 100},
                 progress=False, seed=5)
    records = []
    tr.fit(train, epochs=1, max_steps=1, callback=lambda t, r: records.append(r))
    mb = train[tr.epoch_batches(train, 0)[0].tolist()]
    pyro.set_rng_seed(5)  # what a fresh fit does first
    unannealed = -Trace_ELBO().differentiable_loss(initial.model, initial.guide, mb, 1.0).item()
    pyro.set_rng_seed(5)
    annealed = -Trace_ELBO().differentiable_loss(initial.model, initial.guide, mb, 0.1).item()
    assert records[0]["annealing"] == pytest.approx(0.1)
    assert records[0]["bound_per_frame"] == pytest.approx(unannealed / mb.num_frames, rel=1e-10)
    assert records[0]["loss"] == pytest.approx(-annealed / tr.normalizer, rel=1e-10)
    assert abs(annealed - unannealed) > 1e-3


# ---------------------------------------------------------------------------- TBPTT
def test_tbptt_with_k_at_least_T_equals_full_bptt():
    train = make_data()
    grads = []
    for k in (None, 8, 20):
        tr = Trainer(tiny_model(), objective="fivo", num_particles=3, batch_size=7, tbptt=k, progress=False)
        tr.fit(train, epochs=1, max_steps=1)
        grads.append({n: p.grad.clone() for n, p in tr.lsm.named_parameters()})
        grads[-1]["params"] = torch.cat([p.detach().flatten() for p in tr.lsm.parameters()])
    for g in grads[1:]:
        assert states_equal(g, grads[0])


def test_tbptt_chunks_continue_the_filter_and_drop_finished_sequences():
    """Chunked IWAE with carried (detached) state adds up to the whole-sequence bound exactly
    (common random numbers), also when sequences end in earlier chunks and are dropped."""
    torch.manual_seed(0)
    lsm = build("lgssm", 1, guide="prior", z_dim=2, dtype=torch.float64)
    batch = make_data((9, 2, 5, 7), D=1)
    N, B, T = 3, 4, 9
    eps = torch.randn(T, N, B, 2, dtype=torch.float64)
    obj = get_objective("iwae", N)
    whole = obj.bound(lsm, batch, sampler=lambda t, q, sh: reparameterized_sample(q, eps[t])).log_z
    total = torch.zeros(B, dtype=torch.float64)
    state, prev_rows, seen_rows = None, None, []
    for c, (chunk, rows) in enumerate(iterate_chunks(batch, 3)):
        seen_rows.append(rows.tolist())
        init = None if state is None else select_state(state, torch.searchsorted(prev_rows, rows))
        res = obj.bound(lsm, chunk, initial_state=init,
                        sampler=lambda t, q, sh, c=c, rows=rows: reparameterized_sample(q, eps[3 * c + t][:, rows]))
        total[rows] += res.log_z
        state, prev_rows = res.state, rows
    assert seen_rows == [[0, 1, 2, 3], [0, 2, 3], [0, 3]]
    assert torch.allclose(total, whole, atol=1e-9)
    chunk, rows = time_slice(batch, 3, 6)
    assert chunk.lengths.tolist() == [3, 2, 3] and chunk.max_length == 3 and rows.tolist() == [0, 2, 3]


def test_tbptt_training_runs():
    tr = Trainer(tiny_model(), objective="fivo", num_particles=2, batch_size=4, tbptt=3, progress=False)
    hist = tr.fit(make_data(), epochs=2)
    assert all(math.isfinite(h["train_bound"]) for h in hist)
    with pytest.raises(ValueError, match="tbptt"):
        Trainer(tiny_model(), objective="elbo", tbptt=3)


# ---------------------------------------------------------------------------- early stopping, metrics
def test_early_stopping_and_restore_best(monkeypatch):
    states, values = [], iter([-1.0, -2.0, -3.0, -4.0, -5.0])

    def fake_evaluate(lsm, data, **kw):
        states.append(copy.deepcopy(lsm.state_dict()))
        return {"nats_per_frame": next(values)}

    monkeypatch.setattr(trainer_mod, "evaluate", fake_evaluate)
    tr = Trainer(tiny_model(), objective="iwae", num_particles=2, batch_size=4, early_stopping_patience=2,
                 progress=False)
    hist = tr.fit(make_data(), make_data((3,)), epochs=10, restore_best=True)
    assert len(hist) == 3 and tr.stopped_early and hist[-1]["stopped_early"]
    assert [h["valid_bound"] for h in hist] == [-1.0, -2.0, -3.0]
    assert tr.best_valid == -1.0
    assert states_equal(tr.lsm.state_dict(), states[0])
    with pytest.raises(ValueError, match="valid"):
        Trainer(tiny_model(), early_stopping_patience=2).fit(make_data(), epochs=1)


def test_metrics_jsonl(tmp_path):
    path = tmp_path / "m" / "metrics.jsonl"
    tr = Trainer(tiny_model(), objective="iwae", num_particles=2, batch_size=3, metrics_path=path, progress=False)
    tr.fit(make_data(), epochs=2)
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["kind"] for r in recs].count("step") == 6 and [r["kind"] for r in recs].count("epoch") == 2
    assert [r["global_step"] for r in recs if r["kind"] == "step"] == list(range(1, 7))
    assert all(math.isfinite(r["loss"]) for r in recs if r["kind"] == "step")


# ---------------------------------------------------------------------------- checkpoint files
def test_atomic_save_never_leaves_half_written_files(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    atomic_save({"format": "x", "v": 1}, path)

    def broken_save(obj, f):
        f.write(b"partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"format": "x", "v": 2}, path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["ck.pt"]
    assert load_checkpoint(path, kind="x")["v"] == 1
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable"):
        load_checkpoint(tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="is not a 'y' file"):
        load_checkpoint(path, kind="y")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


# ---------------------------------------------------------------------------- arguments, devices
@pytest.mark.parametrize("kwargs,name", [
    (dict(objective="vi"), "objective"), (dict(num_particles=0), "num_particles"), (dict(lr=-1.0), "lr"),
    (dict(clip_norm=0), "clip_norm"), (dict(lr_decay=1.5), "lr_decay"), (dict(batch_size=0), "batch_size"),
    (dict(tbptt=0), "tbptt"), (dict(seed=-1), "seed"), (dict(checkpoint_every=0), "checkpoint_every"),
    (dict(early_stopping_patience=0), "early_stopping_patience"), (dict(device="tpu"), "device"),
    (dict(annealing="yes"), "annealing"), (dict(max_bad_steps=0), "max_bad_steps"),
    (dict(lr_decay_after=-1), "lr_decay_after"), (dict(lr_decay_after=2.5), "lr_decay_after"),
])
def test_bad_arguments(kwargs, name):
    with pytest.raises((ValueError, TypeError), match=name):
        Trainer(tiny_model(), **kwargs)


def test_bad_fit_arguments():
    tr = Trainer(tiny_model(), progress=False)
    with pytest.raises(ValueError, match="epochs"):
        tr.fit(make_data(), epochs=0)
    with pytest.raises(ValueError, match="train"):
        tr.fit(make_data(D=3), epochs=1)
    with pytest.raises(TypeError, match="train"):
        tr.fit([[1.0, 2.0]], epochs=1)
    with pytest.raises(TypeError, match="lsm"):
        Trainer(torch.nn.Linear(2, 2))


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available")
def test_cuda_refused_without_cuda():
    with pytest.raises(ValueError, match="device"):
        Trainer(tiny_model(), device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_cuda_training_and_cpu_resume(tmp_path):
    tr = Trainer(tiny_model(), objective="fivo", num_particles=2, batch_size=3, device="cuda",
                 checkpoint_dir=tmp_path, progress=False)
    tr.fit(make_data(), epochs=1)
    assert next(tr.lsm.parameters()).is_cuda
    state = load_checkpoint(tmp_path / "checkpoint.pt", map_location="cpu")
    assert all(not v.is_cuda for v in state["model"].values())
    cpu = Trainer(tiny_model(), objective="fivo", num_particles=2, batch_size=3, checkpoint_dir=tmp_path,
                  progress=False)
    cpu.fit(make_data(), epochs=2)
    assert cpu.epoch == 2 and all(torch.isfinite(p).all() for p in cpu.lsm.parameters())


# ---------------------------------------------------------------------------- posterior-collapse tracking
def test_track_posterior_records_kl_and_active_units_without_changing_training():
    """The records hold the validation KL and active units of the epoch's parameters (as the diagnostics
    compute them independently), and training ends with the same parameters as without tracking."""
    from deepstate.inference.diagnostics import active_units, latent_kl

    train, valid = make_data(), make_data(lengths=(6, 4, 5), seed=9)
    runs = {}
    for track in (False, True):
        lsm = tiny_model()
        tr = Trainer(lsm, objective="fivo", num_particles=2, batch_size=3, progress=False, seed=3,
                     track_posterior=track)
        tr.fit(train, valid, epochs=2)
        runs[track] = (tr, {k: v.detach().clone() for k, v in lsm.state_dict().items()})
    (plain, p_state), (tracked, t_state) = runs[False], runs[True]
    assert states_equal(p_state, t_state)
    assert [h["valid_bound"] for h in plain.history] == [h["valid_bound"] for h in tracked.history]
    assert "valid_kl_per_frame" not in plain.history[-1]
    last = tracked.history[-1]
    with torch.random.fork_rng():
        torch.manual_seed(tracked._valid_seed(1) + 1)
        kl = float(latent_kl(tracked.lsm, valid, per_dim=False))
        count, _ = active_units(tracked.lsm, valid)
    assert last["valid_kl_per_frame"] == pytest.approx(kl, rel=1e-12) and last["valid_kl_per_frame"] > 1e-3
    assert last["valid_active_units"] == count


def test_track_posterior_sees_a_collapsed_posterior():
    """A guide that is the prior has no KL and no active unit: the collapse the tracking is there to show."""
    lsm = build("lgssm", 1, guide="prior", z_dim=2, dtype=torch.float64)
    data = SequenceBatch.from_sequences([torch.randn(n, 1, dtype=torch.float64) for n in (6, 4, 5)],
                                        dtype=torch.float64)
    tr = Trainer(lsm, objective="fivo", num_particles=2, batch_size=3, progress=False, track_posterior=True)
    tr.fit(data, data, epochs=1)
    assert tr.history[0]["valid_kl_per_frame"] == 0.0 and tr.history[0]["valid_active_units"] == 0
    with pytest.raises(TypeError, match="track_posterior"):
        Trainer(tiny_model(), track_posterior=1)


def test_track_posterior_with_one_validation_series():
    """One validation sequence: active units are counted over its steps (no second sequence to compare)."""
    from deepstate.inference.diagnostics import active_units, latent_kl

    train, valid = make_data(), make_data(lengths=(9,), seed=4)
    tr = Trainer(tiny_model(), objective="iwae", num_particles=2, batch_size=7, progress=False, track_posterior=True)
    tr.fit(train, valid, epochs=1)
    with torch.random.fork_rng():
        torch.manual_seed(tr._valid_seed(0) + 1)
        latent_kl(tr.lsm, valid, per_dim=False)  # the same draws as the trainer's, in the same order
        count, _ = active_units(tr.lsm, valid, centre="global")
    assert tr.history[0]["valid_active_units"] == count
