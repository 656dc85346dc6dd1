"""Quantisation regularizers ``dist(θ, L)^q`` for a finite level set ``L`` (ProxQuant's W-shape)."""

from __future__ import annotations

import dataclasses
import itertools

import jax.numpy as jnp

from proxgen_jax._validation import check_in_range
from proxgen_jax.regularizers import _metric_forms
from proxgen_jax.regularizers.base import (
    ElementwiseRegularizer,
    metric_prox_args,
    penalty_args,
    prox_args,
)
from proxgen_jax.regularizers.lq import Lq, lq
from proxgen_jax.regularizers.lq_root import nonzero_shrinkage


@dataclasses.dataclass(frozen=True)
class Quantization(ElementwiseRegularizer):
    """``λ Σ_i dist(θ_i, L)^q`` for a sorted finite level set ``L`` and ``0 ≤ q ≤ 1``.

    ``L = (−1, 1)`` with ``q = 1`` is ProxQuant's W-shaped binary regularizer; ``q ∈ {0, ½, ⅔}`` are the
    paper's generalised ``R^q_bin`` (Sec. 2). The prox of ``dist(·, L)^q`` moves ``z`` towards its nearest
    level ``ℓ`` (every point beyond a cell's midpoint is beaten by its mirror image inside the cell), so
    ``prox(z) = ℓ + prox_{ℓq}(z − ℓ)`` — exact, and it lands on ``ℓ`` exactly when the ℓq prox is zero.

    ``dist(0, {±1}) = 1``: the literal ``|θ − sign θ|`` with ``sign 0 = 0`` would give 0 there. At a midpoint
    between two levels (``z = 0`` for binary) the problem has two mirror-image minimisers; we take the upper
    level. The subgradient is the ℓq subgradient of ``x − ℓ(x)``.

    Args:
      levels: the quantisation levels (any order; sorted internally), e.g. ``(-1, 1)`` or ``(-1, 0, 1)``.
      q: the exponent, in ``[0, 1]``.
    """

    levels: tuple[float, ...] = (-1.0, 1.0)
    q: float = 1.0

    def __post_init__(self):
        check_in_range("q", self.q, 0.0, 1.0)
        levels = tuple(sorted(float(v) for v in self.levels))
        if not levels or len(set(levels)) != len(levels):
            raise ValueError(f"`levels` must be a non-empty set of distinct numbers, got {self.levels!r}.")
        object.__setattr__(self, "levels", levels)

    def nearest_level(self, x):
        """The level nearest to ``x`` (ties go up); NaN stays NaN."""
        x = jnp.asarray(x)
        return jnp.where(jnp.isnan(x), x, self._level_or_lowest(x))

    def _level_or_lowest(self, x):
        """The nearest level, or the lowest one for NaN ``x`` (the prox needs no NaN level: ``z − ℓ`` is NaN)."""
        lev = self.levels
        out = jnp.full_like(x, lev[0])
        for lo, hi in itertools.pairwise(lev):
            out = jnp.where(x >= (lo + hi) / 2, jnp.asarray(hi, x.dtype), out)
        return out

    def penalty(self, x, lam):
        x, lam = penalty_args(x, lam)
        return lq(self.q).penalty(x - self.nearest_level(x), lam)

    def prox(self, z, step, lam):
        z, step, lam = prox_args(z, step, lam)
        level = self._level_or_lowest(z)
        inner = lq(self.q)
        if isinstance(inner, Lq):
            return _toward_level(z, level, inner, inner.step_ratio(z - level, step, lam))
        return _land(z, level, inner.prox(z - level, step, lam))

    def subgradient(self, x, lam):
        x, lam = penalty_args(x, lam)
        return lq(self.q).subgradient(x - self.nearest_level(x), lam)


def _toward_level(z, level, inner: Lq, r):
    """For ``0 < q < 1``: the level where the ℓq prox of ``u = z − level`` is 0 (``r ≥ r*``), else ``z`` moved
    by the shrinkage ``u·(1 − w(r))``, computed as such (no ``u − u·w`` cancellation, no second test)."""
    r, zero = inner.clip_ratio(r)
    return jnp.where(zero, level, z - (z - level) * nonzero_shrinkage(r, inner.q))


def _land(z, level, pu):
    """Land exactly on the level where the ℓq prox of ``u = z − level`` is 0, else move ``z`` by the (possibly
    sub-ulp) shrinkage ``u − prox(u)``."""
    return jnp.where(pu == 0, level, z - ((z - level) - pu))


def binary(q: float = 1.0) -> Quantization:
    """The W-shaped binary regularizer ``dist(θ, {−1, +1})^q`` (ProxQuant for ``q = 1``)."""
    return Quantization((-1.0, 1.0), q)


def ternary(q: float = 1.0) -> Quantization:
    """``dist(θ, {−1, 0, +1})^q``."""
    return Quantization((-1.0, 0.0, 1.0), q)


@_metric_forms.prox_metric.register(Quantization)
def _prox_metric(regularizer, z, learning_rate, metric, lam):
    z, alpha, c, lam = metric_prox_args(z, learning_rate, metric, lam)
    level = regularizer._level_or_lowest(z)
    inner = lq(regularizer.q)
    if isinstance(inner, Lq):
        return _toward_level(z, level, inner, inner.metric_ratio(z - level, alpha, c, lam))
    return _land(z, level, _metric_forms.prox_metric(inner, z - level, alpha, c, lam))
