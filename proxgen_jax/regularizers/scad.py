"""SCAD, the smoothly clipped absolute deviation penalty (Fan & Li 2001)."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from proxgen_jax._validation import check_in_range
from proxgen_jax.regularizers import _metric_forms
from proxgen_jax.regularizers.base import (
    ElementwiseRegularizer,
    metric_prox_args,
    penalty_args,
    prox_args,
)


@_metric_forms.fold_metric_division
@dataclasses.dataclass(frozen=True)
class SCAD(ElementwiseRegularizer):
    """``λ|x|`` for ``|x| ≤ λ``; ``(2γλ|x| − x² − λ²)/(2(γ−1))`` up to ``γλ``; ``(γ+1)λ²/2`` beyond.

    (Fan & Li call ``γ`` "a".) ``lam`` is SCAD's own λ. With ``a = step = α_t/(C_t+δ)`` the 1-D prox problem is
    convex only when ``γ > 1 + a``; the regime is chosen per coordinate:

    * ``γ > 1 + a``: soft threshold ``sign(z)max(|z| − aλ, 0)`` for ``|z| ≤ λ(1+a)``;
      ``((γ−1)z − sign(z)aγλ)/(γ−1−a)`` for ``|z| ≤ γλ``; ``z`` beyond.
    * ``γ ≤ 1 + a``: the middle piece has no interior minimum; soft threshold below ``t*`` and ``z`` above,
      with ``t* = λ(γ+1+a)/2`` if ``a < γ+1`` and ``t* = λ√(a(γ+1))`` otherwise (compared on squares).

    Subgradient: ``λ sign(x)`` for ``|x| ≤ λ``, ``sign(x)(γλ − |x|)/(γ−1)`` up to ``γλ``, ``0`` beyond
    (``0`` at ``x = 0``).

    Args:
      gamma: the shape parameter, ``γ > 1`` (3.7 in Fan & Li).
    """

    gamma: float = 3.7

    def __post_init__(self):
        check_in_range("gamma", self.gamma, 1.0, float("inf"), low_open=True)

    def penalty(self, x, lam):
        x, lam = penalty_args(x, lam)
        t = jnp.abs(x)
        g = self.gamma
        middle = (2 * g * lam * t - t * t - lam * lam) / (2 * (g - 1))
        return jnp.where(t <= lam, lam * t, jnp.where(t <= g * lam, middle, (g + 1) * lam * lam / 2))

    def prox(self, z, step, lam):
        # The step a is the metric form with α = a and metric 1 (the multiplications by 1 are exact).
        z, a, lam = prox_args(z, step, lam)
        return _prox_metric(self, z, a, jnp.ones_like(a), lam)

    def subgradient(self, x, lam):
        x, lam = penalty_args(x, lam)
        t = jnp.abs(x)
        g = self.gamma
        mag = jnp.where(t <= lam, lam, jnp.maximum(g * lam - t, 0) / (g - 1))
        return jnp.sign(x) * mag


@_metric_forms.prox_metric.register(SCAD)
def _prox_metric(regularizer, z, learning_rate, metric, lam):
    # The prox with a = α/c, every test multiplied through by c = C_t + δ, and the shrinkage |z| − |x| of
    # whichever piece applies as one quotient N/D: one division where a = α/c and the middle piece took two.
    z, alpha, c, lam = metric_prox_args(z, learning_rate, metric, lam)
    g = regularizer.gamma
    t = jnp.abs(z)
    convex = alpha < (g - 1) * c  # γ > 1 + a
    # Non-convex regime: soft threshold below t* and z above, t* = λ(γ+1+a)/2 if a < γ+1, else λ√(a(γ+1)).
    nonconvex_soft = jnp.where(alpha < (g + 1) * c, 2 * (t * c) <= lam * ((g + 1) * c + alpha),
                               (t * t) * c <= lam * lam * (alpha * (g + 1)))
    use_soft = jnp.where(convex, t * c <= lam * (c + alpha), nonconvex_soft)  # soft: |z| ≤ λ(1 + a)
    use_middle = convex & (t <= g * lam)
    # Shrinkage: soft aλ = αλ/c; middle a(γλ − |z|)/(γ − 1 − a) = α(γλ − |z|)/((γ−1)c − α); else 0. Clipped
    # at |z| (soft below aλ lands on 0 exactly); z − shrinkage keeps tiny steps returning z exactly.
    num = jnp.where(use_soft, alpha * lam, jnp.where(use_middle, alpha * (g * lam - t), jnp.zeros_like(t)))
    den = jnp.where(use_soft, c, jnp.where(use_middle, (g - 1) * c - alpha, jnp.ones_like(c)))
    return z - jnp.copysign(jnp.minimum(num / den, t), z)


@_metric_forms.prox_metric_scaled.register(SCAD)
def _prox_metric_scaled(regularizer, cz, learning_rate, metric, lam):
    # The same tests for z = cz/c (c|z| = |cz|), and each piece as one quotient: soft sign(cz)·max(|cz| − αλ,
    # 0)/c; middle ((γ−1)z − sign(z)aγλ)/(γ−1−a) = ((γ−1)cz − sign(cz)αγλ)/((γ−1)c − α), whose numerator
    # keeps the sign of cz there (|cz| > λ(c + α)); identity cz/c.
    cz, alpha, c, lam = metric_prox_args(cz, learning_rate, metric, lam)
    g = regularizer.gamma
    t = jnp.abs(cz)  # c·|z|
    convex = alpha < (g - 1) * c
    nonconvex_soft = jnp.where(alpha < (g + 1) * c, 2 * t <= lam * ((g + 1) * c + alpha),
                               t * t <= (lam * lam) * (alpha * (g + 1)) * c)
    use_soft = jnp.where(convex, t <= lam * (c + alpha), nonconvex_soft)
    use_middle = convex & (t <= (g * lam) * c)  # where not soft
    soft = jnp.copysign(jnp.maximum(t - alpha * lam, 0), cz)
    middle = (g - 1) * cz - jnp.copysign(alpha * (g * lam), cz)
    num = jnp.where(use_soft, soft, jnp.where(use_middle, middle, cz))
    den = jnp.where(use_middle & ~use_soft, (g - 1) * c - alpha, c)
    return num / den
