r"""A scikit-learn/darts-style front end: build, fit, score, sample, save and load a model in a few lines.

:class:`Estimator` wraps :func:`deepstate.models.build`, :class:`~deepstate.data.Standardizer`,
:class:`~deepstate.inference.trainer.Trainer` and :func:`~deepstate.inference.evaluation.evaluate`.

Units. :meth:`Estimator.log_likelihood` returns a bound on ``log p(x)`` in **nats per frame on the
original scale of the data**. When the data are standardised (``x' = (x - mean) / std`` per
dimension, for the Gaussian and Student-t likelihoods) the model's density is over ``x'``; by the
change of variables ``log p(x) = log p'(x') - sum over observed values of log std_d``, so that
correction is subtracted before dividing by the number of frames. Numbers are therefore comparable
across scalings and with models fitted without standardisation.

Example:
    >>> from deepstate.data import load_dataset
    >>> from deepstate.estimator import Estimator
    >>> series = load_dataset("sunspots").series                       # doctest: +SKIP
    >>> est = Estimator("dkf", z_dim=4, rnn_dim=16).fit(series, epochs=20, window=50)  # doctest: +SKIP
    >>> est.log_likelihood(series, num_particles=100)                   # nats/frame  # doctest: +SKIP
    >>> x = est.sample(3, 40)                                           # [3, 40, 1]  # doctest: +SKIP
    >>> est.save("sunspots.pt"); est2 = Estimator.load("sunspots.pt")  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

from . import __version__
from .data import SequenceBatch, SequenceDataset, Standardizer, concat_batches, from_numpy, from_pandas
from .data.loader import sliding_windows
from .forecasting import Forecast, LatentTrajectories, check_levels, forecast, latent_trajectories, one_step_ahead
from .inference.checkpoint import atomic_save, load_checkpoint
from .inference.evaluation import EVAL_OBJECTIVES, evaluate
from .inference.trainer import TRAINING_OBJECTIVES, Trainer, _check_digest, resolve_device, state_digest
from .models import MODELS, LatentSequenceModel, build
from .models.nn import check_support

__all__ = ["Estimator"]

ESTIMATOR_FORMAT = "deepstate.estimator"
_LIKELIHOODS = {"gaussian": "gaussian", "normal": "gaussian", "studentt": "studentt", "student": "studentt",
                "t": "studentt", "bernoulli": "bernoulli", "poisson": "poisson"}
_STANDARDIZED = ("gaussian", "studentt")
# models with an exact (Kalman) log-likelihood: objective="exact" fits them by maximum likelihood
_EXACT_MODELS = ("lgssm", "deepstate")
# Trainer arguments fit() sets itself (the rest may be passed through **trainer_kwargs)
_TRAINER_FIXED = {"self", "lsm", "objective", "num_particles", "lr", "batch_size", "checkpoint_dir", "progress",
                  "device", "seed"}


def _to_batch(data: Any, name: str) -> SequenceBatch:
    """``data`` as a float64 :class:`SequenceBatch` (see :meth:`Estimator.fit` for accepted kinds).

    Float64 so that standardisation and the change-of-variables correction are computed precisely;
    whoever hands the batch to the model casts it to the model's dtype (the Trainer and
    :func:`~deepstate.inference.evaluation.evaluate` do; the exact branches do it themselves).
    """
    import pandas as pd

    if isinstance(data, SequenceDataset):
        data = data.batch
    if isinstance(data, SequenceBatch):
        return data.to(dtype=torch.float64)
    if isinstance(data, pd.DataFrame):
        return from_pandas(data, as_multivariate=True, dtype=torch.float64)
    if isinstance(data, pd.Series):
        return from_pandas(data, dtype=torch.float64)
    if isinstance(data, (np.ndarray, torch.Tensor)):
        return from_numpy(data, dtype=torch.float64)
    if isinstance(data, (list, tuple)):
        if len(data) == 0:
            raise ValueError(f"{name}: expected at least one sequence, got an empty list")
        if all(np.ndim(v) == 0 for v in data):  # a flat list of numbers: one univariate series
            try:
                values = np.asarray(data, dtype=np.float64)
            except (TypeError, ValueError) as err:
                raise TypeError(f"{name}: expected a list of numbers (one series) or of [T_b, D] arrays: {err}") from err
            return from_numpy(values, dtype=torch.float64)
        return SequenceBatch.from_sequences(list(data), dtype=torch.float64)
    raise TypeError(
        f"{name}: expected a SequenceBatch, a list of [T_b, D] arrays, a numpy array / torch tensor "
        f"([T], [T, D] or [B, T, D]) or a pandas DataFrame/Series, got {type(data).__name__}"
    )


def _seed_or(seed: Any, default: Optional[int]) -> Optional[int]:
    """``seed`` as an int (``default`` when it is None); a TypeError naming ``seed`` otherwise."""
    if seed is None:
        return default
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed: expected an int or None, got {type(seed).__name__}")
    return int(seed)


def _dim_names(data: Any) -> Optional[list]:
    """Column names of a DataFrame (a Series' name), else None."""
    import pandas as pd

    if isinstance(data, pd.DataFrame):
        return [str(c) for c in data.columns]
    if isinstance(data, pd.Series) and data.name is not None:
        return [str(data.name)]
    return None


def _windows(batch: SequenceBatch, window: int, stride: int) -> SequenceBatch:
    """Every sequence cut into windows of ``window`` steps (shorter sequences are kept whole)."""
    pieces = []
    for b in range(batch.batch_size):
        seq = batch[b]
        L = int(seq.lengths[0])
        pieces.append(sliding_windows(seq, window, stride) if L >= window else seq)
    return concat_batches([dataclasses.replace(p, index=None, names=None) for p in pieces])


_DTYPE_NAMES = {"float32": torch.float32, "float": torch.float32, "float64": torch.float64, "double": torch.float64}


class Estimator:
    """A deep state-space model with a fit / log_likelihood / sample / save / load interface.

    Args:
        model: ``"dkf"`` (alias ``"dmm"``), ``"vrnn"``, ``"srnn"``, ``"deepstate"`` or ``"lgssm"``.
        likelihood: ``"gaussian"``, ``"studentt"``, ``"bernoulli"`` or ``"poisson"``.
        objective: training objective: ``"fivo"``, ``"iwae"``, ``"particle_elbo"``, ``"elbo"``,
            ``"meanfield_elbo"`` (see :mod:`deepstate.inference.trainer`), or ``"exact"`` for the
            models with an exact Kalman likelihood (``lgssm``, ``deepstate``): maximum likelihood by
            L-BFGS, ``epochs`` iterations, ``lr`` unused.
        num_particles: particles of the training objective.
        guide: guide kind (default per model; see :mod:`deepstate.models`).
        standardize: standardise each dimension with statistics of the training data (only for
            the Gaussian and Student-t likelihoods; ignored for Bernoulli and Poisson data).
            Results of :meth:`log_likelihood` and :meth:`sample` are on the original scale.
        seed: non-negative int: parameter initialisation, minibatch order, training draws, and the
            default seed of :meth:`log_likelihood`.
        dtype: parameter dtype (``torch.float32`` or ``torch.float64``, or their names ``"float32"``,
            ``"float64"``); float64 suits the exact Kalman fits.
        device: ``"cpu"`` or ``"cuda[:i]"``.
        **hyper: model hyperparameters passed to :func:`deepstate.models.build` (``z_dim``,
            ``rnn_dim``, ``transition_dim``, ``emission_dim``, ...).

    Attributes (after :meth:`fit` or :meth:`load`):
        model_: the :class:`~deepstate.models.base.LatentSequenceModel`.
        standardizer_: the fitted :class:`~deepstate.data.Standardizer`, or ``None``.
        history_: per-epoch training history (list of dicts; bounds in nats/frame of the
            standardised data).
        input_dim_: ``D``.

    Example:
        >>> est = Estimator("dkf", z_dim=2, rnn_dim=8, transition_dim=8, emission_dim=8)
        >>> est = est.fit(np.random.randn(5, 20, 1), epochs=2, progress=False)   # doctest: +SKIP
        >>> est.log_likelihood(np.random.randn(2, 20, 1))                          # doctest: +SKIP
    """

    def __init__(
        self,
        model: str = "dkf",
        likelihood: str = "gaussian",
        objective: str = "fivo",
        num_particles: int = 4,
        guide: Optional[str] = None,
        standardize: bool = True,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        device: Union[str, torch.device] = "cpu",
        **hyper,
    ):
        if not isinstance(model, str) or model.lower() not in MODELS:
            raise ValueError(f"model: expected one of {tuple(MODELS)}, got {model!r}")
        if not isinstance(likelihood, str) or likelihood.lower().replace("-", "").replace("_", "") not in _LIKELIHOODS:
            raise ValueError(f"likelihood: expected one of ('gaussian', 'studentt', 'bernoulli', 'poisson'), got {likelihood!r}")
        if objective not in TRAINING_OBJECTIVES + ("exact",):
            raise ValueError(f"objective: expected one of {TRAINING_OBJECTIVES + ('exact',)}, got {objective!r}")
        if objective == "exact" and str(model).lower() not in _EXACT_MODELS:
            raise ValueError(f"objective: 'exact' (maximum likelihood by L-BFGS) needs a model with an exact "
                             f"likelihood {_EXACT_MODELS}, got model={model!r}")
        if isinstance(num_particles, bool) or not isinstance(num_particles, (int, np.integer)) or num_particles < 1:
            raise ValueError(f"num_particles: expected a positive int, got {num_particles!r}")
        if guide is not None and not isinstance(guide, str):
            raise TypeError(f"guide: expected a guide name (str) or None, got {type(guide).__name__}")
        if not isinstance(standardize, bool):
            raise TypeError(f"standardize: expected a bool, got {type(standardize).__name__}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed: expected a non-negative int, got {seed!r}")
        dtype = _DTYPE_NAMES.get(dtype, dtype) if isinstance(dtype, str) else dtype  # "float64" (e.g. the CLI's --set)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"dtype: expected a floating torch.dtype (torch.float32 or torch.float64, or the names "
                             f"'float32', 'float64'), got {dtype!r}")
        self.model = model.lower()
        self.likelihood = _LIKELIHOODS[likelihood.lower().replace("-", "").replace("_", "")]
        self.objective = objective
        self.num_particles = int(num_particles)
        self.guide = guide
        self.standardize = standardize
        self.seed = int(seed)
        self.dtype = dtype
        self.device = resolve_device(device)
        self.hyper = dict(hyper)
        # check the model arguments now (build raises ValueError naming the bad one); it costs one small build
        with torch.random.fork_rng(devices=[]):
            build(self.model, 1, self.likelihood, self.guide, **self.hyper)
        self.model_: Optional[LatentSequenceModel] = None
        self.standardizer_: Optional[Standardizer] = None
        self.history_: list = []
        self.input_dim_: Optional[int] = None

    # ------------------------------------------------------------------ parameters
    def get_params(self) -> dict:
        """Constructor arguments (as in scikit-learn), ``hyper`` flattened in."""
        return dict(model=self.model, likelihood=self.likelihood, objective=self.objective,
                    num_particles=self.num_particles, guide=self.guide, standardize=self.standardize,
                    seed=self.seed, dtype=self.dtype, device=str(self.device), **self.hyper)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"Estimator({args})"

    @property
    def is_fitted(self) -> bool:
        return self.model_ is not None

    def _require_fitted(self):
        if self.model_ is None:
            raise RuntimeError("Estimator is not fitted: call fit(data) or Estimator.load(path) first")

    @property
    def _uses_standardizer(self) -> bool:
        return self.standardize and self.likelihood in _STANDARDIZED

    def _prepare(self, data: Any, name: str) -> SequenceBatch:
        batch = _to_batch(data, name)
        if self.input_dim_ is not None and batch.dim != self.input_dim_:
            raise ValueError(f"{name}: expected {self.input_dim_} dimensions (as fitted), got {batch.dim}")
        check_support(self.likelihood, batch.x, batch.observed, name)
        if self.standardizer_ is not None:
            batch = self.standardizer_.transform(batch)
        return batch

    def _build(self, input_dim: int) -> LatentSequenceModel:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            lsm = build(self.model, input_dim, self.likelihood, self.guide, **self.hyper)
        return lsm.to(device=self.device, dtype=self.dtype)

    # ------------------------------------------------------------------ fit
    def fit(
        self,
        data: Any,
        valid_data: Any = None,
        epochs: int = 10,
        batch_size: int = 20,
        lr: float = 1e-3,
        checkpoint_dir: Union[None, str, os.PathLike] = None,
        progress: bool = True,
        window: Optional[int] = None,
        stride: Optional[int] = None,
        resume: bool = True,
        holdout: int = 0,
        **trainer_kwargs,
    ) -> "Estimator":
        """Build the model for ``data``'s dimension and train it. Returns ``self``.

        Args:
            data: training data: a :class:`~deepstate.data.SequenceBatch`, a list of ``[T_b, D]``
                arrays (variable lengths, NaN = missing), a numpy array / tensor ``[T]``, ``[T, D]``
                (one series) or ``[B, T, D]``, a pandas ``Series`` (one univariate series) or
                ``DataFrame`` (one multivariate series, columns = dimensions, rows = time).
            valid_data: optional validation data (same kinds); its bound is tracked per epoch and
                the best epoch's parameters are kept at the end.
            epochs: total training epochs.
            batch_size: sequences per minibatch.
            lr: Adam learning rate.
            checkpoint_dir: folder for resumable checkpoints (a rerun of ``fit`` resumes from it).
            progress: tqdm progress bar (only shown on a terminal).
            window, stride: cut each training sequence into windows of ``window`` steps every
                ``stride`` steps (default ``stride = window``) -- useful for one long series, which
                otherwise gives one optimiser step per epoch.
            resume: continue from ``checkpoint_dir`` if it holds a checkpoint.
            holdout: ``objective="exact"`` only: hold out the last ``holdout`` steps of every training
                sequence and keep the L-BFGS iterate with the best **conditional** log-likelihood of
                them given the rest (early stopping for a forecaster; see
                :meth:`~deepstate.models.lgssm.ExactLikelihoodFitMixin.fit`); the standardiser is fitted
                without them too. Not with ``window`` (the windows would overlap the held-out steps).
                For the exact models ``valid_data`` early-stops the same way, scored as **fresh**
                sequences (for a seasonal DeepState model that restarts the season at the first value:
                use ``holdout`` for the end of a series), and ``early_stopping_patience`` counts
                L-BFGS iterations without a better score (it needs ``holdout`` or ``valid_data``).
            **trainer_kwargs: other :class:`~deepstate.inference.trainer.Trainer` arguments
                (``clip_norm``, ``lr_decay``, ``annealing``, ``early_stopping_patience``, ``tbptt``,
                ``metrics_path``, ``checkpoint_every``, ``max_bad_steps``, ...).
        """
        allowed = set(inspect.signature(Trainer.__init__).parameters) - _TRAINER_FIXED
        unknown = set(trainer_kwargs) - allowed
        if unknown:
            raise ValueError(f"trainer_kwargs: unknown Trainer argument(s) {sorted(unknown)}; expected some of {sorted(allowed)}")
        if window is not None and (isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1):
            raise ValueError(f"window: expected a positive int or None, got {window!r}")
        if stride is not None and (isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride < 1):
            raise ValueError(f"stride: expected a positive int or None, got {stride!r}")
        if stride is not None and window is None:
            raise ValueError("stride: only used together with window")
        train = _to_batch(data, "data")
        valid = None if valid_data is None else _to_batch(valid_data, "valid_data")
        for arg, b in (("data", train), ("valid_data", valid)):
            if b is not None and not bool(b.observed.any()):
                raise ValueError(f"{arg}: has no observed value (every value is missing/NaN): nothing to fit")
        if valid is not None and valid.dim != train.dim:
            raise ValueError(f"valid_data: expected {train.dim} dimensions like data, got {valid.dim}")
        # on the data as given (before standardising): Bernoulli needs 0/1, Poisson non-negative integers
        check_support(self.likelihood, train.x, train.observed, "data")
        if valid is not None:
            check_support(self.likelihood, valid.x, valid.observed, "valid_data")
        if holdout and self.objective == "exact":
            from .models.lgssm import held_out_end

            if window is not None:
                raise ValueError("holdout: not with window (overlapping windows would fit the held-out steps); "
                                 "hold out the end of the whole series, or pass valid_data")
            if isinstance(holdout, bool) or not isinstance(holdout, (int, np.integer)) or not 0 < holdout < int(train.lengths.min()):
                raise ValueError(f"holdout: expected a number of steps in [1, {int(train.lengths.min()) - 1}] "
                                 f"(shorter than every training sequence), got {holdout!r}")
            holdout = int(holdout)
            scaled_on = held_out_end(train, holdout)  # the held-out end does not even set the scale
        else:
            scaled_on = train
        standardizer = Standardizer().fit(scaled_on) if self._uses_standardizer else None
        if standardizer is not None:
            train = standardizer.transform(train)
            valid = None if valid is None else standardizer.transform(valid)
        if window is not None:
            train = _windows(train, int(window), int(stride or window))
        lsm = self._build(train.dim)
        if getattr(lsm.ssm, "emission_offset", None) is not None:  # data_offsets: set from the training data
            lsm.ssm.init_from_data(train)
        if self.objective == "exact":
            # the Kalman filter mixes the batch with the parameters, so the batch takes the model's dtype
            def exact(b):
                return None if b is None else b.to(device=self.device, dtype=self.dtype)

            ssm = lsm.ssm
            bounds = ssm.fit(exact(train), num_steps=epochs, progress=progress, holdout=holdout, valid=exact(valid),
                             patience=trainer_kwargs.get("early_stopping_patience"))
            self.model_, self.standardizer_, self.input_dim_ = lsm, standardizer, train.dim
            self.history_ = [{"epoch": i, "train_bound": b} for i, b in enumerate(bounds)]
            if holdout or valid is not None:
                for h, v in zip(self.history_, ssm.valid_history_):
                    h["valid_bound"] = v
            return self
        if holdout:
            raise ValueError(f"holdout: only for objective='exact' (maximum likelihood); objective={self.objective!r} "
                             f"takes valid_data (e.g. the last steps of the series as their own sequence)")
        trainer = Trainer(lsm, objective=self.objective, num_particles=self.num_particles, lr=lr, batch_size=batch_size,
                          checkpoint_dir=checkpoint_dir, progress=progress, device=self.device, seed=self.seed,
                          **trainer_kwargs)
        history = trainer.fit(train, valid, epochs=epochs, resume=resume, restore_best=valid is not None)
        self.model_ = trainer.lsm
        self.standardizer_ = standardizer
        self.input_dim_ = train.dim
        self.history_ = list(history)
        self.trainer_ = trainer
        return self

    # ------------------------------------------------------------------ scoring
    def log_likelihood(
        self,
        data: Any,
        objective: str = "fivo",
        num_particles: Optional[int] = None,
        batch_size: int = 64,
        max_elements: int = 100_000,
        seed: Optional[int] = None,
        return_dict: bool = False,
        history: Any = None,
    ) -> Union[float, dict]:
        """A bound on ``log p(data)`` in nats per frame, on the original scale (see the module docstring).

        Without ``history`` each sequence of ``data`` is scored **as a fresh sequence**, from the
        model's initial state. With ``history`` (one history per sequence of ``data``, which follows
        it), the score is the **conditional predictive log-likelihood** ``log p(data | history)``
        (:func:`deepstate.forecasting.one_step_ahead`): the history is filtered first and ``data`` is
        scored step by step from there -- the honest held-out score of a forecaster. It is then
        exact for ``objective="exact"``, and otherwise a particle estimate (``num_particles``; the
        guide's filter through the history, a bootstrap filter over ``data``) whatever the particle
        objective named. The dict's ``"kind"`` says which (``"fresh"`` or ``"conditional"``).

        Args:
            data: sequences (same kinds as :meth:`fit`).
            objective: ``"fivo"``, ``"iwae"`` or ``"elbo"`` (bounds that tighten with ``num_particles``
                for FIVO and IWAE), or ``"exact"`` (the Kalman log-likelihood of ``lgssm``/``deepstate``).
            num_particles: particles per sequence (default: the estimator's ``num_particles``).
            batch_size, max_elements: see :func:`deepstate.inference.evaluation.evaluate`.
            seed: seed of the draws (default: the estimator's ``seed``, so repeated calls agree).
            return_dict: return the full :func:`~deepstate.inference.evaluation.evaluate` dict
                (``nats_per_frame``, ``total``, ``frames``, ``per_sequence [B]``, all on the original
                scale) instead of the float.
            history: optional histories that ``data`` continues (same kinds as ``data``).
        """
        self._require_fitted()
        if objective not in EVAL_OBJECTIVES + ("exact",):
            raise ValueError(f"objective: expected one of {EVAL_OBJECTIVES + ('exact',)}, got {objective!r}")
        if objective == "exact" and not hasattr(self.model_.ssm, "log_likelihood"):
            raise ValueError(f"objective: 'exact' needs a model with an exact likelihood {_EXACT_MODELS}, "
                             f"this one is {self.model!r}")
        N = self.num_particles if num_particles is None else num_particles
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise TypeError(f"seed: expected an int or None, got {type(seed).__name__}")
        batch = self._prepare(data, "data")
        if history is not None:
            hist = self._prepare(history, "history")
            if hist.batch_size != batch.batch_size:
                raise ValueError(f"history: expected one history per sequence of data ({batch.batch_size}), "
                                 f"got {hist.batch_size}")
            model_dtype = next(self.model_.parameters()).dtype
            osa = one_step_ahead(self.model_, hist.to(dtype=model_dtype), batch.to(dtype=model_dtype),
                                 num_particles=int(N), method="exact" if objective == "exact" else "particles",
                                 seed=_seed_or(seed, self.seed))
            per_seq = osa.total.to("cpu", torch.float64)
            frames = int(batch.valid.sum())
            res = {"per_sequence": per_seq, "total": float(per_seq.sum()), "frames": frames,
                   "nats_per_frame": float(per_seq.sum()) / frames, "objective": objective, "num_particles": int(N),
                   "per_step": osa.log_predictive.to("cpu", torch.float64)}
        elif objective == "exact":
            with torch.no_grad():
                # the batch takes the model's dtype (it is float64 for the standardiser; the model may be float32)
                model_dtype = next(self.model_.parameters()).dtype
                per_seq = self.model_.ssm.log_likelihood(batch.to(device=self.device, dtype=model_dtype))
                per_seq = per_seq.to("cpu", torch.float64)
            frames = int(batch.valid.sum())
            res = {"per_sequence": per_seq, "total": float(per_seq.sum()), "frames": frames,
                   "nats_per_frame": float(per_seq.sum()) / frames, "objective": "exact", "num_particles": 0}
        else:
            res = evaluate(self.model_, batch, objective=objective, num_particles=N, batch_size=batch_size,
                           max_elements=max_elements, seed=_seed_or(seed, self.seed))
        if self.standardizer_ is not None:
            log_std = self.standardizer_.std.to(torch.float64).log()
            correction = (batch.observed.cpu().to(torch.float64) * log_std).sum((1, 2))  # [B]
            res["per_sequence"] = res["per_sequence"] - correction
            res["total"] = float(res["per_sequence"].sum())
            res["nats_per_frame"] = res["total"] / res["frames"]
            if "per_step" in res:
                res["per_step"] = res["per_step"] - (batch.observed.cpu().to(torch.float64) * log_std).sum(-1)
        res["kind"] = "fresh" if history is None else "conditional"
        return res if return_dict else float(res["nats_per_frame"])

    # ------------------------------------------------------------------ forecasting
    def forecast(
        self,
        history: Any,
        horizon: int,
        num_samples: int = 500,
        levels: Sequence[float] = (0.1, 0.5, 0.9),
        covariates: Any = None,
        num_particles: int = 200,
        method: str = "auto",
        seed: Optional[int] = None,
    ) -> Forecast:
        """Forecast ``horizon`` steps beyond the end of each history, on the original scale.

        The state at the end of each history comes from the particle filter (``num_particles``), or
        from the Kalman filter for ``lgssm``/``deepstate`` (``method="auto"`` or ``"exact"``); the model
        is then rolled forward feeding back sampled values (see :mod:`deepstate.forecasting`).

        Args:
            history: one or more series (same kinds as :meth:`fit`); a pandas input's index is
                continued in :attr:`Forecast.index`.
            horizon: ``H >= 1`` steps.
            num_samples: ``S`` sample paths.
            levels: default quantile levels of :meth:`Forecast.to_frame` (each in (0, 1)).
            covariates: known future covariates ``[B, H, U]``, required exactly when the model uses them.
            num_particles: particles of the filter through the history.
            method: ``"auto"``, ``"particles"`` or ``"exact"``.
            seed: seed of the draws (default: the estimator's ``seed``).

        Returns:
            a :class:`~deepstate.forecasting.Forecast`: ``samples [S, B, H, D]``, ``mean``,
            ``quantiles(levels)``, ``interval(level)``, ``to_frame()``, ``plot()``.
        """
        self._require_fitted()
        levels = check_levels(levels)
        batch = self._prepare(history, "history")
        min_len = int(batch.lengths.min())
        if min_len < 1:
            raise ValueError("history: every series needs at least one step")
        fc = forecast(self.model_, batch, horizon, num_samples=num_samples, num_particles=num_particles,
                      covariates=covariates, method=method, standardizer=self.standardizer_,
                      seed=_seed_or(seed, self.seed))
        fc.names = _dim_names(history)
        fc.levels = levels
        return fc

    def latent_trajectories(self, data: Any, kind: str = "smoothed", num_particles: int = 500, level: float = 0.9,
                            method: str = "auto", seed: Optional[int] = None) -> LatentTrajectories:
        """Filtered (``kind="filtered"``) or smoothed latent states with a ``level`` band; see
        :func:`deepstate.forecasting.latent_trajectories`."""
        self._require_fitted()
        batch = self._prepare(data, "data")
        return latent_trajectories(self.model_, batch, kind=kind, num_particles=num_particles, level=level,
                                   method=method, seed=_seed_or(seed, self.seed))

    # ------------------------------------------------------------------ generation
    def sample(self, num_sequences: int, length: int, seed: Optional[int] = None, return_latents: bool = False):
        """Draw sequences from the fitted generative model, on the original scale.

        Args:
            num_sequences: ``S``.
            length: ``T``.
            seed: seed of a local generator (``None``: torch's global RNG, so draws differ per call).
            return_latents: also return the latent paths.

        Returns:
            numpy ``x [S, T, D]`` (float64), or ``(z [S, T, Z], x [S, T, D])`` with ``return_latents``.
        """
        self._require_fitted()
        for arg, v in (("num_sequences", num_sequences), ("length", length)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{arg}: expected a positive int, got {v!r}")
        seed = _seed_or(seed, None)
        gen = None if seed is None else torch.Generator().manual_seed(seed)
        z, x = self.model_.sample(int(num_sequences), int(length), generator=gen)
        x = x.detach().to("cpu", torch.float64)
        if self.standardizer_ is not None:
            x = self.standardizer_.inverse_transform(x)
        x = x.numpy()
        return (z.detach().to("cpu", torch.float64).numpy(), x) if return_latents else x

    def generate(self, num_sequences: int, length: int, prefix: Any = None, num_particles: int = 100,
                 seed: Optional[int] = None) -> np.ndarray:
        """Sample new sequences, or continue given prefixes, on the original scale.

        Built on the one forward simulation (:func:`~deepstate.models.rollout.rollout`, feeding back
        sampled values): from the model's initial state without ``prefix`` (the same draws as
        :meth:`sample`), else from the particle filter's state at the end of each prefix
        (:func:`~deepstate.forecasting.filter_history`, ``num_particles``), resampled.

        Args:
            num_sequences: ``S`` sequences (per prefix).
            length: ``T`` new steps.
            prefix: optional ``B`` sequences to continue (same kinds as :meth:`fit`).
            num_particles: particles of the filter through the prefixes.
            seed: seed of the draws (``None``: torch's global RNG).

        Returns:
            numpy float64 ``x [S, T, D]`` without ``prefix``; ``[S, B, T, D]`` continuations (the
            new steps only) with it.
        """
        from .forecasting import filter_history
        from .models.rollout import RolloutState, rollout

        self._require_fitted()
        for arg, v in (("num_sequences", num_sequences), ("length", length), ("num_particles", num_particles)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{arg}: expected a positive int, got {v!r}")
        S, T = int(num_sequences), int(length)
        seed = _seed_or(seed, None)
        lsm = self.model_
        ref = next(lsm.parameters())
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(int(seed))
            if prefix is None:
                state = RolloutState.prior(lsm.ssm, 1, S, dtype=ref.dtype, device=ref.device)
            else:
                batch = self._prepare(prefix, "prefix")
                state = filter_history(lsm, batch, int(num_particles)).resample(S)
            x = rollout(lsm.ssm, state, T).x
        x = x.detach().to("cpu", torch.float64)
        if self.standardizer_ is not None:
            x = self.standardizer_.inverse_transform(x)
        x = x.numpy()
        return x[0] if prefix is None else x

    def check(self, data: Any, kind: str = "one-step", num_samples: int = 100, statistics: Any = None,
              t0: Optional[int] = None, num_particles: int = 100, seed: Optional[int] = None):
        """Posterior predictive check of ``data`` on the original scale.

        Args:
            data: sequences (same kinds as :meth:`fit`), e.g. a held-out split.
            kind: ``"one-step"``, ``"reconstruction"`` or ``"free"`` (see :mod:`deepstate.checks.replicates`).
            num_samples: ``S`` replicates.
            statistics: names from :data:`deepstate.checks.STATISTICS`, callables or a mapping
                (default: :func:`deepstate.checks.default_statistics`).
            t0: for ``"free"``, steps conditioned on before running free (default 0).
            num_particles: particles of the filters.
            seed: seed of the draws (default: the estimator's ``seed``).

        Returns:
            ``(table, idata)``: ``pandas.DataFrame`` of statistics with Bayesian p-values and the
            ``arviz.InferenceData`` (see :func:`deepstate.checks.posterior_predictive_check`).
        """
        from .checks import posterior_predictive_check

        self._require_fitted()
        batch = self._prepare(data, "data")
        return posterior_predictive_check(self.model_, batch, kind=kind, num_samples=num_samples,
                                          statistics=statistics, standardizer=self.standardizer_,
                                          seed=_seed_or(seed, self.seed), t0=t0,
                                          num_particles=num_particles)

    # ------------------------------------------------------------------ persistence
    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write the estimator (arguments, model config, parameters, standardiser, history) to ``path``
        atomically (temp file + rename); load it with :meth:`load`."""
        self._require_fitted()
        params = self.get_params()
        params["dtype"] = str(self.dtype).replace("torch.", "")
        state = {
            "format": ESTIMATOR_FORMAT,
            "version": 1,
            "deepstate_version": __version__,
            "params": params,
            "config": dict(self.model_.config),
            "input_dim": self.input_dim_,
            "state_dict": {k: v.detach().cpu().clone() for k, v in self.model_.state_dict().items()},
            "standardizer": None if self.standardizer_ is None else self.standardizer_.state_dict(),
            "history": list(self.history_),
        }
        state["digest"] = state_digest(state)  # checked by load: a corrupted file is refused
        atomic_save(state, path)

    @classmethod
    def load(cls, path: Union[str, os.PathLike], map_location: Union[None, str, torch.device] = None) -> "Estimator":
        """Load an estimator written by :meth:`save`.

        Args:
            path: the file.
            map_location: device to put the model on (default ``"cpu"``, so a GPU-trained model loads
                on a CPU-only machine).

        Raises:
            FileNotFoundError: no such file.
            ValueError: not an estimator file (corrupted, truncated, another format), or its saved
                configuration does not match its saved parameters.
        """
        device = resolve_device("cpu" if map_location is None else map_location)
        state = load_checkpoint(path, map_location="cpu", kind=ESTIMATOR_FORMAT)
        missing = {"params", "config", "state_dict", "input_dim"} - set(state)
        if missing:
            raise ValueError(f"path: {str(path)!r} is an incomplete estimator file (missing {sorted(missing)})")
        params = dict(state["params"])
        dtype_name = params.pop("dtype", "float32")
        dtype = getattr(torch, str(dtype_name), None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"path: {str(path)!r} has an unknown dtype {dtype_name!r}")
        params.pop("device", None)
        try:
            est = cls(**params, dtype=dtype, device=device)
        except (TypeError, ValueError) as err:
            raise ValueError(f"path: {str(path)!r} holds invalid estimator arguments: {err}") from err
        config = dict(state["config"])
        try:
            with torch.random.fork_rng(devices=[]):
                lsm = build(**config)
        except (TypeError, ValueError) as err:
            raise ValueError(f"path: {str(path)!r} holds an invalid model config {config}: {err}") from err
        lsm = lsm.to(dtype=dtype)
        try:
            lsm.load_state_dict(state["state_dict"], strict=True)
        except RuntimeError as err:
            raise ValueError(
                f"path: {str(path)!r}: the saved model config {config} does not match the saved parameters "
                f"(the file was edited or written by an incompatible version): {err}"
            ) from err
        # last, after the specific checks above: any other change since save() (a flipped byte) is refused
        _check_digest(state, f"path: {str(path)!r}")
        est.model_ = lsm.to(device)
        est.input_dim_ = int(state["input_dim"])
        if state.get("standardizer") is not None:
            est.standardizer_ = Standardizer().load_state_dict(state["standardizer"])
        est.history_ = list(state.get("history") or [])
        return est
