"""SCAD, the smoothly clipped absolute deviation penalty (Fan & Li 2001)."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from proxgen_jax._validation import check_in_range
from proxgen_jax.regularizers.base import ElementwiseRegularizer, penalty_args, prox_args


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
        z, a, lam = prox_args(z, step, lam)
        g = self.gamma
        t = jnp.abs(z)
        al = a * lam
        soft = z - jnp.copysign(jnp.minimum(t, al), z)  # sign(z)·max(|z| − aλ, 0), exact for tiny steps
        convex = g > 1 + a
        gap = jnp.where(convex, g - 1 - a, jnp.ones_like(a))  # safe denominator for the unused branch
        # ((γ−1)z − sign(z)aγλ)/(γ−1−a), written as a correction to z so that tiny steps return z exactly.
        middle = z - jnp.copysign((a * (g * lam - t)) / gap, z)
        # Which piece applies, decided on masks first (cheap) and then one select per value.
        # Non-convex regime (γ ≤ 1 + a): soft threshold or identity, whichever is lower.
        nonconvex_soft = jnp.where(a < g + 1, t <= lam * (g + 1 + a) / 2, t * t <= lam * lam * (a * (g + 1)))
        use_soft = jnp.where(convex, t <= lam + al, nonconvex_soft)
        use_middle = convex & (t <= g * lam)
        return jnp.where(use_soft, soft, jnp.where(use_middle, middle, z))

    def subgradient(self, x, lam):
        x, lam = penalty_args(x, lam)
        t = jnp.abs(x)
        g = self.gamma
        mag = jnp.where(t <= lam, lam, jnp.maximum(g * lam - t, 0) / (g - 1))
        return jnp.sign(x) * mag
