r"""Exact budget projections in a diagonal metric: at most ``k`` free units, and N:M blocks.

One ProxGen step with a budget solves (``c = C_t+δ``, ``z = θ_t − α_t (C_t+δ)^{-1} m_t``)

.. math::  \min_x\; \sum_i \frac{c_i}{2α}(x_i - z_i)^2 + λ\sum_i r(x_i) \quad\text{s.t. at most } k
           \text{ units of } x \text{ are nonzero}.

For a separable ``r`` the objective is ``Σ_i g_i − Σ_{i free}(g_i − f_i)`` with ``f_i`` the ordinary metric
prox's value and ``g_i = c_i z_i²/2α + λ r(0)`` the value at 0, so the exact answer keeps free the ``k`` units
with the largest gain ``Δ_i = g_i − f_i ≥ 0`` (they take their prox value, which may itself be 0) and zeroes
the rest. A unit is a coordinate or a group (the gain of a group is the sum of its coordinates' gains; with a
group penalty, the gain from the group prox: :func:`group_gains`). Without a
penalty ``Δ_i = c_i z_i²/2α``: the preconditioner's curvature ranks the weights; with ``c = 1`` it is magnitude
pruning. N:M applies the same rule inside every block of ``m`` consecutive entries. Gains are objective decreases
in the same units for every leaf of one step, so one budget over many leaves is exact too.

Exactly ``k`` units are free; ties are broken by flat index (the lower index stays free). The ``k``-th largest
gain is found without sorting, by counting passes over the bit patterns of the floats
(:mod:`proxgen_jax.solvers.selection`); ``k`` may be traced (a schedule).

References:
  Yun, Lozano & Yang, *Adaptive Proximal Gradient Methods for Structured Neural Networks*, NeurIPS 2021.
  Zhu & Gupta, *To prune, or not to prune*, 2017. Mishra et al., *Accelerating Sparse Deep Neural Networks*
  (2:4 sparsity), 2021.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class UnitGains(NamedTuple):
    """Per coordinate: the prox value ``x`` if free and the gain ``Δ = g − f`` of keeping it free."""

    x: jax.Array
    gain: jax.Array


def unit_gains(regularizer, z, metric, alpha, lam) -> UnitGains:
    """``(x, Δ)`` per coordinate: ``x = prox^{c}_{αλr}(z)`` and ``Δ = [c z²/2α + λr(0)] − [c(x−z)²/2α + λr(x)]``.

    ``metric`` ``None`` is the Euclidean metric (``c = 1``); ``regularizer`` ``None`` means no penalty
    (``x = z``, ``Δ = c z²/2α``). ``Δ ≥ 0`` up to rounding (``x`` minimises the free objective); it is clipped at 0.
    """
    c = jnp.ones([], z.dtype) if metric is None else metric
    if regularizer is None:
        return UnitGains(z, c * (z * z) / (2 * alpha))
    x = regularizer.prox(z, alpha / c, lam).astype(z.dtype)
    zero_cost = c * (z * z) / (2 * alpha) + regularizer.penalty(jnp.zeros_like(z), lam)
    free_cost = c * jnp.square(x - z) / (2 * alpha) + regularizer.penalty(x, lam)
    gain = zero_cost - free_cost
    return UnitGains(x, jnp.where(gain < 0, jnp.zeros_like(gain), gain))  # NaN stays NaN


def group_values(regularizer, x, lam, axes: tuple[int, ...]) -> jax.Array:
    """``λR(x_g)`` for every group of a group-separable ``regularizer`` whose groups span ``axes``, shaped like
    :func:`group_scores` (group axes kept as size-1 axes): ``regularizer.value`` of each group on its own."""
    others = tuple(i for i in range(x.ndim) if i not in axes)
    one = tuple(1 if i in others else x.shape[i] for i in range(x.ndim))  # one group, with the leaf's ndim
    groups = jnp.moveaxis(x, others, tuple(range(len(others)))).reshape((-1,) + one)
    values = jax.vmap(lambda g: regularizer.value(g, lam))(groups)
    return values.reshape(tuple(x.shape[i] if i in others else 1 for i in range(x.ndim)))


def group_gains(regularizer, z, metric, alpha, lam, axes: tuple[int, ...]) -> UnitGains:
    """``(x, Δ_g)`` for a group penalty whose groups are the budget's units (the groups spanning ``axes``).

    ``x = prox^{c}_{αλR}(z)`` (the group prox: ``regularizer.prox`` with step ``α/c``, or ``α`` when ``metric`` is
    ``None``) and, per group, ``Δ_g = [Σ_{i∈g} c_i z_i²/2α + λR(0_g)] − [Σ_{i∈g} c_i(x_i−z_i)²/2α + λR(x_g)]``
    (shaped like :func:`group_scores`), clipped at 0. Exact whenever the group prox is.
    """
    c = jnp.ones([], z.dtype) if metric is None else metric
    x = regularizer.prox(z, alpha if metric is None else alpha / metric, lam).astype(z.dtype)
    zero_cost = group_scores(c * (z * z) / (2 * alpha), axes) + group_values(regularizer, jnp.zeros_like(z), lam, axes)
    free_cost = group_scores(c * jnp.square(x - z) / (2 * alpha), axes) + group_values(regularizer, x, lam, axes)
    gain = (zero_cost - free_cost).astype(z.dtype)
    return UnitGains(x, jnp.where(gain < 0, jnp.zeros_like(gain), gain))  # NaN stays NaN


def group_scores(gain: jax.Array, group_axes: tuple[int, ...]) -> jax.Array:
    """One gain per group: the sum over ``group_axes`` (kept as size-1 axes); ``()`` means coordinates."""
    return gain if not group_axes else jnp.sum(gain, axis=group_axes, keepdims=True)


def budget_count(sparsity, units: int) -> jax.Array:
    """``k = ⌊(1 − s)·n⌋`` free units of ``n`` (int32; ``s`` may be traced), computed in float64 on the host when
    ``s`` is a Python number so that ``s = 0.9`` of 10 units is 1, not 0.99…"""
    if isinstance(sparsity, (int, float)):
        return jnp.asarray(int((1.0 - float(sparsity)) * units + 1e-9), jnp.int32)
    s = jnp.asarray(sparsity, jnp.float32)
    return jnp.floor((1 - s) * units + 1e-4).astype(jnp.int32)


def nm_mask(gain: jax.Array, n: int, m: int, axis: int) -> jax.Array:
    """Free entries of an N:M pattern: in every block of ``m`` consecutive entries along ``axis``, the ``n`` with
    the largest gain (ties to the lower index). Exact: the constraint separates by block.

    The blocks are split in place (``axis`` of length ``L`` read as ``(L/m, m)``, no transpose) and each entry's
    rank in its block is counted from ``m − 1`` elementwise comparisons, so XLA fuses the whole mask into one loop.
    """
    axis %= gain.ndim
    shape = gain.shape
    if n >= m:
        return jnp.ones(shape, bool)
    blocks = gain.reshape(shape[:axis] + (shape[axis] // m, m) + shape[axis + 1:])
    entries = [jax.lax.index_in_dim(blocks, i, axis + 1, keepdims=True) for i in range(m)]
    one, zero = jnp.ones([], jnp.int32), jnp.zeros([], jnp.int32)
    ranks = []
    for i, gi in enumerate(entries):  # entries ahead of i: larger, or equal with a lower index
        ahead = [jnp.where((gj >= gi) if j < i else (gj > gi), one, zero) for j, gj in enumerate(entries) if j != i]
        ranks.append(sum(ahead[1:], ahead[0]))
    # (measured on XLA:CPU: concatenating the ranks fuses into one vectorised loop; stacking the masks was 4× slower)
    return (jnp.concatenate(ranks, axis=axis + 1) < n).reshape(shape)
