"""The regularizer interface: the ground floor of proxgen_jax.

A regularizer is pure, shape-agnostic math. For a weight ``lam`` (the paper's λ) it provides

* ``penalty(x, lam)``: the elementwise value ``λ·r(x_i)`` (``value`` sums it, to log ``F = f + λR``);
* ``prox(z, step, lam)``: the global minimiser ``argmin_x λ·r(x) + (x − z)² / (2·step)`` for a
  per-coordinate ``step`` (in ProxGen ``step = α_t / (C_t + δ)``, Eq. 2 with a diagonal metric);
* ``subgradient(x, lam)``: an element of the (limiting) subdifferential of ``λ·r`` at ``x``, for the
  subgradient baseline.

All three broadcast ``z``, ``step`` and ``lam`` against each other, compute in the dtype of ``z`` and are
branch-free (``jnp.where`` on safe arguments), so they jit, vmap and shard like any elementwise op.
NaN in ``z`` or ``step`` gives NaN out, never a silent zero. Faster forms of the same minimiser for the fused
optimizer step are private (:mod:`proxgen_jax.regularizers._metric_forms`).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from proxgen_jax._tree import MaskOrFn, check_choice, resolve_per_leaf


class Regularizer(abc.ABC):
    """Base class of regularizers ``λ·R(θ)`` acting on one array (one parameter leaf).

    Subclasses are frozen dataclasses (hashable, usable as static data under ``jit``). ``prox`` receives the
    whole leaf, so non-separable penalties (group norms) fit the same interface.
    """

    @abc.abstractmethod
    def value(self, x: jax.Array, lam) -> jax.Array:
        """``λ·R(x)`` for the whole array (a scalar)."""

    @abc.abstractmethod
    def prox(self, z: jax.Array, step, lam) -> jax.Array:
        """``argmin_x λ·R(x) + Σ_i (x_i − z_i)² / (2·step_i)``; ``step`` broadcasts against ``z``."""

    @abc.abstractmethod
    def subgradient(self, x: jax.Array, lam) -> jax.Array:
        """An element of ``∂(λ·R)(x)``; documented per regularizer at non-smooth points."""


class ElementwiseRegularizer(Regularizer):
    """A separable regularizer ``λ Σ_i r(x_i)``: it defines the elementwise ``penalty``."""

    @abc.abstractmethod
    def penalty(self, x: jax.Array, lam) -> jax.Array:
        """Elementwise ``λ·r(x)``, same shape as ``x``."""

    def value(self, x: jax.Array, lam) -> jax.Array:
        """``λ·R(x)`` summed over ``x`` (a scalar), accumulated in float32 or wider."""
        pen = self.penalty(x, lam)
        return jnp.sum(pen, dtype=jnp.promote_types(pen.dtype, jnp.float32))


def as_float_array(x) -> jax.Array:
    """``x`` as an inexact array; integer inputs become float32."""
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.inexact) else x.astype(jnp.float32)


def penalty_args(x, lam):
    """Casts ``(x, lam)`` to the dtype of ``x``."""
    x = as_float_array(x)
    return x, jnp.asarray(lam, x.dtype)


def metric_prox_args(z, learning_rate, metric, lam):
    """Casts ``(z, α, metric, λ)`` to the dtype of ``z``."""
    z = as_float_array(z)
    return z, jnp.asarray(learning_rate, z.dtype), jnp.asarray(metric, z.dtype), jnp.asarray(lam, z.dtype)


def prox_args(z, step, lam):
    """Casts ``(z, step, lam)`` to the dtype of ``z`` (``step``/``lam`` may be Python scalars or arrays)."""
    z = as_float_array(z)
    return z, jnp.asarray(step, z.dtype), jnp.asarray(lam, z.dtype)


RegularizerOrFn = Regularizer | Callable[[Any, Any], Regularizer | None] | None


def check_regularizer(regularizer: RegularizerOrFn) -> None:
    """``ValueError`` unless ``regularizer`` is a :class:`Regularizer`, a per-leaf callable or ``None``."""
    check_choice(regularizer, kind=Regularizer, what="regularizer")


def resolve_regularizers(regularizer: RegularizerOrFn, params: Any, mask: MaskOrFn) -> list:
    """One ``Regularizer | None`` per leaf of ``params``: ``None`` where masked out or not regularised."""
    return resolve_per_leaf(regularizer, params, mask, kind=Regularizer, what="regularizer")
