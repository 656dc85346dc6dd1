"""KFAC statistics capture for Flax nnx: the inputs and output gradients of every ``nnx.Linear``, in one pass.

:func:`kfac_value_and_grad` taps every ``nnx.Linear`` during the forward pass, records the inputs
(``Module.sow``) and differentiates with respect to a zero perturbation added to each output
(``Module.perturb``), all in the same backward pass as the gradients; the result feeds
:func:`~proxgen_jax.preconditioners.kfac.scale_by_kfac_precond` as ``update(..., kfac_stats=stats)``.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any

from proxgen_jax.preconditioners.kfac import bias_factors, dense_factors

_INPUTS = "_kfac_inputs"
_OUTPUTS = "_kfac_outputs"


@contextlib.contextmanager
def _tapped_linear():
    """Within the context, ``nnx.Linear.__call__`` records its input and perturbs its output under ``nnx.capture``.

    The tap is active only inside ``nnx.capture`` (the module carries ``__captures__``); elsewhere Linear
    behaves as usual. The class attribute is restored on exit (Flax's own ``capture(method_outputs=...)``
    instruments classes the same way).
    """
    from flax import nnx

    original = nnx.Linear.__call__
    if getattr(original, "_proxgen_kfac_tap", False):  # nested use
        yield
        return

    @functools.wraps(original)
    def tapped(self, inputs, *args, **kwargs):
        y = original(self, inputs, *args, **kwargs)
        if hasattr(self, "__captures__"):
            self.sow(nnx.Intermediate, _INPUTS, inputs)
            y = self.perturb(_OUTPUTS, y)
        return y

    tapped._proxgen_kfac_tap = True
    nnx.Linear.__call__ = tapped
    try:
        yield
    finally:
        nnx.Linear.__call__ = original


def _flat(state) -> dict:
    from flax import nnx

    out = {}
    for path, var in nnx.to_flat_state(state):
        out[tuple(path)] = var.get_value() if hasattr(var, "get_value") else var
    return out


def _nest(flat: dict) -> dict:
    root: dict = {}
    for path, value in flat.items():
        node = root
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = value
    return root


def kfac_value_and_grad(loss_fn: Callable[..., Any], *, has_aux: bool = False) -> Callable[..., Any]:
    """Like ``nnx.value_and_grad(loss_fn)``, also returning the KFAC statistics of every ``nnx.Linear``.

    ``loss_fn(model, *args, **kwargs)`` must return the *mean* loss over the batch (or ``(loss, aux)`` with
    ``has_aux``). The returned function gives ``(loss, grads, kfac_stats)`` (``((loss, aux), grads,
    kfac_stats)`` with ``has_aux``): ``grads`` as ``nnx.grad`` gives them (w.r.t. ``nnx.Param``), and
    ``kfac_stats`` a nested dict keyed like the parameters with :class:`KroneckerFactors` at each Linear's
    ``kernel`` and ``bias`` — pass it on as ``optimizer.update(model, grads, kfac_stats=kfac_stats)``.

    One forward and one backward pass: the output gradients ``δ`` come from differentiating with respect to
    zero perturbations added to each Linear's output (``Module.perturb``), in the same backward pass as the
    parameter gradients; the inputs are recorded with ``Module.sow``. Under ``jit`` XLA removes the
    shape-only pass that creates the zero perturbations.

    Limitations: only ``nnx.Linear`` (and subclasses that do not override ``__call__``) is tapped; a layer
    called more than once per loss (weight sharing) raises ``ValueError``; during tracing the class attribute
    ``nnx.Linear.__call__`` is temporarily replaced (not thread-safe across concurrent traces).

    Example:
      >>> loss, grads, stats = kfac_value_and_grad(loss_fn)(model, x, y)   # doctest: +SKIP
      >>> optimizer.update(model, grads, kfac_stats=stats)                  # doctest: +SKIP
    """
    def wrapped(model, *args, **kwargs):
        from flax import nnx

        with _tapped_linear():
            _, probes = nnx.capture(loss_fn, nnx.Perturbation)(model, *args, **kwargs)

            def inner(model, probes):
                out, inter = nnx.capture(loss_fn, nnx.Intermediate, init=probes)(model, *args, **kwargs)
                loss, aux = out if has_aux else (out, None)
                return loss, (aux, inter)

            (loss, (aux, inter)), (grads, probe_grads) = nnx.value_and_grad(
                inner, argnums=(0, 1), has_aux=True)(model, probes)

        inputs = {k[:-1]: v for k, v in _flat(inter).items() if k[-1] == _INPUTS}
        deltas = {k[:-1]: v for k, v in _flat(probe_grads).items() if k[-1] == _OUTPUTS}
        modules = dict(nnx.iter_modules(model))
        stats = {}
        for path, recorded in inputs.items():
            if len(recorded) != 1:
                raise ValueError(f"nnx.Linear at {path} was called {len(recorded)} times in one loss; "
                                 "kfac_value_and_grad supports one call per layer.")
            delta = deltas[path]
            stats[path + ("kernel",)] = dense_factors(recorded[0], delta)
            if getattr(modules.get(path), "bias", None) is not None:
                stats[path + ("bias",)] = bias_factors(delta)
        out = (loss, aux) if has_aux else loss
        return out, grads, _nest(stats)

    return wrapped
