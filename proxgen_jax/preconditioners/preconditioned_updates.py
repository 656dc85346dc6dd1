"""What a ProxGen preconditioner hands to the prox: ``m_t``, the metric ``C_t+δI`` and the direction, together.

The object lives for exactly one hop, from the preconditioner to the prox link that follows it in an
``optax.chain``. It is a registered pytree node whose flattening *refuses*: every pytree walk over it — a
transformation placed in between (``optax.scale``, ``clip_by_global_norm``, ``add_decayed_weights`` …), or
``jax.jit`` returning it — raises :class:`MisplacedPreconditionerOutput` naming the transformation that did it
and the fix. It holds its arrays as plain attributes, so nothing is ever kept in static (aux) data and no tracer
can leak. Why this and not a wrapper (like ``optax.contrib.schedule_free(base)``): the card's
``optax.chain(scale_by_adam_precond(), prox_lq(...))`` keeps working verbatim, and a misuse fails at the first
place it happens instead of silently computing another method.
"""

from __future__ import annotations

import functools
import sys
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from optax import tree_utils as otu

_FIX = (
    "The output of a ProxGen preconditioner (scale_by_*_precond) carries m_t, the metric C_t+δI and the direction "
    "(C_t+δI)^{-1} m_t, and must go straight into a proxgen_jax prox transformation: "
    "optax.chain(scale_by_adam_precond(), prox_l1(...)). A transformation in between would change the direction "
    "but not the metric and so silently compute a different method. Put clipping and scaling *before* the "
    "preconditioner, use the prox's `weight_decay=` argument instead of optax.add_decayed_weights, and use "
    "proximal_step(None, ...) for a plain preconditioned step. Do not return it from jax.jit on its own: jit the "
    "whole chain's update."
)


class MisplacedPreconditionerOutput(TypeError, AttributeError):
    """Raised when a preconditioner's output is changed or used by anything but a prox transformation."""


def _misuse_message() -> str:
    """Who walked the object, read from the call stack: the optax transformation (an ``update_fn``) placed
    between the preconditioner and the prox, else ``jax.jit`` returning it, else the first caller outside jax."""
    frame = sys._getframe(2)
    jitted, caller = False, None
    while frame is not None:
        code = frame.f_code
        path = code.co_filename.replace("\\", "/")
        inside = "/proxgen_jax/" in path or "/jax/" in path or "/jaxlib/" in path
        if code.co_name in ("update_fn", "update") and not inside:
            name = getattr(code, "co_qualname", code.co_name).split(".<locals>")[0]
            return (f"proxgen_jax: `{name}` ({'/'.join(path.rsplit('/', 2)[-2:])}) is placed between a ProxGen "
                    "preconditioner and its prox, and walked the preconditioner's output as a pytree. ")
        jitted = jitted or path.endswith(("/jax/_src/pjit.py", "/jax/_src/api.py"))
        if caller is None and not inside:
            caller = f"{path.rsplit('/', 1)[-1]}:{frame.f_lineno}"
        frame = frame.f_back
    if jitted:
        return f"proxgen_jax: a ProxGen preconditioner's output was returned from jax.jit (called at {caller}). "
    return f"proxgen_jax: a ProxGen preconditioner's output was walked as a pytree (at {caller}). "


def _refuse_walk(*args, **kwargs):
    raise MisplacedPreconditionerOutput(_misuse_message() + _FIX)


class PreconditionedUpdates:
    """One step's ``(direction, metric, momentum)`` from a ProxGen preconditioner, for the prox link only.

    Attributes:
      direction: ``(C_t+δI)^{-1} m_t``, a pytree like the gradients.
      metric: ``C_t+δI`` per leaf: an array (the diagonal) or a
        :class:`~proxgen_jax.solvers.metric_operators.MetricOperator` (KFAC, full matrix).
      momentum: ``m_t`` itself (same structure) when the direction is the quotient ``m_t/(C_t+δ)`` (Adam,
        RMSprop, AdaGrad), else ``None``. A prox may then form ``(C_t+δ)·z = (C_t+δ)·θ_t − α_t m_t`` without a
        division.
      rebuild: ``None``, or per leaf (same structure) a zero-argument function returning that leaf's
        ``(direction, metric, momentum)`` computed afresh from the preconditioner's new state — buffers the step
        writes anyway. A prox that needs a costly function of them twice (a budget's gains: once to select, once
        to write the step) calls it inside a separate region (:func:`~proxgen_jax.transforms.engine.isolated`), so
        that XLA recomputes the metric there instead of writing ``C_t+δ`` and ``z`` to memory for both uses.

    Any pytree walk over the object, and any arithmetic on it, raises :class:`MisplacedPreconditionerOutput`.
    """

    __slots__ = ("direction", "metric", "momentum", "rebuild")

    def __init__(self, direction: Any, metric: Any, momentum: Any = None, rebuild: Any = None):
        self.direction = direction
        self.metric = metric
        self.momentum = momentum
        self.rebuild = rebuild

    def __repr__(self) -> str:
        return f"PreconditionedUpdates(direction={self.direction!r}, metric={self.metric!r})"

    def _refuse(self, *args, **kwargs):
        raise MisplacedPreconditionerOutput(f"proxgen_jax: arithmetic on a preconditioner's output. {_FIX}")

    __jax_array__ = __array__ = _refuse
    __add__ = __radd__ = __sub__ = __rsub__ = _refuse
    __mul__ = __rmul__ = __truediv__ = __rtruediv__ = _refuse
    __neg__ = __pow__ = __abs__ = _refuse


jax.tree_util.register_pytree_node(PreconditionedUpdates, _refuse_walk, _refuse_walk)


def _sqrt_metric_leaf(first, second, eps, eps_root):
    metric = jnp.sqrt(second + eps_root) + eps
    return first / metric, metric, first


def _rebuilt_leaf(unbias, first_state, second_state, eps, eps_root):
    return _sqrt_metric_leaf(*unbias(first_state, second_state), eps, eps_root)


def sqrt_metric_updates(first_moment: Any, second_moment: Any, eps, eps_root=0.0, *,
                        stored: tuple | None = None) -> PreconditionedUpdates:
    """The diagonal ProxGen output for ``C_t = √(second_moment + eps_root)`` and ``δ = eps``.

    Direction ``m_t/(C_t+δ)`` — computed exactly as optax's Adam/RMSprop/AdaGrad divide — metric ``C_t+δ`` and
    ``m_t`` itself. Under ``jit`` only what the prox uses is computed.

    Args:
      first_moment, second_moment: ``m_t`` and the second moment under the root (bias-corrected where used).
      eps, eps_root: ``δ`` and the constant under the root.
      stored: optional ``(first_state, second_state, unbias)``: the moments as the new state holds them and
        ``unbias(first_state_leaf, second_state_leaf) -> (first_leaf, second_leaf)`` (e.g. the bias correction),
        for :attr:`PreconditionedUpdates.rebuild`.
    """
    results = jax.tree.map(lambda m, v: _sqrt_metric_leaf(m, v, eps, eps_root), first_moment, second_moment)
    direction, metric = (jax.tree.map(lambda _, r, i=i: r[i], first_moment, results) for i in range(2))
    rebuild = None
    if stored is not None:
        first_state, second_state, unbias = stored
        rebuild = jax.tree.map(lambda a, b: functools.partial(_rebuilt_leaf, unbias, a, b, eps, eps_root),
                               first_state, second_state)
    return PreconditionedUpdates(direction, metric, first_moment, rebuild)


def optional_momentum(updates: Any, mu: Any, decay) -> tuple[Any, Any]:
    """``(m_t, new_state)`` for an optional first moment: the EMA ``ρ m + (1−ρ) g`` when the state holds one
    (decided at ``init``, so ``decay`` may be traced), else ``(g_t, ())``."""
    if isinstance(mu, tuple) and len(mu) == 0:
        return updates, ()
    mu = otu.tree_update_moment(updates, mu, decay, 1)
    return mu, mu


class StepInputs(NamedTuple):
    """A prox link's inputs as trees: ``metric`` and ``momentum`` are ``None`` after a plain optax transform
    (the Euclidean metric; ``direction`` is then the updates themselves)."""

    direction: Any
    metric: Any
    momentum: Any


def split_updates(updates: Any) -> StepInputs:
    """``(direction, metric, momentum)`` from a preconditioner's output; plain updates get the Euclidean metric."""
    if isinstance(updates, PreconditionedUpdates):
        return StepInputs(updates.direction, updates.metric, updates.momentum)
    return StepInputs(updates, None, None)


def rebuild_of(updates: Any) -> Any:
    """:attr:`PreconditionedUpdates.rebuild` of a preconditioner's output (``None`` for plain updates)."""
    return updates.rebuild if isinstance(updates, PreconditionedUpdates) else None
