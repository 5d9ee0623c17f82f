"""The ``deepstate`` command line.

    deepstate demo                       the main job: fit, backtest, forecast and check models on sunspots; writes a report
    deepstate datasets                   list the built-in datasets and where each is found
    deepstate fit DATA --out MODEL.pt    train an Estimator on a dataset name, a CSV, .npy or .npz file; writes
                                         MODEL.config.json and MODEL.metrics.jsonl; --checkpoint-dir resumes
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
            import warnings

            with warnings.catch_warnings():  # pandas 3 announces a change of infer_freq's return type
                warnings.simplefilter("ignore")
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


_ARRAY_SUFFIXES = (".npy", ".npz")
_SPLIT_NAMES = ("train", "valid", "test")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _check_file(spec: str) -> None:
    """A readable regular file, or a one-line :class:`CLIError` naming what is wrong with ``spec``."""
    if os.path.isdir(spec):
        raise CLIError(f"data: {spec!r} is a directory, not a data file")
    if not os.path.isfile(spec):
        raise CLIError(f"data: no file {spec!r}")
    if not os.access(spec, os.R_OK):
        raise CLIError(f"data: {spec!r} is not readable (permission denied)")


def _check_array(arr, where: str):
    """A numeric ``[T]``, ``[T, D]`` or ``[B, T, D]`` array as float64, or a one-line :class:`CLIError`."""
    import numpy as np

    if arr.dtype == object:
        raise CLIError(f"data: {where} is an object array; save a numeric array (e.g. np.save(path, x.astype(float)))")
    if arr.dtype.kind not in "biuf":
        raise CLIError(f"data: {where} has dtype {arr.dtype}; expected numbers")
    if arr.ndim not in (1, 2, 3):
        raise CLIError(f"data: {where} has shape {arr.shape}; expected [T] or [T, D] (one series) or [B, T, D] "
                       f"(B sequences)")
    if arr.size == 0:
        raise CLIError(f"data: {where} is empty (shape {arr.shape})")
    out = arr.astype(np.float64)
    if np.isinf(out).any():
        raise CLIError(f"data: {where} has infinite values (use NaN for missing values)")
    if np.isnan(out).all():
        raise CLIError(f"data: {where} has no observed value (all NaN)")
    return out


def _read_arrays(path: str) -> dict:
    """``{"data": array}`` for a ``.npy`` (or a ``.npz`` of one array), or ``{"train", "test"[, "valid"]}``
    for a ``.npz`` with those names; arrays are float64 (booleans become 0/1, see :func:`_array_likelihood`)."""
    import zipfile

    import numpy as np

    _check_file(path)
    try:
        loaded = np.load(path, allow_pickle=False)
    except ValueError as err:
        if "Object arrays" in str(err):
            raise CLIError(f"data: {path!r} holds an object array; save a numeric array "
                           f"(e.g. np.save(path, x.astype(float)))") from None
        raise CLIError(f"data: cannot read {path!r} as a .npy/.npz file (not a numpy file)") from None
    except (OSError, EOFError, zipfile.BadZipFile) as err:
        raise CLIError(f"data: cannot read {path!r} as a .npy/.npz file: {_first_line(err)}") from None
    if isinstance(loaded, np.ndarray):
        return {"data": (_check_array(loaded, repr(path)), loaded.dtype.kind == "b")}
    with loaded:
        names = list(loaded.files)
        if not names:
            raise CLIError(f"data: {path!r} holds no arrays")
        if len(names) == 1:
            keys = {"data": names[0]}
        elif {"train", "test"} <= set(names) and set(names) <= set(_SPLIT_NAMES):
            keys = {k: k for k in _SPLIT_NAMES if k in names}
        else:
            raise CLIError(f"data: {path!r} holds arrays {names}; expected one array, or arrays named train and test "
                           f"(and optionally valid)")
        out = {}
        for key, name in keys.items():
            where = f"array {name!r} of {path!r}"
            try:
                arr = loaded[name]
            except ValueError as err:
                if "Object arrays" in str(err):
                    raise CLIError(f"data: {where} is an object array; save numeric arrays") from None
                raise CLIError(f"data: cannot read {where}: {_first_line(err)}") from None
            except (OSError, EOFError, zipfile.BadZipFile) as err:
                raise CLIError(f"data: cannot read {where}: {_first_line(err)}") from None
            out[key] = (_check_array(arr, where), arr.dtype.kind == "b")
    dims = {k: (a.shape[-1] if a.ndim > 1 else 1) for k, (a, _) in out.items()}
    if len(set(dims.values())) > 1:
        raise CLIError(f"data: the arrays of {path!r} differ in the last (dimension) axis: {dims}")
    return out


def _array_sequences(arr, where: str) -> list:
    """``[T]`` / ``[T, D]`` -> one ``[T, D]`` sequence; ``[B, T, D]`` -> ``B`` sequences, trailing all-NaN steps
    dropped as padding (NaN elsewhere = missing)."""
    import numpy as np

    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim == 2:
        arr = arr[None]
    seqs = []
    for b, x in enumerate(arr):
        seen = np.flatnonzero(~np.isnan(x).all(axis=1))
        if seen.size == 0:
            raise CLIError(f"data: sequence {b} of {where} has no observed value (all NaN)")
        seqs.append(x[: seen[-1] + 1])
    return seqs


def _frame(seq, index_name: str = "t"):
    import pandas as pd

    cols = ["y"] if seq.shape[1] == 1 else [f"x{d}" for d in range(seq.shape[1])]
    return pd.DataFrame(seq, columns=cols, index=pd.RangeIndex(len(seq), name=index_name))


def _load_model(path: str):
    """``Estimator.load`` with one-line errors naming the model file."""
    if os.path.isdir(path):
        raise CLIError(f"model: {path!r} is a directory, not a saved model (.pt)")
    if not os.path.isfile(path):
        raise CLIError(f"model: no file {path!r}")
    from deepstate.estimator import Estimator

    try:
        return Estimator.load(path)
    except ValueError as err:
        if "not a readable" in str(err):
            raise CLIError(f"model: {path!r} is not a readable deepstate model (corrupted, truncated or another "
                           f"kind of file)") from None
        raise CLIError(f"model: {_first_line(err)}") from None


def _download_failed(name: str, err: BaseException, data_dir) -> CLIError:
    from deepstate.data.datasets import dataset_location

    reason = getattr(err, "reason", None) or _first_line(err)
    return CLIError(f"data: {name} is not available locally ({dataset_location(name, data_dir)}) and the download "
                    f"failed ({reason}); put the file in --data-dir or $DEEPSTATE_DATA")


def _is_array_file(spec: str) -> bool:
    return spec.lower().endswith(_ARRAY_SUFFIXES)


def _looks_like_file(spec: str) -> bool:
    """An existing path with a folder or a suffix in it: read as a file without looking at dataset names first
    (a bare existing name such as ``sunspots`` still means the dataset)."""
    return os.path.isdir(spec) or (os.path.exists(spec) and (os.sep in spec or "." in os.path.basename(spec)))


def _read_series_all(spec: str, data_dir=None):
    """``([frame, ...], likelihood)``: the series of a dataset name, a CSV, or a ``.npy``/``.npz`` file.

    A ``[T]`` / ``[T, D]`` array is one series; a ``[B, T, D]`` array is ``B`` series; a ``.npz`` with
    train/test arrays gives the ``test`` sequences.
    """
    if _is_array_file(spec):
        arrays = _read_arrays(spec)
        key = "data" if "data" in arrays else "test"
        arr, binary = arrays[key]
        return [_frame(s) for s in _array_sequences(arr, repr(spec))], "bernoulli" if binary else "gaussian"
    if _looks_like_file(spec):  # before importing torch: a bad file fails fast
        _check_file(spec)
        return [read_series_csv(spec)], "gaussian"

    import pandas as pd

    from deepstate.data import list_datasets, load_dataset

    if spec in list_datasets():
        try:
            data = load_dataset(spec, data_dir=data_dir).data
        except OSError as err:
            if isinstance(err, FileNotFoundError):
                raise
            raise _download_failed(spec, err, data_dir) from None
        return [data.to_frame() if isinstance(data, pd.Series) else data], "gaussian"
    if spec == "jsb_chorales":
        raise CLIError("data: jsb_chorales is a set of piano rolls, not one series to forecast or backtest")
    if os.path.exists(spec):
        _check_file(spec)
        return [read_series_csv(spec)], "gaussian"
    raise CLIError(f"data: expected a dataset name ({', '.join(list_datasets() + ['jsb_chorales'])}) or a CSV, .npy "
                   f"or .npz file, got {spec!r}")


def _read_series(spec: str, data_dir=None):
    """``(frame, likelihood)``: a dataset name, a CSV path or a one-series ``.npy``/``.npz`` as one ``DataFrame``."""
    frames, likelihood = _read_series_all(spec, data_dir)
    if len(frames) != 1:
        raise CLIError(f"data: {spec!r} holds {len(frames)} sequences; this command needs one series "
                       f"(a [T] or [T, D] array)")
    return frames[0], likelihood


def _load_splits(spec: str, data_dir=None) -> dict:
    """``{"train", "test", "valid" (or None), "likelihood", "source", "split", "time_split"}`` for a data spec
    (``time_split``: the test split is the end of the one training series, which it continues).

    A dataset name (``sunspots``, ``co2``, ``lynx_hare``, ``jsb_chorales``), a CSV (one multivariate
    series, see :func:`read_series_csv`), a ``.npy``/``.npz`` array (``[T]`` / ``[T, D]``: one series;
    ``[B, T, D]``: ``B`` sequences) or a ``.npz`` with ``train`` / ``test`` (and optional ``valid``)
    arrays used as the splits. One series: the last 20% of steps are held out; several sequences:
    the last 20% of sequences (at least one). JSB uses its own splits.
    """
    if spec == "jsb_chorales":
        from deepstate.data import load_polyphonic

        try:
            d = load_polyphonic("jsb_chorales", data_dir=data_dir)
        except OSError as err:
            if isinstance(err, FileNotFoundError):
                raise
            raise _download_failed("jsb_chorales", err, data_dir) from None
        return dict(train=d["train"], test=d["test"], valid=d["valid"], likelihood="bernoulli", source="dataset",
                    split="the dataset's own train/valid/test split")
    if _is_array_file(spec):
        arrays = _read_arrays(spec)
        from deepstate.data import SequenceBatch, split_series

        likelihood = "bernoulli" if all(b for _, b in arrays.values()) else "gaussian"
        if "data" not in arrays:
            batches = {k: SequenceBatch.from_sequences(_array_sequences(a, f"array {k!r} of {spec!r}"))
                       for k, (a, _) in arrays.items()}
            return dict(train=batches["train"], test=batches["test"], valid=batches.get("valid"),
                        likelihood=likelihood, source="npz", split="the file's train/test arrays")
        seqs = _array_sequences(arrays["data"][0], repr(spec))
        source = "npy" if spec.lower().endswith(".npy") else "npz"
        if len(seqs) == 1:
            parts = split_series(SequenceBatch.from_sequences(seqs), valid_fraction=0.0, test_fraction=0.2)
            return dict(train=parts["train"], test=parts["test"], valid=None, likelihood=likelihood, source=source,
                        split="last 20% of steps held out", time_split=True)
        n_test = max(1, round(0.2 * len(seqs)))
        return dict(train=SequenceBatch.from_sequences(seqs[:-n_test]),
                    test=SequenceBatch.from_sequences(seqs[-n_test:]), valid=None, likelihood=likelihood,
                    source=source, split=f"last {n_test} of {len(seqs)} sequences held out")
    frame, likelihood = _read_series(spec, data_dir)
    from deepstate.data import from_pandas, list_datasets, split_series

    parts = split_series(from_pandas(frame, as_multivariate=True), valid_fraction=0.0, test_fraction=0.2)

    return dict(train=parts["train"], test=parts["test"], valid=None, likelihood=likelihood,
                source="dataset" if spec in list_datasets() else "csv", split="last 20% of steps held out",
                time_split=True)


#: particles of the held-out score ``fit`` prints (``evaluate``'s default too)
SCORE_PARTICLES = 128


def _held_out_score(est, parts: dict, objective=None, num_particles=None) -> tuple:
    """``(nats per frame, objective, how)`` for the test split of ``parts``. The end of one series is scored
    given the series before it (``Estimator.log_likelihood(history=...)``, the honest score of a forecaster);
    separate test sequences each from the model's initial state. ``objective`` defaults to ``"exact"`` for a
    model fitted by exact maximum likelihood, else ``"fivo"``."""
    objective = objective or ("exact" if est.objective == "exact" else "fivo")
    test = parts["test"]
    if parts.get("time_split"):
        history = parts["train"]
        value = est.log_likelihood(test, objective=objective, num_particles=num_particles, history=history)
        how = f"given the {int(history.lengths[0])} steps before them"
        if objective != "exact":  # conditional on a history every particle objective is the same estimate
            objective = "particle filter"
    else:
        value = est.log_likelihood(test, objective=objective, num_particles=num_particles)
        how = "each sequence from the model's initial state"
    return value, objective, how


def _score_label(objective: str, num_particles: int) -> str:
    if objective == "exact":
        return "exact log-likelihood"
    if objective == "particle filter":
        return f"particle-filter estimate (N = {num_particles}) of the log-likelihood"
    return f"{objective}({num_particles}) bound"


def _load_data(spec: str, data_dir=None):
    """``(train, test, likelihood)`` of :func:`_load_splits`."""
    parts = _load_splits(spec, data_dir)
    return parts["train"], parts["test"], parts["likelihood"]


def _levels(text: str):
    from deepstate.forecasting import check_levels

    try:
        return check_levels(tuple(float(v) for v in text.split(",")), "--levels")
    except ValueError:
        raise CLIError(f"--levels: expected comma-separated numbers strictly between 0 and 1, got {text!r}") from None


def _cmd_forecast(args):
    import pandas as pd

    est = _load_model(args.model_path)
    frames, _ = _read_series_all(args.data, args.data_dir)
    levels = _levels(args.levels)
    quantile_levels = sorted({q for lv in levels for q in ((1 - lv) / 2, (1 + lv) / 2)} | {0.5})
    tables, fcs = [], []
    for frame in frames:
        fc = est.forecast(frame, args.horizon, num_samples=args.num_samples, levels=quantile_levels, seed=args.seed)
        fcs.append(fc)
        tables.append(fc.to_frame())
    if len(tables) == 1:
        table = tables[0]
    else:  # several sequences: one block of rows per sequence
        table = pd.concat([t.assign(sequence=i).set_index("sequence", append=True).swaplevel()
                           for i, t in enumerate(tables)])
    _write_atomic(args.out, table.to_csv(float_format="%.6g"))
    what = f"{len(frames)} sequences" if len(frames) > 1 else "the series"
    print(f"wrote a {args.horizon}-step forecast of {what} ({fcs[0].method}, quantiles "
          f"{', '.join(f'{q:g}' for q in quantile_levels)}) to {args.out}")
    if args.plot:
        root, ext = os.path.splitext(args.plot)
        for i, fc in enumerate(fcs):
            path = args.plot if len(fcs) == 1 else f"{root}_{i}{ext or '.png'}"
            name = args.data if len(fcs) == 1 else f"{args.data} (sequence {i})"
            fc.plot(levels=levels, title=f"{name}: {args.horizon}-step forecast ({est.model})", path=path,
                    max_history=args.plot_history)
            print(f"wrote the fan chart to {path}")
    return 0


def _cmd_backtest(args):
    import pandas as pd

    try:
        order = tuple(int(v) for v in args.sarimax_order.split(","))
    except ValueError:
        order = ()
    if len(order) != 3 or min(order) < 0:
        raise CLIError(f"--sarimax-order: expected three non-negative ints p,d,q, got {args.sarimax_order!r}")
    frame, _ = _read_series(args.data, args.data_dir)
    est = _load_model(args.model_path)
    from deepstate.forecasting.backtest import backtest

    if args.origins < 1:
        raise CLIError(f"--origins: expected a positive int, got {args.origins}")
    if args.horizon < 1:
        raise CLIError(f"--horizon: expected a positive int, got {args.horizon}")
    test_size = args.origins + args.horizon - 1
    if test_size >= len(frame):
        raise CLIError(f"--origins: {args.origins} origins at horizon {args.horizon} need more than {test_size} steps; "
                       f"the series has {len(frame)}")
    in_sample = _in_sample_origins(args.model_path, args.data, len(frame) - test_size, args.origins)
    if in_sample:
        print(f"note: the first {in_sample} of the {args.origins} origins lie in the part of {args.data} the model "
              f"was fitted on: their scores are in-sample (fewer --origins keep to the held-out part)")
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


def _in_sample_origins(model_path: str, data: str, first_origin: int, origins: int) -> int:
    """How many backtest origins (from step ``first_origin`` on) precede the test part the model was held
    out from, as its ``MODEL.config.json`` records for the same DATA (0 when unknown)."""
    import json

    config_path, _ = _sidecar_paths(model_path)
    try:
        with open(config_path, encoding="utf-8") as f:
            recorded = json.load(f).get("data", {})
    except (OSError, ValueError, AttributeError):
        return 0
    start = recorded.get("test_starts_at")
    same = recorded.get("path") == os.path.abspath(data) if os.path.isfile(data) else recorded.get("spec") == data
    if not same or not isinstance(start, int):
        return 0
    return max(0, min(origins, start - first_origin))


def _cmd_datasets(args):
    from deepstate.data import list_datasets, load_dataset
    from deepstate.data.datasets import dataset_location

    for name in list_datasets():
        where = dataset_location(name, data_dir=args.data_dir)
        try:
            ds = load_dataset(name, data_dir=args.data_dir, download=False)
            b = ds.batch
            print(f"{name:12s} {ds.frequency:8s} T={b.max_length:5d} D={b.dim} missing={int((~b.observed & b.valid[..., None]).sum())}  {ds.description}")
        except (FileNotFoundError, ValueError):
            print(f"{name:12s} (not available)")
        print(f"{'':12s} where: {where}")
    print("jsb_chorales polyphonic music (piano rolls), 229/76/77 train/valid/test sequences, D=88")
    print(f"{'':12s} where: {dataset_location('jsb_chorales', data_dir=args.data_dir)}")
    print("(files are looked up in --data-dir, then $DEEPSTATE_DATA, then the user cache; data may also be a path: "
          "CSV, .npy or .npz)")
    return 0


def _cmd_demo(args):
    """The main job (:func:`deepstate.report.run_demo`): fit, backtest, forecast, check; write a report."""
    from deepstate.report import run_demo

    if args.epochs < 1:
        raise CLIError(f"--epochs: expected a positive int, got {args.epochs}")
    report = run_demo(out=args.out, epochs=args.epochs, seed=args.seed, quiet=args.quiet)
    print(f"report: {os.path.abspath(report)}")
    return 0


def _checkpoint_position(checkpoint_dir):
    """``(path, epoch, step_in_epoch)`` of the Trainer checkpoint in ``checkpoint_dir``, or ``None``."""
    if checkpoint_dir is None:
        return None
    from deepstate.inference.checkpoint import CHECKPOINT_NAME, load_checkpoint
    from deepstate.inference.trainer import CHECKPOINT_FORMAT

    if os.path.exists(checkpoint_dir) and not os.path.isdir(checkpoint_dir):
        raise CLIError(f"--checkpoint-dir: {checkpoint_dir!r} exists and is not a folder")
    path = os.path.join(checkpoint_dir, CHECKPOINT_NAME)
    if not os.path.isfile(path):
        return None
    try:
        state = load_checkpoint(path, map_location="cpu", kind=CHECKPOINT_FORMAT)
    except ValueError as err:
        raise CLIError(f"--checkpoint-dir: {path!r} is not a usable checkpoint ({_first_line(err)}); "
                       f"remove it or use another folder") from None
    return path, int(state.get("epoch", 0)), int(state.get("step_in_epoch", 0))


def _resolved_hyper(est) -> dict:
    """Every hyperparameter the fitted model uses: the given ones over the model and guide classes' defaults."""
    import inspect

    from deepstate.models import _accepted

    accepted = _accepted(est.model)
    out = {}
    for module in (est.model_.ssm, est.model_.guide_steps):
        for name, par in inspect.signature(type(module).__init__).parameters.items():
            if name in accepted and name not in out and par.default is not inspect.Parameter.empty:
                out[name] = par.default
    if "guide_rnn_dim" in accepted and "guide_rnn_dim" not in out:
        par = inspect.signature(type(est.model_.guide_steps).__init__).parameters.get("rnn_dim")
        if par is not None:
            out["guide_rnn_dim"] = par.default
    out.update(est.hyper)
    return {k: out[k] for k in sorted(out)}


def _batch_summary(batch) -> dict:
    if batch is None:
        return None
    return {"sequences": int(batch.batch_size), "frames": int(batch.num_frames), "dim": int(batch.dim),
            "max_length": int(batch.max_length)}


def _sidecar_paths(out: str):
    """``m.pt`` -> ``(m.config.json, m.metrics.jsonl)`` next to the model."""
    base = out[:-3] if out.endswith(".pt") else out
    return base + ".config.json", base + ".metrics.jsonl"


def _cmd_fit(args):
    import datetime
    import json
    import platform

    if os.path.isdir(args.out):
        raise CLIError(f"--out: {args.out!r} is a directory; expected a file such as model.pt")
    folder = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(folder):
        raise CLIError(f"--out: the folder {folder!r} does not exist")
    config_path, metrics_path = _sidecar_paths(args.out)
    hyper = _hyper(args.set)
    parts = _load_splits(args.data, args.data_dir)  # bad data fails here, before torch is imported for a file

    import numpy as np
    import torch

    from deepstate import __version__
    from deepstate.estimator import Estimator
    from deepstate.inference.distributed import is_main_process, wait_for_all_ranks

    train, test = parts["train"], parts["test"]
    valid, holdout, validation = parts["valid"], 0, None
    likelihood = args.likelihood or parts["likelihood"]
    est = Estimator(args.model, likelihood=likelihood, objective=args.objective, num_particles=args.num_particles,
                    seed=args.seed, **hyper)
    exact = est.objective == "exact"
    if exact and args.checkpoint_dir is not None:
        raise CLIError("--checkpoint-dir: the exact objective (L-BFGS maximum likelihood) does not checkpoint")
    if args.validate:
        train, valid, holdout, validation = _validation_split(train, valid, args.window, exact)
        if is_main_process():
            print(f"validation: {validation}")
    position = _checkpoint_position(args.checkpoint_dir)
    if position is not None:
        path, epoch, step = position
        at = f"epoch {epoch}" + (f", step {step} of epoch {epoch + 1}" if step else "")
        if epoch >= args.epochs:
            print(f"resumed from {path} at {at}: {epoch} of --epochs {args.epochs} already done, nothing to train")
        else:
            print(f"resumed from {path} at {at}; training to epoch {args.epochs}")
    elif os.path.exists(metrics_path) and is_main_process():
        os.unlink(metrics_path)  # a fresh run starts a fresh log (a resumed one appends)
    # one long series is cut into windows for the deep models (else one optimiser step per epoch); the exact
    # Kalman likelihood takes the whole series
    window = args.window if parts["train"].batch_size == 1 and not exact else None
    if window is not None and args.stride > window:
        raise CLIError(f"--stride: expected at most --window ({window}) so that the windows cover the series, "
                       f"got {args.stride}")
    stride = args.stride if window is not None else None
    trainer_kwargs = {} if exact else {"metrics_path": metrics_path}
    if holdout:
        trainer_kwargs["holdout"] = holdout
    t0 = time.perf_counter()
    est.fit(train, valid_data=valid if args.validate else None, epochs=args.epochs, lr=args.lr,
            batch_size=args.batch_size, progress=not args.quiet, window=window, stride=stride,
            checkpoint_dir=args.checkpoint_dir, **trainer_kwargs)
    seconds = time.perf_counter() - t0
    if not is_main_process():  # under torchrun, rank 0 alone saves the model and reports
        # and the others wait for it: a rank that exits (tearing down its process group) while its peer still
        # works can abort in gloo's teardown
        wait_for_all_ranks()
        return 0
    if exact:  # L-BFGS has no Trainer: log its iterations in the same JSON-lines form
        _write_atomic(metrics_path, "".join(json.dumps({"kind": "epoch", **rec}) + "\n" for rec in est.history_))
    est.save(args.out)
    bound, score_objective, score_how = _held_out_score(est, parts, num_particles=SCORE_PARTICLES)
    params = est.get_params()
    params["dtype"] = str(est.dtype).replace("torch.", "")
    config = {
        "deepstate_version": __version__,
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "estimator": params,
        "hyperparameters": _resolved_hyper(est),
        "guide": type(est.model_.guide_steps).__name__,
        "data": {"spec": args.data, "source": parts["source"],
                 "path": os.path.abspath(args.data) if os.path.isfile(args.data) else None,
                 "data_dir": args.data_dir, "likelihood": est.likelihood, "split": parts["split"],
                 "test_starts_at": int(parts["train"].lengths[0]) if parts.get("time_split") else None,
                 "train": _batch_summary(train), "valid": _batch_summary(valid if args.validate else parts["valid"]),
                 "test": _batch_summary(test),
                 "input_dim": est.input_dim_},
        "training": {"epochs": args.epochs, "epochs_done": len(est.history_), "lr": args.lr,
                     "batch_size": args.batch_size, "window": window, "window_option": args.window,
                     "stride": stride, "validate": bool(args.validate), "validation": validation, "seed": args.seed,
                     "checkpoint_dir": None if args.checkpoint_dir is None else os.path.abspath(args.checkpoint_dir),
                     "resumed_from_epoch": None if position is None else position[1], "seconds": round(seconds, 3)},
        "result": {"held_out_bound": bound, "unit": "nats/frame", "objective": score_objective,
                   "num_particles": None if score_objective == "exact" else SCORE_PARTICLES,
                   "scored": score_how, "training_objective": est.objective},
        "files": {"model": os.path.abspath(args.out), "metrics": os.path.abspath(metrics_path)},
    }
    _write_atomic(config_path, json.dumps(config, indent=2, default=str) + "\n")
    print(f"saved {args.out}; held-out {_score_label(score_objective, SCORE_PARTICLES)} {bound:.4f} nats/frame "
          f"over {test.num_frames} test frames, {score_how}")
    print(f"wrote {config_path} (resolved configuration) and {metrics_path} (metrics log)")
    wait_for_all_ranks()
    return 0


def _validation_split(train, valid, window: int, exact: bool):
    """``(train, valid, holdout, description)`` for ``fit --validate``. The data's own validation split
    when it has one; otherwise a part of the training data, never the test split (which would then
    choose the epoch it is scored on): for several sequences the last tenth of them (at least one);
    for one series its last ``window`` steps -- for the exact models scored given the rest (L-BFGS
    early stopping on the conditional likelihood, ``Estimator.fit(holdout=...)``), for the deep
    models cut off as a fresh sequence like the training windows."""
    if valid is not None:
        return train, valid, 0, "the data's own validation split"
    if train.batch_size > 1:
        n = max(1, round(0.1 * train.batch_size))
        keep = list(range(train.batch_size - n))
        return train[keep], train[list(range(train.batch_size - n, train.batch_size))], 0, \
            f"the last {n} of the {train.batch_size} training sequences (not trained on)"
    T = int(train.lengths[0])
    if exact:
        if T < 2 * window:
            raise CLIError(f"--validate: the training series has {T} steps, too short to hold out --window {window} "
                           f"steps for validation (needs at least {2 * window}); pass a smaller --window")
        return train, None, window, f"the last {window} training steps, scored given the earlier ones"
    if T < 3 * window:
        raise CLIError(f"--validate: the training series has {T} steps, too short to hold out --window {window} "
                       f"steps for validation and still cut training windows (needs at least {3 * window}); "
                       f"pass a smaller --window")
    from deepstate.data import split_series

    parts = split_series(train, valid_fraction=window / T, test_fraction=0.0)
    return parts["train"], parts["valid"], 0, f"the last {window} training steps (not trained on)"


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
    est = _load_model(args.model_path)
    parts = _load_splits(args.data, args.data_dir)
    value, objective, how = _held_out_score(est, parts, args.objective, args.num_particles)
    print(f"{_score_label(objective, args.num_particles)}: {value:.4f} nats/frame over {parts['test'].num_frames} "
          f"frames, {how}")
    return 0


def _write_atomic(path: str, text: str) -> None:
    """Write via a temporary file in the same folder and rename: never a half-written file."""
    from deepstate.atomic import write_text_atomic

    write_text_atomic(path, text)


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
    est = _load_model(args.model_path)
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
    from deepstate.atomic import atomic_path

    with atomic_path(path) as tmp:
        idata.to_netcdf(str(tmp))


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

    from deepstate.plots import piano_roll, ppc_panels

    est = _load_model(args.model_path)
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


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors: ``deepstate: <message>`` on stderr, exit status 2."""

    def error(self, message):
        sub = self.prog[len("deepstate"):].strip() if self.prog.startswith("deepstate") else self.prog
        text = " ".join(str(message).split()) or "bad arguments"
        where = f"{sub}: " if sub else ""
        self.exit(2, f"deepstate: {where}{text} (see deepstate {sub + ' ' if sub else ''}--help)\n")


def _int_type(minimum: int, what: str):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.__name__ = what
    return parse


def _pos_float(text):
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


_pos_int = _int_type(1, "a positive int")
_seed = _int_type(0, "a non-negative int")

_RAW = argparse.RawDescriptionHelpFormatter

_MAIN_EPILOG = """\
example workflow:
  deepstate datasets                                    # what is built in, and where files are found
  deepstate fit sunspots --out m.pt --epochs 50         # also writes m.config.json, m.metrics.jsonl
  deepstate evaluate m.pt sunspots                      # held-out bound in nats per frame (per year here)
  deepstate forecast m.pt sunspots --horizon 10 --out fc.csv --plot fan.png
  deepstate backtest m.pt sunspots --horizon 10 --origins 30 --season 11 --out scores.csv
  deepstate check m.pt sunspots --out ppc/              # posterior predictive check

DATA is a dataset name (see `deepstate datasets`), a CSV file (a time column and one column per
series dimension), or a .npy/.npz array: [T] or [T, D] is one series, [B, T, D] is B sequences,
and a .npz with arrays named train and test (optionally valid) gives the splits.
Errors print one line "deepstate: ..." to stderr and exit non-zero.
Run `deepstate COMMAND --help` for a command's options and examples."""


def _parser():
    p = _Parser(prog="deepstate",
                description="Deep state-space models for time series: fit, evaluate, forecast with intervals,\n"
                            "backtest against baselines, check, sample.",
                epilog=_MAIN_EPILOG, formatter_class=_RAW)
    p.add_argument("--data-dir", default=None, help="folder with data files (default: $DEEPSTATE_DATA, then the cache)")
    sub = p.add_subparsers(dest="command", required=True, title="commands", metavar="COMMAND")

    d = sub.add_parser("demo", help="the main job: fit, backtest, forecast and check models on yearly sunspots",
                       description="Fit the exact LGSSM and a deep Markov model to yearly sunspot numbers, backtest "
                                   "them against statsmodels baselines, forecast with intervals, run predictive "
                                   "checks, and write figures and a plain-words report into --out.",
                       epilog="example: deepstate demo --out deepstate-report")
    d.add_argument("--out", default="deepstate-report", help="output folder (default: deepstate-report)")
    d.add_argument("--epochs", type=int, default=150,
                   help="at most this many deep-model epochs (early stopping; default 150)")
    d.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.set_defaults(func=_cmd_demo)

    s = sub.add_parser("datasets", help="list the built-in datasets and where each is found",
                       description="List the built-in datasets (length, dimension, missing values) and where each "
                                   "is found: built in (statsmodels), the resolved file path, or the folders "
                                   "searched (--data-dir, $DEEPSTATE_DATA, the user cache). Nothing is downloaded.",
                       epilog="examples:\n  deepstate datasets\n"
                              "  deepstate --data-dir ~/data datasets     # look in ~/data first",
                       formatter_class=_RAW)
    s.set_defaults(func=_cmd_datasets)

    f = sub.add_parser("fit", help="train a model; also writes its config and metrics log",
                       description="Train a model on DATA's training split and save it to --out (MODEL.pt). Next to "
                                   "it, MODEL.config.json records the resolved configuration (every estimator "
                                   "argument and hyperparameter, the data, epochs, lr, window, seed, versions) and "
                                   "MODEL.metrics.jsonl the per-step and per-epoch metrics (JSON lines). With "
                                   "--checkpoint-dir, rerunning the same command continues an unfinished run (or "
                                   "a shorter one: --epochs is the total).",
                       epilog="examples:\n"
                              "  deepstate fit sunspots --out m.pt --epochs 50 --set z_dim=4 --set rnn_dim=32\n"
                              "  deepstate fit series.csv --out m.pt --model vrnn --checkpoint-dir ckpt/  "
                              "# rerun to resume\n"
                              "  deepstate fit seqs.npz --out m.pt --validate       # .npz with train/test arrays\n"
                              "  deepstate fit sunspots --out lg.pt --model lgssm --objective exact --epochs 50 \\\n"
                              "      --set z_dim=3 --set dtype=float64 --validate   # early stopping on the training part's last 40 years",
                       formatter_class=_RAW)
    f.add_argument("data", help="dataset name, CSV, .npy or .npz file")
    f.add_argument("--out", required=True, help="where to save the fitted model (.pt)")
    f.add_argument("--model", default="dkf", help="dkf (default), vrnn, srnn, deepstate or lgssm")
    f.add_argument("--likelihood", default=None,
                   help="gaussian, studentt, bernoulli or poisson (default: bernoulli for piano rolls and boolean "
                        "arrays, else gaussian)")
    f.add_argument("--objective", default="fivo",
                   help="fivo (default), iwae or particle_elbo: particle bounds on deepstate's fast path; elbo or "
                        "meanfield_elbo: Pyro's Trace_ELBO / TraceMeanField_ELBO on the Pyro model and guide "
                        "(slower); exact: maximum likelihood by L-BFGS (lgssm, deepstate)")
    f.add_argument("--num-particles", type=_pos_int, default=4, help="particles of the training objective (default 4)")
    f.add_argument("--epochs", type=_pos_int, default=20, help="total epochs (counting resumed ones; default 20)")
    f.add_argument("--lr", type=_pos_float, default=1e-3, help="Adam learning rate (default 0.001)")
    f.add_argument("--batch-size", type=_pos_int, default=20, help="sequences (or windows) per minibatch (default 20)")
    f.add_argument("--window", type=_pos_int, default=40,
                   help="one long series is cut into windows of this many steps (default 40)")
    f.add_argument("--stride", type=_pos_int, default=4,
                   help="steps between the windows' starts (default 4: overlapping windows; --stride 40 with the "
                        "default window gives disjoint ones)")
    f.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="model hyperparameter, e.g. --set z_dim=8 --set rnn_dim=64 (repeatable)")
    f.add_argument("--validate", action="store_true",
                   help="track a validation bound and keep the best epoch: the data's validation split, else the "
                        "last tenth of the training sequences or, for one series, its last --window steps (never "
                        "the test split)")
    f.add_argument("--checkpoint-dir", default=None, metavar="DIR",
                   help="checkpoint every epoch into DIR; a rerun with the same DIR resumes")
    f.add_argument("--seed", type=_seed, default=0, help="random seed (default 0)")
    f.add_argument("--quiet", action="store_true", help="no progress bar")
    f.set_defaults(func=_cmd_fit)

    e = sub.add_parser("evaluate", help="held-out bound of a saved model on DATA's test split",
                       description="Estimate log p(test split of DATA) per frame: a particle bound, or the exact "
                                   "Kalman log-likelihood. The end of one series (a dataset name, a CSV, a one-series "
                                   ".npy) is scored given the steps before it, as a forecaster is; separate test "
                                   "sequences each from the model's initial state.",
                       epilog="example: deepstate evaluate m.pt sunspots --objective iwae --num-particles 256",
                       formatter_class=_RAW)
    e.add_argument("model_path", metavar="MODEL.pt", help="a model saved by `deepstate fit` (or Estimator.save)")
    e.add_argument("data", help="dataset name, CSV, .npy or .npz file (its test split is scored)")
    e.add_argument("--objective", default=None, choices=["fivo", "iwae", "elbo", "exact"],
                   help="the bound: fivo, iwae, elbo (the particle ELBO) or exact (lgssm, deepstate); default: "
                        "exact for a model fitted with --objective exact, else fivo. Given the steps before it (one "
                        "series), every particle objective is the same particle-filter estimate")
    e.add_argument("--num-particles", type=_pos_int, default=SCORE_PARTICLES, help="particles per sequence (default 128)")
    e.set_defaults(func=_cmd_evaluate)

    g = sub.add_parser("sample", help="generate sequences (CSV, or MIDI for piano rolls)",
                       epilog="examples: deepstate sample sunspots.pt --num-sequences 3 --length 40 --out s.csv\n"
                              "          deepstate sample jsb.pt --num-sequences 4 --length 64 --midi chorales/ "
                              "--prefix jsb_chorales --prefix-steps 16",
                       formatter_class=_RAW)
    g.add_argument("model_path", metavar="MODEL.pt", help="a model saved by `deepstate fit` (or Estimator.save)")
    g.add_argument("--num-sequences", type=_pos_int, default=1, help="sequences to generate (default 1)")
    g.add_argument("--length", type=_pos_int, default=50, help="steps per sequence (default 50)")
    g.add_argument("--seed", type=_seed, default=0, help="random seed (default 0)")
    g.add_argument("--out", default=None, help="CSV file (default: stdout, unless --midi is given)")
    g.add_argument("--midi", default=None, metavar="DIR",
                   help="piano-roll models: write sample_<i>.mid per sequence and piano_roll.png into DIR")
    g.add_argument("--prefix", default=None, metavar="DATA",
                   help="continue the first test sequence of DATA (dataset name or file) instead of sampling afresh")
    g.add_argument("--prefix-steps", type=_pos_int, default=16, help="steps of the prefix to continue (default 16)")
    g.add_argument("--frame-seconds", type=_pos_float, default=0.5, help="MIDI seconds per frame (default 0.5)")
    g.set_defaults(func=_cmd_sample)

    ck = sub.add_parser("check", help="posterior predictive check on DATA's test split",
                        description="Replicate DATA's test split from the model (one-step-ahead, reconstruction or "
                                    "free-running), compare test statistics with Bayesian p-values, and write "
                                    "DIR/ppc.nc (ArviZ InferenceData), DIR/ppc_panels.png and, for piano rolls, "
                                    "DIR/piano_roll.png.",
                        epilog="example: deepstate check jsb.pt jsb_chorales --out ppc/ --kind free --num-samples 50",
                        formatter_class=_RAW)
    ck.add_argument("model_path", metavar="MODEL.pt", help="a model saved by `deepstate fit` (or Estimator.save)")
    ck.add_argument("data", help="dataset name, CSV, .npy or .npz file (its test split is checked)")
    ck.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    ck.add_argument("--kind", default="one-step", choices=["one-step", "reconstruction", "free"],
                    help="replicate kind (default one-step)")
    ck.add_argument("--num-samples", type=_pos_int, default=100, help="replicates S (default 100)")
    ck.add_argument("--max-sequences", type=_pos_int, default=None,
                    help="check only the first N test sequences (memory: S x N x T x D values)")
    ck.add_argument("--seed", type=_seed, default=0, help="random seed (default 0)")
    ck.set_defaults(func=_cmd_check)

    fc = sub.add_parser("forecast", help="forecast beyond the end of a series with intervals",
                        description="Forecast H steps beyond the end of DATA: a dataset name, a CSV with a time "
                                    "column and one column per series dimension, or a .npy/.npz array ([T] or "
                                    "[T, D]: one series; [B, T, D]: each of the B sequences is forecast, rows "
                                    "keyed by a sequence column; a .npz with train/test arrays: the test ones).",
                        epilog="example: deepstate forecast sunspots.pt sunspots --horizon 10 --out fc.csv "
                               "--plot fan.png",
                        formatter_class=_RAW)
    fc.add_argument("model_path", metavar="MODEL.pt", help="a model saved by `deepstate fit` (or Estimator.save)")
    fc.add_argument("data", metavar="DATA", help="a dataset name (see `deepstate datasets`), a CSV, or a .npy/.npz array")
    fc.add_argument("--horizon", type=_pos_int, required=True, help="steps to forecast beyond the data")
    fc.add_argument("--levels", default="0.5,0.8,0.95", help="central interval levels (default 0.5,0.8,0.95)")
    fc.add_argument("--num-samples", type=_pos_int, default=1000, help="sample paths (default 1000)")
    fc.add_argument("--out", required=True, help="CSV: mean and quantile columns (q0.1 = 10%% quantile)")
    fc.add_argument("--plot", default=None, help="PNG fan chart (several sequences: PLOT_<i>.png)")
    fc.add_argument("--plot-history", type=_pos_int, default=100, help="history steps shown in the fan chart (default 100)")
    fc.add_argument("--seed", type=_seed, default=0, help="random seed (default 0)")
    fc.set_defaults(func=_cmd_forecast)

    bt = sub.add_parser("backtest", help="rolling-origin backtest against statsmodels baselines",
                        description="Score forecasts from the last K origins of DATA (one series; each origin "
                                    "forecasts H steps) against persistence, seasonal naive and statsmodels "
                                    "baselines.",
                        epilog="example: deepstate backtest sunspots.pt sunspots --horizon 10 --origins 51 "
                               "--season 11 --out scores.csv --plot scores.png",
                        formatter_class=_RAW)
    bt.add_argument("model_path", metavar="MODEL.pt", help="a model saved by `deepstate fit` (or Estimator.save)")
    bt.add_argument("data", metavar="DATA", help="a dataset name (see `deepstate datasets`), a CSV, or a .npy/.npz array")
    bt.add_argument("--horizon", type=_pos_int, required=True, help="steps forecast from each origin")
    bt.add_argument("--origins", type=_pos_int, default=30, help="number of forecast origins K, the last K possible (default 30)")
    bt.add_argument("--season", type=_pos_int, default=None, help="season length (seasonal naive baseline and MASE)")
    bt.add_argument("--levels", default="0.5,0.8,0.95", help="central interval levels scored (default 0.5,0.8,0.95)")
    bt.add_argument("--sarimax-order", default="2,0,0", help="p,d,q of the SARIMAX baseline (default 2,0,0)")
    bt.add_argument("--num-samples", type=_pos_int, default=500, help="sample paths per origin (default 500)")
    bt.add_argument("--out", required=True, help="CSV of per-origin scores")
    bt.add_argument("--plot", default=None, help="PNG of the summary scores")
    bt.add_argument("--seed", type=_seed, default=0, help="random seed (default 0)")
    bt.add_argument("--quiet", action="store_true", help="no progress bars")
    bt.set_defaults(func=_cmd_backtest)
    # --data-dir is accepted after the command too (`deepstate fit jsb_chorales --data-dir X`); SUPPRESS keeps a
    # value given before the command when it is not repeated after it
    for name, cmd in sub.choices.items():
        if name != "demo":
            cmd.add_argument("--data-dir", default=argparse.SUPPRESS, metavar="DIR",
                             help="folder with data files (default: $DEEPSTATE_DATA, then the user cache)")
    return p


def _error_line(err: BaseException) -> str:
    """One line for an exception's message: its first line, or (a heading ending in ':') all of it joined."""
    lines = [ln.strip(" -") for ln in str(err).strip().splitlines() if ln.strip()]
    if not lines:
        return type(err).__name__
    text = " ".join(lines) if lines[0].endswith(":") else lines[0]
    return text if len(text) <= 600 else text[:597] + "..."


def _stdout_closed() -> bool:
    """Whether stdout is a pipe whose reader has gone (POSIX: polling it reports an error); where that
    cannot be asked, assume so."""
    try:
        import select

        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))
    except (AttributeError, OSError, ValueError):
        return True


def main(argv=None) -> int:
    import warnings

    parser = _parser()
    args = parser.parse_args(argv)  # usage errors: one line and exit 2 (_Parser.error)
    # warnings raised while the command runs are shown after it succeeds; a failure prints only its one line
    with warnings.catch_warnings(record=True) as caught:
        try:
            code = args.func(args)
        except CLIError as err:
            print(f"deepstate: {err}", file=sys.stderr)
            return 2
        except BrokenPipeError as err:
            if not _stdout_closed():  # another pipe or socket broke: a failure like any other
                print(f"deepstate: {_error_line(err)}", file=sys.stderr)
                return 1
            # the reader went away (`deepstate sample m.pt | head`): not an error of ours. Point stdout at
            # devnull so that the interpreter's final flush does not fail again at exit.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        except (ValueError, TypeError, LookupError, OSError) as err:
            print(f"deepstate: {_error_line(err)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("deepstate: interrupted", file=sys.stderr)
            return 130
        except Exception as err:  # noqa: BLE001 - the CLI never shows a traceback
            print(f"deepstate: {type(err).__name__}: {_error_line(err)}", file=sys.stderr)
            return 1
    for w in caught:
        warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    return code


if __name__ == "__main__":
    sys.exit(main())
