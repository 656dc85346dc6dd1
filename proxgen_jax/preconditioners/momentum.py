"""The paper's first-order momentum ``m_t = ρ m_{t−1} + (1−ρ) g_t`` as its own transformation."""

from __future__ import annotations

from typing import NamedTuple

import optax
from optax import tree_utils as otu

from proxgen_jax._validation import check_beta


class EmaMomentumState(NamedTuple):
    mu: optax.Updates


def ema_momentum(decay: float = 0.9) -> optax.GradientTransformation:
    r"""``m_t = ρ m_{t−1} + (1−ρ) g_t`` (Algorithm 1, line 6), without bias correction.

    Unlike ``optax.trace`` (``m_t = ρ m_{t−1} + g_t``) this is the convex combination ProxGen analyses. Its
    output is a plain update, so a prox transformation after it uses the Euclidean metric (``C_t = 0``,
    ``δ = 1``): ``optax.chain(ema_momentum(0.9), prox_l1(...))`` is proximal SGD with momentum.

    Args:
      decay: ``ρ`` in ``[0, 1)``.
    """
    check_beta("decay", decay)

    def init_fn(params):
        return EmaMomentumState(otu.tree_zeros_like(params))

    def update_fn(updates, state, params=None):
        del params
        mu = otu.tree_update_moment(updates, state.mu, decay, 1)
        return mu, EmaMomentumState(mu)

    return optax.GradientTransformation(init_fn, update_fn)
