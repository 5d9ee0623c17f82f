"""benchmarks/jsb.py (issue 13): every row is a valid configuration, and a row stopped by its
wall-time budget continues from its checkpoint and is then evaluated."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def jsb():
    spec = importlib.util.spec_from_file_location("jsb_benchmark", ROOT / "benchmarks" / "jsb.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["jsb_benchmark"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.data
def test_every_row_takes_one_training_step(jsb, data_dir, tmp_path):
    """Each row's model, objective and optimiser settings build and train (one epoch: one minibatch of 2 chorales)."""
    data = jsb.load(data_dir)
    small = data["train"][[0, 1]]
    for name, row in jsb.ROWS.items():
        tr = jsb.make_trainer(name, dict(row, batch_size=2), tmp_path, seed=0, patience=5, valid_every=1)
        tr.fit(small, small, epochs=1, max_steps=1)
        assert tr.global_step == 1 and tr.consecutive_bad == 0, name
        assert tr.history[0]["skipped"] == 0 and tr.history[0]["train_bound"] < 0, name


def test_the_dmm_row_is_pyros_recipe(jsb):
    """Pyro's examples/dmm/dmm.py defaults when its tutorial reported 6.87 (pyro commit 4dc044b)."""
    row = jsb.ROWS["dmm"]
    assert row["hyper"] == dict(z_dim=100, transition_dim=200, emission_dim=100, rnn_dim=600, rnn="rnn_relu",
                                orthogonal=False, observed_channel=False, learn_h0=True)
    assert row["optimizer"] == "clipped_adam" and row["loss_scale"] == "sum" and row["lr"] == 4e-4
    assert row["optimizer_args"] == {"betas": (0.96, 0.999), "clip_norm": 20.0, "lrd": 0.99996, "weight_decay": 0.6}
    assert row["annealing"] == {"start": 0.1, "warmup_steps": 1000 * 12}
    assert row["objective"] == "particle_elbo" and row["num_particles"] == 1 and row["bucket_by_length"] is False
    # the first run's settings stay reproducible as their own row
    old = jsb.ROWS["dmm_2019"]
    assert old["lr"] == 3e-4 and old["optimizer_args"]["weight_decay"] == 2.0 and "bucket_by_length" not in old
    assert old["hyper"] == dict(z_dim=100, transition_dim=200, emission_dim=100, rnn_dim=600, rnn="rnn_relu")


@pytest.mark.data
def test_the_srnn_rows_are_the_reference_recipe(jsb, data_dir, tmp_path):
    """Fraccaro et al.'s srnn code (MainSRNN_midi.py): Adam 1e-3, batch 16, clip 1, 50 epochs with the lr divided
    by 1.2 per epoch after 20, KL temperature 0.2 -> 1 over 20 epochs of 15 minibatches on the ELBO row only,
    smoothing guide with Resq and MLPs of 500; the constant-lr row differs from the ELBO row in its schedule only."""
    elbo, fivo, const = jsb.ROWS["srnn_elbo"], jsb.ROWS["srnn_fivo"], jsb.ROWS["srnn_elbo_constant_lr"]
    for row in (elbo, fivo, const):
        assert (row["lr"], row["batch_size"], row["clip_norm"], row["optimizer_args"]) == (1e-3, 16, 1.0, {"eps": 1e-4})
    for row in (elbo, fivo):
        assert (row["epochs"], row["lr_decay"], row["lr_decay_after"]) == (50, 1 / 1.2, 20)
    schedule = ("epochs", "lr_decay", "lr_decay_after", "published")
    assert {k: v for k, v in const.items() if k not in schedule} == {k: v for k, v in elbo.items() if k not in schedule}
    assert "lr_decay" not in const
    assert elbo["annealing"] == {"start": 0.2, "warmup_steps": 20 * 15} and elbo["analytic_kl"] is True
    assert "annealing" not in fivo and fivo["valid_objective"] == "fivo" and fivo["num_particles"] == 4
    tr = jsb.make_trainer("srnn_elbo", elbo, tmp_path, seed=0, patience=5, valid_every=None)
    assert (tr.lr_decay, tr.lr_decay_after, tr.valid_every) == (1 / 1.2, 20, 1)  # the row's, given no --valid-every
    guide = tr.lsm.guide_steps
    assert guide.smoothing and guide.resq and guide.net[0].out_features == 500
    assert len(jsb.load(data_dir)["train"]) == 229 and -(-229 // 16) == 15  # minibatches per epoch


def test_the_dmm_row_builds_pyros_guide(jsb):
    lsm = jsb.build_row(jsb.ROWS["dmm"], seed=0)
    g = lsm.guide_steps
    rnn = g.rnns["bac"]
    assert rnn.input_size == 88 and rnn.nonlinearity == "relu" and set(g.h0) == {"bac"}


@pytest.mark.data
def test_a_row_resumes_after_its_budget_and_is_evaluated(jsb, data_dir, tmp_path, monkeypatch, capsys):
    """A tiny row: the first run spends its budget after one step and is evaluated as it stands; a
    second run with a larger budget continues from the checkpoint (not from scratch), finishes its
    epochs and writes result.json again."""
    tiny = dict(jsb.ROWS["dmm"], hyper=dict(z_dim=2, transition_dim=4, emission_dim=4, rnn_dim=4, rnn="rnn_relu"),
                epochs=2, batch_size=64)
    monkeypatch.setitem(jsb.ROWS, "dmm", tiny)
    args = ["dmm", "--out", str(tmp_path), "--data-dir", str(data_dir), "--threads", "1", "--valid-every", "1",
            "--iwae", "2", "--elbo-particles", "1"]
    assert jsb.main(args + ["--minutes", "1e-6"]) == 0
    first = torch.load(tmp_path / "dmm" / "checkpoint.pt", weights_only=False)
    assert first["global_step"] == 1
    assert json.loads((tmp_path / "dmm" / "result.json").read_text())["epochs"] == 0
    assert jsb.main(args + ["--minutes", "60"]) == 0
    assert "continuing from" in capsys.readouterr().out
    res = json.loads((tmp_path / "dmm" / "result.json").read_text())
    assert res["epochs"] == 2 and res["frames"] == 4725  # the test split: 4,725 frames
    assert 0 < res["test_neg_elbo"] and 0 < res["test_nll_iwae"]["2"] <= res["test_neg_elbo"] + 1.0
    assert 0 <= res["test_kl_per_frame"] and 0 <= res["active_units"] <= res["z_dim"] == 2
    assert jsb.main(["--report", "--out", str(tmp_path)]) == 0
    assert f"| dmm | {res['test_neg_elbo']:.3f} (KL " in capsys.readouterr().out
    # --collapse recomputes the same diagnostics from the checkpoint's best parameters
    del res["active_units"]
    (tmp_path / "dmm" / "result.json").write_text(json.dumps(res))
    assert jsb.main(["dmm", "--collapse", "--out", str(tmp_path), "--data-dir", str(data_dir), "--threads", "1"]) == 0
    again = json.loads((tmp_path / "dmm" / "result.json").read_text())
    assert again["z_dim"] == 2 and "active_units" in again
    assert again["test_kl_per_frame"] == pytest.approx(res["test_kl_per_frame"], rel=0.5)
    # a row with a checkpoint but no result yet (stopped mid-training) is reported as unfinished, with its epochs
    (tmp_path / "dmm" / "result.json").unlink()
    assert jsb.main(["--report", "--out", str(tmp_path)]) == 0
    assert "| dmm | unfinished (continue it to evaluate) | |" in capsys.readouterr().out


@pytest.mark.data
def test_seeds_run_apart_and_are_summarised(jsb, data_dir, tmp_path, monkeypatch, capsys):
    """A second seed trains in ``<row>-seed1`` (the seed-0 run untouched, different parameters), and the
    report prints both runs and their mean and standard deviation."""
    tiny = dict(jsb.ROWS["dmm"], hyper=dict(z_dim=2, transition_dim=4, emission_dim=4, rnn_dim=4, rnn="rnn_relu"),
                epochs=1, batch_size=64)
    monkeypatch.setitem(jsb.ROWS, "dmm", tiny)
    args = ["dmm", "--out", str(tmp_path), "--data-dir", str(data_dir), "--threads", "1", "--valid-every", "1",
            "--iwae", "2", "--elbo-particles", "1", "--fivo", ""]
    assert jsb.main(args) == 0
    seed0 = (tmp_path / "dmm" / "result.json").read_text()
    assert jsb.main(args + ["--seed", "1"]) == 0
    assert (tmp_path / "dmm" / "result.json").read_text() == seed0
    r0, r1 = (json.loads((tmp_path / d / "result.json").read_text()) for d in ("dmm", "dmm-seed1"))
    assert (r0["seed"], r1["seed"]) == (0, 1) and r0["test_neg_elbo"] != r1["test_neg_elbo"]
    assert jsb.seeds_of(tmp_path, "dmm") == [0, 1] and jsb.parse_run("dmm-seed1") == ("dmm", 1)
    capsys.readouterr()
    assert jsb.main(["--report", "--out", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    e = [r0["test_neg_elbo"], r1["test_neg_elbo"]]
    mean, sd = sum(e) / 2, abs(e[0] - e[1]) / 2 ** 0.5
    assert f"| dmm (seed 1) | {r1['test_neg_elbo']:.3f} (KL " in table
    assert f"| dmm: mean ± sd over 2 seeds | {mean:.3f} ± {sd:.3f} |" in table
    with pytest.raises(ValueError, match="unknown run"):
        jsb.parse_run("nope-seed1")


@pytest.mark.data
def test_ablation_rows_record_posterior_use_and_plot_it(jsb, data_dir, tmp_path, monkeypatch, capsys):
    """Each ablate_vrnn_elbo_* row is vrnn_elbo with one change; a (tiny) one records the validation KL and
    active units at every validation, and --plot-posterior draws them; a run without them is refused."""
    ref = jsb.ROWS["vrnn_elbo"]
    changed = {name: {k for k in set(row) | set(ref) if k != "published" and row.get(k) != ref.get(k)}
               for name, row in jsb.ROWS.items() if name.startswith("ablate_vrnn_elbo_")}
    assert changed == {"ablate_vrnn_elbo_reference": {"track_posterior", "anchor_elbo"},
                       "ablate_vrnn_elbo_no_residual": {"hyper", "track_posterior", "anchor_elbo"},
                       "ablate_vrnn_elbo_no_offsets": {"hyper", "track_posterior", "anchor_elbo", "init_from_data"},
                       "ablate_vrnn_elbo_4_samples": {"track_posterior", "anchor_elbo", "num_particles"}}
    assert jsb.ROWS["ablate_vrnn_elbo_no_residual"]["hyper"] == dict(ref["hyper"], residual=False)
    small = {"ablate_vrnn_elbo_no_residual": dict(z_dim=2, rnn_dim=4, feature_dim=4),
             "dmm": dict(z_dim=2, rnn_dim=4, transition_dim=4, emission_dim=4)}
    for name in ("ablate_vrnn_elbo_no_residual", "dmm"):
        row = jsb.ROWS[name]
        monkeypatch.setitem(jsb.ROWS, name, dict(row, hyper=dict(row["hyper"], **small[name]), epochs=2, batch_size=64))
        args = [name, "--out", str(tmp_path), "--data-dir", str(data_dir), "--threads", "1", "--valid-every", "1",
                "--iwae", "2", "--elbo-particles", "1", "--fivo", ""]
        assert jsb.main(args) == 0
    hist = torch.load(tmp_path / "ablate_vrnn_elbo_no_residual" / "checkpoint.pt", weights_only=False)["history"]
    assert [h["epoch"] for h in hist if h.get("valid_kl_per_frame") is not None] == [1, 2]
    assert all(0 <= h["valid_active_units"] <= 2 and h["valid_kl_per_frame"] >= 0 for h in hist)
    png = tmp_path / "posterior.png"
    assert jsb.main(["--report", "--out", str(tmp_path), "--plot-posterior", str(png),
                     "--row-plot", "ablate_vrnn_elbo_no_residual,dmm"]) == 0
    assert png.stat().st_size > 10_000
    capsys.readouterr()
    assert jsb.main(["--report", "--out", str(tmp_path), "--plot-posterior", str(tmp_path / "no.png"),
                     "--row-plot", "dmm"]) == 2
    assert "--track-posterior" in capsys.readouterr().err and not (tmp_path / "no.png").exists()


def test_the_nll_limit_removes_a_first_order_gap(jsb):
    """If the IWAE gap is exactly c / K, one jackknife step from (K/2, K) recovers the NLL itself."""
    nll, c = 6.4, 7.0
    values = {str(k): nll + c / k for k in (10, 100, 500, 1000)}
    k, limit = jsb.nll_limit(values)
    assert k == 1000 and limit == pytest.approx(nll, abs=1e-12)
    assert jsb.nll_limit({"10": 7.0, "100": 6.9}) is None  # no K whose half was evaluated
