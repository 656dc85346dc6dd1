"""AdaGrad's diagonal preconditioner ``C_t = (Σ_τ g_τ²)^{1/2}`` (the paper's first ProxGen instance)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from optax import tree_utils as otu

from proxgen_jax._validation import check_beta, check_nonnegative
from proxgen_jax.preconditioners.preconditioned_updates import (
    optional_momentum,
    sqrt_metric_updates,
)


class ScaleByAdagradPrecondState(NamedTuple):
    sum_of_squares: optax.Updates
    mu: optax.Updates  # first moment; an empty tuple when ``momentum == 0``


def scale_by_adagrad_precond(
    initial_accumulator_value: float = 0.1,
    eps: float = 1e-7,
    *,
    momentum: float = 0.0,
) -> optax.GradientTransformation:
    r"""AdaGrad as a ProxGen preconditioner: ``C_t = √(s_0 + Σ_{τ≤t} g_τ²)``, ``δ = eps``.

    With ``R = ‖θ‖₁`` and ``momentum = 0`` this is Duchi et al.'s composite-mirror-descent AdaGrad, the first
    instance the paper lists. ``momentum`` switches on the EMA ``m_t = ρ m_{t−1} + (1−ρ) g_t``.

    Args:
      initial_accumulator_value: ``s_0 ≥ 0`` (optax's default 0.1).
      eps: ``δ ≥ 0``.
      momentum: ``ρ`` in ``[0, 1)``.

    References:
      Duchi, Hazan & Singer, *Adaptive Subgradient Methods*, JMLR 2011.
    """
    check_nonnegative("initial_accumulator_value", initial_accumulator_value)
    check_nonnegative("eps", eps)
    check_beta("momentum", momentum)

    def init_fn(params):
        acc = otu.tree_full_like(params, initial_accumulator_value)
        mu = otu.tree_zeros_like(params) if momentum else ()
        return ScaleByAdagradPrecondState(acc, mu)

    def update_fn(updates, state, params=None):
        del params
        acc = jax.tree.map(lambda g, s: s + jnp.square(g), updates, state.sum_of_squares)
        m, mu = optional_momentum(updates, state.mu, momentum)
        out = sqrt_metric_updates(m, acc, eps, stored=(m, acc, lambda a, b: (a, b)))
        return out, ScaleByAdagradPrecondState(acc, mu)

    return optax.GradientTransformation(init_fn, update_fn)
