"""The command line: one-line errors with a non-zero status, and a working fit -> evaluate -> sample round trip."""

import os
import subprocess
import sys


from deepstate.cli import main


def test_unknown_dataset_is_one_line_exit_2(capsys):
    assert main(["fit", "no-such-data", "--out", "x.pt"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("deepstate: data:")


def test_bad_model_name_is_one_line(capsys, tmp_path):
    code = main(["fit", "sunspots", "--model", "transformer", "--out", str(tmp_path / "m.pt"), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model" in err[0]
    assert not (tmp_path / "m.pt").exists()


def test_missing_model_file(capsys, tmp_path):
    assert main(["evaluate", str(tmp_path / "nope.pt"), "sunspots"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_fit_evaluate_sample_roundtrip(tmp_path, capsys):
    out = tmp_path / "m.pt"
    assert main(["fit", "sunspots", "--model", "dkf", "--epochs", "2", "--out", str(out), "--quiet",
                 "--set", "z_dim=2", "--set", "rnn_dim=8", "--set", "transition_dim=8", "--set", "emission_dim=8"]) == 0
    assert out.exists()
    assert main(["evaluate", str(out), "sunspots", "--num-particles", "8"]) == 0
    assert "nats/frame" in capsys.readouterr().out
    csv = tmp_path / "s.csv"
    assert main(["sample", str(out), "--num-sequences", "2", "--length", "5", "--out", str(csv)]) == 0
    lines = csv.read_text().strip().splitlines()
    assert lines[0] == "sequence,step,x0" and len(lines) == 1 + 2 * 5
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".deepstate-")] == []


def test_entry_point_no_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "deepstate", "evaluate", str(tmp_path / "x.pt"), "sunspots"],
                       capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_datasets_lists_builtins(capsys):
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    for name in ("sunspots", "co2", "lynx_hare", "jsb_chorales"):
        assert name in out
