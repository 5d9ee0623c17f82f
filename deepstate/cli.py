"""The ``deepstate`` command line.

    deepstate demo                       fit the default model to a built-in series, print held-out bounds
    deepstate datasets                   list the built-in datasets
    deepstate fit DATA --out MODEL.pt    train an Estimator on a dataset name or a CSV file
    deepstate evaluate MODEL.pt DATA     held-out bound in nats per frame
    deepstate sample MODEL.pt            generate sequences (CSV on stdout or --out)

Errors print one line to stderr and exit with status 2 (bad input) or 1 (failure): never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

__all__ = ["main"]


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def _load_data(spec: str, data_dir=None):
    """A dataset name (``sunspots``, ``co2``, ``lynx_hare``, ``jsb_chorales``) or a CSV path.

    Returns ``(train, test)``: for a single series the last 20% of steps are held out; JSB uses
    its own train/test split; a CSV is one multivariate series (numeric columns, rows = time).
    """
    from deepstate.data import from_pandas, list_datasets, load_dataset, load_polyphonic, split_series

    if spec == "jsb_chorales":
        d = load_polyphonic("jsb_chorales", data_dir=data_dir)
        return d["train"], d["test"], "bernoulli"
    if spec in list_datasets():
        batch = load_dataset(spec, data_dir=data_dir).batch
    elif os.path.isfile(spec):
        import pandas as pd

        try:
            df = pd.read_csv(spec)
        except Exception as err:
            raise CLIError(f"data: cannot read CSV {spec!r}: {err}") from None
        df = df.select_dtypes("number")
        if df.shape[1] == 0:
            raise CLIError(f"data: {spec!r} has no numeric columns")
        batch = from_pandas(df, as_multivariate=True)
    else:
        raise CLIError(f"data: expected a dataset name ({', '.join(list_datasets() + ['jsb_chorales'])}) or a CSV file, got {spec!r}")
    parts = split_series(batch, valid_fraction=0.0, test_fraction=0.2)
    return parts["train"], parts["test"], "gaussian"


def _cmd_datasets(args):
    from deepstate.data import list_datasets, load_dataset

    for name in list_datasets():
        try:
            ds = load_dataset(name, data_dir=args.data_dir, download=False)
            b = ds.batch
            print(f"{name:10s} {ds.frequency:8s} T={b.max_length:5d} D={b.dim} missing={int((~b.observed & b.valid[..., None]).sum())}  {ds.description}")
        except (FileNotFoundError, ValueError) as err:
            print(f"{name:10s} (not available: {str(err).splitlines()[0]})")
    print("jsb_chorales  polyphonic music (load_polyphonic), 229/76/77 sequences, D=88")
    return 0


def _cmd_demo(args):
    """The main job: a DMM and an exact LGSSM fitted to yearly sunspots; held-out bounds compared."""
    import torch

    from deepstate.data import load_dataset, split_series
    from deepstate.estimator import Estimator

    torch.manual_seed(args.seed)
    ds = load_dataset("sunspots")
    series = ds.batch
    parts = split_series(series, valid_fraction=0.0, test_fraction=0.2)
    train, test = parts["train"], parts["test"]
    print(f"sunspots: yearly sunspot numbers {ds.data.index[0]}..{ds.data.index[-1]}, {series.max_length} years; "
          f"train {train.num_frames} years, held-out {test.num_frames} years")
    t0 = time.perf_counter()
    lgssm = Estimator("lgssm", objective="exact", z_dim=2, seed=args.seed, dtype=torch.float64)
    lgssm.fit(train, epochs=args.lgssm_iterations, progress=not args.quiet)
    exact = lgssm.log_likelihood(test, objective="exact")
    print(f"linear-Gaussian SSM (z=2, maximum likelihood): held-out {exact:.4f} nats/year, exact "
          f"[{time.perf_counter() - t0:.0f}s]")
    t0 = time.perf_counter()
    dmm = Estimator("dkf", likelihood="gaussian", objective="fivo", num_particles=4, seed=args.seed,
                    z_dim=4, transition_dim=32, emission_dim=32, rnn_dim=32)
    dmm.fit(train, epochs=args.epochs, lr=3e-3, batch_size=8, progress=not args.quiet, window=40, stride=10)
    fivo = dmm.log_likelihood(test, objective="fivo", num_particles=256)
    iwae = dmm.log_likelihood(test, objective="iwae", num_particles=256)
    print(f"deep Markov model (z=4, FIVO N=4 training): held-out FIVO(256) bound {fivo:.4f}, "
          f"IWAE(256) bound {iwae:.4f} nats/year [{time.perf_counter() - t0:.0f}s]")
    print("(bounds are lower bounds on log p(held-out years); higher is better; the Kalman value is exact)")
    return 0


def _cmd_fit(args):
    from deepstate.estimator import Estimator

    train, test, likelihood = _load_data(args.data, args.data_dir)
    est = Estimator(args.model, likelihood=args.likelihood or likelihood, objective=args.objective,
                    num_particles=args.num_particles, seed=args.seed, **_hyper(args.set))
    window = args.window if train.batch_size == 1 else None
    est.fit(train, valid_data=test if args.validate else None, epochs=args.epochs, lr=args.lr,
            batch_size=args.batch_size, progress=not args.quiet, window=window, checkpoint_dir=args.checkpoint_dir)
    est.save(args.out)
    print(f"saved {args.out}; held-out bound {est.log_likelihood(test):.4f} nats/frame")
    return 0


def _hyper(pairs):
    """``["z_dim=8", "rnn=gru"]`` -> ``{"z_dim": 8, "rnn": "gru"}`` (ints, floats, booleans parsed)."""
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise CLIError(f"--set: expected KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        for cast in (int, float):
            try:
                value = cast(value)
                break
            except ValueError:
                pass
        out[key] = {"true": True, "false": False}.get(value, value) if isinstance(value, str) else value
    return out


def _cmd_evaluate(args):
    from deepstate.estimator import Estimator

    est = Estimator.load(args.model_path)
    _, test, _ = _load_data(args.data, args.data_dir)
    value = est.log_likelihood(test, objective=args.objective, num_particles=args.num_particles)
    print(f"{args.objective}({args.num_particles}) bound: {value:.4f} nats/frame over {test.num_frames} frames")
    return 0


def _write_atomic(path: str, text: str) -> None:
    """Write via a temporary file in the same folder and rename: never a half-written file."""
    import tempfile

    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".deepstate-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _cmd_sample(args):
    from deepstate.estimator import Estimator

    est = Estimator.load(args.model_path)
    x = est.sample(args.num_sequences, args.length, seed=args.seed)
    rows = [f"{s},{t}," + ",".join(f"{v:.6g}" for v in x[s, t]) for s in range(x.shape[0]) for t in range(x.shape[1])]
    text = "sequence,step," + ",".join(f"x{d}" for d in range(x.shape[2])) + "\n" + "\n".join(rows) + "\n"
    if args.out:
        _write_atomic(args.out, text)
        print(f"wrote {args.num_sequences} sequences of {args.length} steps to {args.out}")
    else:
        sys.stdout.write(text)
    return 0


def _parser():
    p = argparse.ArgumentParser(prog="deepstate", description="Deep state-space models: fit, evaluate, sample.")
    p.add_argument("--data-dir", default=None, help="folder with data files (default: $DEEPSTATE_DATA, then the cache)")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="fit the default model to yearly sunspots and print held-out bounds")
    d.add_argument("--epochs", type=int, default=100)
    d.add_argument("--lgssm-iterations", type=int, default=50)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=_cmd_demo)

    s = sub.add_parser("datasets", help="list built-in datasets")
    s.set_defaults(func=_cmd_datasets)

    f = sub.add_parser("fit", help="train a model")
    f.add_argument("data", help="dataset name or CSV file")
    f.add_argument("--out", required=True, help="where to save the fitted model (.pt)")
    f.add_argument("--model", default="dkf")
    f.add_argument("--likelihood", default=None)
    f.add_argument("--objective", default="fivo")
    f.add_argument("--num-particles", type=int, default=4)
    f.add_argument("--epochs", type=int, default=20)
    f.add_argument("--lr", type=float, default=1e-3)
    f.add_argument("--batch-size", type=int, default=20)
    f.add_argument("--window", type=int, default=40, help="window length for a single long series")
    f.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="model hyperparameter, e.g. --set z_dim=8 --set rnn_dim=64 (repeatable)")
    f.add_argument("--validate", action="store_true", help="track the held-out bound and keep the best epoch")
    f.add_argument("--checkpoint-dir", default=None)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--quiet", action="store_true")
    f.set_defaults(func=_cmd_fit)

    e = sub.add_parser("evaluate", help="held-out bound of a saved model")
    e.add_argument("model_path")
    e.add_argument("data")
    e.add_argument("--objective", default="fivo", choices=["fivo", "iwae", "elbo"])
    e.add_argument("--num-particles", type=int, default=128)
    e.set_defaults(func=_cmd_evaluate)

    g = sub.add_parser("sample", help="generate sequences from a saved model")
    g.add_argument("model_path")
    g.add_argument("--num-sequences", type=int, default=1)
    g.add_argument("--length", type=int, default=50)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", default=None, help="CSV file (default: stdout)")
    g.set_defaults(func=_cmd_sample)
    return p


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except CLIError as err:
        print(f"deepstate: {err}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"deepstate: {str(err).splitlines()[0] if str(err) else type(err).__name__}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("deepstate: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the CLI never shows a traceback
        print(f"deepstate: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
