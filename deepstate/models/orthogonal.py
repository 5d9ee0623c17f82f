r"""Opt-in orthogonal *parametrisation* of the recurrent matrices of ``nn.GRU`` / ``nn.LSTM`` / ``nn.RNN``.

:func:`~deepstate.models.nn.orthogonal_init_` only *starts* each gate's recurrent block orthogonal;
training then moves it anywhere. :func:`orthogonal_parametrize_` keeps every gate's ``[H, H]`` block
of ``weight_hh`` orthogonal for the whole of training (norm-preserving recurrences: Arjovsky et al.
2016 "Unitary evolution RNNs"; Helfrich et al. 2018 "Orthogonal RNNs with scaled Cayley transform";
Lezcano-Casado & Martinez-Rubio 2019 "Cheap orthogonal constraints in neural networks")::

    W_k = B_k \, \phi(A_k),     A_k = \mathrm{triu}(X_k, 1) - \mathrm{triu}(X_k, 1)^\top   (skew-symmetric)

per gate ``k`` (3 for a GRU, 4 for an LSTM, 1 for a tanh RNN), where ``X_k`` is the unconstrained
``[H, H]`` block that the optimiser updates, ``B_k`` an orthogonal *base* buffer (the block's value
at registration, projected onto the orthogonal group) and ``\phi`` the Cayley map
``(I - A/2)^{-1} (I + A/2)`` (default) or the matrix exponential. Both send skew-symmetric matrices
to special orthogonal ones, so ``W_k^\top W_k = I`` to rounding error after any number of optimiser
steps, and ``X = 0`` gives back ``W_k = B_k`` (registration does not change the network's function).

It is a ``torch.nn.utils.parametrize`` parametrisation, so the parameter the optimiser sees is
``rnn.parametrizations.weight_hh_l0.original`` (``[G*H, H]``) and ``rnn.weight_hh_l0`` is
*computed* when it is read. ``nn.GRU``/``nn.LSTM`` keep their weights in a cuDNN-style list
(``_flat_weights``); their ``forward`` re-reads every weight by name and refreshes that list when a
weight is a different tensor, so the parametrised weight is what the forward pass uses (checked in
``tests/test_orthogonal.py``: outputs change with, and gradients reach, the underlying parameter).

**Cost, and caching (training loops must use it).** Without a cache every read recomputes the
parametrisation: ``G`` linear solves (or matrix exponentials) of ``[H, H]`` matrices, about 0.1 s
for a width-600 GRU on one CPU thread. ``nn.GRU``'s forward reads each weight four times (to
notice that it changed and to refresh its list); a per-call cache (forward hooks installed by
:func:`orthogonal_parametrize_`) cuts that to one evaluation per *call*. A step-by-step pass over a
sequence (:func:`~deepstate.models.nn.rnn_step`, used by VRNN/SRNN steps and by the particle
filter) still pays it at every step. Wrap each whole forward pass (the loss computation) in
:func:`cached_parametrizations`; the weight is then computed once per pass and gradients still
reach the parameter::

    with cached_parametrizations():
        loss, _ = FIVO(4).loss(lsm, batch)     # or, with Pyro: loss = svi.step(batch)
    loss.backward(); optimizer.step()

The cached weight must not outlive a parameter update: open a fresh context for every forward pass
(wrapping ``svi.step`` whole is fine, because nothing reads the weight after Pyro's optimiser step
inside it). A weight first read under ``torch.no_grad()`` is cached without a graph, so do not mix
gradient-free and gradient passes in one context.

**Things that change.** ``state_dict`` keys become ``...parametrizations.weight_hh_l0.original``
and ``...parametrizations.weight_hh_l0.0.base`` (save and load parametrised modules with matching
structure: parametrise before ``load_state_dict``); pickling a parametrised module (``torch.save``
of the module object) is not supported by PyTorch, use ``state_dict``.
:func:`~deepstate.models.nn.orthogonal_init_` no longer sees a parametrised ``weight_hh`` (it is
no longer a parameter of that name); initialise first, then parametrise.

Example:
    >>> from deepstate.models.nn import make_rnn
    >>> rnn = orthogonal_parametrize_(make_rnn("gru", 4, 8))
    >>> float(orthogonality_error(rnn)) < 1e-5
    True
    >>> with cached_parametrizations():
    ...     out = rnn(torch.randn(2, 5, 4))[0]       # [B, T, H]
"""

from __future__ import annotations

import contextlib
from typing import Iterator, List

import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = [
    "BlockOrthogonal",
    "orthogonal_parametrize_",
    "remove_orthogonal_parametrization_",
    "is_orthogonal_parametrized",
    "orthogonality_error",
    "rebase_",
    "cached_parametrizations",
    "ORTHOGONAL_MAPS",
]

ORTHOGONAL_MAPS = ("cayley", "expm")
_RNN_TYPES = (nn.RNNBase, nn.RNNCellBase)


def _skew(X: torch.Tensor) -> torch.Tensor:
    A = X.triu(1)
    return A - A.transpose(-1, -2)


def _project_orthogonal(W: torch.Tensor) -> torch.Tensor:
    """Nearest orthogonal matrix (polar factor ``U V^T``) of each ``[H, H]`` block in ``W [G, H, H]``."""
    U, _, Vh = torch.linalg.svd(W)
    return U @ Vh


class BlockOrthogonal(nn.Module):
    r"""Parametrisation ``X [G*H, H] -> W [G*H, H]`` whose ``G`` stacked ``[H, H]`` blocks are orthogonal.

    ``W_k = base_k \, \phi(\mathrm{skew}(X_k))`` with ``\phi`` the Cayley map or the matrix exponential
    (see the module docstring). ``base`` ``[G, H, H]`` is a buffer set by :meth:`right_inverse`.

    Args:
        num_blocks: ``G`` (gates).
        size: ``H`` (hidden size).
        map: ``"cayley"`` (default; one linear solve per block, about 3x cheaper than ``"expm"``
            on CPU at ``H = 600``) or ``"expm"`` (``torch.linalg.matrix_exp``).
    """

    def __init__(self, num_blocks: int, size: int, map: str = "cayley", dtype=None, device=None):
        super().__init__()
        if map not in ORTHOGONAL_MAPS:
            raise ValueError(f"map: expected one of {ORTHOGONAL_MAPS}, got {map!r}")
        if not isinstance(num_blocks, int) or num_blocks < 1 or not isinstance(size, int) or size < 1:
            raise ValueError(f"num_blocks, size: expected positive ints, got {num_blocks!r}, {size!r}")
        self.num_blocks, self.size, self.map = num_blocks, size, map
        eye = torch.eye(size, dtype=dtype, device=device)
        self.register_buffer("base", eye.expand(num_blocks, size, size).clone())

    def _phi(self, A: torch.Tensor) -> torch.Tensor:
        if self.map == "expm":
            return torch.linalg.matrix_exp(A)
        eye = torch.eye(self.size, dtype=A.dtype, device=A.device)
        half = 0.5 * A
        # I - A/2 has singular values >= 1 for skew-symmetric A: always well conditioned
        return torch.linalg.solve(eye - half, eye + half)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        G, H = self.num_blocks, self.size
        Q = self.base.to(X.dtype) @ self._phi(_skew(X.reshape(G, H, H)))
        # a fresh (non-view) tensor: cuDNN's flatten_parameters re-points RNN weights in place
        return torch.cat(Q.unbind(0), 0)

    @torch.no_grad()
    def right_inverse(self, W: torch.Tensor) -> torch.Tensor:
        """Store (the polar projection of) ``W``'s blocks as the base; the parameter starts at zero."""
        G, H = self.num_blocks, self.size
        if W.shape != (G * H, H):
            raise ValueError(f"W: expected shape {(G * H, H)}, got {tuple(W.shape)}")
        blocks = W.reshape(G, H, H)
        self.base = _project_orthogonal(blocks.to(torch.float64)).to(W.dtype).to(W.device)
        return torch.zeros_like(W)

    def extra_repr(self) -> str:
        return f"num_blocks={self.num_blocks}, size={self.size}, map={self.map!r}"


def _recurrent_names(rnn: nn.Module) -> List[str]:
    return [name for name, _ in rnn.named_parameters(recurse=False) if name.startswith("weight_hh")]


def _check_rnn(rnn) -> None:
    if not isinstance(rnn, _RNN_TYPES):
        raise TypeError(
            f"rnn: expected an nn.GRU / nn.LSTM / nn.RNN (or a *Cell), got {type(rnn).__name__}"
        )


def _parametrized_names(rnn: nn.Module) -> List[str]:
    if not parametrize.is_parametrized(rnn):
        return []
    return [name for name, plist in rnn.parametrizations.items()
            if name.startswith("weight_hh") and any(isinstance(p, BlockOrthogonal) for p in plist)]


def is_orthogonal_parametrized(rnn: nn.Module) -> bool:
    """Whether :func:`orthogonal_parametrize_` has been applied to ``rnn``."""
    _check_rnn(rnn)
    return bool(_parametrized_names(rnn))


def orthogonal_parametrize_(rnn: nn.Module, map: str = "cayley") -> nn.Module:
    """Keep each gate's ``[H, H]`` recurrent block orthogonal throughout training (in place).

    Registers a :class:`BlockOrthogonal` parametrisation on every ``weight_hh*`` of ``rnn``
    (every layer and direction of an ``nn.GRU``/``nn.LSTM``/``nn.RNN``, or the ``weight_hh`` of a
    cell). The current blocks (projected onto the orthogonal group if they are not orthogonal, e.g.
    PyTorch's default uniform init) become the base, so a network initialised with
    :func:`~deepstate.models.nn.orthogonal_init_` computes exactly the same function afterwards.

    Use :func:`cached_parametrizations` around every forward pass (see the module docstring).

    Args:
        rnn: an ``nn.GRU`` / ``nn.LSTM`` / ``nn.RNN`` (``proj_size = 0``) or ``nn.GRUCell`` /
            ``nn.LSTMCell`` / ``nn.RNNCell``.
        map: ``"cayley"`` (default) or ``"expm"``.

    Returns:
        ``rnn`` itself.

    Raises:
        TypeError: ``rnn`` is not a recurrent module.
        ValueError: unknown ``map``; an LSTM with ``proj_size > 0`` (its recurrent blocks are not
            square); ``rnn`` already parametrised.

    Example:
        >>> rnn = orthogonal_parametrize_(nn.GRU(3, 16, batch_first=True))
        >>> [n for n, _ in rnn.named_parameters() if "hh" in n]
        ['bias_hh_l0', 'parametrizations.weight_hh_l0.original']
    """
    _check_rnn(rnn)
    if map not in ORTHOGONAL_MAPS:
        raise ValueError(f"map: expected one of {ORTHOGONAL_MAPS}, got {map!r}")
    if getattr(rnn, "proj_size", 0):
        raise ValueError(f"rnn: an LSTM with proj_size={rnn.proj_size} has non-square recurrent blocks")
    if _parametrized_names(rnn):
        raise ValueError("rnn: already orthogonally parametrised")
    names = _recurrent_names(rnn)
    if not names:
        raise ValueError(f"rnn: {type(rnn).__name__} has no weight_hh parameter to parametrise")
    for name in names:
        W = getattr(rnn, name)
        H = W.shape[1]
        if W.shape[0] % H:
            raise ValueError(f"rnn: {name} of shape {tuple(W.shape)} is not a stack of square blocks")
        par = BlockOrthogonal(W.shape[0] // H, H, map=map, dtype=W.dtype, device=W.device)
        parametrize.register_parametrization(rnn, name, par)
    _allow_deepcopy(rnn)
    rnn.register_forward_pre_hook(_enter_call_cache)
    rnn.register_forward_hook(_exit_call_cache, always_call=True)
    return rnn


def _enter_call_cache(module, args):
    """Forward pre-hook: cache parametrised weights for the duration of this one call.

    ``nn.GRU``'s forward reads each weight four times (``hasattr`` and ``getattr``, twice, to detect
    and refresh changed weights); without this the parametrisation would be evaluated four times per
    call. Entering ``parametrize.cached()`` inside an outer :func:`cached_parametrizations` is a no-op.
    """
    cm = parametrize.cached()
    cm.__enter__()
    module.__dict__.setdefault("_orthogonal_call_caches", []).append(cm)


def _exit_call_cache(module, args, output):
    """Forward hook (``always_call=True``: also runs when forward raises): leave the call's cache."""
    stack = module.__dict__.get("_orthogonal_call_caches")
    if stack:
        stack.pop().__exit__(None, None, None)


def _allow_deepcopy(rnn: nn.Module) -> None:
    """Let ``copy.deepcopy`` copy a parametrised ``nn.GRU``/``nn.LSTM``/``nn.RNN``.

    After a forward pass, ``rnn._flat_weights`` still holds the *computed* recurrent weight, a
    non-leaf tensor that ``deepcopy`` refuses to copy. The copy gets a detached snapshot instead;
    its first forward pass re-reads (recomputes) its own weight anyway. The patched class is the
    one ``torch.nn.utils.parametrize`` made for this module instance alone.
    """
    cls = type(rnn)
    if not isinstance(rnn, nn.RNNBase) or not parametrize.is_parametrized(rnn) or cls.__dict__.get("_deepcopy_detaches"):
        return
    inner = cls.__deepcopy__

    def __deepcopy__(self, memo):
        saved = self.__dict__.get("_flat_weights")
        if saved is not None:
            self.__dict__["_flat_weights"] = [
                w.detach() if isinstance(w, torch.Tensor) and w.grad_fn is not None else w for w in saved
            ]
        try:
            return inner(self, memo)
        finally:
            if saved is not None:
                self.__dict__["_flat_weights"] = saved

    cls.__deepcopy__ = __deepcopy__
    cls._deepcopy_detaches = True


def remove_orthogonal_parametrization_(rnn: nn.Module) -> nn.Module:
    """Undo :func:`orthogonal_parametrize_`: ``weight_hh*`` become plain parameters holding their current value."""
    _check_rnn(rnn)
    names = _parametrized_names(rnn)
    if not names:
        raise ValueError("rnn: not orthogonally parametrised")
    for name in names:
        parametrize.remove_parametrizations(rnn, name, leave_parametrized=True)
    for hooks, fn in ((rnn._forward_pre_hooks, _enter_call_cache), (rnn._forward_hooks, _exit_call_cache)):
        for key in [k for k, h in hooks.items() if h is fn]:
            del hooks[key]
            getattr(rnn, "_forward_hooks_always_called", {}).pop(key, None)
    return rnn


@torch.no_grad()
def orthogonality_error(rnn: nn.Module) -> torch.Tensor:
    r"""``max_k |W_k^T W_k - I|_max`` over every gate block of every ``weight_hh*`` (0-dim tensor).

    Works on any recurrent module (parametrised or not), e.g. to watch an unconstrained RNN drift.
    """
    _check_rnn(rnn)
    errs = []
    for name in sorted(set(_parametrized_names(rnn)) | set(_recurrent_names(rnn))):
        W = getattr(rnn, name)
        H = W.shape[1]
        if W.shape[0] % H:
            continue
        blocks = W.reshape(-1, H, H)
        eye = torch.eye(H, dtype=W.dtype, device=W.device)
        errs.append((blocks.transpose(-1, -2) @ blocks - eye).abs().amax())
    if not errs:
        raise ValueError(f"rnn: {type(rnn).__name__} has no square recurrent blocks")
    return torch.stack(errs).amax()


@torch.no_grad()
def rebase_(rnn: nn.Module) -> nn.Module:
    r"""Fold the current rotation into the base and reset the parameter to zero (weights unchanged).

    "Dynamic trivialisation" (Lezcano-Casado 2019): keeps ``X`` small, where the Cayley map and the
    exponential are best conditioned. Call it rarely (e.g. once per epoch). It changes the
    coordinates of the parameter the optimiser sees, so the optimiser's per-parameter state (Adam
    moments) should be reset afterwards.
    """
    _check_rnn(rnn)
    names = _parametrized_names(rnn)
    if not names:
        raise ValueError("rnn: not orthogonally parametrised")
    for name in names:
        plist = rnn.parametrizations[name]
        par = next(p for p in plist if isinstance(p, BlockOrthogonal))
        W = par(plist.original)
        G, H = par.num_blocks, par.size
        # re-orthogonalise in float64 to shed the rounding error accumulated by the map
        par.base.copy_(_project_orthogonal(W.reshape(G, H, H).to(torch.float64)).to(par.base.dtype))
        plist.original.zero_()
    return rnn


@contextlib.contextmanager
def cached_parametrizations() -> Iterator[None]:
    """Compute every parametrised weight at most once inside the block (``torch.nn.utils.parametrize.cached``).

    Use it around one whole forward pass (e.g. the loss of one batch); gradients still flow to the
    underlying parameters. Re-entrant. Never keep it open across an optimiser step followed by
    another forward pass: the weights would be stale.

    Example:
        >>> rnn = orthogonal_parametrize_(nn.GRU(3, 8, batch_first=True))
        >>> with cached_parametrizations():
        ...     y = rnn(torch.randn(1, 4, 3))[0]
    """
    with parametrize.cached():
        yield
