r"""Metric-weighted fits of a quantisation scale: ``s* = argmin_s Σ_i c_i (z_i − s·ℓ(z_i/s))²``.

Levels are ``s·L`` for a base grid ``L`` (binary ``{−1, 1}``, ternary ``{−1, 0, 1}``, a uniform k-bit grid), one
scale per tensor or per channel; ``c = C_t+δ`` is the preconditioner's metric (``c = 1``: ordinary least squares,
the Euclidean fit of torchao's PARQ). All functions reduce over ``axes`` and keep them as size-1 dimensions.

* binary: ``ℓ_i = sign z_i`` for every ``s > 0``, so ``s = Σ c|z| / Σ c`` (closed form);
* ternary: for any ``s`` the nearest level depends on ``|z_i|`` only, so the optimal support is the top-``j`` set
  by ``|z|``; with the best ``s_j = Σ_{top j} c|z| / Σ_{top j} c`` the cost is
  ``Σ c z² − (Σ_{top j} c|z|)² / Σ_{top j} c``, and a scan over ``j`` (sorted ``|z|``, c-weighted prefix sums)
  gives the exact joint optimum;
* any grid: weighted Lloyd iterations from the previous scale — assign each ``z_i`` to its nearest level of
  ``s·L`` (optimal for that ``s``), then refit ``s = Σ c z ℓ / Σ c ℓ²`` (optimal for that assignment): the
  weighted distance never increases.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def weighted_distance(z, c, s, levels, axes) -> jax.Array:
    """``Σ_{axes} c (z − s·ℓ(z/s))²`` with ``ℓ`` the nearest level of ``L`` (kept dims, like the scales)."""
    lev = _nearest(z / _safe(s), levels)
    return jnp.sum(jnp.broadcast_to(c, z.shape) * jnp.square(z - s * lev), axis=axes, keepdims=True)


def _safe(s):
    return jnp.where(s > 0, s, jnp.ones_like(s))


def _nearest(y, levels):
    """The nearest level of ``levels`` (sorted) to ``y`` (ties up)."""
    out = jnp.full_like(y, levels[0])
    for lo, hi in zip(levels[:-1], levels[1:]):
        out = jnp.where(y >= (lo + hi) / 2, jnp.asarray(hi, y.dtype), out)
    return out


def binary_scale(z, c, axes) -> jax.Array:
    """``s = Σ c|z| / Σ c`` over ``axes`` (the exact metric-weighted optimum for levels ``±s``)."""
    num = jnp.sum(c * jnp.abs(z), axis=axes, keepdims=True)
    den = jnp.sum(jnp.broadcast_to(c, z.shape), axis=axes, keepdims=True)
    return num / jnp.where(den > 0, den, jnp.ones_like(den))


def ternary_scale(z, c, axes) -> jax.Array:
    """The exact metric-weighted optimum for levels ``{−s, 0, s}``: a scan over top-``j`` supports by ``|z|``."""
    c = jnp.broadcast_to(c, z.shape)
    keep = tuple(i for i in range(z.ndim) if i not in axes)
    perm = keep + tuple(axes)
    zt = jnp.transpose(jnp.abs(z), perm).reshape(tuple(z.shape[i] for i in keep) + (-1,))
    ct = jnp.transpose(c, perm).reshape(zt.shape)
    order = jnp.argsort(-zt, axis=-1)
    zs = jnp.take_along_axis(zt, order, -1)
    cs = jnp.take_along_axis(ct, order, -1)
    num = jnp.cumsum(cs * zs, axis=-1)
    den = jnp.cumsum(cs, axis=-1)
    gain = jnp.where(den > 0, num * num / jnp.where(den > 0, den, 1), 0)  # Σcz² − cost_j
    j = jnp.argmax(gain, axis=-1)[..., None]
    s = jnp.take_along_axis(num, j, -1) / jnp.maximum(jnp.take_along_axis(den, j, -1), jnp.finfo(z.dtype).tiny)
    shape = [1] * z.ndim
    for i in keep:
        shape[i] = z.shape[i]
    return s.reshape(shape)


def lloyd_scale(z, c, s0, levels, axes, iterations: int = 4) -> jax.Array:
    """Weighted Lloyd iterations for levels ``s·L`` from ``s0``; the weighted distance never increases."""
    c = jnp.broadcast_to(c, z.shape)

    def body(_, s):
        lev = _nearest(z / _safe(s), levels)
        num = jnp.sum(c * z * lev, axis=axes, keepdims=True)
        den = jnp.sum(c * lev * lev, axis=axes, keepdims=True)
        return jnp.where(den > 0, num / jnp.where(den > 0, den, 1), s)

    return jax.lax.fori_loop(0, iterations, body, s0)


def fit_scale(z, c, s_prev, levels: tuple, axes: tuple) -> jax.Array:
    """The metric-weighted scale: exact for binary and ternary grids, Lloyd from ``s_prev`` otherwise."""
    if levels == (-1.0, 1.0):
        return binary_scale(z, c, axes)
    if levels == (-1.0, 0.0, 1.0):
        return ternary_scale(z, c, axes)
    return lloyd_scale(z, c, s_prev, levels, axes)
