"""Kill and resume (issue #14, item 1): a training process killed with SIGKILL at any moment --
between checkpoints, right after one, or while one is being written -- and then rerun, ends with
exactly (``torch.equal``) the parameters of an uninterrupted run. A truncated (half-written)
checkpoint never loads as a wrong state: it raises a clear ``ValueError``, and since checkpoints are
written to a temporary file and renamed, a kill mid-write leaves the previous checkpoint intact.

The training runs in a subprocess (a small script written to ``tmp_path``: a tiny DKF, FIVO, CPU,
one thread, fixed seed, a checkpoint every 3 steps). Hooks in the script, switched on by
environment variables, let the test choose the moment of the kill deterministically:

* ``HOLD_AT_STEP=k``: after global step ``k`` the process says so (a marker file) and waits;
* ``HOLD_IN_SAVE=k``: the ``k``-th checkpoint write stops half-way through writing the temporary
  file, says so, and waits.

Every completed checkpoint write appends a line to ``saves.log`` (the test polls it to kill "after
N checkpoints" at whatever moment the process has then reached).
"""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from deepstate.inference.checkpoint import load_checkpoint

SCRIPT = textwrap.dedent(
    r'''
    import io, os, sys, time
    from pathlib import Path

    import numpy as np
    import torch

    torch.set_num_threads(1)
    import deepstate.inference.trainer as trainer_mod
    from deepstate.data import SequenceBatch
    from deepstate.models import build

    work = Path(sys.argv[1])
    ckpt_dir, out = work / "ckpt", Path(sys.argv[2])
    hold_step = int(os.environ.get("HOLD_AT_STEP", "0"))
    hold_save = int(os.environ.get("HOLD_IN_SAVE", "0"))
    saves = {"n": 0}

    def hold(marker):
        (work / marker).write_text(str(os.getpid()))
        while True:  # wait for the SIGKILL
            time.sleep(0.05)

    real_torch_save = torch.save

    def slow_torch_save(obj, f, *args, **kwargs):
        """The hold_save-th checkpoint write stops half-way through the temporary file."""
        if saves["n"] + 1 == hold_save and hasattr(f, "write"):
            buf = io.BytesIO()
            real_torch_save(obj, buf, *args, **kwargs)
            data = buf.getvalue()
            f.write(data[: len(data) // 2])
            f.flush()
            hold("held_in_save")
        return real_torch_save(obj, f, *args, **kwargs)

    torch.save = slow_torch_save
    real_atomic_save = trainer_mod.atomic_save

    def counting_atomic_save(obj, path):
        res = real_atomic_save(obj, path)
        saves["n"] += 1
        with open(work / "saves.log", "a") as fh:
            fh.write(f"{obj['global_step']}\n")
        return res

    trainer_mod.atomic_save = counting_atomic_save

    rng = np.random.default_rng(0)
    train = SequenceBatch.from_sequences([rng.normal(size=(L, 2)) for L in (9, 7, 12, 5, 8, 10, 6, 11)])
    valid = SequenceBatch.from_sequences([rng.normal(size=(L, 2)) for L in (8, 6)])
    torch.manual_seed(0)
    lsm = build("dkf", 2, "gaussian", z_dim=2, rnn_dim=4, transition_dim=4, emission_dim=4)

    def callback(trainer, record):
        if hold_step and trainer.global_step == hold_step:
            hold("held_at_step")

    tr = trainer_mod.Trainer(lsm, objective="fivo", num_particles=3, batch_size=2, lr=1e-2,
                             checkpoint_dir=ckpt_dir, checkpoint_every=3, progress=False, seed=7)
    tr.fit(train, valid, epochs=5, callback=callback)
    torch.save({k: v.detach().clone() for k, v in tr.lsm.state_dict().items()}, out)
    (work / "done").write_text("ok")
    '''
)
TOTAL_STEPS = 5 * 4  # 5 epochs of 4 minibatches


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("HOLD_AT_STEP", "HOLD_IN_SAVE")}
    env.update({"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **{k: str(v) for k, v in extra.items()}})
    return env


def _script(tmp_path: Path) -> Path:
    p = tmp_path / "train.py"
    p.write_text(SCRIPT)
    return p


def _run_to_end(script: Path, work: Path, out: Path):
    r = subprocess.run([sys.executable, str(script), str(work), str(out)], env=_env(), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    return torch.load(out, weights_only=True)


def _start(script: Path, work: Path, out: Path, **env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(script), str(work), str(out)], env=_env(**env),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_for(pred, proc: subprocess.Popen, timeout=90.0):
    t0 = time.monotonic()
    while not pred():
        if proc.poll() is not None:
            raise AssertionError(f"the training process ended (rc {proc.returncode}) before the kill point: "
                                 f"{proc.stderr.read().decode()[-3000:]}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError("timed out waiting for the kill point")
        time.sleep(0.01)


def _kill(proc: subprocess.Popen):
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


def _saves(work: Path) -> list:
    p = work / "saves.log"
    return [int(s) for s in p.read_text().split()] if p.is_file() else []


def _assert_equal_params(got: dict, ref: dict):
    assert got.keys() == ref.keys()
    diff = [k for k in ref if not torch.equal(got[k], ref[k])]
    assert not diff, f"parameters differ from the uninterrupted run: {diff}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run's final parameters (its checkpoint folder is its own)."""
    work = tmp_path_factory.mktemp("uninterrupted")
    script = _script(work)
    params = _run_to_end(script, work, work / "final.pt")
    assert _saves(work)[-1] == TOTAL_STEPS
    return params


def test_killed_between_checkpoints_then_resumed_matches_uninterrupted(tmp_path, reference):
    """Killed at step 7 (the last checkpoint is step 6: step 7 is lost and redone), then again at step
    17 (mid-epoch, after a validation pass and an epoch-end checkpoint); the third run finishes."""
    script = _script(tmp_path)
    for step in (7, 17):
        proc = _start(script, tmp_path, tmp_path / "final.pt", HOLD_AT_STEP=step)
        _wait_for(lambda: (tmp_path / "held_at_step").is_file(), proc)
        _kill(proc)
        (tmp_path / "held_at_step").unlink()
        assert not (tmp_path / "done").exists()
        ckpt = load_checkpoint(tmp_path / "ckpt" / "checkpoint.pt")
        assert ckpt["global_step"] < step  # the work since the last checkpoint is lost
    _assert_equal_params(_run_to_end(script, tmp_path, tmp_path / "final.pt"), reference)


def test_killed_while_a_checkpoint_is_written_keeps_the_old_one_and_resumes_exactly(tmp_path, reference):
    """The 3rd checkpoint write is killed half-way: the temporary file is half-written, the previous
    checkpoint (step 6) is intact and loads, and the resumed run ends as the uninterrupted one."""
    script = _script(tmp_path)
    proc = _start(script, tmp_path, tmp_path / "final.pt", HOLD_IN_SAVE=3)
    _wait_for(lambda: (tmp_path / "held_in_save").is_file(), proc)
    _kill(proc)
    ckpt_dir = tmp_path / "ckpt"
    temps = [p for p in ckpt_dir.iterdir() if p.name.endswith(".tmp")]
    assert len(temps) == 1 and temps[0].stat().st_size > 0  # the half-written temporary file
    with pytest.raises(ValueError, match="corrupted, truncated"):
        load_checkpoint(temps[0])
    assert _saves(tmp_path) == [3, 4]  # 2 complete writes: step 3, then epoch 1's end (step 4)
    assert load_checkpoint(ckpt_dir / "checkpoint.pt")["global_step"] == 4
    _assert_equal_params(_run_to_end(script, tmp_path, tmp_path / "final.pt"), reference)
    assert not temps[0].exists()  # the resumed run removed the stale temporary file


def test_killed_as_soon_as_checkpoints_appear_then_resumed(tmp_path, reference):
    """Racing kills: SIGKILL as soon as 2, then 2 more, checkpoints have been written (wherever the
    process is then: in a step, a validation pass or the next write); the last run finishes."""
    script = _script(tmp_path)
    for more in (2, 2):
        before = len(_saves(tmp_path))
        proc = _start(script, tmp_path, tmp_path / "final.pt")
        _wait_for(lambda: len(_saves(tmp_path)) >= before + more, proc)
        _kill(proc)
        if (tmp_path / "done").exists():  # pragma: no cover - it finished before the kill
            break
    _assert_equal_params(_run_to_end(script, tmp_path, tmp_path / "final.pt"), reference)


def test_truncated_checkpoint_never_loads(tmp_path, reference):
    """Every truncation of a real trainer checkpoint raises a ValueError naming the file (never a
    wrong state), and the Trainer refuses to resume from it with the same clear error."""
    from deepstate.data import SequenceBatch
    from deepstate.inference.trainer import Trainer
    from deepstate.models import build

    script = _script(tmp_path)
    _run_to_end(script, tmp_path, tmp_path / "final.pt")
    good = (tmp_path / "ckpt" / "checkpoint.pt").read_bytes()
    bad = tmp_path / "bad" / "checkpoint.pt"
    bad.parent.mkdir()
    cuts = sorted({0, 1, 10, 100, len(good) // 3, len(good) // 2, len(good) - 100, len(good) - 1}
                  | set(range(0, len(good), max(1, len(good) // 40))))
    for cut in cuts:
        bad.write_bytes(good[:cut])
        with pytest.raises(ValueError, match="not a readable deepstate checkpoint"):
            load_checkpoint(bad)
    # the Trainer's resume path gives the same error instead of training from a wrong state
    bad.write_bytes(good[: len(good) // 2])
    lsm = build("dkf", 2, "gaussian", z_dim=2, rnn_dim=4, transition_dim=4, emission_dim=4)
    tr = Trainer(lsm, checkpoint_dir=bad.parent, progress=False)
    before = {k: v.clone() for k, v in lsm.state_dict().items()}
    train = SequenceBatch.from_sequences([torch.randn(6, 2)])
    with pytest.raises(ValueError, match="checkpoint.pt"):
        tr.fit(train, epochs=1)
    _assert_equal_params(lsm.state_dict(), before)


@pytest.mark.filterwarnings("ignore:Trainer. resuming with settings")
def test_corrupted_checkpoint_is_refused_not_loaded(tmp_path, reference):
    """A byte flipped anywhere in a written checkpoint (``torch.load`` itself checks no CRC, so most
    flips would load silently) is refused by the Trainer: the file's checksum no longer matches its
    content, or the file does not parse. Either way a ValueError, never a wrong state."""
    import random

    from deepstate.inference.trainer import Trainer, state_digest
    from deepstate.models import build

    script = _script(tmp_path)
    _run_to_end(script, tmp_path, tmp_path / "final.pt")
    path = tmp_path / "ckpt" / "checkpoint.pt"
    good = path.read_bytes()
    state = load_checkpoint(path)
    assert state["digest"] == state_digest({k: v for k, v in state.items() if k != "digest"})
    lsm = build("dkf", 2, "gaussian", z_dim=2, rnn_dim=4, transition_dim=4, emission_dim=4)
    rng = random.Random(0)
    refused = 0
    for pos in [rng.randrange(len(good)) for _ in range(40)]:
        bad = bytearray(good)
        bad[pos] ^= 0xFF
        path.write_bytes(bytes(bad))
        tr = Trainer(lsm, checkpoint_dir=path.parent, progress=False)
        try:
            tr.load_checkpoint()
        except ValueError as err:
            assert "checksum" in str(err) or "not a readable deepstate checkpoint" in str(err), err
            refused += 1
            continue
        # accepted: then it is exactly the saved state (the flip hit bytes that carry no content)
        loaded = load_checkpoint(path, map_location="cpu")  # (a flip in a storage's location tag is harmless)
        assert state_digest({k: v for k, v in loaded.items() if k != "digest"}) == state["digest"]
    assert refused >= 20, refused  # the rest hit bytes that carry no content (zip headers, padding)
    path.write_bytes(good)
    Trainer(lsm, checkpoint_dir=path.parent, progress=False).load_checkpoint()
