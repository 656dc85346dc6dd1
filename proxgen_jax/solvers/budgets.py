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

import functools
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


def _block_view(x: jax.Array, m: int, axis: int) -> jax.Array:
    """``axis`` of length ``L`` read as ``(L/m, m)`` in place (no transpose)."""
    return x.reshape(x.shape[:axis] + (x.shape[axis] // m, m) + x.shape[axis + 1:])


def _slot_dtype(m: int):
    return jnp.uint8 if m <= 8 else (jnp.uint16 if m <= 16 else jnp.uint32)


def nm_keep_bits(gain: jax.Array, n: int, m: int, axis: int) -> jax.Array:
    """The N:M pattern packed: one unsigned integer per block of ``m`` consecutive entries along ``axis`` (shaped
    like ``gain`` with that axis ``m`` times shorter; ``m ≤ 32``), whose bit ``r`` says that slot ``r`` is free —
    the ``n`` entries of largest gain in the block, ties to the lower index. Exact: the constraint separates by
    block.

    Each block's ``m`` gains are computed once and compared pairwise (``m(m−1)/2`` comparisons), in one loop that
    XLA fuses with the gains' producer: the pattern costs ``m``-fold less memory than the gains, so nothing of the
    size of the parameters is written besides the step's own outputs (on XLA:CPU every such temporary also costs
    its page faults at every step: measured ~1 ns per float).
    """
    axis %= gain.ndim
    if m > 32:
        raise ValueError(f"`m` must be at most 32 to pack the pattern, got {m}.")
    blocks = _block_view(gain, m, axis)
    g = [jax.lax.index_in_dim(blocks, i, axis + 1, keepdims=False) for i in range(m)]
    one, zero = jnp.ones([], jnp.int32), jnp.zeros([], jnp.int32)
    rank = [jnp.zeros(g[0].shape, jnp.int32) for _ in range(m)]
    for i in range(m):
        for j in range(i + 1, m):  # j ahead of i iff Δ_j > Δ_i; i ahead of j iff Δ_i ≥ Δ_j (lower index wins ties)
            j_ahead = g[j] > g[i]
            rank[i] += jnp.where(j_ahead, one, zero)
            rank[j] += jnp.where(j_ahead, zero, one)
    dt = _slot_dtype(m)
    bits = [jnp.where(r < n, jnp.asarray(1 << i, dt), jnp.zeros([], dt)) for i, r in enumerate(rank)]
    return functools.reduce(jnp.bitwise_or, bits)


def nm_unpack(bits: jax.Array, m: int, axis: int) -> jax.Array:
    """The bool mask of :func:`nm_keep_bits`'s packed pattern (``axis`` ``m`` times longer): each entry reads its
    block's integer and its own slot's bit, elementwise."""
    axis %= bits.ndim
    expanded = jnp.expand_dims(bits, axis + 1)
    shape = bits.shape[:axis] + (bits.shape[axis], m) + bits.shape[axis + 1:]
    slot = jax.lax.broadcasted_iota(bits.dtype, shape, axis + 1)
    free = (jnp.broadcast_to(expanded, shape) >> slot) & jnp.ones([], bits.dtype)
    return (free != 0).reshape(bits.shape[:axis] + (bits.shape[axis] * m,) + bits.shape[axis + 1:])


def nm_mask(gain: jax.Array, n: int, m: int, axis: int) -> jax.Array:
    """Free entries of an N:M pattern as a bool mask shaped like ``gain``: in every block of ``m`` consecutive
    entries along ``axis``, the ``n`` with the largest gain (ties to the lower index)."""
    if n >= m:
        return jnp.ones(gain.shape, bool)
    return nm_unpack(nm_keep_bits(gain, n, m, axis), m, axis)
