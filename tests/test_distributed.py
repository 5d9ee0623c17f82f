"""Data-parallel training under ``torchrun`` (2 CPU ranks, gloo, loopback only).

The module is also the workers' script: ``torchrun --nproc_per_node=2 tests/test_distributed.py MODE OUT``
runs :func:`_worker`, where every rank saves ``OUT/<name>.rank<r>.pt``; the tests compare the ranks
with each other and with single-process runs made here. Two launches serve most tests (module-scoped
fixtures); ``deepstate fit`` runs once uninterrupted and once killed and resumed.

* (a) one epoch of the exact-guide LGSSM (every importance weight equals the Kalman likelihood, so
  the gradient is exactly that of ``log p(x)``) with 2 ranks x batch 2 ends with the parameters of
  1 process x batch 4, for IWAE and for Pyro's Trace_ELBO;
* (b) every rank ends with identical parameters (FIVO, TBPTT, TraceMeanField_ELBO with annealing);
* (c) rank 0 alone writes metrics and checkpoints;
* (d) 1 epoch, then a new launch resuming to 2 epochs, equals 2 uninterrupted epochs;
* (e) validation bounds are identical on every rank; distributed evaluation of the LGSSM equals
  single-process evaluation of the whole split;
* (f) ``deepstate fit`` under torchrun writes one model file and prints once;
* (g) ``deepstate fit`` (DKF, FIVO) under torchrun, SIGKILLed (agent and workers) after a checkpoint and
  rerun, resumes and ends with exactly the parameters and metrics of the uninterrupted run
  (``python tests/test_distributed.py cli OUT fit ...`` is ``deepstate fit`` with hooks that log
  checkpoint writes per rank and, with ``HOLD_AT_STEP=k``, stop every rank after step ``k``);
* a single process never initialises torch.distributed.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from deepstate.data import SequenceBatch  # noqa: E402
from deepstate.models import build  # noqa: E402

NPROC = 2
TIMEOUT = 240


# ---------------------------------------------------------------------------- shared by tests and workers
def lgssm():
    torch.manual_seed(11)
    return build("lgssm", 2, z_dim=2).to(torch.float64)


def lgssm_data() -> SequenceBatch:
    g = torch.Generator().manual_seed(7)
    lengths = [6, 9, 4, 8, 7, 5, 9, 3, 6]  # 9 sequences: global batches of 4, 4, 1 (rank 1's last share is empty)
    return SequenceBatch.from_sequences([torch.randn(L, 2, generator=g, dtype=torch.float64) for L in lengths])


def dkf():
    torch.manual_seed(12)
    return build("dkf", 2, "gaussian", z_dim=2, rnn_dim=4, transition_dim=4, emission_dim=4)


def dkf_data():
    g = torch.Generator().manual_seed(8)
    seqs = [torch.randn(L, 2, generator=g) for L in (5, 8, 3, 7, 6, 4, 8, 5, 7)]
    valid = [torch.randn(L, 2, generator=g) for L in (6, 4, 7)]
    return SequenceBatch.from_sequences(seqs), SequenceBatch.from_sequences(valid)


def params_of(module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def _worker(mode: str, out: Path) -> None:
    import torch.distributed as dist

    import deepstate.inference.trainer as trainer_mod
    from deepstate.inference.distributed import evaluate_distributed

    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    saves = []
    real_save = trainer_mod.atomic_save

    def counting_save(obj, path):
        saves.append(str(path))
        return real_save(obj, path)

    trainer_mod.atomic_save = counting_save

    def dump(name, obj):
        torch.save(obj, out / f"{name}.rank{rank}.pt")

    Trainer = trainer_mod.Trainer
    train, valid = dkf_data()
    fivo = dict(objective="fivo", num_particles=3, batch_size=2, progress=False, seed=1, checkpoint_every=2)
    if mode == "main":
        for objective in ("iwae", "elbo"):  # (a)
            tr = Trainer(lgssm(), objective=objective, num_particles=2, batch_size=2, lr=0.05, progress=False, seed=3)
            assert dist.is_initialized() and tr.world_size == NPROC and tr._dist.backend == "gloo"
            tr.fit(lgssm_data(), epochs=1)
            dump(f"equiv_{objective}", {"params": params_of(tr.lsm), "history": tr.history,
                                        "normalizer": tr.normalizer})
        for name, epochs in (("part", 1), ("full", 2)):  # (b, c, d, e)
            tr = Trainer(dkf(), checkpoint_dir=out / f"ckpt_{name}", metrics_path=out / f"metrics_{name}.jsonl",
                         **fivo)
            tr.fit(train, valid, epochs=epochs)
            dump(f"dkf_{name}", {"params": params_of(tr.lsm), "history": tr.history})
        lsm = lgssm()  # (e) distributed evaluation
        res = evaluate_distributed(tr._dist, lsm, lgssm_data(), objective="iwae", num_particles=3, batch_size=2, seed=5)
        dump("eval", res)
        for objective, kw in (("particle_elbo", {"tbptt": 3}), ("meanfield_elbo", {"annealing": {"start": 0.2, "warmup_steps": 4}})):  # (b)
            tr = Trainer(dkf(), objective=objective, batch_size=2, progress=False, seed=2, **kw)
            tr.fit(train, epochs=1)
            dump(f"dkf_{objective}", {"params": params_of(tr.lsm), "history": tr.history})
    elif mode == "resume":  # (d) a new launch continues the 1-epoch run to 2 epochs
        tr = Trainer(dkf(), checkpoint_dir=out / "ckpt_part", metrics_path=out / "metrics_part.jsonl", **fivo)
        tr.fit(train, valid, epochs=2)
        dump("dkf_resumed", {"params": params_of(tr.lsm), "history": tr.history})
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    dump(f"saves_{mode}", saves)


# ---------------------------------------------------------------------------- launching
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_command(args) -> tuple:
    """``(cmd, env)``: ``torchrun`` with ``NPROC`` ranks on this machine, loopback only, on a free port."""
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={NPROC}", "--nnodes=1",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", *args]
    return cmd, env


def torchrun(args, cwd, timeout=TIMEOUT) -> subprocess.CompletedProcess:
    cmd, env = torchrun_command(args)
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"torchrun failed ({r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-6000:]}"
    return r


def _load(out: Path, name: str) -> list:
    return [torch.load(out / f"{name}.rank{r}.pt", weights_only=False) for r in range(NPROC)]


def _assert_same(a: dict, b: dict, **tol):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=lambda m, k=k: f"{k}: {m}", **tol)


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    t0 = time.perf_counter()
    torchrun([__file__, "main", str(out)], cwd=out)
    t1 = time.perf_counter()
    torchrun([__file__, "resume", str(out)], cwd=out)
    print(f"\ntorchrun main: {t1 - t0:.1f}s, resume: {time.perf_counter() - t1:.1f}s")
    return out


# ---------------------------------------------------------------------------- tests
@pytest.mark.parametrize("objective", ["iwae", "elbo"])
def test_two_ranks_equal_one_process_with_double_batch(launched, objective):
    from deepstate.inference.trainer import Trainer

    ranks = _load(launched, f"equiv_{objective}")
    single = Trainer(lgssm(), objective=objective, num_particles=2, batch_size=4, lr=0.05, progress=False, seed=3)
    assert single._dist is None
    single.fit(lgssm_data(), epochs=1)
    start = params_of(lgssm())
    ref = params_of(single.lsm)
    assert any(not torch.equal(start[k], ref[k]) for k in ref)  # it trained
    for r in ranks:
        assert r["normalizer"] == pytest.approx(single.normalizer / NPROC)
        _assert_same(r["params"], ref, rtol=1e-9, atol=1e-9)
        assert r["history"][0]["steps"] == single.history[0]["steps"] == 3
        assert r["history"][0]["train_loss"] == pytest.approx(single.history[0]["train_loss"], rel=1e-9)
        assert r["history"][0]["train_bound"] == pytest.approx(single.history[0]["train_bound"], rel=1e-9)


@pytest.mark.parametrize("name", ["dkf_full", "dkf_particle_elbo", "dkf_meanfield_elbo", "equiv_iwae"])
def test_ranks_end_with_identical_parameters(launched, name):
    r0, r1 = _load(launched, name)
    _assert_same(r0["params"], r1["params"], rtol=0, atol=0)
    assert r0["history"] == [{**h, "seconds": r0["history"][i]["seconds"], "elapsed": r0["history"][i]["elapsed"]}
                            for i, h in enumerate(r1["history"])]
    start = params_of(dkf() if name.startswith("dkf") else lgssm())
    assert any(not torch.equal(start[k], r0["params"][k]) for k in start)


def test_only_rank_zero_writes(launched):
    saves = _load(launched, "saves_main")
    assert saves[0] and saves[1] == []
    assert _load(launched, "saves_resume")[1] == []
    for name, epochs in (("full", 2), ("part", 2)):
        records = [json.loads(line) for line in (launched / f"metrics_{name}.jsonl").read_text().splitlines()]
        epochs_rec = [r for r in records if r["kind"] == "epoch"]
        assert [r["epoch"] for r in epochs_rec] == list(range(1, epochs + 1))  # once each, not once per rank
        steps = [r["global_step"] for r in records if r["kind"] == "step"]
        assert sorted(set(steps)) == list(range(1, 3 * epochs + 1))  # 9 sequences / (2 x 2): 3 steps per epoch
        if name == "full":
            assert len(steps) == len(set(steps))
    assert sorted(p.name for p in (launched / "ckpt_full").iterdir()) == ["checkpoint.pt"]
    ckpt = torch.load(launched / "ckpt_full" / "checkpoint.pt", weights_only=True)
    assert ckpt["world_size"] == NPROC and len(ckpt["rng_ranks"]) == NPROC


def test_resume_in_a_new_launch_equals_uninterrupted(launched):
    part, full, resumed = _load(launched, "dkf_part"), _load(launched, "dkf_full"), _load(launched, "dkf_resumed")
    assert len(part[0]["history"]) == 1 and len(resumed[0]["history"]) == 2
    for r in range(NPROC):
        _assert_same(resumed[r]["params"], full[r]["params"], rtol=0, atol=0)
    assert not all(torch.equal(part[0]["params"][k], full[0]["params"][k]) for k in full[0]["params"])
    strip = lambda hs: [{k: v for k, v in h.items() if k not in ("seconds", "elapsed")} for h in hs]  # noqa: E731
    assert strip(resumed[0]["history"]) == strip(full[0]["history"])


def test_validation_and_evaluation_agree_across_ranks(launched):
    from deepstate.inference.evaluation import evaluate

    full = _load(launched, "dkf_full")
    vb = [[h["valid_bound"] for h in r["history"]] for r in full]
    assert vb[0] == vb[1] and all(v is not None and v < 0 for v in vb[0])
    ev = _load(launched, "eval")
    assert ev[0]["nats_per_frame"] == ev[1]["nats_per_frame"]
    assert torch.equal(ev[0]["per_sequence"], ev[1]["per_sequence"])
    data = lgssm_data()
    ref = evaluate(lgssm(), data, objective="iwae", num_particles=3, batch_size=2, seed=5)
    assert ev[0]["frames"] == ref["frames"] == data.num_frames
    assert ev[0]["nats_per_frame"] == pytest.approx(ref["nats_per_frame"], rel=1e-9)
    torch.testing.assert_close(ev[0]["per_sequence"], ref["per_sequence"], rtol=1e-9, atol=1e-9)
    exact = lgssm().ssm.log_likelihood(data).sum().item() / data.num_frames
    assert ev[0]["nats_per_frame"] == pytest.approx(exact, rel=1e-7)  # weights: Kalman likelihood up to rounding


CLI_FIT = ["--epochs", "3", "--window", "20", "--batch-size", "2", "--num-particles", "2", "--quiet",
           "--set", "z_dim=2", "--set", "rnn_dim=4", "--set", "transition_dim=4", "--set", "emission_dim=4"]


@pytest.fixture(scope="module")
def series_csv(tmp_path_factory):
    import numpy as np

    t = np.arange(150)
    csv = tmp_path_factory.mktemp("series") / "series.csv"
    csv.write_text("x\n" + "\n".join(f"{v:.5f}" for v in np.sin(t / 5.0) + 0.1 * np.cos(t)) + "\n")
    return csv


def _cli_fit_args(csv: Path, run: Path) -> list:
    (run / "out").mkdir(parents=True, exist_ok=True)
    return ["fit", str(csv), "--out", str(run / "out" / "m.pt"), "--checkpoint-dir", str(run / "ckpt"), *CLI_FIT]


def _records(run: Path) -> list:
    return [json.loads(line) for line in (run / "out" / "m.metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def cli_reference(tmp_path_factory, series_csv):
    """``deepstate fit`` under torchrun, uninterrupted."""
    run = tmp_path_factory.mktemp("cli_ref")
    t0 = time.perf_counter()
    r = torchrun(["-m", "deepstate", *_cli_fit_args(series_csv, run)], cwd=run)
    print(f"\ntorchrun deepstate fit: {time.perf_counter() - t0:.1f}s")
    return run, r


def test_cli_fit_under_torchrun(cli_reference):
    run, r = cli_reference
    out_dir = run / "out"
    assert sorted(p.name for p in out_dir.iterdir()) == ["m.config.json", "m.metrics.jsonl", "m.pt"]  # once
    assert r.stdout.count("saved ") == 1, r.stdout
    records = _records(run)
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1, 2, 3]  # rank 0 alone logged
    steps = [r["global_step"] for r in records if r["kind"] == "step"]
    assert steps == list(range(1, len(steps) + 1))
    assert sorted(p.name for p in (run / "ckpt").iterdir()) == ["checkpoint.pt"]
    from deepstate.estimator import Estimator

    est = Estimator.load(str(out_dir / "m.pt"))
    assert len(est.history_) == 3


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def _killpg(pid: int) -> None:
    import signal

    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def test_cli_fit_resumes_after_kill(tmp_path, series_csv, cli_reference):
    """``deepstate fit`` under torchrun, SIGKILLed (the torchrun agent and both workers) in epoch 3
    after the epoch-2 checkpoint, then the same command rerun: it resumes from the checkpoint and ends
    with exactly (``torch.equal``) the parameters and metrics of the uninterrupted run; rank 0 alone
    wrote checkpoints, the model file and the metrics log, each once."""
    from deepstate.estimator import Estimator

    ref_run, _ = cli_reference
    ref_records = _records(ref_run)
    per_epoch = [r["steps"] for r in ref_records if r["kind"] == "epoch"]
    hold = sum(per_epoch[:2]) + 1  # the first step of epoch 3: the last checkpoint is epoch 2's
    run = tmp_path / "run"
    args = [__file__, "cli", str(run), *_cli_fit_args(series_csv, run)]
    cmd, env = torchrun_command(args)
    t0 = time.perf_counter()
    with open(tmp_path / "killed.out", "w") as so, open(tmp_path / "killed.err", "w") as se:
        proc = subprocess.Popen(cmd, cwd=run, env={**env, "HOLD_AT_STEP": str(hold)}, stdout=so, stderr=se,
                                start_new_session=True)  # its own process group: killpg reaches the agent
    workers = []
    try:
        held = [run / f"held.rank{r}" for r in range(NPROC)]
        deadline = time.monotonic() + TIMEOUT
        while not all(p.exists() and p.read_text() for p in held):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the run to be killed did not reach step {hold} (rc {proc.poll()}):\n"
                            f"{(tmp_path / 'killed.err').read_text()[-6000:]}")
            time.sleep(0.1)
        workers = [int(p.read_text()) for p in held]
        assert (run / "ckpt" / "checkpoint.pt").is_file()
        assert [r["epoch"] for r in _records(run) if r["kind"] == "epoch"] == [1, 2]
        # torchrun starts each worker in a session of its own: kill the agent's group, then each worker's
        _killpg(proc.pid)
        for pid in workers:
            _killpg(pid)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 30
        while any(_alive(pid) for pid in workers):
            assert time.monotonic() < deadline, "workers survived SIGKILL"
            time.sleep(0.05)
    finally:
        for pid in [proc.pid, *workers]:
            _killpg(pid)
    t1 = time.perf_counter()
    assert proc.returncode == -9
    assert not (run / "out" / "m.pt").exists()  # killed before the end: no model yet
    r = torchrun(args, cwd=run)  # the same command again
    print(f"\nkilled launch: {t1 - t0:.1f}s, resumed launch: {time.perf_counter() - t1:.1f}s")
    assert "resumed from" in r.stdout and "at epoch 2;" in r.stdout, r.stdout
    assert r.stdout.count("saved ") == 1, r.stdout

    ref = Estimator.load(str(ref_run / "out" / "m.pt")).model_.state_dict()
    got = Estimator.load(str(run / "out" / "m.pt")).model_.state_dict()
    assert ref.keys() == got.keys()
    for k in ref:
        assert torch.equal(ref[k], got[k]), k
    # rank 0 alone wrote: one model file, one metrics log, one checkpoint (written by rank 0 only)
    assert sorted(p.name for p in (run / "out").iterdir()) == ["m.config.json", "m.metrics.jsonl", "m.pt"]
    assert sorted(p.name for p in (run / "ckpt").iterdir()) == ["checkpoint.pt"]
    assert (run / "saves.rank0.log").is_file() and not (run / "saves.rank1.log").exists()
    saves = [int(x) for x in (run / "saves.rank0.log").read_text().split()]
    n = sum(per_epoch)
    assert saves == [per_epoch[0], sum(per_epoch[:2]), n]  # epoch ends; the killed epoch's once, after resume
    records = _records(run)
    strip = lambda rs: [{k: v for k, v in x.items() if k not in ("seconds", "elapsed")} for x in rs if x["kind"] == "epoch"]  # noqa: E731
    assert strip(records) == strip(ref_records)  # each epoch logged once, with the uninterrupted numbers
    steps = [x["global_step"] for x in records if x["kind"] == "step"]
    assert steps == list(range(1, hold + 1)) + list(range(hold, n + 1))  # step `hold` again after the resume
    last = {x["global_step"]: x for x in records if x["kind"] == "step"}
    assert last == {x["global_step"]: x for x in ref_records if x["kind"] == "step"}


def test_single_process_never_initialises_torch_distributed(monkeypatch):
    import torch.distributed as dist

    from deepstate.inference.trainer import Trainer

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not dist.is_initialized()
    monkeypatch.setattr(dist, "is_available", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda *a, **k: pytest.fail("init_process_group called"))
    tr = Trainer(dkf(), objective="iwae", num_particles=2, batch_size=4, progress=False)
    train, valid = dkf_data()
    tr.fit(train, valid, epochs=1)
    assert tr._dist is None and tr.world_size == 1 and not dist.is_initialized()
    with pytest.raises(RuntimeError, match="torch.distributed is not available"):
        Trainer(dkf(), distributed=True)


def test_shard_minibatch_indices():
    import numpy as np

    from deepstate.data.loader import minibatch_indices, shard_minibatch_indices

    glob = minibatch_indices(np.arange(1, 10), 4, seed=0, bucket_by_length=True)
    shards = [shard_minibatch_indices(glob, r, 2) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == len(glob) == 3
    for g, a, b in zip(glob, *shards):
        assert sorted(np.concatenate([a, b]).tolist()) == sorted(g.tolist())
    assert sum(len(s) == 0 for s in shards[1]) == 1  # 9 = 4 + 4 + 1: one empty share
    with pytest.raises(ValueError):
        shard_minibatch_indices(glob, 2, 2)


def _cli_worker(out: Path, argv: list) -> int:
    """``deepstate fit`` (``argv``) with two hooks: every checkpoint write appends its global step to
    ``OUT/saves.rank<r>.log``; with ``HOLD_AT_STEP=k`` in the environment, every rank stops after global
    step ``k`` (logged, and checkpointed if due), writes ``OUT/held.rank<r>`` (its pid) and waits for the kill."""
    import deepstate.inference.trainer as trainer_mod
    from deepstate.cli import main

    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    hold = int(os.environ.get("HOLD_AT_STEP", "0"))
    real_save, real_after_step = trainer_mod.atomic_save, trainer_mod.Trainer._after_step

    def logged_save(obj, path):
        res = real_save(obj, path)
        with open(out / f"saves.rank{rank}.log", "a") as f:
            f.write(f"{obj['global_step']}\n")
        return res

    def after_step(self, *args, **kwargs):
        record = real_after_step(self, *args, **kwargs)
        if hold and self.global_step == hold:
            (out / f"held.rank{rank}").write_text(str(os.getpid()))
            while True:  # until SIGKILL
                time.sleep(0.05)
        return record

    trainer_mod.atomic_save = logged_save
    trainer_mod.Trainer._after_step = after_step
    return main(argv)


if __name__ == "__main__":
    if sys.argv[1] == "cli":
        sys.exit(_cli_worker(Path(sys.argv[2]), sys.argv[3:]))
    _worker(sys.argv[1], Path(sys.argv[2]))
