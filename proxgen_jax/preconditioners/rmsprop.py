"""RMSprop's diagonal preconditioner ``C_t = √v_t``."""

from __future__ import annotations

from typing import NamedTuple

import optax
from optax import tree_utils as otu

from proxgen_jax._validation import check_beta, check_nonnegative
from proxgen_jax.preconditioners.preconditioned_updates import (
    optional_momentum,
    sqrt_metric_updates,
)


class ScaleByRmspropPrecondState(NamedTuple):
    nu: optax.Updates
    mu: optax.Updates  # first moment; an empty tuple when ``momentum == 0``


def scale_by_rmsprop_precond(
    decay: float = 0.9,
    eps: float = 1e-8,
    *,
    initial_scale: float = 0.0,
    momentum: float = 0.0,
) -> optax.GradientTransformation:
    r"""RMSprop as a ProxGen preconditioner: ``v_t = β v_{t−1} + (1−β) g_t²``, ``C_t = √v_t``, ``δ = eps``.

    ``m_t = g_t`` when ``momentum = 0``, else the paper's EMA ``m_t = ρ m_{t−1} + (1−ρ) g_t``. Follow it by a
    prox transformation. No bias correction, as in optax/PyTorch RMSprop (``initial_scale`` seeds ``v_0``).

    Args:
      decay: ``β`` in ``[0, 1)``.
      eps: ``δ ≥ 0``.
      initial_scale: ``v_0 ≥ 0``.
      momentum: ``ρ`` in ``[0, 1)``.

    References:
      Tieleman & Hinton, Lecture 6.5 — RMSprop, COURSERA 2012.
    """
    check_beta("decay", decay)
    check_nonnegative("eps", eps)
    check_nonnegative("initial_scale", initial_scale)
    check_beta("momentum", momentum)

    def init_fn(params):
        nu = otu.tree_full_like(params, initial_scale)
        mu = otu.tree_zeros_like(params) if momentum else ()
        return ScaleByRmspropPrecondState(nu, mu)

    def update_fn(updates, state, params=None):
        del params
        nu = otu.tree_update_moment_per_elem_norm(updates, state.nu, decay, 2)
        m, mu = optional_momentum(updates, state.mu, momentum)
        return sqrt_metric_updates(m, nu, eps, stored=(m, nu, lambda a, b: (a, b))), ScaleByRmspropPrecondState(nu, mu)

    return optax.GradientTransformation(init_fn, update_fn)
