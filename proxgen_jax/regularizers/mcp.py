"""MCP, the minimax concave penalty (Zhang 2010)."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from proxgen_jax._validation import check_positive
from proxgen_jax.regularizers import _metric_forms
from proxgen_jax.regularizers.base import (
    ElementwiseRegularizer,
    metric_prox_args,
    penalty_args,
    prox_args,
)


@_metric_forms.fold_metric_division
@dataclasses.dataclass(frozen=True)
class MCP(ElementwiseRegularizer):
    """``P_{λ,γ}(x) = λ|x| − x²/(2γ)`` for ``|x| ≤ γλ`` and ``γλ²/2`` beyond.

    Unlike ℓq, ``λ`` shapes the penalty (it is not a plain multiplier), so ``lam`` is MCP's own λ.

    The 1-D prox problem ``P(x) + (x − z)²/(2a)`` (``a = step = α_t/(C_t+δ)``) is convex only when ``a < γ``.
    With Adam ``a`` reaches ~1e8 where ``C_t ≈ 0``, so the regime is chosen per coordinate:

    * ``a < γ`` (firm thresholding): ``0`` if ``|z| ≤ aλ``; ``sign(z)(|z| − aλ)/(1 − a/γ)`` if ``|z| ≤ γλ``;
      ``z`` beyond.
    * ``a ≥ γ``: hard thresholding at ``λ√(aγ)`` (tested on squares); at the tie we keep ``z``.

    Subgradient: ``sign(x)·max(λ − |x|/γ, 0)``, ``0`` at ``x = 0``.

    Args:
      gamma: the concavity parameter ``γ > 0``.
    """

    gamma: float = 3.0

    def __post_init__(self):
        check_positive("gamma", self.gamma)

    def penalty(self, x, lam):
        x, lam = penalty_args(x, lam)
        t = jnp.abs(x)
        g = self.gamma
        return jnp.where(t <= g * lam, lam * t - t * t / (2 * g), g * lam * lam / 2)

    def prox(self, z, step, lam):
        # The step a is the metric form with α = a and metric 1 (the multiplications by 1 are exact).
        z, a, lam = prox_args(z, step, lam)
        return _prox_metric(self, z, a, jnp.ones_like(a), lam)

    def subgradient(self, x, lam):
        x, lam = penalty_args(x, lam)
        return jnp.sign(x) * jnp.maximum(lam - jnp.abs(x) / self.gamma, 0)


@_metric_forms.prox_metric.register(MCP)
def _prox_metric(regularizer, z, learning_rate, metric, lam):
    # The prox with a = α/c, every test multiplied through by c = C_t + δ: one division instead of two.
    z, alpha, c, lam = metric_prox_args(z, learning_rate, metric, lam)
    g = regularizer.gamma
    t = jnp.abs(z)
    convex = alpha < g * c  # a < γ
    gap = jnp.where(convex, g * c - alpha, jnp.ones_like(c))  # c·(γ − a), safe in the unused branch
    # sign(z)(|z| − aλ)/(1 − a/γ), written as a correction to z so that tiny steps return z exactly.
    # The shrinkage is clipped at |z| so that cancellation cannot flip the sign.
    firm = z - jnp.copysign(jnp.minimum((alpha * (g * lam - t)) / gap, t), z)
    # Which piece applies, decided on masks first (cheap) and then one select per value. The hard threshold
    # is strict, so λ = 0 keeps z exactly.
    zero = jnp.where(convex, t * c <= alpha * lam, (t * t) * c < lam * lam * (alpha * g))
    use_firm = convex & (t <= g * lam)
    return jnp.where(zero, jnp.zeros_like(z), jnp.where(use_firm, firm, z))


@_metric_forms.prox_metric_scaled.register(MCP)
def _prox_metric_scaled(regularizer, cz, learning_rate, metric, lam):
    # Each piece of the prox of z = cz/c as one quotient: firm x = sign(z)(|z| − aλ)/(1 − a/γ)
    # = sign(cz)·γ(|cz| − αλ)/(γc − α) (positive there: |cz| > αλ and γc > α); beyond, x = cz/c.
    cz, alpha, c, lam = metric_prox_args(cz, learning_rate, metric, lam)
    g = regularizer.gamma
    t = jnp.abs(cz)  # c·|z|
    convex = alpha < g * c
    zero = jnp.where(convex, t <= alpha * lam, t * t < (lam * lam) * (alpha * g) * c)
    use_firm = convex & (t <= (g * lam) * c)
    num = jnp.where(use_firm, jnp.copysign(g * (t - alpha * lam), cz), cz)
    den = jnp.where(use_firm, g * c - alpha, c)
    return jnp.where(zero, jnp.zeros_like(cz), num / den)
