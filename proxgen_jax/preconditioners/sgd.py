"""The identity preconditioner ``C_t = 0``, ``δ = 1``: proximal SGD with momentum as a ProxGen instance."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from proxgen_jax._validation import check_beta, check_positive
from proxgen_jax.preconditioners.momentum import ema_momentum
from proxgen_jax.preconditioners.preconditioned_updates import PreconditionedUpdates


def scale_by_sgd_precond(momentum: float = 0.9, *, delta: float = 1.0) -> optax.GradientTransformation:
    r"""``m_t = ρ m_{t−1} + (1−ρ) g_t`` with the constant metric ``C_t + δ = δ`` (``δ = 1``: plain SGD).

    The step is ``θ_{t+1} = prox_{(α_t/δ) λ R}(θ_t − (α_t/δ) m_t)``. Equivalent to :func:`ema_momentum`
    followed by a prox when ``δ = 1``; the explicit metric lets ``δ`` rescale the step.

    Args:
      momentum: ``ρ`` in ``[0, 1)``; ``0`` gives ``m_t = g_t``.
      delta: ``δ > 0``.
    """
    check_positive("delta", delta)
    check_beta("momentum", momentum)
    inner = ema_momentum(momentum)

    def update_fn(updates, state, params=None):
        m, state = inner.update(updates, state, params)
        metric = jax.tree.map(lambda x: jnp.full_like(x, delta), m)
        direction = jax.tree.map(lambda x: x / delta, m)
        return PreconditionedUpdates(direction, metric), state

    return optax.GradientTransformation(inner.init, update_fn)
