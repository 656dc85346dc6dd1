"""ℓ0: ``r(x) = [x ≠ 0]`` — hard thresholding (the paper's Eq. 4)."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from proxgen_jax.regularizers import _metric_forms
from proxgen_jax.regularizers.base import (
    ElementwiseRegularizer,
    metric_prox_args,
    penalty_args,
    prox_args,
)


@dataclasses.dataclass(frozen=True)
class L0(ElementwiseRegularizer):
    """The counting penalty ``λ‖θ‖₀``.

    The prox keeps ``z`` where ``|z| > √(2·step·λ)`` and zeroes it otherwise (Eq. 4); the comparison is
    made on squares (``z² > 2μ``), so no root is taken. At ``|z| = √(2μ)`` both ``0`` and ``z`` are
    minimisers; we keep ``z``. ``r`` is locally constant off zero, so the subgradient is ``0``: ℓ0
    cannot be trained by subgradients, which is why the paper compares it with ℓ0-hc instead.
    """

    def penalty(self, x, lam):
        x, lam = penalty_args(x, lam)
        return jnp.where(x != 0, lam, jnp.zeros_like(lam))

    def prox(self, z, step, lam):
        # The step is the metric form with α = step and metric 1 (the multiplication by 1 is exact).
        z, step, lam = prox_args(z, step, lam)
        return _prox_metric(self, z, step, jnp.ones_like(step), lam)

    def subgradient(self, x, lam):
        x, _ = penalty_args(x, lam)
        return jnp.where(jnp.isnan(x), x, jnp.zeros_like(x))


@_metric_forms.prox_metric.register(L0)
def _prox_metric(regularizer, z, learning_rate, metric, lam):
    del regularizer
    z, alpha, c, lam = metric_prox_args(z, learning_rate, metric, lam)
    # z² < 2αλ/c without the division (c = C_t + δ ≥ 0). Strict ``<``: NaN anywhere fails the test and keeps
    # z, and λ = 0 is an exact identity even where z² underflows.
    return jnp.where((z * z) * c < 2 * (alpha * lam), jnp.zeros_like(z), z)
