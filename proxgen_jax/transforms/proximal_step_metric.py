r"""The ProxGen step in any metric: the prox link after KFAC or full-matrix preconditioners.

Leaves whose metric is a :class:`~proxgen_jax.solvers.metric_operators.MetricOperator` are solved by the inner
solver of :mod:`proxgen_jax.solvers.metric_prox`; diagonal and Euclidean leaves take the engine's closed form.
"""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax.numpy as jnp
import optax

from proxgen_jax._tree import MaskOrFn
from proxgen_jax._validation import check_nonnegative
from proxgen_jax.regularizers.base import RegularizerOrFn, check_regularizer, resolve_regularizers
from proxgen_jax.solvers.metric_operators import MetricOperator, subproblem_objective
from proxgen_jax.solvers.metric_prox import (
    POLISH_MAX_SIZE,
    POLISH_SWEEPS,
    SEARCH_MAX_SIZE,
    check_options,
    diagonal_prox,
    solve_metric_prox_unchecked,
)
from proxgen_jax.transforms.engine import LeafProblem, closed_form, prepare_step
from proxgen_jax.transforms.proximal_step import check_step_args, decay_flags, hyperparams_at

_WARM_STARTS = ("best", "diagonal", "params")


class ProximalStepMetricState(NamedTuple):
    """Step counter (for schedules) and, as a diagnostic, the most inner iterations any leaf took last step."""

    count: chex.Array
    inner_iterations: chex.Array


def proximal_step_metric(
    regularizer: RegularizerOrFn,
    lam: optax.ScalarOrSchedule = 1e-4,
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    *,
    inner_steps: int = 20,
    tol: float = 0.0,
    warm_start: str = "best",
    polish_max_size: int = POLISH_MAX_SIZE,
    polish_sweeps: int = POLISH_SWEEPS,
    search_max_size: int = SEARCH_MAX_SIZE,
    mask: MaskOrFn = None,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    weight_decay_mask: MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
    r"""The ProxGen step ``θ_{t+1} = prox^{C_t+δI}_{α_t λ R}(θ_t − α_t(C_t+δI)^{-1} m_t)`` for any metric.

    The last link after a preconditioner whose metric leaves may be non-diagonal
    :class:`~proxgen_jax.preconditioners.full_matrix.MetricOperator` objects (KFAC, full-matrix AdaGrad):
    those leaves are solved by :func:`solve_metric_prox` (``inner_steps`` monotone accelerated proximal
    gradient iterations from ``warm_start``, then — for elementwise regularizers on small leaves — the
    multi-start coordinate-descent polish, which also starts from ``θ_t`` and the diagonal closed form, and on
    tiny leaves the support search; module docstring); diagonal array metrics and plain updates fall back to the
    core closed form (:func:`~proxgen_jax.transforms.engine.closed_form`), exactly as
    :func:`~proxgen_jax.proximal_step` computes them. Unregularised leaves take ``−α_t (C_t+δI)^{-1} m_t``.
    Extra keyword arguments to ``update`` (e.g. ``kfac_stats`` for the preconditioner) are accepted and
    ignored, so it chains with ``GradientTransformationExtraArgs``.

    Example:
      >>> import optax, proxgen_jax as pg
      >>> from proxgen_jax.preconditioners import scale_by_kfac_precond
      >>> tx = optax.chain(scale_by_kfac_precond(damping=1e-3),
      ...                  proximal_step_metric(pg.regularizers.L1(), lam=1e-4, learning_rate=1e-2,
      ...                                       mask=pg.kernels_only))

    Args:
      regularizer: a Regularizer, ``None``, or a callable ``(path, leaf) -> Regularizer | None``.
      lam: ``λ ≥ 0``, float or schedule.
      learning_rate: ``α_t > 0``, float or schedule.
      inner_steps: iteration budget of the inner solver per step (``≥ 1``).
      tol: optional early stop on the relative change of the inner iterate (``0``: fixed budget).
      warm_start: ``"best"``, ``"diagonal"`` or ``"params"`` (module docstring).
      polish_max_size: largest leaf (entries) given the coordinate-descent polish (``≥ 0``; ``0``: off).
      polish_sweeps: most sweeps of the polish (``≥ 1``).
      search_max_size: largest leaf given the exhaustive support search (``0 … 20``).
      mask: which leaves to regularise (as in :func:`~proxgen_jax.proximal_step`).
      weight_decay: decoupled weight decay (as in :func:`~proxgen_jax.proximal_step`).
      weight_decay_mask: which leaves decay (``None``: all).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose ``update`` requires ``params``.
    """
    check_step_args(lam, learning_rate, weight_decay)
    check_nonnegative("tol", tol)
    if not isinstance(inner_steps, int) or isinstance(inner_steps, bool) or inner_steps < 1:
        raise ValueError(f"`inner_steps` must be an int ≥ 1, got {inner_steps!r}.")
    if warm_start not in _WARM_STARTS:
        raise ValueError(f"`warm_start` must be one of {_WARM_STARTS}, got {warm_start!r}.")
    check_options(polish_max_size, polish_sweeps, search_max_size)
    check_regularizer(regularizer)
    options = dict(inner_steps=inner_steps, tol=tol, warm_start=warm_start, polish_max_size=polish_max_size,
                   polish_sweeps=polish_sweeps, search_max_size=search_max_size)

    def init_fn(params):
        resolve_regularizers(regularizer, params, mask)
        decay_flags(weight_decay_mask, params)
        return ProximalStepMetricState(jnp.zeros([], jnp.int32), jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        hp = hyperparams_at(state.count, learning_rate, lam, weight_decay)
        step = prepare_step("proximal_step_metric", updates, params,
                            resolve_regularizers(regularizer, params, mask), hp.learning_rate,
                            weight_decay=hp.weight_decay, decay_flags=decay_flags(weight_decay_mask, params))
        iterations = [jnp.zeros([], jnp.int32)]

        def solve(leaf, lam_t):
            if not isinstance(leaf.metric, MetricOperator):  # diagonal or Euclidean: the closed form
                return closed_form(leaf, lam_t)
            x, k = metric_leaf_solve(leaf, lam_t, **options)
            iterations[0] = jnp.maximum(iterations[0], k)
            return x

        out = step.updates(step.solve(solve, hp.lam))
        return out, ProximalStepMetricState(optax.safe_increment(state.count), iterations[0])

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def metric_leaf_solve(leaf: LeafProblem, lam, *, inner_steps: int = 20, tol: float = 0.0, warm_start: str = "best",
                      polish_max_size: int = POLISH_MAX_SIZE, polish_sweeps: int = POLISH_SWEEPS,
                      search_max_size: int = SEARCH_MAX_SIZE):
    """``(θ_{t+1}, inner iterations)`` for one leaf with a non-diagonal metric (the engine's solver).

    The APG runs from ``warm_start``; the polish (leaves up to ``polish_max_size`` entries) also starts from
    ``θ_t`` and the diagonal closed form, whichever the warm start was.
    """
    regularizer, metric, alpha, theta = leaf.spec, leaf.metric, leaf.alpha, leaf.theta
    lam = jnp.asarray(lam, theta.dtype)
    u = leaf.centre()
    x_diag = diagonal_prox(regularizer, u, metric, alpha, lam)
    if warm_start == "diagonal":
        init = x_diag
    elif warm_start == "params":
        init = theta
    else:
        f_diag = subproblem_objective(regularizer, x_diag, u, metric, alpha, lam)
        f_theta = subproblem_objective(regularizer, theta, u, metric, alpha, lam)
        init = jnp.where(f_theta < f_diag, theta, x_diag)
    res = solve_metric_prox_unchecked(regularizer, u, metric, alpha, lam, init=init, extra_starts=(theta,),
                                      inner_steps=inner_steps, tol=tol, sufficient_decrease=1e-4,
                                      polish_max_size=polish_max_size, polish_sweeps=polish_sweeps,
                                      search_max_size=search_max_size, x_diag=x_diag)
    return res.x, res.iterations
