r"""Metric operators ``M = C_t + δI`` acting on one parameter leaf: the interface, diagonal, dense and Kronecker.

ProxGen's analysis allows any positive-definite ``C_t + δI`` (Sec. 3). A non-diagonal metric travels from the
preconditioner to the prox as a :class:`MetricOperator`: an object that applies ``M`` (``matvec``), its inverse
(``solve``), and reports ``diag(M)``, ``λ_max(M)`` and single columns ``M e_i`` — everything the inner solver
(:mod:`proxgen_jax.solvers.metric_prox`) needs, without ever forming a ``d × d`` matrix unless the operator *is*
one (:class:`DenseMetric`, for small blocks). :class:`KroneckerMetric` is KFAC's ``Ã ⊗ G̃ + sI``,
:class:`DiagonalMetric` a diagonal array seen as an operator. Pure math: no optax, no transformation.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

DAMPING_MODES = ("exact", "factored")

NOT_DIAGONAL = (
    "proxgen_jax: {name} is a non-diagonal metric C_t+δI; its prox has no closed form. Use "
    "proxgen_jax.proximal_step_metric(...) (an inner proximal solver) as the prox link "
    "after this preconditioner, not proximal_step / prox_*."
)


class MetricOperator(abc.ABC):
    """A symmetric positive-definite metric ``M = C_t + δI`` acting on arrays shaped like one parameter leaf.

    Subclasses are registered pytrees (they pass through ``jit``) and implement four methods; ``x`` always has
    the leaf's shape and the results too (``max_eigenvalue`` is a scalar). ``column`` has a generic default
    (one ``matvec``) that subclasses may replace by a cheaper formula.
    """

    @abc.abstractmethod
    def matvec(self, x: jax.Array) -> jax.Array:
        """``M x``."""

    @abc.abstractmethod
    def solve(self, x: jax.Array) -> jax.Array:
        """``M^{-1} x``."""

    @abc.abstractmethod
    def diagonal(self) -> jax.Array:
        """``diag(M)``, shaped like the leaf."""

    @abc.abstractmethod
    def max_eigenvalue(self) -> jax.Array:
        """``λ_max(M)`` (a scalar); the inner solver's Lipschitz constant is ``λ_max/α_t``."""

    def column(self, i) -> jax.Array:
        """``M e_i``, shaped like the leaf: column ``i`` (row-major ``vec`` index, may be traced) of ``M``.

        The inner solver's coordinate-descent polish reads one column per coordinate. This default applies
        ``matvec`` to a one-hot array; subclasses override it with an ``O(n)`` formula where ``M`` has one.
        """
        d = self.diagonal()
        e = jnp.zeros((d.size,), d.dtype).at[i].set(1).reshape(d.shape)
        return self.matvec(e)

    def _refuse(self, *args, **kwargs):
        raise TypeError(NOT_DIAGONAL.format(name=type(self).__name__))

    __jax_array__ = __array__ = _refuse


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DenseMetric(MetricOperator):
    r"""``M = U diag(e) Uᵀ`` stored densely for a leaf of ``n = prod(shape)`` entries (row-major ``vec``).

    Attributes:
      matrix: ``M`` itself, ``(n, n)``.
      vecs: its eigenvectors ``U``, ``(n, n)``.
      vals: its eigenvalues ``e > 0``, ``(n,)``.
      shape: the leaf's shape (static).
    """

    matrix: jax.Array
    vecs: jax.Array
    vals: jax.Array
    shape: tuple = dataclasses.field(metadata=dict(static=True))

    @classmethod
    def from_eigh(cls, vecs, vals, shape) -> DenseMetric:
        """``M = U diag(vals) Uᵀ`` (``vals`` must already be positive)."""
        matrix = (vecs * vals[None, :]) @ vecs.T
        return cls(0.5 * (matrix + matrix.T), vecs, vals, tuple(shape))

    def matvec(self, x):
        return (self.matrix @ x.reshape(-1)).reshape(self.shape)

    def solve(self, x):
        y = self.vecs.T @ x.reshape(-1)
        return (self.vecs @ (y / self.vals)).reshape(self.shape)

    def diagonal(self):
        return jnp.diagonal(self.matrix).reshape(self.shape)

    def max_eigenvalue(self):
        return jnp.max(self.vals)

    def column(self, i):
        return self.matrix[:, i].reshape(self.shape)


def symmetric_eigh(m: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(eigenvalues ≥ 0, eigenvectors)`` of the symmetric PSD ``m`` (symmetrised; rounding negatives clipped)."""
    vals, vecs = jnp.linalg.eigh(0.5 * (m + m.T))
    return jnp.maximum(vals, 0), vecs


def matrix_shape(shape) -> tuple[int, int]:
    """A leaf ``(..., d_out)`` seen as the matrix ``(prod(...), d_out)``; a bias ``(d,)`` is ``(1, d)``."""
    shape = tuple(shape)
    if not shape:
        return 1, 1
    return math.prod(shape[:-1]), shape[-1]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KroneckerMetric(MetricOperator):
    r"""``M = Ã ⊗ G̃ + s I`` on a leaf seen as the matrix ``X`` (``(d_in, d_out)``): ``M X = Ã X G̃ + s X``.

    ``Ã = U_A diag(e_A) U_Aᵀ`` and ``G̃ = U_G diag(e_G) U_Gᵀ`` are the (damped) factors, stored with their
    eigendecompositions so that ``M^{-1} X = U_A [(U_Aᵀ X U_G) / (e_A e_Gᵀ + s)] U_Gᵀ``,
    ``diag(M) = diag(Ã) diag(G̃)ᵀ + s`` and ``λ_max(M) = max e_A · max e_G + s`` cost factor-sized work only
    (and a column ``M e_i``, an outer product of factor columns, ``O(n)``).
    In row-major ``vec`` the dense matrix is ``kron(Ã, G̃) + s I``.
    """

    a_mat: jax.Array
    g_mat: jax.Array
    a_vecs: jax.Array
    a_vals: jax.Array
    g_vecs: jax.Array
    g_vals: jax.Array
    shift: jax.Array
    shape: tuple = dataclasses.field(metadata=dict(static=True))

    @classmethod
    def from_eigh(cls, a_vals, a_vecs, g_vals, g_vecs, damping, shape, mode: str = "exact") -> KroneckerMetric:
        """The metric from the factors' eigendecompositions (``A = U_A diag(a_vals) U_Aᵀ``) and ``δ``."""
        if mode not in DAMPING_MODES:
            raise ValueError(f"`damping_mode` must be one of {DAMPING_MODES}, got {mode!r}.")
        a_vals = jnp.maximum(a_vals, 0)
        g_vals = jnp.maximum(g_vals, 0)
        damping = jnp.asarray(damping, a_vals.dtype)
        if mode == "exact":
            ea, eg, shift = a_vals, g_vals, damping
        else:
            mean_a = jnp.mean(a_vals)
            mean_g = jnp.mean(g_vals)
            ok = jnp.logical_and(mean_a > 0, mean_g > 0)
            pi = jnp.where(ok, jnp.sqrt(jnp.where(ok, mean_a, 1) / jnp.where(ok, mean_g, 1)), 1)
            root = jnp.sqrt(damping)
            ea, eg, shift = a_vals + pi * root, g_vals + root / pi, jnp.zeros_like(damping)
        a_mat = (a_vecs * ea[None, :]) @ a_vecs.T
        g_mat = (g_vecs * eg[None, :]) @ g_vecs.T
        return cls(0.5 * (a_mat + a_mat.T), 0.5 * (g_mat + g_mat.T), a_vecs, ea, g_vecs, eg, shift, tuple(shape))

    @classmethod
    def from_factors(cls, a_cov, g_cov, damping, shape, mode: str = "exact") -> KroneckerMetric:
        """The metric from the factor matrices themselves (one ``eigh`` each)."""
        a_vals, a_vecs = symmetric_eigh(jnp.asarray(a_cov))
        g_vals, g_vecs = symmetric_eigh(jnp.asarray(g_cov))
        return cls.from_eigh(a_vals, a_vecs, g_vals, g_vecs, damping, shape, mode)

    def _mat(self, x):
        return x.reshape(matrix_shape(self.shape))

    def matvec(self, x):
        xm = self._mat(x)
        return (self.a_mat @ xm @ self.g_mat + self.shift * xm).reshape(self.shape)

    def solve(self, x):
        y = self.a_vecs.T @ self._mat(x) @ self.g_vecs
        y = y / (self.a_vals[:, None] * self.g_vals[None, :] + self.shift)
        return (self.a_vecs @ y @ self.g_vecs.T).reshape(self.shape)

    def diagonal(self):
        d = jnp.diagonal(self.a_mat)[:, None] * jnp.diagonal(self.g_mat)[None, :] + self.shift
        return d.reshape(self.shape)

    def max_eigenvalue(self):
        return jnp.max(self.a_vals) * jnp.max(self.g_vals) + self.shift

    def column(self, i):
        """``M e_i`` for the entry ``i = a·d_out + b``: ``Ã[:, a] G̃[b, :] + s e_i`` — ``O(n)`` work."""
        _, dg = matrix_shape(self.shape)
        a, b = i // dg, i % dg
        col = self.a_mat[:, a][:, None] * self.g_mat[b, :][None, :]
        return col.at[a, b].add(self.shift).reshape(self.shape)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DiagonalMetric(MetricOperator):
    """A diagonal metric ``M = diag(c)`` as a :class:`MetricOperator` (``c`` broadcasts to the leaf's shape)."""

    c: jax.Array
    shape: tuple = dataclasses.field(metadata=dict(static=True))

    def matvec(self, x):
        return self.c * x

    def solve(self, x):
        return x / self.c

    def diagonal(self):
        return jnp.broadcast_to(self.c, self.shape)

    def max_eigenvalue(self):
        return jnp.max(self.c)

    def column(self, i):
        c = self.diagonal().reshape(-1)
        return jnp.zeros_like(c).at[i].set(c[i]).reshape(self.shape)


def as_operator(metric: Any, shape: tuple, dtype) -> MetricOperator:
    """``metric`` as a :class:`MetricOperator`: operators as they are, arrays diagonal, ``None`` the identity."""
    if isinstance(metric, MetricOperator):
        return metric
    if metric is None:
        return DiagonalMetric(jnp.ones([], dtype), tuple(shape))
    return DiagonalMetric(jnp.asarray(metric).astype(dtype), tuple(shape))


def subproblem_objective(regularizer, x, u, metric, step, lam) -> jax.Array:
    """``λR(x) + (x − u)ᵀ M (x − u) / (2·step)`` — the subproblem :func:`solve_metric_prox` minimises."""
    x = jnp.asarray(x)
    op = as_operator(metric, x.shape, x.dtype)
    r = x - u
    quad = jnp.vdot(r, op.matvec(r)) / (2 * step)
    if regularizer is None:
        return quad
    return quad + regularizer.value(x, lam)


