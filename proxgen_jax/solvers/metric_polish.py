r"""The inner metric solver's second and third stages: multi-start coordinate descent in the full metric and,
on tiny leaves, the exhaustive support search (see :mod:`proxgen_jax.solvers.metric_prox` for the guarantees)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from proxgen_jax.regularizers.base import ElementwiseRegularizer
from proxgen_jax.solvers.metric_operators import MetricOperator, subproblem_objective

#: Hard cap on ``search_max_size``: the search scores ``2^n`` supports.
SEARCH_MAX_SIZE_CAP = 20
#: Support-search points handed to the coordinate descent.
SEARCH_SEEDS = 8


def polish_plan(regularizer, size, polish_max_size, search_max_size) -> tuple[bool, bool]:
    """``(polish, search)`` for a leaf of ``size`` entries (static: decided at trace time)."""
    elementwise = isinstance(regularizer, ElementwiseRegularizer)
    polish = elementwise and size <= polish_max_size
    return polish, polish and size <= search_max_size


def _dense_rows(op: MetricOperator, d: int, dt) -> jax.Array:
    """``M`` as a ``(d, d)`` array built column by column (symmetric, so row ``i`` is column ``i``)."""
    return jax.vmap(lambda i: op.column(i).reshape(-1).astype(dt))(jnp.arange(d))


def _penalty_derivatives(regularizer, x, lam):
    """``(λr'(x), λr''(x))`` elementwise, by automatic differentiation of the separable penalty."""
    def grad(v):
        return jax.grad(lambda w: jnp.sum(regularizer.penalty(w, lam)))(v)

    g, h = jax.jvp(grad, (x,), (jnp.ones_like(x),))
    return g, h


def _coordinate_descent(regularizer, xs, u, rows, step, lam, max_sweeps, newton):
    """Cyclic coordinate descent with the exact 1-D prox in the full metric, on every row of ``xs`` at once.

    Coordinate ``i`` minimises ``λr(x_i) + (M_ii/2α)(x_i − w_i)²`` with ``w_i = x_i − (M(x − u))_i/M_ii``:
    ``x_i ← prox_{(α/M_ii)λr}(w_i)``, and the residual ``g = M(x − u)`` is updated with column ``i``. Sweeps
    stop after ``max_sweeps`` or once no coordinate moved by more than a few ulps of ``max|x|``; ``g`` is
    recomputed at the start of each sweep, so rounding does not accumulate. With ``newton``, each sweep is
    followed by one Newton step on the current nonzero pattern (``_newton_step``), kept only where it lowers
    the objective.
    """
    dt = xs.dtype
    d = u.size
    mdiag = jnp.diagonal(rows)
    steps = step / mdiag
    small = 4 * jnp.finfo(dt).eps

    def sweep(x):
        g = (x - u) @ rows

        def coord(i, carry):
            x, g, moved = carry
            xi = x[:, i]
            w = xi - g[:, i] / mdiag[i]
            new = regularizer.prox(w, steps[i], lam).astype(dt)
            dx = new - xi
            x = x.at[:, i].set(new)
            g = g + dx[:, None] * rows[i][None, :]
            return x, g, jnp.maximum(moved, jnp.abs(dx))

        x, _, moved = jax.lax.fori_loop(0, d, coord, (x, g, jnp.zeros(x.shape[:1], dt)))
        return x, moved

    def cond(carry):
        k, _, done = carry
        return jnp.logical_and(k < max_sweeps, jnp.logical_not(done))

    def body(carry):
        k, x, _ = carry
        x, moved = sweep(x)
        scale = jnp.maximum(jnp.max(jnp.abs(x), axis=1), jnp.finfo(dt).tiny)
        done = jnp.all(jnp.logical_not(moved > small * scale))  # NaN counts as converged (nothing to gain)
        if newton:
            x = jax.vmap(lambda v: _newton_step(regularizer, v, u, rows, step, lam))(x)
        return k + 1, x, done

    _, xs, _ = jax.lax.while_loop(cond, body, (jnp.zeros([], jnp.int32), xs, jnp.zeros([], bool)))
    return xs


def _dense_objective(regularizer, x, u, rows, step, lam):
    r = x - u
    return jnp.vdot(r, rows @ r) / (2 * step) + regularizer.value(x, lam).astype(x.dtype)


def _newton_step(regularizer, x, u, rows, step, lam):
    r"""One Newton step for ``F`` restricted to the nonzero pattern of ``x`` (zeros stay zero), kept only if
    it lowers ``F``: ``H = M_PP/α + diag(λr''(x_P))``, ``g = (M(x − u))_P/α + λr'(x_P)``. Exact in one step
    for ℓ0 (least squares on the support) and ℓ1 (fixed signs); quadratic convergence for ℓ½, MCP, SCAD near a
    local minimum. An indefinite ``H`` (a failed Cholesky) or a step that does not decrease ``F`` is ignored."""
    dt = x.dtype
    p = (x != 0).astype(dt)
    gp, hp = _penalty_derivatives(regularizer, x, lam)
    g = p * ((rows @ (x - u)) / step + gp.astype(dt))
    h = p[:, None] * rows * p[None, :] / step + jnp.diag(p * hp.astype(dt) + (1 - p))
    dx = -jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(h, lower=True), g) * p
    xn = x + dx
    better = _dense_objective(regularizer, xn, u, rows, step, lam) < _dense_objective(regularizer, x, u, rows,
                                                                                        step, lam)
    return jnp.where(better, xn, x)


def _support_search(regularizer, u, rows, step, lam, k):
    """The ``k`` best points among the least-squares minimisers on each of the ``2^n`` supports.

    Support ``S`` gives ``x_S = M_SS^{-1}(M u)_S`` (zero elsewhere), the minimiser of the quadratic term over
    vectors supported on ``S``, scored by the full objective ``λR(x) + ‖x − u‖²_M/(2α)``. For ℓ0 the best of
    them is the global minimiser of the subproblem; for other penalties they seed the coordinate descent.
    """
    dt = u.dtype
    d = u.size
    mu = rows @ u
    bits = jnp.arange(d, dtype=jnp.int32)

    def point(code):
        p = ((code >> bits) & 1).astype(dt)
        k_mat = p[:, None] * rows * p[None, :] + jnp.diag(1 - p)
        x = jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(k_mat, lower=True), p * mu) * p
        return x

    def score(code):
        f = _dense_objective(regularizer, point(code), u, rows, step, lam)
        return jnp.where(jnp.isnan(f), jnp.inf, f)

    n = 1 << d
    f = jax.lax.map(score, jnp.arange(n, dtype=jnp.int32), batch_size=min(n, 4096))
    _, best = jax.lax.top_k(-f, min(k, n))
    return jax.vmap(point)(best.astype(jnp.int32))


@functools.partial(jax.jit, static_argnums=(0, 1))
def polish(regularizer, search, u, op, step, lam, x_apg, starts, max_sweeps):
    """Multi-start polish: coordinate descent from the APG answer, the warm starts, ``0``, ``u`` (and, when
    ``search``, the support-search seeds); the lowest objective wins, the APG answer on ties."""
    dt = u.dtype
    shape = u.shape
    d = u.size
    uf = u.reshape(-1)
    rows = _dense_rows(op, d, dt)
    x0 = x_apg.reshape(-1).astype(dt)
    seeds = [x0] + [jnp.asarray(s).reshape(-1).astype(dt) for s in starts] + [jnp.zeros_like(uf), uf]
    xs = jnp.stack(seeds)
    if search:
        xs = jnp.concatenate([xs, _support_search(regularizer, uf, rows, step, lam, SEARCH_SEEDS)])
    xs = _coordinate_descent(regularizer, xs, uf, rows, step, lam, max_sweeps, newton=search)
    xs = jnp.concatenate([x0[None], xs])

    f = jax.vmap(lambda x: subproblem_objective(regularizer, x.reshape(shape), u, op, step, lam).astype(dt))(xs)
    f_safe = jnp.where(jnp.isnan(f), jnp.inf, f)
    i = jnp.argmin(f_safe)
    # Strictly better than the APG answer by more than rounding (a diagonal metric keeps its closed form);
    # a NaN objective there keeps the APG answer (NaN in, NaN out).
    better = f_safe[i] < f[0] - 16 * jnp.finfo(dt).eps * jnp.abs(f[0])
    x = jnp.where(better, xs[i], x0)
    return x.reshape(shape), jnp.where(better, f[i], f[0])


