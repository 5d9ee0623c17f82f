"""Models as protocol steps (:mod:`.base`), and :func:`build`, the factory users call.

========== ============================================ =====================================
name       model                                        guides (``guide=``)
========== ============================================ =====================================
dkf / dmm  :class:`.dkf.DeepMarkovModel`                 st-r (default), st-l, st-lr, mf-lr, mf-l
vrnn       :class:`.vrnn.VRNN`                           filtering (default), smoothing
srnn       :class:`.srnn.SRNN`                           smoothing (default), filtering
deepstate  :class:`.deepstate_model.DeepStateModel`     exact (default), prior
lgssm      :class:`.lgssm.LinearGaussianSSM`             exact (default), filtering, prior
========== ============================================ =====================================
"""

from __future__ import annotations

import inspect

from .base import Guide, LatentSequenceModel, PriorGuide, StateSpaceModel
from .deepstate_model import DeepStateModel
from .dkf import GUIDE_KINDS, DeepMarkovModel, StructuredInferenceGuide
from .lgssm import ExactPosteriorGuide, LinearFilteringGuide, LinearGaussianSSM
from .srnn import SRNN, SRNNGuide
from .vrnn import VRNN, VRNNGuide

__all__ = [
    "build",
    "MODELS",
    "StateSpaceModel",
    "Guide",
    "PriorGuide",
    "LatentSequenceModel",
    "DeepMarkovModel",
    "StructuredInferenceGuide",
    "GUIDE_KINDS",
    "VRNN",
    "VRNNGuide",
    "SRNN",
    "SRNNGuide",
    "DeepStateModel",
    "LinearGaussianSSM",
    "LinearFilteringGuide",
    "ExactPosteriorGuide",
]


def _split_kwargs(cls, hyper):
    names = set(inspect.signature(cls.__init__).parameters) - {"self"}
    return {k: v for k, v in hyper.items() if k in names}


def _build_dkf(input_dim, likelihood, guide, hyper):
    guide = guide or "st-r"
    ssm = DeepMarkovModel(input_dim, likelihood=likelihood, **_split_kwargs(DeepMarkovModel, hyper))
    if guide == "prior":
        return ssm, PriorGuide()
    g_kw = {k: v for k, v in _split_kwargs(StructuredInferenceGuide, hyper).items() if k not in ("z_dim",)}
    return ssm, StructuredInferenceGuide(input_dim, ssm.z_dim, kind=guide, **g_kw)


def _build_vrnn(input_dim, likelihood, guide, hyper):
    guide = guide or "filtering"
    ssm = VRNN(input_dim, likelihood=likelihood, **_split_kwargs(VRNN, hyper))
    if guide not in ("filtering", "smoothing", "prior"):
        raise ValueError(f"guide: expected 'filtering', 'smoothing' or 'prior' for vrnn, got {guide!r}")
    if guide == "prior":
        return ssm, PriorGuide()
    g_kw = _split_kwargs(VRNNGuide, hyper)
    g_kw.pop("rnn_dim", None)  # the model's width; the guide's backward RNN has its own
    if "guide_rnn_dim" in hyper:
        g_kw["rnn_dim"] = hyper["guide_rnn_dim"]
    return ssm, VRNNGuide(ssm, smoothing=guide == "smoothing", **g_kw)


def _build_srnn(input_dim, likelihood, guide, hyper):
    guide = guide or "smoothing"
    ssm = SRNN(input_dim, likelihood=likelihood, **_split_kwargs(SRNN, hyper))
    if guide not in ("filtering", "smoothing", "prior"):
        raise ValueError(f"guide: expected 'smoothing', 'filtering' or 'prior' for srnn, got {guide!r}")
    if guide == "prior":
        return ssm, PriorGuide()
    return ssm, SRNNGuide(ssm, smoothing=guide == "smoothing", **_split_kwargs(SRNNGuide, hyper))


def _build_lgssm(input_dim, likelihood, guide, hyper):
    if likelihood not in (None, "gaussian"):
        raise ValueError(f"likelihood: the lgssm is Gaussian, got {likelihood!r}")
    guide = guide or "exact"
    ssm = LinearGaussianSSM(hyper.get("z_dim", 2), input_dim, **{k: v for k, v in hyper.items() if k != "z_dim"})
    guides = {"exact": lambda: ExactPosteriorGuide(ssm), "prior": PriorGuide,
              "filtering": lambda: LinearFilteringGuide(ssm.z_dim, input_dim)}
    if guide not in guides:
        raise ValueError(f"guide: expected one of {tuple(guides)} for lgssm, got {guide!r}")
    return ssm, guides[guide]()


def _build_deepstate(input_dim, likelihood, guide, hyper):
    if likelihood not in (None, "gaussian"):
        raise ValueError(f"likelihood: the deepstate model is Gaussian (exact Kalman), got {likelihood!r}")
    guide = guide or "exact"
    ssm = DeepStateModel(input_dim, **hyper)
    if guide not in ("exact", "prior"):
        raise ValueError(f"guide: expected 'exact' or 'prior' for deepstate, got {guide!r}")
    return ssm, ExactPosteriorGuide(ssm) if guide == "exact" else PriorGuide()


def _params(*classes):
    out = set()
    for cls in classes:
        out |= set(inspect.signature(cls.__init__).parameters)
    return out - {"self", "x_dim", "likelihood", "srnn", "vrnn", "kind", "smoothing"}


_HYPER = {
    "dkf": _params(DeepMarkovModel, StructuredInferenceGuide),
    "vrnn": _params(VRNN) | {"guide_rnn_dim", "residual"},
    "srnn": _params(SRNN, SRNNGuide),
    "lgssm": _params(LinearGaussianSSM),
    "deepstate": _params(DeepStateModel),
}


_NONNEG_INTS = {"u_dim", "season_length"}
_POS_FLOATS = {"min_scale", "min_variance"}
_BOOLS = {"augmented", "resq", "trend", "full_R", "linear_features", "observed_channel", "glorot", "data_offsets",
          "residual"}  # orthogonal also takes "parametrize": checked by the models


def _check_hyper(hyper: dict) -> None:
    """Type and range of the numeric and boolean hyperparameters: a ``ValueError`` naming the bad one.

    Widths (``*_dim`` except ``u_dim``) are positive ints; ``u_dim`` and ``season_length`` are
    non-negative ints; ``min_scale`` and ``min_variance`` are positive finite numbers; switches are bools.
    """
    import math

    import numpy as np

    for key, value in hyper.items():
        is_int = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
        if key in _NONNEG_INTS:
            if not is_int or value < 0:
                raise ValueError(f"{key}: expected a non-negative int, got {value!r}")
        elif key.endswith("_dim"):
            if not is_int or value < 1:
                raise ValueError(f"{key}: expected a positive int, got {value!r}")
        elif key in _POS_FLOATS:
            ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
            if not ok or not math.isfinite(float(value)) or float(value) <= 0:
                raise ValueError(f"{key}: expected a positive finite number, got {value!r}")
        elif key in _BOOLS:
            if not isinstance(value, (bool, np.bool_)):
                raise ValueError(f"{key}: expected a bool (true or false), got {value!r}")


def _accepted(key):
    return _HYPER["dkf" if key == "dmm" else key]


MODELS = {"dkf": _build_dkf, "dmm": _build_dkf, "vrnn": _build_vrnn, "srnn": _build_srnn, "deepstate": _build_deepstate,
          "lgssm": _build_lgssm}


def build(name: str, input_dim: int, likelihood: str = "gaussian", guide: str = None, **hyper) -> LatentSequenceModel:
    """Build a model and its guide as one :class:`LatentSequenceModel`.

    Args:
        name: ``"dkf"`` (alias ``"dmm"``), ``"vrnn"``, ``"srnn"``, ``"deepstate"`` or ``"lgssm"``.
        input_dim: observation size ``D``.
        likelihood: emission family: ``"bernoulli"`` (binary, e.g. piano rolls), ``"gaussian"``,
            ``"studentt"``, ``"poisson"`` (counts).
        guide: guide kind (see the table in this module's docstring); default per model.
        **hyper: the model's hyperparameters (e.g. ``z_dim``, ``transition_dim``, ``emission_dim``,
            ``rnn_dim``, ``rnn`` = ``"gru"``/``"lstm"``/``"rnn"``/``"rnn_relu"``, ``augmented``, ``u_dim``,
            ``min_scale``); see each model class for the full list and defaults.

    Example:
        >>> lsm = build("dkf", input_dim=88, likelihood="bernoulli", z_dim=16, rnn_dim=32)
        >>> z, x = lsm.sample(2, 10)
        >>> x.shape
        torch.Size([2, 10, 88])
    """
    key = str(name).lower()
    if key not in MODELS:
        raise ValueError(f"name: expected one of {tuple(MODELS)}, got {name!r}")
    unknown = set(hyper) - _accepted(key)
    if unknown:
        raise ValueError(f"hyper: unknown hyperparameters {sorted(unknown)} for {key!r}; expected some of {sorted(_accepted(key))}")
    if not isinstance(input_dim, int) or input_dim < 1:
        raise ValueError(f"input_dim: expected a positive int, got {input_dim!r}")
    _check_hyper(hyper)
    ssm, g = MODELS[key](input_dim, likelihood, guide, dict(hyper))
    lsm = LatentSequenceModel(ssm, g, name=key)
    lsm.config = dict(name=key, input_dim=input_dim, likelihood=likelihood, guide=guide, **hyper)
    return lsm
