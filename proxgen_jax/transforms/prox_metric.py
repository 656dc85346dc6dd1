r"""The ProxGen step in a non-diagonal metric: an inner accelerated proximal-gradient solver and its transformation.

With a non-diagonal ``C_t + δI`` (KFAC, full-matrix AdaGrad) the prox of Algorithm 1, line 8,

.. math::
    θ_{t+1} = \operatorname{argmin}_θ\; ⟨m_t, θ⟩ + λR(θ) + \tfrac{1}{2α_t}(θ-θ_t)ᵀ(C_t+δI)(θ-θ_t)
            = \operatorname{argmin}_θ\; λR(θ) + \tfrac{1}{2α_t}‖θ - u‖^2_{C_t+δI},
    \qquad u = θ_t - α_t (C_t+δI)^{-1} m_t,

has no closed form. We solve it per parameter leaf by accelerated proximal gradient on the smooth part
``f(θ) = ‖θ − u‖²_M / (2α_t)`` (``M = C_t + δI``): ``∇f(θ) = M(θ − u)/α_t`` is ``L``-Lipschitz with
``L = λ_max(M)/α_t``, so one step is

.. math::  θ ← \operatorname{prox}_{(α_t/λ_{max}) λR}\bigl(y - M(y - u)/λ_{max}\bigr),

the regularizer's own closed-form prox with the *scalar* step ``α_t/λ_max`` — so every elementwise core
regularizer (ℓ1, ℓ0, ℓq, MCP, SCAD, quantization) and the group ℓ1,2 work unchanged. ``M`` is only applied
through :class:`~proxgen_jax.preconditioners.full_matrix.MetricOperator` (for KFAC: ``Ã X G̃``, factor-sized
products, never the ``d × d`` matrix), and ``λ_max`` comes from the factors' eigenvalues.

The iteration is the *monotone* accelerated proximal gradient method of Li & Lin (2015): a FISTA
extrapolation step is accepted when it decreases the objective sufficiently; otherwise a plain proximal
gradient step from the current iterate is also taken and the better of the two kept. The objective never
increases from the warm start; for convex ``R`` it converges at FISTA's ``O(1/k²)`` rate, and for non-convex
``R`` (ℓ½, ℓ0, MCP, ...) every limit point is a critical point of the subproblem — a *stationary point*, not
necessarily the global minimiser. One application of ``M`` per iteration suffices (``M y`` follows from the
stored ``M x`` by linearity), two when the safeguard step is taken. A diagonal metric reduces it to the closed
form (the warm start below is then already the exact solution).

Warm start: ``"diagonal"`` — the closed-form prox in the diagonal metric ``diag(M)`` (the Jacobi
approximation); ``"params"`` — ``θ_t``, the previous step's solution (keeps its support); ``"best"`` (default)
— whichever of the two has the lower subproblem objective.

References:
  Beck & Teboulle, *A Fast Iterative Shrinkage-Thresholding Algorithm*, SIAM J. Imaging Sci. 2009.
  Li & Lin, *Accelerated Proximal Gradient Methods for Nonconvex Programming*, NeurIPS 2015.
  Yun, Lozano & Yang, *Adaptive Proximal Gradient Methods for Structured Neural Networks*, NeurIPS 2021.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from proxgen_jax._validation import check_nonnegative, check_positive
from proxgen_jax.preconditioners.direction import split_updates
from proxgen_jax.preconditioners.full_matrix import MetricOperator
from proxgen_jax.regularizers.base import Regularizer
from proxgen_jax.transforms.masks import MaskOrFn, check_params_like
from proxgen_jax.transforms.proximal_step import RegularizerOrFn, check_regularizer, leaf_step, resolve_regularizers

_WARM_STARTS = ("best", "diagonal", "params")


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


def as_operator(metric: Any, shape: tuple, dtype) -> MetricOperator:
    """``metric`` as a :class:`MetricOperator`: operators as they are, arrays diagonal, ``None`` the identity."""
    if isinstance(metric, MetricOperator):
        return metric
    if metric is None:
        return DiagonalMetric(jnp.ones([], dtype), tuple(shape))
    return DiagonalMetric(jnp.asarray(metric).astype(dtype), tuple(shape))


class MetricProxResult(NamedTuple):
    """The inner solver's answer.

    Attributes:
      x: the approximate minimiser.
      objective: ``λR(x) + (x − u)ᵀM(x − u)/(2α)`` at ``x``.
      iterations: inner iterations run.
    """

    x: jax.Array
    objective: jax.Array
    iterations: jax.Array


def subproblem_objective(regularizer: Regularizer | None, x, u, metric, step, lam) -> jax.Array:
    """``λR(x) + (x − u)ᵀ M (x − u) / (2·step)`` — the subproblem :func:`solve_metric_prox` minimises."""
    x = jnp.asarray(x)
    op = as_operator(metric, x.shape, x.dtype)
    r = x - u
    quad = jnp.vdot(r, op.matvec(r)) / (2 * step)
    if regularizer is None:
        return quad
    return quad + regularizer.value(x, lam)


def solve_metric_prox(
    regularizer: Regularizer,
    u: jax.Array,
    metric: Any,
    step,
    lam,
    *,
    init: jax.Array | None = None,
    inner_steps: int = 50,
    tol: float = 0.0,
    sufficient_decrease: float = 1e-4,
) -> MetricProxResult:
    r"""``argmin_x λR(x) + (x − u)ᵀ M (x − u) / (2·step)`` by monotone accelerated proximal gradient.

    ``M`` is a :class:`~proxgen_jax.preconditioners.full_matrix.MetricOperator`, a diagonal array, or
    ``None`` (identity). In ProxGen ``step = α_t``, ``M = C_t + δI`` and ``u = θ_t − α_t M^{-1} m_t``. Runs
    ``inner_steps`` iterations (a ``lax.while_loop``, jit/vmap friendly), or fewer when ``tol > 0`` and the
    relative change ``‖x_{k+1} − x_k‖ ≤ tol·‖x_{k+1}‖``. See the module docstring for the method and its
    guarantees (global minimiser for convex ``R``, a stationary point otherwise).

    Example:
      >>> import jax.numpy as jnp
      >>> from proxgen_jax.regularizers import L1
      >>> res = solve_metric_prox(L1(), jnp.array([1.0, -0.2]), jnp.array([2.0, 1.0]), 1.0, 0.5)
      >>> res.x  # diagonal metric: soft thresholding at step·λ/c = (0.25, 0.5)
      Array([ 0.75, -0.  ], dtype=float32)

    Args:
      regularizer: any :class:`~proxgen_jax.regularizers.Regularizer` whose ``prox`` accepts a scalar step.
      u: the centre, shaped like the parameter leaf.
      metric: ``M``.
      step: ``α_t > 0`` (scalar).
      lam: ``λ ≥ 0``.
      init: the starting point (default: the closed-form prox in the diagonal metric ``diag(M)``).
      inner_steps: maximum number of iterations (``≥ 0``).
      tol: relative-change stopping tolerance (``0``: always run ``inner_steps``).
      sufficient_decrease: ``η`` in the acceptance test ``F(z) ≤ F(x) − η (L/2)‖z − y‖²``.

    Returns:
      A :class:`MetricProxResult`.
    """
    u = jnp.asarray(u)
    dt = jnp.promote_types(u.dtype, jnp.float32)
    u = u.astype(dt)
    op = as_operator(metric, u.shape, dt)
    step = jnp.asarray(step, dt)
    lam = jnp.asarray(lam, dt)
    if init is None:
        init = regularizer.prox(u, step / op.diagonal().astype(dt), lam)
    x0 = jnp.asarray(init).astype(dt)
    return _solve(regularizer, jnp.asarray(inner_steps, jnp.int32), u, op, step, lam, x0, jnp.asarray(tol, dt),
                  jnp.asarray(sufficient_decrease, dt))


@functools.partial(jax.jit, static_argnums=(0,))
def _solve(regularizer, inner_steps, u, op, step, lam, x0, tol, eta) -> MetricProxResult:
    dt = u.dtype
    lmax = jnp.asarray(op.max_eigenvalue(), dt)
    inner_step = step / lmax  # 1/L with L = λ_max(M)/α

    def prox(v):
        return regularizer.prox(v, inner_step, lam).astype(dt)

    def mres(x):
        return op.matvec(x - u).astype(dt)

    def objective(x, mx):
        return jnp.vdot(x - u, mx) / (2 * step) + regularizer.value(x, lam).astype(dt)

    m0 = mres(x0)
    f0 = objective(x0, m0)
    tiny = jnp.finfo(dt).tiny

    def cond(carry):
        k, done = carry[0], carry[-1]
        return jnp.logical_and(k < inner_steps, jnp.logical_not(done))

    def body(carry):
        k, x, x_prev, zk, mx, mx_prev, mzk, fx, t, t_prev, _ = carry
        a1 = t_prev / t
        a2 = (t_prev - 1) / t
        y = x + a1 * (zk - x) + a2 * (x - x_prev)
        my = mx + a1 * (mzk - mx) + a2 * (mx - mx_prev)
        zn = prox(y - my / lmax)
        mzn = mres(zn)
        fzn = objective(zn, mzn)
        dz = zn - y
        accept = fzn <= fx - eta * (lmax / (2 * step)) * jnp.vdot(dz, dz)

        def take_z(_):
            return zn, mzn, fzn

        def safeguard(_):
            v = prox(x - mx / lmax)
            mv = mres(v)
            fv = objective(v, mv)
            use_z = fzn <= fv
            return (jnp.where(use_z, zn, v), jnp.where(use_z, mzn, mv), jnp.where(use_z, fzn, fv))

        xn, mxn, fxn = jax.lax.cond(accept, take_z, safeguard, None)
        # Momentum restart when the extrapolated step was rejected (O'Donoghue & Candès's function restart).
        # The next extrapolation point is then x_{k+1} itself (t = 1, t_prev = 0, x_prev = z = x_{k+1}).
        t_new = jnp.where(accept, (1 + jnp.sqrt(1 + 4 * t * t)) / 2, jnp.ones_like(t))
        t_keep = jnp.where(accept, t, jnp.zeros_like(t))
        x_keep = jnp.where(accept, x, xn)
        mx_keep = jnp.where(accept, mx, mxn)
        zn = jnp.where(accept, zn, xn)
        mzn = jnp.where(accept, mzn, mxn)
        change = jnp.sqrt(jnp.vdot(xn - x, xn - x))
        done = jnp.logical_and(tol > 0, change <= tol * jnp.maximum(jnp.sqrt(jnp.vdot(xn, xn)), tiny))
        return (k + 1, xn, x_keep, zn, mxn, mx_keep, mzn, fxn, t_new, t_keep, done)

    one = jnp.ones([], dt)
    carry = (jnp.zeros([], jnp.int32), x0, x0, x0, m0, m0, m0, f0, one, jnp.zeros([], dt), jnp.zeros([], bool))
    out = jax.lax.while_loop(cond, body, carry)
    return MetricProxResult(out[1], out[7], out[0])


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
    mask: MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
    r"""The ProxGen step ``θ_{t+1} = prox^{C_t+δI}_{α_t λ R}(θ_t − α_t(C_t+δI)^{-1} m_t)`` for any metric.

    The last link after a preconditioner whose metric leaves may be non-diagonal
    :class:`~proxgen_jax.preconditioners.full_matrix.MetricOperator` objects (KFAC, full-matrix AdaGrad):
    those leaves are solved by :func:`solve_metric_prox` (``inner_steps`` monotone accelerated proximal
    gradient iterations from ``warm_start``); diagonal array metrics and plain updates fall back to the
    core closed form (:func:`~proxgen_jax.transforms.proximal_step.leaf_step`), exactly as
    :func:`~proxgen_jax.proximal_step` computes them. Unregularised leaves take ``−α_t (C_t+δI)^{-1} m_t``.
    Extra keyword arguments to ``update`` (e.g. ``kfac_stats`` for the preconditioner) are accepted and
    ignored, so it chains with ``GradientTransformationExtraArgs``.

    Example:
      >>> import optax, proxgen_jax as pg
      >>> from proxgen_jax.preconditioners.kfac import scale_by_kfac_precond
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
      mask: which leaves to regularise (as in :func:`~proxgen_jax.proximal_step`).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose ``update`` requires ``params``.
    """
    check_nonnegative("lam", lam)
    check_positive("learning_rate", learning_rate)
    check_nonnegative("tol", tol)
    if not isinstance(inner_steps, int) or isinstance(inner_steps, bool) or inner_steps < 1:
        raise ValueError(f"`inner_steps` must be an int ≥ 1, got {inner_steps!r}.")
    if warm_start not in _WARM_STARTS:
        raise ValueError(f"`warm_start` must be one of {_WARM_STARTS}, got {warm_start!r}.")
    check_regularizer(regularizer)

    def init_fn(params):
        resolve_regularizers(regularizer, params, mask)
        return ProximalStepMetricState(jnp.zeros([], jnp.int32), jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        direction, metric = split_updates(updates)
        check_params_like("proximal_step_metric", params, direction)
        regs = resolve_regularizers(regularizer, params, mask)
        alpha = learning_rate(state.count) if callable(learning_rate) else learning_rate
        lam_t = lam(state.count) if callable(lam) else lam

        flat_p, treedef = jax.tree.flatten(params)
        flat_d = treedef.flatten_up_to(direction)
        flat_c = [None] * len(flat_p) if metric is None else treedef.flatten_up_to(metric)
        out, iters = [], jnp.zeros([], jnp.int32)
        for p, d, c, reg in zip(flat_p, flat_d, flat_c, regs):
            if isinstance(c, MetricOperator) and reg is not None:
                delta, k = metric_leaf_step(reg, p, d, c, alpha, lam_t, inner_steps=inner_steps, tol=tol,
                                            warm_start=warm_start)
                out.append(delta)
                iters = jnp.maximum(iters, k)
            else:  # a diagonal metric, or no regularizer (the plain step −α_t d ignores the metric)
                out.append(leaf_step(reg, p, d, c, alpha, lam_t))
        new_state = ProximalStepMetricState(optax.safe_increment(state.count), iters)
        return jax.tree.unflatten(treedef, out), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def metric_leaf_step(regularizer: Regularizer, p, d, metric: MetricOperator, alpha, lam, *,
                     inner_steps: int = 20, tol: float = 0.0, warm_start: str = "best"):
    """``(θ_{t+1} − θ_t, inner iterations)`` for one leaf with a non-diagonal metric, in the dtype of ``θ``."""
    p = jnp.asarray(p)
    dt = jnp.promote_types(p.dtype, jnp.float32)
    theta = p.astype(dt)
    alpha = jnp.asarray(alpha, dt)
    lam = jnp.asarray(lam, dt)
    u = theta - alpha * jnp.asarray(d).astype(dt)
    x_diag = regularizer.prox(u, alpha / metric.diagonal().astype(dt), lam).astype(dt)
    if warm_start == "diagonal":
        init = x_diag
    elif warm_start == "params":
        init = theta
    else:
        f_diag = subproblem_objective(regularizer, x_diag, u, metric, alpha, lam)
        f_theta = subproblem_objective(regularizer, theta, u, metric, alpha, lam)
        init = jnp.where(f_theta < f_diag, theta, x_diag)
    res = solve_metric_prox(regularizer, u, metric, alpha, lam, init=init, inner_steps=inner_steps, tol=tol)
    return (res.x - theta).astype(p.dtype), res.iterations
