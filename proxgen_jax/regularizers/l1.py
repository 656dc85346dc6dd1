"""ℓ1: ``r(x) = |x|`` — soft thresholding (the paper's Eq. 3)."""

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


@_metric_forms.fold_metric_division
@dataclasses.dataclass(frozen=True)
class L1(ElementwiseRegularizer):
    """The lasso penalty ``λ‖θ‖₁``.

    With ``μ = step·λ`` (``step = α_t/(C_t+δ)``) the prox is soft thresholding,
    ``x = sign(z)·max(|z| − μ, 0)`` (ProxGen Eq. 3). The subgradient is ``λ·sign(x)``, taking the
    minimal-norm element ``0`` of ``[−λ, λ]`` at ``x = 0``.
    """

    def penalty(self, x, lam):
        x, lam = penalty_args(x, lam)
        return lam * jnp.abs(x)

    def prox(self, z, step, lam):
        z, step, lam = prox_args(z, step, lam)
        # copysign, not sign(z)·…: one instruction instead of five in the fused step; NaN stays NaN.
        return jnp.copysign(jnp.maximum(jnp.abs(z) - step * lam, 0), z)

    def subgradient(self, x, lam):
        x, lam = penalty_args(x, lam)
        return lam * jnp.sign(x)


@_metric_forms.prox_metric_scaled.register(L1)
def _prox_metric_scaled(regularizer, cz, learning_rate, metric, lam):
    del regularizer
    # sign(z)·max(|z| − αλ/c, 0) = sign(cz)·max(|cz| − αλ, 0)/c: the only division is by c.
    cz, alpha, c, lam = metric_prox_args(cz, learning_rate, metric, lam)
    return jnp.copysign(jnp.maximum(jnp.abs(cz) - alpha * lam, 0), cz) / c
