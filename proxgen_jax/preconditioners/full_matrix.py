r"""Non-diagonal metrics: the operator interface and the full-matrix preconditioner for small blocks.

ProxGen's analysis allows any positive-definite ``C_t + δI`` (Sec. 3). A non-diagonal metric travels from the
preconditioner to the prox as a :class:`MetricOperator` leaf of ``PreconditionedUpdates.metric``: an object
that applies ``C_t+δI`` (``matvec``), its inverse (``solve``), and reports ``diag(C_t+δI)``,
``λ_max(C_t+δI)`` and single columns ``(C_t+δI) e_i`` — everything
:func:`~proxgen_jax.transforms.proximal_step_metric.proximal_step_metric` needs, without ever forming a ``d × d``
matrix unless the operator *is* one (:class:`DenseMetric`, for small blocks). The
Kronecker-factored KFAC metric lives in :mod:`proxgen_jax.preconditioners.kfac`.

The core :func:`~proxgen_jax.proximal_step` handles diagonal metrics only; handing it a ``MetricOperator``
raises a ``TypeError`` that names the right transformation.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from proxgen_jax._validation import check_beta, check_nonnegative, check_positive
from proxgen_jax.preconditioners.preconditioned_updates import PreconditionedUpdates
from proxgen_jax.solvers.metric_operators import (
    DenseMetric,
    symmetric_eigh,
)


class FullMatrixLeafState(NamedTuple):
    """Per-leaf state: the accumulated ``S = Σ g gᵀ`` (or its EMA) and the eigendecomposition used by ``M``."""

    stat: jax.Array   # (n, n) for a full block, (shape) for a diagonal one
    vals: jax.Array   # eigenvalues of the (bias-corrected) S at the last refresh; () for diagonal leaves
    vecs: jax.Array


class ScaleByFullMatrixPrecondState(NamedTuple):
    count: chex.Array
    mu: optax.Updates          # first moment; an empty tuple when ``momentum == 0``
    leaves: tuple              # one FullMatrixLeafState per parameter leaf


def scale_by_full_matrix_precond(
    b2: float | None = None,
    eps: float = 1e-6,
    *,
    initial_accumulator_value: float = 0.0,
    momentum: float = 0.0,
    update_every: int = 1,
    max_size: int = 1024,
) -> optax.GradientTransformation:
    r"""Full-matrix AdaGrad (``b2=None``) or full-matrix RMSprop as a ProxGen preconditioner, for small leaves.

    For each leaf with ``n ≤ max_size`` entries, flattened row-major to ``g ∈ ℝⁿ``:

    .. math::
        S_t = S_{t-1} + g_t g_tᵀ \;(\texttt{b2=None}),\qquad
        S_t = β S_{t-1} + (1-β) g_t g_tᵀ,\; \hat S_t = S_t/(1-β^t) \;(\texttt{b2}=β),\qquad
        C_t + δI = \hat S_t^{1/2} + δ I,

    with ``S_0 = s_0 I`` and the square root through the eigendecomposition ``Ŝ = U diag(s) Uᵀ``, refreshed
    every ``update_every`` steps (in between, the last decomposition is used for both the direction and the
    prox, so the two always see the same ``C_t + δI``). The direction is ``(C_t+δI)^{-1} m_t`` with
    ``m_t = g_t`` or the EMA ``m_t = ρ m_{t−1} + (1−ρ) g_t`` (``momentum = ρ``). The metric leaf is a
    :class:`DenseMetric`; chain with :func:`~proxgen_jax.transforms.proximal_step_metric.proximal_step_metric`.

    Leaves with more than ``max_size`` entries get the diagonal rule ``C_t = √(diag Ŝ_t)`` (elementwise
    AdaGrad / RMSprop) and a plain array metric, handled in closed form by the same prox link. Cost per
    refresh: one ``n × n`` ``eigh`` per full leaf, ``O(n³)``; memory ``O(n²)``.

    Example:
      >>> import optax, proxgen_jax as pg
      >>> from proxgen_jax.preconditioners.full_matrix import scale_by_full_matrix_precond
      >>> from proxgen_jax.transforms.proximal_step_metric import proximal_step_metric
      >>> tx = optax.chain(scale_by_full_matrix_precond(eps=1e-4),
      ...                  proximal_step_metric(pg.regularizers.L1(), lam=1e-3, learning_rate=0.1))

    Args:
      b2: ``None`` for the AdaGrad sum, else the EMA decay ``β`` in ``[0, 1)`` (bias-corrected).
      eps: ``δ > 0`` added to ``Ŝ^{1/2}`` (keeps ``M`` positive definite).
      initial_accumulator_value: ``s_0 ≥ 0``.
      momentum: ``ρ`` in ``[0, 1)``.
      update_every: refresh period ``k ≥ 1`` of the eigendecomposition.
      max_size: largest leaf (number of entries) given a full matrix.

    References:
      Duchi, Hazan & Singer, *Adaptive Subgradient Methods*, JMLR 2011 (full-matrix AdaGrad).
      Yun, Lozano & Yang, *Adaptive Proximal Gradient Methods for Structured Neural Networks*, NeurIPS 2021.
    """
    if b2 is not None:
        check_beta("b2", b2)
    check_positive("eps", eps)
    check_nonnegative("initial_accumulator_value", initial_accumulator_value)
    check_beta("momentum", momentum)
    if not isinstance(update_every, int) or isinstance(update_every, bool) or update_every < 1:
        raise ValueError(f"`update_every` must be an int ≥ 1, got {update_every!r}.")
    if not isinstance(max_size, int) or isinstance(max_size, bool) or max_size < 1:
        raise ValueError(f"`max_size` must be an int ≥ 1, got {max_size!r}.")

    def is_full(leaf) -> bool:
        return math.prod(jnp.shape(leaf)) <= max_size

    def init_fn(params):
        leaves = []
        for p in jax.tree.leaves(params):
            dt = jnp.promote_types(jnp.asarray(p).dtype, jnp.float32)
            n = math.prod(jnp.shape(p))
            if is_full(p):
                stat = initial_accumulator_value * jnp.eye(n, dtype=dt)
                leaves.append(FullMatrixLeafState(stat, jnp.zeros((n,), dt), jnp.eye(n, dtype=dt)))
            else:
                stat = jnp.full(jnp.shape(p), initial_accumulator_value, dt)
                leaves.append(FullMatrixLeafState(stat, jnp.zeros([], dt), jnp.zeros([], dt)))
        mu = optax.tree_utils.tree_zeros_like(params) if momentum else ()
        return ScaleByFullMatrixPrecondState(jnp.zeros([], jnp.int32), mu, tuple(leaves))

    def update_fn(updates, state, params=None):
        del params
        flat_g, treedef = jax.tree.flatten(updates)
        count = optax.safe_increment(state.count)
        refresh = (count - 1) % update_every == 0
        mu = optax.tree_utils.tree_update_moment(updates, state.mu, momentum, 1) if momentum else ()
        flat_m = treedef.flatten_up_to(mu) if momentum else flat_g
        directions, metrics, new_leaves = [], [], []
        for g, m, ls in zip(flat_g, flat_m, state.leaves):
            dt = ls.stat.dtype
            g = jnp.asarray(g).astype(dt)
            m = jnp.asarray(m).astype(dt)
            full = ls.stat.ndim == 2 and ls.vals.ndim == 1
            if b2 is None:
                corr = 1.0
                stat = ls.stat + (jnp.outer(g.reshape(-1), g.reshape(-1)) if full else g * g)
            else:
                corr = 1 - jnp.asarray(b2, dt) ** count.astype(dt)
                new = jnp.outer(g.reshape(-1), g.reshape(-1)) if full else g * g
                stat = b2 * ls.stat + (1 - b2) * new
            if full:
                vals, vecs = jax.lax.cond(refresh, lambda s, c: symmetric_eigh(s / c),
                                          lambda s, c, old=ls: (old.vals, old.vecs), stat, corr)
                metric = DenseMetric.from_eigh(vecs, jnp.sqrt(vals) + eps, jnp.shape(g))
                directions.append(metric.solve(m))
                metrics.append(metric)
                new_leaves.append(FullMatrixLeafState(stat, vals, vecs))
            else:
                metric = jnp.sqrt(stat / corr) + eps
                directions.append(m / metric)
                metrics.append(metric)
                new_leaves.append(FullMatrixLeafState(stat, ls.vals, ls.vecs))
        direction = jax.tree.unflatten(treedef, directions)
        metric = jax.tree.unflatten(treedef, metrics)
        new_state = ScaleByFullMatrixPrecondState(count, mu, tuple(new_leaves))
        return PreconditionedUpdates(direction, metric), new_state

    return optax.GradientTransformation(init_fn, update_fn)

