"""The regularizer interface: the ground floor of proxgen_jax.

A regularizer is pure, shape-agnostic math. For a weight ``lam`` (the paper's λ) it provides

* ``penalty(x, lam)``: the elementwise value ``λ·r(x_i)`` (``value`` sums it, to log ``F = f + λR``);
* ``prox(z, step, lam)``: the global minimiser ``argmin_x λ·r(x) + (x − z)² / (2·step)`` for a
  per-coordinate ``step`` (in ProxGen ``step = α_t / (C_t + δ)``, Eq. 2 with a diagonal metric);
* ``subgradient(x, lam)``: an element of the (limiting) subdifferential of ``λ·r`` at ``x``, for the
  subgradient baseline.

All three broadcast ``z``, ``step`` and ``lam`` against each other, compute in the dtype of ``z`` and are
branch-free (``jnp.where`` on safe arguments), so they jit, vmap and shard like any elementwise op.
NaN in ``z`` or ``step`` gives NaN out, never a silent zero.
"""

from __future__ import annotations

import abc

import jax
import jax.numpy as jnp


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

    def prox_metric(self, z: jax.Array, learning_rate, metric, lam) -> jax.Array:
        r"""The prox in a diagonal metric: ``argmin_x λR(x) + Σ_i metric_i (x_i − z_i)² / (2α)``.

        This is Algorithm 1, line 8 with ``metric = C_t + δ`` and ``learning_rate = α_t``: the same minimiser
        as ``prox(z, α/metric, lam)``, which is what this default computes. Subclasses override it where
        keeping ``α`` and the metric apart saves a division per coordinate in the fused optimizer step (the
        thresholds are then compared as ``|z|·metric ≤ αλ`` rather than ``|z| ≤ αλ/metric``).
        """
        return self.prox(z, learning_rate / jnp.asarray(metric), lam)

    def prox_metric_scaled(self, cz: jax.Array, learning_rate, metric, lam) -> jax.Array:
        r"""The same prox as :meth:`prox_metric`, given ``c·z`` (``c = metric``) instead of ``z``.

        With Adam, RMSprop or AdaGrad the step's ``z = θ_t − α_t m_t/c`` costs a division per coordinate, while
        ``c·z = c·θ_t − α_t m_t`` costs none. A prox that divides by ``c`` anyway (its step ``α_t/c``) can then
        fold Adam's division into its own: one division per coordinate for the whole step instead of two, which
        matters because the fused step is bound by the CPU's divider. Subclasses override this where that holds
        (ℓ1, MCP, SCAD); :func:`~proxgen_jax.transforms.proximal_step.leaf_step` uses it only for them. This
        default divides and calls :meth:`prox_metric`.
        """
        return self.prox_metric(cz / jnp.asarray(metric), learning_rate, metric, lam)

    def folds_metric_division(self) -> bool:
        """Whether :meth:`prox_metric_scaled` is overridden (one division for Adam's step and the prox)."""
        return type(self).prox_metric_scaled is not Regularizer.prox_metric_scaled


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
