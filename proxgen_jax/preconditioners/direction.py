"""What a ProxGen preconditioner hands to the prox: the direction and the metric, kept together."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from optax import tree_utils as otu

_MISUSE = (
    "proxgen_jax: the output of a ProxGen preconditioner (scale_by_*_precond) carries both the direction "
    "(C_t+δI)^{-1} m_t and the metric C_t+δI that the proximal step needs, and must go straight into a "
    "proxgen_jax prox transformation: optax.chain(scale_by_adam_precond(), prox_l1(...)). A transformation "
    "in between (clipping, scaling, weight decay, ...) would change the direction but not the metric and so "
    "silently compute a different method. Put clipping *before* the preconditioner; use "
    "proximal_step(None, ...) for a plain preconditioned step without regularizer."
)


class MisplacedPreconditionerOutput(TypeError, AttributeError):
    """Raised when a preconditioner's output is changed or used by anything but a prox transformation."""


class _Sealed:
    """Aux data of :class:`PreconditionedUpdates`: the metric, the direction's original leaves and, where the
    direction is a fraction ``m_t / (C_t+δ)``, its numerator ``m_t``.

    Compared and hashed by identity, so pytree machinery never compares arrays.
    """

    __slots__ = ("metric", "leaves", "numerator")

    def __init__(self, metric, leaves, numerator=None):
        self.metric = metric
        self.leaves = leaves
        self.numerator = numerator

    def __eq__(self, other):
        return self is other

    def __hash__(self):
        return id(self)


@jax.tree_util.register_pytree_node_class
class PreconditionedUpdates:
    """The pair ``(direction, metric)`` produced by a ProxGen preconditioner.

    * ``direction``: a pytree like the gradients, ``(C_t + δI)^{-1} m_t`` — the pytree children;
    * ``metric``: a pytree of the same structure holding the diagonal of ``C_t + δI`` — sealed aux data;
    * ``numerator`` (optional, sealed too): ``m_t`` itself when the direction is the quotient ``m_t/(C_t+δ)``
      (Adam, RMSprop, AdaGrad). With it a prox can form ``(C_t+δ)·z = (C_t+δ)·θ_t − α_t m_t`` without a division
      and fold ``1/(C_t+δ)`` into its own (:meth:`~proxgen_jax.regularizers.Regularizer.prox_metric_scaled`).

    A transformation placed between the preconditioner and the prox sees only the direction; if it changes
    any leaf, the prox detects it (it keeps the original leaves) and raises
    :class:`MisplacedPreconditionerOutput` instead of silently computing another method. Arithmetic on the
    object itself is refused the same way.
    """

    __slots__ = ("direction", "_sealed")

    def __init__(self, direction: Any, metric: Any, *, numerator: Any = None, _sealed: _Sealed | None = None):
        self.direction = direction
        if _sealed is None:
            _sealed = _Sealed(metric, tuple(jax.tree.leaves(direction)), numerator)
        self._sealed = _sealed

    @property
    def metric(self) -> Any:
        return self._sealed.metric

    @property
    def numerator(self) -> Any:
        """``m_t`` when the direction is ``m_t/(C_t+δ)`` (same structure), else ``None``."""
        return self._sealed.numerator

    def tree_flatten(self):
        return (self.direction,), self._sealed

    @classmethod
    def tree_unflatten(cls, sealed, children):
        return cls(children[0], None, _sealed=sealed)

    def checked(self) -> "DirectionAndMetric":
        """``(direction, metric)``, after verifying that nothing changed the direction on the way."""
        leaves = jax.tree.leaves(self.direction)
        original = self._sealed.leaves
        if len(leaves) != len(original) or any(a is not b for a, b in zip(leaves, original)):
            raise MisplacedPreconditionerOutput("a transformation changed the preconditioned direction. " + _MISUSE)
        return DirectionAndMetric(self.direction, self.metric)

    def __repr__(self) -> str:
        return f"PreconditionedUpdates(direction={self.direction!r}, metric={self.metric!r})"

    def _refuse(self, *args, **kwargs):
        raise MisplacedPreconditionerOutput(_MISUSE)

    __jax_array__ = __array__ = _refuse
    __add__ = __radd__ = __sub__ = __rsub__ = _refuse
    __mul__ = __rmul__ = __truediv__ = __rtruediv__ = _refuse
    __neg__ = __pow__ = __abs__ = _refuse


def sqrt_metric_updates(first_moment: Any, second_moment: Any, eps, eps_root=0.0) -> PreconditionedUpdates:
    """The diagonal ProxGen output for ``C_t = √(second_moment + eps_root)`` and ``δ = eps``.

    Direction ``m_t/(C_t+δ)`` — computed exactly as optax's Adam/RMSprop/AdaGrad divide — and metric ``C_t+δ``;
    ``m_t`` rides along as the numerator. Under ``jit`` only what the prox uses is computed.
    """
    metric = jax.tree.map(lambda v: jnp.sqrt(v + eps_root) + eps, second_moment)
    return PreconditionedUpdates(jax.tree.map(jnp.divide, first_moment, metric), metric, numerator=first_moment)


def optional_momentum(updates: Any, mu: Any, decay) -> tuple[Any, Any]:
    """``(m_t, new_state)`` for an optional first moment: the EMA ``ρ m + (1−ρ) g`` when the state holds one
    (decided at ``init``, so ``decay`` may be traced), else ``(g_t, ())``."""
    if isinstance(mu, tuple) and len(mu) == 0:
        return updates, ()
    mu = otu.tree_update_moment(updates, mu, decay, 1)
    return mu, mu


class DirectionAndMetric(NamedTuple):
    """One step's direction and diagonal metric; ``metric`` is ``None`` for the Euclidean metric."""

    direction: Any
    metric: Any


def split_updates(updates: Any) -> DirectionAndMetric:
    """``(direction, metric)`` from a preconditioner's output; plain updates get the Euclidean metric."""
    if isinstance(updates, PreconditionedUpdates):
        return updates.checked()
    return DirectionAndMetric(updates, None)


def numerator_of(updates: Any) -> Any:
    """The numerator ``m_t`` of a diagonal preconditioner's direction ``m_t/(C_t+δ)``, or ``None`` (call
    :func:`split_updates` first: it checks that nothing changed the direction)."""
    return updates.numerator if isinstance(updates, PreconditionedUpdates) else None
