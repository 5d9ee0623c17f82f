"""The ``deepstate`` command line.

    deepstate demo                       fit the default model to a built-in series, print held-out bounds
    deepstate datasets                   list the built-in datasets
    deepstate fit DATA --out MODEL.pt    train an Estimator on a dataset name or a CSV file
    deepstate evaluate MODEL.pt DATA     held-out bound in nats per frame
    deepstate sample MODEL.pt            generate sequences (CSV on stdout or --out; --midi DIR for piano rolls)
    deepstate check MODEL.pt DATA --out DIR [--kind one-step|reconstruction|free] [--num-samples S]
                                         posterior predictive check: ppc.nc (ArviZ), PNG panels, p-value table
    deepstate forecast MODEL.pt DATA --horizon H --out forecast.csv [--plot fan.png]
    deepstate backtest MODEL.pt DATA --horizon H --origins K --out scores.csv [--plot scores.png]

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


_TIME_NAMES = ("date", "time", "year", "t", "timestamp", "datetime", "period", "month", "day", "week", "quarter")


def read_series_csv(path: str):
    """A CSV of one series as a ``pandas.DataFrame``: a time column (if any) as the index, one column per dimension.

    The time column is the first column if it is named like a time (``date``, ``time``, ``year``,
    ``t``, ...) or if all its values parse as dates; it must be strictly increasing. Every other
    column must be numeric (empty cells are missing values): a column of text is an error naming it.
    """
    import pandas as pd

    try:
        df = pd.read_csv(path)
    except Exception as err:  # noqa: BLE001 - pandas raises many kinds
        raise CLIError(f"data: cannot read CSV {path!r}: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    if df.shape[0] == 0 or df.shape[1] == 0:
        raise CLIError(f"data: {path!r} has no rows or no columns")
    first = df.columns[0]
    is_time = str(first).strip().lower() in _TIME_NAMES
    textual = lambda c: c.dtype == object or pd.api.types.is_string_dtype(c.dtype)  # noqa: E731
    if not is_time and textual(df[first]):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parsed = pd.to_datetime(df[first], errors="coerce")
        is_time = bool(parsed.notna().all())
    if is_time:
        col = df[first]
        if textual(col):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                parsed = pd.to_datetime(col, errors="coerce")
            if parsed.isna().any():
                raise CLIError(f"data: time column {first!r} of {path!r} has values that are not dates")
            col = parsed
        if not col.is_monotonic_increasing or col.duplicated().any():
            raise CLIError(f"data: time column {first!r} of {path!r} is not strictly increasing")
        df = df.drop(columns=[first]).set_axis(pd.Index(col, name=str(first)), axis=0)
        if isinstance(df.index, pd.DatetimeIndex) and df.index.freq is None and len(df) >= 3:
            freq = pd.infer_freq(df.index)
            if freq is not None:
                df = df.asfreq(freq)
    if df.shape[1] == 0:
        raise CLIError(f"data: {path!r} has a time column but no value column")
    for c in df.columns:
        if not pd.api.types.is_numeric_dtype(df[c]):
            bad = df[c][pd.to_numeric(df[c], errors="coerce").isna() & df[c].notna()]
            raise CLIError(f"data: column {c!r} of {path!r} is not numeric (row {bad.index[0]}: {bad.iloc[0]!r})")
    return df.astype("float64")


def _read_series(spec: str, data_dir=None):
    """``(frame, likelihood)``: a dataset name or a CSV path as one series (``pandas.DataFrame``)."""
    import pandas as pd

    from deepstate.data import list_datasets, load_dataset

    if spec in list_datasets():
        data = load_dataset(spec, data_dir=data_dir).data
        return (data.to_frame() if isinstance(data, pd.Series) else data), "gaussian"
    if os.path.isfile(spec):
        return read_series_csv(spec), "gaussian"
    raise CLIError(f"data: expected a dataset name ({', '.join(list_datasets() + ['jsb_chorales'])}) or a CSV file, got {spec!r}")


def _load_data(spec: str, data_dir=None):
    """A dataset name (``sunspots``, ``co2``, ``lynx_hare``, ``jsb_chorales``) or a CSV path.

    Returns ``(train, test, likelihood)``: for a single series the last 20% of steps are held out;
    JSB uses its own train/test split; a CSV is one multivariate series (see :func:`read_series_csv`).
    """
    from deepstate.data import from_pandas, load_polyphonic, split_series

    if spec == "jsb_chorales":
        d = load_polyphonic("jsb_chorales", data_dir=data_dir)
        return d["train"], d["test"], "bernoulli"
    frame, likelihood = _read_series(spec, data_dir)
    batch = from_pandas(frame, as_multivariate=True)
    parts = split_series(batch, valid_fraction=0.0, test_fraction=0.2)
    return parts["train"], parts["test"], likelihood


def _levels(text: str):
    from deepstate.forecasting import check_levels

    try:
        return check_levels(tuple(float(v) for v in text.split(",")), "--levels")
    except ValueError:
        raise CLIError(f"--levels: expected comma-separated numbers strictly between 0 and 1, got {text!r}") from None


def _cmd_forecast(args):
    from deepstate.estimator import Estimator

    est = Estimator.load(args.model_path)
    frame, _ = _read_series(args.data, args.data_dir)
    levels = _levels(args.levels)
    quantile_levels = sorted({q for lv in levels for q in ((1 - lv) / 2, (1 + lv) / 2)} | {0.5})
    fc = est.forecast(frame, args.horizon, num_samples=args.num_samples, levels=quantile_levels, seed=args.seed)
    table = fc.to_frame()
    _write_atomic(args.out, table.to_csv(float_format="%.6g"))
    print(f"wrote a {args.horizon}-step forecast ({fc.method}, quantiles {', '.join(f'{q:g}' for q in quantile_levels)}) "
          f"to {args.out}")
    if args.plot:
        fc.plot(levels=levels, title=f"{args.data}: {args.horizon}-step forecast ({est.model})", path=args.plot,
                max_history=args.plot_history)
        print(f"wrote the fan chart to {args.plot}")
    return 0


def _cmd_backtest(args):
    import pandas as pd

    from deepstate.estimator import Estimator
    from deepstate.forecasting.backtest import backtest

    est = Estimator.load(args.model_path)
    frame, _ = _read_series(args.data, args.data_dir)
    if args.origins < 1:
        raise CLIError(f"--origins: expected a positive int, got {args.origins}")
    if args.horizon < 1:
        raise CLIError(f"--horizon: expected a positive int, got {args.horizon}")
    test_size = args.origins + args.horizon - 1
    if test_size >= len(frame):
        raise CLIError(f"--origins: {args.origins} origins at horizon {args.horizon} need more than {test_size} steps; "
                       f"the series has {len(frame)}")
    order = tuple(int(v) for v in args.sarimax_order.split(","))
    res = backtest(est, frame, args.horizon, test_size=test_size, levels=_levels(args.levels), season=args.season,
                   num_samples=args.num_samples, order=order, seed=args.seed, progress=not args.quiet)
    _write_atomic(args.out, res.per_origin.to_csv(index=False, float_format="%.6g"))
    with pd.option_context("display.width", 160, "display.max_columns", 20, "display.precision", 3):
        print(f"{len(res.origins)} origins, horizon {args.horizon} (mean over origins, steps and dimensions):")
        print(res.summary.to_string())
    print(f"wrote per-origin scores to {args.out}")
    if args.plot:
        res.plot(path=args.plot)
        print(f"wrote the score plot to {args.plot}")
    return 0


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


def _is_piano_roll(est) -> bool:
    return est.likelihood == "bernoulli" and est.input_dim_ == 88


def _prefix_roll(spec: str, data_dir, steps: int, est):
    """The first ``steps`` frames of the first test sequence of ``spec`` (numpy ``[P, D]``)."""
    _, test, _ = _load_data(spec, data_dir)
    if test.dim != est.input_dim_:
        raise CLIError(f"--prefix: {spec!r} has {test.dim} dimension(s) per step, the model expects {est.input_dim_}")
    L = min(int(test.lengths[0]), steps)
    return test.x[0, :L].detach().cpu().numpy().astype("float64")


def _cmd_sample(args):
    from deepstate.estimator import Estimator

    est = Estimator.load(args.model_path)
    if args.midi is not None and not _is_piano_roll(est):
        raise CLIError(f"--midi: needs a piano-roll model (bernoulli likelihood, 88 keys); {args.model_path!r} is "
                       f"{est.likelihood} with {est.input_dim_} dimension(s)")
    if args.num_sequences < 1 or args.length < 1:
        raise CLIError(f"--num-sequences, --length: expected positive ints, got {args.num_sequences}, {args.length}")
    prefix = None
    if args.prefix is not None:
        if args.prefix_steps < 1:
            raise CLIError(f"--prefix-steps: expected a positive int, got {args.prefix_steps}")
        prefix = _prefix_roll(args.prefix, args.data_dir, args.prefix_steps, est)
        x = est.generate(args.num_sequences, args.length, prefix=[prefix], seed=args.seed)[:, 0]
    else:
        x = est.sample(args.num_sequences, args.length, seed=args.seed)
    if args.midi is not None:
        _write_midi(args.midi, x, prefix, args.frame_seconds)
        if not args.out:
            return 0
    rows = [f"{s},{t}," + ",".join(f"{v:.6g}" for v in x[s, t]) for s in range(x.shape[0]) for t in range(x.shape[1])]
    text = "sequence,step," + ",".join(f"x{d}" for d in range(x.shape[2])) + "\n" + "\n".join(rows) + "\n"
    if args.out:
        _write_atomic(args.out, text)
        print(f"wrote {args.num_sequences} sequences of {args.length} steps to {args.out}")
    else:
        sys.stdout.write(text)
    return 0


def _write_midi(folder: str, x, prefix, frame_seconds: float) -> None:
    """One MIDI file per sequence (prefix + continuation) and a piano-roll PNG of up to 4 of them."""
    import numpy as np

    from deepstate.data.midi import piano_roll_to_midi
    from deepstate.plots import piano_roll

    if not (frame_seconds > 0):
        raise CLIError(f"--frame-seconds: expected a positive number, got {frame_seconds}")
    os.makedirs(folder, exist_ok=True)
    rolls = [(x[i] > 0.5).astype(np.float64) for i in range(x.shape[0])]
    if prefix is not None:
        rolls = [np.concatenate([(prefix > 0.5).astype(np.float64), r]) for r in rolls]
    for i, r in enumerate(rolls):
        piano_roll_to_midi(r, os.path.join(folder, f"sample_{i}.mid"), frame_seconds=frame_seconds)
    titles = [f"sample {i}" + (f" (prefix: first {len(prefix)} frames)" if prefix is not None else "")
              for i in range(min(4, len(rolls)))]
    piano_roll(rolls[:4], titles=titles, path=os.path.join(folder, "piano_roll.png"), frame_seconds=frame_seconds)
    print(f"wrote {len(rolls)} MIDI file(s) and piano_roll.png to {folder}")


def _to_netcdf_atomic(idata, path: str) -> None:
    """``InferenceData.to_netcdf`` via a temporary file in the same folder, then rename."""
    import tempfile

    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".deepstate-", suffix=".nc.tmp")
    os.close(fd)
    try:
        idata.to_netcdf(tmp)
        mask = os.umask(0o022)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _rolls_from_idata(idata, sequence: int = 0):
    """``(data [T, D], replicate [T, D])`` of one sequence from the flattened InferenceData (draw 0)."""
    import numpy as np

    obs = idata.observed_data["x"]
    seq = obs["sequence"].values
    sel = np.flatnonzero(seq == sequence)
    t, d = obs["time"].values[sel], obs["component"].values[sel]
    T, D = int(t.max()) + 1, int(idata.observed_data.attrs["num_components"])
    data, rep = np.zeros((T, D)), np.zeros((T, D))
    data[t, d] = obs.values[sel]
    rep[t, d] = idata.posterior_predictive["x"].values[0, 0, sel]
    return data, rep


def _cmd_check(args):
    import pandas as pd

    from deepstate.estimator import Estimator
    from deepstate.plots import piano_roll, ppc_panels

    est = Estimator.load(args.model_path)
    if args.num_samples < 1:
        raise CLIError(f"--num-samples: expected a positive int, got {args.num_samples}")
    _, test, _ = _load_data(args.data, args.data_dir)
    if test.dim != est.input_dim_:
        raise CLIError(f"data: {args.data!r} has {test.dim} dimension(s) per step, the model expects {est.input_dim_}")
    if args.max_sequences is not None:
        if args.max_sequences < 1:
            raise CLIError(f"--max-sequences: expected a positive int, got {args.max_sequences}")
        test = test[: args.max_sequences]
    os.makedirs(args.out, exist_ok=True)
    table, idata = est.check(test, kind=args.kind, num_samples=args.num_samples, seed=args.seed)
    _to_netcdf_atomic(idata, os.path.join(args.out, "ppc.nc"))
    kind_name = {"one-step": "one-step-ahead", "free": "free-running"}.get(args.kind, args.kind)
    ppc_panels(table, path=os.path.join(args.out, "ppc_panels.png"),
               title=f"{args.data}: {kind_name} replicates (S = {args.num_samples}) of {test.batch_size} test sequences")
    written = ["ppc.nc", "ppc_panels.png"]
    if _is_piano_roll(est):
        data, rep = _rolls_from_idata(idata, 0)
        piano_roll([data, rep], titles=["data (test sequence 0)", f"{kind_name} replicate (draw 0)"],
                   path=os.path.join(args.out, "piano_roll.png"))
        written.append("piano_roll.png")
    with pd.option_context("display.max_rows", 200, "display.width", 160, "display.float_format", "{:.4g}".format):
        print(f"{kind_name} posterior predictive check, S = {args.num_samples}, {test.batch_size} sequences "
              f"(p = P(T_rep >= T_obs); near 0 or 1 flags a misfit)")
        print(table.to_string())
    print(f"wrote {', '.join(written)} to {args.out}")
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

    g = sub.add_parser("sample", help="generate sequences from a saved model",
                       epilog="examples: deepstate sample sunspots.pt --num-sequences 3 --length 40 --out s.csv\n"
                              "          deepstate sample jsb.pt --num-sequences 4 --length 64 --midi chorales/ "
                              "--prefix jsb_chorales --prefix-steps 16",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    g.add_argument("model_path")
    g.add_argument("--num-sequences", type=int, default=1)
    g.add_argument("--length", type=int, default=50)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", default=None, help="CSV file (default: stdout, unless --midi is given)")
    g.add_argument("--midi", default=None, metavar="DIR",
                   help="piano-roll models: write sample_<i>.mid per sequence and piano_roll.png into DIR")
    g.add_argument("--prefix", default=None, metavar="DATA",
                   help="continue the first test sequence of DATA (dataset name or CSV) instead of sampling afresh")
    g.add_argument("--prefix-steps", type=int, default=16, help="steps of the prefix to continue (default 16)")
    g.add_argument("--frame-seconds", type=float, default=0.5, help="MIDI seconds per frame (default 0.5)")
    g.set_defaults(func=_cmd_sample)

    ck = sub.add_parser("check", help="posterior predictive check of a saved model on DATA's test split",
                        description="Replicate DATA's test split from the model (one-step-ahead, reconstruction or "
                                    "free-running), compare test statistics with Bayesian p-values, and write "
                                    "DIR/ppc.nc (ArviZ InferenceData), DIR/ppc_panels.png and, for piano rolls, "
                                    "DIR/piano_roll.png.",
                        epilog="example: deepstate check jsb.pt jsb_chorales --out ppc/ --kind free --num-samples 50",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ck.add_argument("model_path")
    ck.add_argument("data", help="dataset name or CSV file (its test split is checked)")
    ck.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    ck.add_argument("--kind", default="one-step", choices=["one-step", "reconstruction", "free"],
                    help="replicate kind (default one-step)")
    ck.add_argument("--num-samples", type=int, default=100, help="replicates S (default 100)")
    ck.add_argument("--max-sequences", type=int, default=None,
                    help="check only the first N test sequences (memory: S x N x T x D values)")
    ck.add_argument("--seed", type=int, default=0)
    ck.set_defaults(func=_cmd_check)

    fc = sub.add_parser("forecast", help="forecast beyond the end of a series with intervals",
                        description="Forecast H steps beyond the end of DATA (a dataset name or a CSV with a time "
                                    "column and one column per series dimension).",
                        epilog="example: deepstate forecast sunspots.pt sunspots --horizon 10 --out fc.csv --plot fan.png")
    fc.add_argument("model_path")
    fc.add_argument("data")
    fc.add_argument("--horizon", type=int, required=True)
    fc.add_argument("--levels", default="0.5,0.8,0.95", help="central interval levels (default 0.5,0.8,0.95)")
    fc.add_argument("--num-samples", type=int, default=1000)
    fc.add_argument("--out", required=True, help="CSV: mean and quantile columns (q0.1 = 10%% quantile)")
    fc.add_argument("--plot", default=None, help="PNG fan chart")
    fc.add_argument("--plot-history", type=int, default=100, help="history steps shown in the fan chart")
    fc.add_argument("--seed", type=int, default=0)
    fc.set_defaults(func=_cmd_forecast)

    bt = sub.add_parser("backtest", help="rolling-origin backtest against statsmodels and naive baselines",
                        description="Score forecasts from the last K origins of DATA (each forecasting H steps) "
                                    "against persistence, seasonal naive and statsmodels baselines.",
                        epilog="example: deepstate backtest sunspots.pt sunspots --horizon 10 --origins 51 "
                               "--season 11 --out scores.csv --plot scores.png")
    bt.add_argument("model_path")
    bt.add_argument("data")
    bt.add_argument("--horizon", type=int, required=True)
    bt.add_argument("--origins", type=int, default=30)
    bt.add_argument("--season", type=int, default=None, help="season length (seasonal naive baseline and MASE)")
    bt.add_argument("--levels", default="0.5,0.8,0.95")
    bt.add_argument("--sarimax-order", default="2,0,0", help="p,d,q of the SARIMAX baseline")
    bt.add_argument("--num-samples", type=int, default=500)
    bt.add_argument("--out", required=True, help="CSV of per-origin scores")
    bt.add_argument("--plot", default=None, help="PNG of the summary scores")
    bt.add_argument("--seed", type=int, default=0)
    bt.add_argument("--quiet", action="store_true")
    bt.set_defaults(func=_cmd_backtest)
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
