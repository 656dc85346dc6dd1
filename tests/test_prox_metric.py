"""The inner solver of the non-diagonal ProxGen step against dense float64 NumPy references.

Subproblem: ``min_x F(x) = λR(x) + (x − u)ᵀ M (x − u) / (2α)`` with ``M = A ⊗ G + δI`` (KFAC) or a dense SPD
block. References, written here in NumPy/SciPy from the definitions, never call the library's solver:

* ℓ1: cyclic coordinate descent with exact 1-D soft-thresholding, run to a fixed point (convex: the global
  minimum);
* ℓ0: exact enumeration of all supports (one batched linear solve per support size) — the global minimum;
* ℓ½: a branch and bound over sign orthants — the global minimum for small ``n`` (below, ``n ≤ 6``). Every
  nonzero entry of a global minimiser is a 1-D prox output, so ``|x_i| ≥ μ_i^{2/3}`` with ``μ_i = αλ/M_ii``;
  each (support, signs) box gets a convex lower bound (the quadratic plus the secant of the concave ``√t``)
  and, unless that bound exceeds the incumbent, a multi-start L-BFGS-B minimisation of the smooth ``F`` on
  the box. The incumbent starts from NumPy coordinate descent with the closed-form 1-D ℓ½ prox, which is
  checked against the brute-force oracle of ``tests/oracles.py``; the whole reference is checked against
  that oracle on a diagonal ``M``;
* group ℓ1,2: long plain proximal gradient (ISTA) with a NumPy block soft threshold (convex).

The non-convex ℓ0 and ℓ½ cases must reach the *global* minimum (relative gap ``≤ 1e-6`` in float64) with
default settings, through both :func:`solve_metric_prox` and :func:`proximal_step_metric`.
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.optimize import minimize

from proxgen_jax.preconditioners.preconditioned_updates import PreconditionedUpdates
from proxgen_jax.regularizers import L0, L1, MCP, SCAD, Lq, Quantization
from proxgen_jax.solvers.metric_operators import (
    DenseMetric,
    DiagonalMetric,
    KroneckerMetric,
    MetricOperator,
    subproblem_objective,
    symmetric_eigh,
)
from proxgen_jax.solvers.metric_prox import solve_metric_prox
from proxgen_jax.transforms.proximal_step import proximal_step
from proxgen_jax.transforms.proximal_step_metric import proximal_step_metric
from tests import oracles

TOL = 1e-6  # relative objective gap required in float64


def spd(rng, n, cond):
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    e = np.logspace(0, np.log10(cond), n) * rng.uniform(0.5, 2.0)
    return (q * e) @ q.T


def kfac_problem(seed, shape=(4, 3), cond=20.0, delta=1e-2):
    rng = np.random.default_rng(seed)
    a = spd(rng, shape[0], cond)
    g = spd(rng, shape[1], cond)
    dense = np.kron(a, g) + delta * np.eye(a.shape[0] * g.shape[0])
    u = rng.normal(size=shape)
    return a, g, delta, dense, u


def f_np(kind, x, u, m, alpha, lam, q=None):
    x = np.asarray(x, np.float64).ravel()
    r = x - np.asarray(u, np.float64).ravel()
    pen = oracles.penalty(kind, x, lam, q=q).sum()
    return pen + r @ m @ r / (2 * alpha)


def cd_l1(u, m, alpha, lam, x0=None, sweeps=20000):
    """Coordinate descent with exact soft-thresholding; stops at a fixed point."""
    u = u.ravel()
    x = np.zeros_like(u) if x0 is None else x0.copy()
    g = m @ (x - u)
    for _ in range(sweeps):
        biggest = 0.0
        for i in range(len(u)):
            w = x[i] - g[i] / m[i, i]
            mu = alpha * lam / m[i, i]
            new = np.sign(w) * max(abs(w) - mu, 0.0)
            if new != x[i]:
                g += m[:, i] * (new - x[i])
                biggest = max(biggest, abs(new - x[i]))
                x[i] = new
        if biggest < 1e-15:
            break
    return x


def exact_l0(u, m, alpha, lam):
    """Global minimum of λ‖x‖₀ + (x−u)ᵀM(x−u)/(2α) by enumerating supports (batched per support size).

    On a support ``S`` the best point is ``x_S = M_SS^{-1}(M u)_S`` with quadratic term
    ``(uᵀMu − (Mu)_Sᵀ x_S)/(2α)``; the winner's objective is recomputed from its ``x``.
    """
    u = u.ravel()
    d = len(u)
    mu = m @ u
    umu = u @ mu
    best, best_x = umu / (2 * alpha), np.zeros(d)
    for k in range(1, d + 1):
        supp = np.array(list(itertools.combinations(range(d), k)))
        b = mu[supp]
        xs = np.linalg.solve(m[supp[:, :, None], supp[:, None, :]], b[..., None])[..., 0]
        vals = lam * k + (umu - np.sum(b * xs, axis=1)) / (2 * alpha)
        i = int(np.argmin(vals))
        if vals[i] < best:
            best_x = np.zeros(d)
            best_x[supp[i]] = xs[i]
            best = vals[i]
    r = best_x - u
    return best_x, lam * np.count_nonzero(best_x) + r @ m @ r / (2 * alpha)


def prox_lhalf_np(z, mu):
    """``argmin_x μ|x|^½ + (x − z)²/2`` elementwise: with ``s = √|x|`` a nonzero minimiser solves
    ``s³ − |z|s + μ/2 = 0`` (largest root, trigonometric form); compared with ``x = 0`` (ties → 0)."""
    z = np.asarray(z, np.float64)
    t = np.abs(z)
    tp = np.where(t > 0, t, 1.0)
    arg = np.clip(-(3 * mu / (4 * tp)) * np.sqrt(3 / tp), -1.0, 1.0)
    s = 2 * np.sqrt(tp / 3) * np.cos(np.arccos(arg) / 3)
    x = s * s
    nonzero = (t > 0) & ((x - t) ** 2 / 2 + mu * s < t * t / 2)
    return np.where(nonzero, np.sign(z) * x, 0.0)


def cd_lhalf(u, m, alpha, lam, x, sweeps=500):
    """Cyclic coordinate descent with the closed-form 1-D ℓ½ prox (a local solution: the B&B incumbent)."""
    u = u.ravel()
    x = x.ravel().copy()
    dm = np.diag(m)
    g = m @ (x - u)
    for _ in range(sweeps):
        biggest = 0.0
        for i in range(len(u)):
            new = prox_lhalf_np(x[i] - g[i] / dm[i], alpha * lam / dm[i])
            if new != x[i]:
                g += m[:, i] * (new - x[i])
                biggest = max(biggest, abs(new - x[i]))
                x[i] = new
        if biggest <= 1e-13 * max(np.max(np.abs(x)), 1e-300):
            break
    return x


def lhalf_global(u, m, alpha, lam, seed=0):
    """Global minimum of λΣ|x_i|^½ + (x−u)ᵀM(x−u)/(2α) for small ``n``: branch and bound over orthant boxes.

    A global minimiser ``x*`` is a coordinate-wise minimiser, so each nonzero ``x*_i`` is a 1-D prox output:
    ``|x*_i| ≥ lo_i = μ_i^{2/3}``, ``μ_i = αλ/M_ii``; ``F(x*) ≤ best`` bounds it further (``box``). On each
    box (support ``S``, signs ``σ``) the
    lower bound is the minimum of the quadratic plus the secant of ``√`` (its convex envelope on the box):
    first without the box constraints (one linear solve), then, if that does not prune, over the box
    (L-BFGS-B, convex). Boxes that survive get a multi-start L-BFGS-B minimisation of ``F`` (smooth there).
    Boxes are visited best-first (by the relaxed bound) and the bounds are recomputed with the incumbent,
    which starts from NumPy coordinate descent and ends with Newton steps on the winner's support.
    """
    u = np.asarray(u, np.float64).ravel()
    d = len(u)
    rng = np.random.default_rng(seed)
    lo = (alpha * lam / np.diag(m)) ** (2.0 / 3.0)

    def f_full(x):
        return lam * np.sum(np.sqrt(np.abs(x))) + (x - u) @ m @ (x - u) / (2 * alpha)

    starts = [np.zeros(d), u.copy(), prox_lhalf_np(u, alpha * lam / np.diag(m))]
    best_x = min([cd_lhalf(u, m, alpha, lam, s) for s in starts] + [np.zeros(d)], key=f_full)
    best = f_full(best_x)
    mu_u = m @ u

    def box(s_, sg, xs):
        """Bounds ``lo_b ≤ σ_i x_i ≤ hi_b``, secant slope/constant and the box-relaxed secant minimiser, for the
        current incumbent; ``None`` if the box cannot hold a point better than it. On support ``S`` the
        quadratic is ``q_S + (x_S − x^LS_S)ᵀM_SS(x_S − x^LS_S)/(2α)``, so ``F ≤ best`` confines
        ``x_i`` to ``x^LS_i ± √(2α(best − λΣ_S√lo − q_S)(M_SS⁻¹)_ii)``."""
        m_ss = m[np.ix_(s_, s_)]
        r_ls = xs - u
        room = best - lam * np.sum(np.sqrt(lo[s_])) - r_ls @ m @ r_ls / (2 * alpha)
        if room <= 0:
            return None
        rad = np.sqrt(2 * alpha * room * np.diag(np.linalg.inv(m_ss)))
        lo_b = np.maximum(lo[s_], sg * xs[s_] - rad)
        hi_b = sg * xs[s_] + rad
        if np.any(hi_b <= lo_b):
            return None
        slope = (np.sqrt(hi_b) - np.sqrt(lo_b)) / (hi_b - lo_b)
        const = lam * np.sum(np.sqrt(lo_b) - slope * lo_b)
        z_free = xs[s_] - alpha * lam * np.linalg.solve(m_ss, slope * sg)
        r = -u.copy()
        r[s_] += z_free
        bound = r @ m @ r / (2 * alpha) + const + lam * np.sum(slope * sg * z_free)
        if bound >= best * (1 - 1e-9):
            return None
        return bound, lo_b, hi_b, slope, const, z_free

    boxes = []  # best-first: every (support, signs) box, ordered by its relaxed bound for the first incumbent
    for k in range(1, d + 1):
        for supp in itertools.combinations(range(d), k):
            s_ = np.array(supp)
            xs = np.zeros(d)
            xs[s_] = np.linalg.solve(m[np.ix_(s_, s_)], mu_u[s_])
            for sg in itertools.product((-1.0, 1.0), repeat=k):
                b = box(s_, np.array(sg), xs)
                if b is not None:
                    boxes.append((b[0], s_, np.array(sg), xs))
    boxes.sort(key=lambda t: t[0])
    opts = {"ftol": 1e-15, "gtol": 1e-12, "maxiter": 2000}
    for _, s_, sg, xs in boxes:
        b = box(s_, sg, xs)
        if b is None:
            continue
        _, lo_b, hi_b, slope, const, z_free = b

        def parts(z, s_=s_):
            x = np.zeros(d)
            x[s_] = z
            r = x - u
            return r @ m @ r / (2 * alpha), (m @ r / alpha)[s_]

        def secant(z, sg=sg, slope=slope, const=const):
            q, g = parts(z)
            return q + const + lam * np.sum(slope * sg * z), g + lam * slope * sg

        lower = np.where(sg > 0, lo_b, -hi_b)
        upper = np.where(sg > 0, hi_b, -lo_b)
        bounds = list(zip(lower, upper))
        lb = minimize(secant, np.clip(z_free, lower, upper), jac=True, method="L-BFGS-B", bounds=bounds,
                      options=opts)
        if lb.fun >= best * (1 - 1e-9):
            continue

        def smooth(z):
            q, g = parts(z)
            a = np.abs(z)
            return q + lam * np.sum(np.sqrt(a)), g + lam * 0.5 * np.sign(z) / np.sqrt(a)

        for z in (lb.x, sg * lo_b, lower + rng.random(len(s_)) * (upper - lower)):
            res = minimize(smooth, z, jac=True, method="L-BFGS-B", bounds=bounds, options=opts)
            if res.fun < best:
                best = res.fun
                best_x = np.zeros(d)
                best_x[s_] = res.x
    # Newton on the winner's support (F is smooth there; kept only while it decreases).
    s_ = np.flatnonzero(best_x)
    for _ in range(50 if len(s_) else 0):
        z = best_x[s_]
        a = np.abs(z)
        g = (m @ (best_x - u) / alpha)[s_] + lam * 0.5 * np.sign(z) / np.sqrt(a)
        h = m[np.ix_(s_, s_)] / alpha - np.diag(lam * 0.25 / a ** 1.5)
        trial = best_x.copy()
        trial[s_] = z - np.linalg.solve(h, g)
        if not (np.all(np.sign(trial[s_]) == np.sign(z)) and f_full(trial) < f_full(best_x)):
            break
        best_x = trial
    return best_x, f_full(best_x)


def ista_group(u, m, alpha, lam, axes, iters=200000):
    """Plain proximal gradient with a NumPy block soft threshold (groups = entries sharing the other axes)."""
    lmax = np.linalg.eigvalsh(m).max()
    s = alpha / lmax
    x = u.copy()
    for _ in range(iters):
        v = x - (m @ (x - u).ravel()).reshape(u.shape) / lmax
        nrm = np.sqrt(np.sum(v * v, axis=axes, keepdims=True))
        x_new = v * np.maximum(0.0, 1 - s * lam / np.maximum(nrm, 1e-300))
        if np.max(np.abs(x_new - x)) < 1e-16:
            x = x_new
            break
        x = x_new
    return x


def lam_scale(m, alpha):
    """λ at which the thresholds ``αλ/M_ii`` are of the order of the entries of ``u`` (~1)."""
    return float(np.median(np.diag(m))) / alpha


def rel_gap(f, f_ref):
    return (f - f_ref) / abs(f_ref)


# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_l1_reaches_dense_reference(seed):
    a, g, delta, dense, u = kfac_problem(seed)
    alpha = 0.1
    lam = 0.3 * lam_scale(dense, alpha)
    x_ref = cd_l1(u, dense, alpha, lam)
    f_ref = f_np("l1", x_ref, u, dense, alpha, lam)
    assert 0.2 < np.mean(x_ref == 0) < 0.9  # a problem where the prox matters
    with jax.enable_x64(True):
        op = KroneckerMetric.from_factors(jnp.asarray(a), jnp.asarray(g), delta, u.shape)
        res = solve_metric_prox(L1(), jnp.asarray(u), op, alpha, lam, inner_steps=3000)
        x = np.asarray(res.x)
    assert x.dtype == np.float64
    assert rel_gap(f_np("l1", x, u, dense, alpha, lam), f_ref) <= TOL
    np.testing.assert_allclose(float(res.objective), f_np("l1", x, u, dense, alpha, lam), rtol=1e-10)
    # Convex: the minimiser is unique, so the iterates agree too, zeros included.
    np.testing.assert_allclose(x.ravel(), x_ref, atol=1e-6)


def scaled_problem(seed, shape, cond, rho, alpha=0.1, lam=1.0, delta=1e-2):
    """A KFAC subproblem ``M = c(A ⊗ G + δI)`` whose scale ``c`` puts ``λ`` at ``ρ · median(M_ii)/α``.

    ``ρ`` sets the regime for ``u ~ N(0, 1)`` (small: few zeros, ~1: mostly zeros) while ``λ`` and ``α`` stay
    fixed, so one transformation serves a whole batch of problems. Returns ``(a, g, δ, dense, u, θ)``.
    """
    rng = np.random.default_rng(seed)
    a, g = spd(rng, shape[0], cond), spd(rng, shape[1], cond)
    c = alpha * lam / (rho * np.median(np.outer(np.diag(a), np.diag(g))))
    a, delta = c * a, c * delta
    dense = np.kron(a, g) + delta * np.eye(a.shape[0] * g.shape[0])
    u = rng.normal(size=shape)
    return a, g, delta, dense, u, u + 0.3 * rng.normal(size=shape)


# (seed, cond of each factor, ρ) per leaf shape; ρ from "few zeros" (0.02) to "mostly zeros" (1–2).
L0_CASES = {
    (2, 3): [(0, 10.0, 0.002), (1, 1e3, 0.3), (2, 100.0, 1.0), (3, 1e3, 0.02)],
    (4, 4): [(10, 100.0, 0.002), (11, 1e3, 0.05), (12, 10.0, 0.5), (13, 1e3, 2.0)],
    (3, 5): [(20, 1e3, 0.1), (21, 100.0, 0.001), (22, 10.0, 0.3), (23, 1e3, 1.0)],
}
LHALF_CASES = {
    (2, 3): [(30, 10.0, 0.002), (31, 1e3, 0.3), (32, 100.0, 1.0), (33, 1e3, 0.02), (34, 100.0, 0.01),
             (35, 10.0, 2.0)],
    (3, 2): [(40, 1e3, 0.1), (41, 100.0, 0.001), (42, 10.0, 0.3), (43, 1e3, 1.0), (47, 1e3, 0.01),
             (45, 100.0, 0.05)],
}


def solve_both_ways(reg, shape, problems, alpha=0.1, lam=1.0):
    """``x`` from ``solve_metric_prox`` and from one ``proximal_step_metric`` step (defaults), vmapped over
    the problems of one shape, float64."""
    with jax.enable_x64(True):
        ops = [KroneckerMetric.from_factors(jnp.asarray(a), jnp.asarray(g), dl, shape) for a, g, dl, *_ in problems]
        op = jax.tree.map(lambda *leaves: jnp.stack(leaves), *ops)
        u = jnp.stack([jnp.asarray(pr[4]) for pr in problems])
        theta = jnp.stack([jnp.asarray(pr[5]) for pr in problems])
        tx = proximal_step_metric(reg, lam, alpha)

        def both(u, theta, op):
            x = solve_metric_prox(reg, u, op, alpha, lam).x
            params = {"w": theta}
            step, _ = tx.update(PreconditionedUpdates({"w": (theta - u) / alpha}, {"w": op}), tx.init(params),
                                params)
            return x, theta + step["w"]

        x_solve, x_step = jax.jit(jax.vmap(both))(u, theta, op)
    assert x_solve.dtype == jnp.float64 and x_step.dtype == jnp.float64
    return np.asarray(x_solve), np.asarray(x_step)


def assert_global_minimum(reg, shape, cases, reference, objective, alpha=0.1, lam=1.0):
    """Through both entry points with default settings, every problem of ``cases`` reaches the reference's
    global minimum (relative gap ≤ TOL), and the cases span few zeros to mostly zeros."""
    problems = [scaled_problem(seed, shape, cond, rho) for seed, cond, rho in cases]
    x_solve, x_step = solve_both_ways(reg, shape, problems)
    zeros = []
    for pr, xs, xt in zip(problems, x_solve, x_step):
        dense, u = pr[3], pr[4]
        x_ref, f_ref = reference(u, dense, alpha, lam)
        zeros.append(np.mean(x_ref == 0))
        for x in (xs, xt):
            assert rel_gap(objective(x, u, dense, alpha, lam), f_ref) <= TOL
    assert min(zeros) < 0.35 and max(zeros) > 0.7  # few zeros to mostly zeros


# One shape per penalty in the default run (CI ≤ 10 min); the larger ones with `-m slow`.
DEFAULT_SHAPES = {(2, 3)}


def _shapes(table):
    return [pytest.param(s, id=f"{s[0]}x{s[1]}", marks=[] if s in DEFAULT_SHAPES else [pytest.mark.slow])
            for s in table]


@pytest.mark.parametrize("shape", _shapes(L0_CASES))
def test_l0_reaches_global_minimum(shape):
    """ℓ0 in a KFAC metric: the global minimum (exact enumeration of supports), across conditioning and λ."""
    assert_global_minimum(L0(), shape, L0_CASES[shape], exact_l0, functools.partial(f_np, "l0"))


@pytest.mark.parametrize("shape", _shapes(LHALF_CASES))
def test_lhalf_reaches_global_minimum(shape):
    """ℓ½ in a KFAC metric: the global minimum (branch and bound over orthants), across conditioning and λ."""
    assert_global_minimum(Lq(0.5), shape, LHALF_CASES[shape], lhalf_global,
                          functools.partial(f_np, "lq", q=0.5))


def test_lhalf_reference_matches_bruteforce_on_diagonal_metric():
    """The ℓ½ references against the 1-D brute-force oracle: the closed-form prox on a grid, and the branch
    and bound on a diagonal M (a separable problem: the sum of the 1-D minima)."""
    z = np.linspace(-4.0, 4.0, 801)
    for mu in (1e-3, 0.3, 2.0):
        _, f_bf = oracles.brute_force_prox("lq", z, mu, 1.0, q=0.5)
        f = oracles.objective("lq", prox_lhalf_np(z, mu), z, mu, 1.0, q=0.5)
        assert np.all(f <= f_bf + 1e-12 * np.maximum(1.0, np.abs(f_bf)))
    rng = np.random.default_rng(5)
    for _ in range(4):
        c = rng.uniform(0.3, 3.0, 5)
        u = 2 * rng.normal(size=5)
        alpha, lam = 0.3, rng.uniform(0.3, 3.0)
        x, f = lhalf_global(u, np.diag(c), alpha, lam)
        _, f_bf = oracles.brute_force_prox("lq", u, alpha / c, lam, q=0.5)  # per coordinate, same scaling
        assert abs(f - f_bf.sum()) <= 1e-10 * abs(f_bf.sum())
        assert 0 < np.count_nonzero(x) < 5 or lam > 2.5


@pytest.mark.slow  # 13 s of solver compilations; the global-minimum tests run the polish
def test_polish_is_monotone_and_keeps_other_penalties_working():
    """MCP, SCAD, quantization (elementwise proxes) and ℓ0 in float32: the polished answer is never worse than
    the accelerated proximal gradient alone (``polish_max_size=0``), finite, in float32, and its reported
    objective is its own (ℓ0 and ℓ½ in float64: the global-minimum tests above)."""
    a, g, delta, dense, u = kfac_problem(8, shape=(3, 4), cond=100.0)
    alpha = 0.1
    lam = 0.2 * lam_scale(dense, alpha)
    op = KroneckerMetric.from_factors(jnp.asarray(a, jnp.float32), jnp.asarray(g, jnp.float32), delta, u.shape)
    uu = jnp.asarray(u, jnp.float32)
    for reg in [MCP(3.0), SCAD(3.7), Quantization((-1.0, 0.0, 1.0), 0.5), L0()]:
        polished = solve_metric_prox(reg, uu, op, alpha, lam)
        plain = solve_metric_prox(reg, uu, op, alpha, lam, polish_max_size=0)
        assert polished.x.dtype == jnp.float32
        f_pol = float(subproblem_objective(reg, polished.x, uu, op, alpha, lam))
        f_plain = float(subproblem_objective(reg, plain.x, uu, op, alpha, lam))
        assert np.isfinite(f_pol)
        assert f_pol <= f_plain * (1 + 1e-6), reg
        np.testing.assert_allclose(float(polished.objective), f_pol, rtol=1e-5)


def test_operator_columns_match_dense_matrix():
    """``MetricOperator.column(i)`` (Kronecker, dense, diagonal, and the generic one-hot default)."""
    a, g, delta, dense, _ = kfac_problem(1, shape=(3, 2))
    with jax.enable_x64(True):
        kron = KroneckerMetric.from_factors(jnp.asarray(a), jnp.asarray(g), delta, (3, 2))
        vals, vecs = symmetric_eigh(jnp.asarray(dense))
        full = DenseMetric.from_eigh(vecs, vals, (3, 2))
        diag = DiagonalMetric(jnp.arange(1.0, 7.0).reshape(3, 2), (3, 2))
        for op, ref in ((kron, dense), (full, dense), (diag, np.diag(np.arange(1.0, 7.0)))):
            cols = np.stack([np.asarray(op.column(i)).ravel() for i in range(6)], axis=1)
            np.testing.assert_allclose(cols, ref, rtol=1e-10, atol=1e-12)
            generic = np.asarray(jax.jit(lambda i, op=op: MetricOperator.column(op, i))(4)).ravel()
            np.testing.assert_allclose(generic, ref[:, 4], rtol=1e-10, atol=1e-12)


def test_group_l12_reaches_dense_reference():
    group_l12 = pytest.importorskip("proxgen_jax.regularizers.group_l12")
    a, g, delta, dense, u = kfac_problem(5, shape=(4, 3), cond=10.0)
    alpha = 0.1
    lam = 1.5 * lam_scale(dense, alpha)
    reg = group_l12.GroupL12(group_axes=(1,))  # one group per row of the kernel
    x_ref = ista_group(u, dense, alpha, lam, axes=1)
    f_ref = float(lam * np.sum(np.linalg.norm(x_ref, axis=1))
                  + (x_ref - u).ravel() @ dense @ (x_ref - u).ravel() / (2 * alpha))
    assert 0 < np.sum(np.all(x_ref == 0, axis=1)) < u.shape[0]
    with jax.enable_x64(True):
        op = KroneckerMetric.from_factors(jnp.asarray(a), jnp.asarray(g), delta, u.shape)
        res = solve_metric_prox(reg, jnp.asarray(u), op, alpha, lam, inner_steps=3000)
    x = np.asarray(res.x)
    f = float(lam * np.sum(np.linalg.norm(x, axis=1)) + (x - u).ravel() @ dense @ (x - u).ravel() / (2 * alpha))
    assert rel_gap(f, f_ref) <= TOL
    np.testing.assert_array_equal(np.all(x == 0, axis=1), np.all(x_ref == 0, axis=1))


def test_dense_metric_l1_reaches_reference():
    rng = np.random.default_rng(7)
    m = spd(rng, 6, 50.0)
    u = rng.normal(size=(2, 3))
    alpha, lam = 0.2, 1.0
    x_ref = cd_l1(u, m, alpha, lam)
    f_ref = f_np("l1", x_ref, u, m, alpha, lam)
    with jax.enable_x64(True):
        vals, vecs = symmetric_eigh(jnp.asarray(m))
        op = DenseMetric.from_eigh(vecs, vals, u.shape)
        res = solve_metric_prox(L1(), jnp.asarray(u), op, alpha, lam, inner_steps=3000)
    assert rel_gap(f_np("l1", np.asarray(res.x), u, m, alpha, lam), f_ref) <= TOL


@pytest.mark.parametrize("reg", [L1(), L0(), Lq(0.5), MCP(3.0)], ids=["l1", "l0", "lhalf", "mcp"])
def test_diagonal_metric_reduces_to_closed_form(reg):
    """A diagonal M through the non-diagonal step equals the core closed-form prox (Eqs. 3–4)."""
    rng = np.random.default_rng(3)
    shape = (5, 4)
    a_diag = rng.uniform(0.1, 3.0, shape[0])
    g_diag = rng.uniform(0.1, 3.0, shape[1])
    delta, alpha, lam = 1e-2, 0.1, 0.5
    theta = jnp.asarray(rng.normal(size=shape), jnp.float32)
    d = jnp.asarray(rng.normal(size=shape), jnp.float32)
    op = KroneckerMetric.from_factors(jnp.diag(jnp.asarray(a_diag, jnp.float32)),
                                      jnp.diag(jnp.asarray(g_diag, jnp.float32)), delta, shape)
    c = np.outer(a_diag, g_diag) + delta
    np.testing.assert_allclose(np.asarray(op.diagonal()), c, rtol=1e-5)
    core = proximal_step(reg, lam, alpha)
    ours = proximal_step_metric(reg, lam, alpha, inner_steps=30)
    params = {"w": theta}
    up_core, _ = core.update(PreconditionedUpdates({"w": d}, {"w": jnp.asarray(c, jnp.float32)}),
                             core.init(params), params)
    up_ours, _ = ours.update(PreconditionedUpdates({"w": d}, {"w": op}), ours.init(params), params)
    np.testing.assert_allclose(np.asarray(up_ours["w"]), np.asarray(up_core["w"]), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(theta + up_ours["w"]) == 0, np.asarray(theta + up_core["w"]) == 0)


def test_diagonal_metric_cold_start_l1_converges_to_closed_form():
    """From a cold start (θ_t) the iteration itself, not the warm start, reaches the soft threshold."""
    rng = np.random.default_rng(4)
    c = rng.uniform(0.5, 2.0, (6,))
    u = rng.normal(size=(6,))
    alpha, lam = 0.3, 1.0
    with jax.enable_x64(True):
        res = solve_metric_prox(L1(), jnp.asarray(u), DiagonalMetric(jnp.asarray(c), (6,)), alpha, lam,
                                init=jnp.zeros(6) + 5.0, inner_steps=2000)
        x = np.asarray(res.x)
    mu = alpha * lam / c
    np.testing.assert_allclose(x, np.sign(u) * np.maximum(np.abs(u) - mu, 0), atol=1e-10)


@pytest.mark.slow  # 12 float64 solver compilations; the global-minimum tests above run the same solver
def test_objective_is_monotone_from_warm_start():
    """The solver never returns an objective above its starting point (non-convex ℓ0 and ℓ½ included)."""
    a, g, delta, dense, u = kfac_problem(11, shape=(4, 4), cond=100.0)
    alpha = 0.1
    with jax.enable_x64(True):
        op = KroneckerMetric.from_factors(jnp.asarray(a), jnp.asarray(g), delta, u.shape)
        for reg, lam in [(L0(), 1.0), (Lq(0.5), 1.0), (L1(), 2.0)]:
            x0 = reg.prox(jnp.asarray(u), alpha / op.diagonal(), lam)
            f0 = float(subproblem_objective(reg, x0, jnp.asarray(u), op, alpha, lam))
            prev = f0
            for n in (1, 5, 25, 125):
                f = float(solve_metric_prox(reg, jnp.asarray(u), op, alpha, lam, init=x0, inner_steps=n).objective)
                assert f <= f0 * (1 + 1e-12)
                assert f <= prev * (1 + 1e-12)
                prev = f


def test_tolerance_stops_early_and_jits():
    a, g, delta, dense, u = kfac_problem(2)
    op = KroneckerMetric.from_factors(jnp.asarray(a, jnp.float32), jnp.asarray(g, jnp.float32), delta, u.shape)
    solve = jax.jit(lambda uu, m: solve_metric_prox(L1(), uu, m, 0.1, 2.0, inner_steps=5000, tol=1e-5))
    res = solve(jnp.asarray(u, jnp.float32), op)
    assert 0 < int(res.iterations) < 5000
    assert res.x.dtype == jnp.float32


def test_nan_in_gives_nan_out():
    a, g, delta, dense, u = kfac_problem(0)
    op = KroneckerMetric.from_factors(jnp.asarray(a, jnp.float32), jnp.asarray(g, jnp.float32), delta, u.shape)
    u = jnp.asarray(u, jnp.float32).at[0, 0].set(jnp.nan)
    res = solve_metric_prox(L1(), u, op, 0.1, 1.0, inner_steps=10)
    assert np.isnan(np.asarray(res.x)).any()


def test_transformation_masks_dtypes_and_schedules():
    rng = np.random.default_rng(0)
    a, g = spd(rng, 3, 5.0), spd(rng, 2, 5.0)
    params = {"kernel": jnp.asarray(rng.normal(size=(3, 2)), jnp.bfloat16), "bias": jnp.zeros(2, jnp.float32)}
    d = {"kernel": jnp.ones((3, 2), jnp.bfloat16), "bias": jnp.ones(2)}
    op = KroneckerMetric.from_factors(jnp.asarray(a, jnp.float32), jnp.asarray(g, jnp.float32), 1e-2, (3, 2))
    metric = {"kernel": op, "bias": jnp.full(2, 2.0)}
    tx = proximal_step_metric(L1(), optax.linear_schedule(0.1, 0.2, 10), 0.05,
                              mask={"kernel": True, "bias": False})
    state = tx.init(params)
    up, state = tx.update(PreconditionedUpdates(d, metric), state, params, kfac_stats="ignored")
    assert up["kernel"].dtype == jnp.bfloat16 and up["bias"].dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(up["bias"]), -0.05, rtol=1e-6)  # unregularised: −α·direction
    assert int(state.count) == 1 and int(state.inner_iterations) == 20


def test_core_proximal_step_refuses_operator_metric():
    op = KroneckerMetric.from_factors(jnp.eye(2), jnp.eye(2), 1e-2, (2, 2))
    tx = proximal_step(L1(), 1e-3, 1e-2)
    params = {"w": jnp.ones((2, 2))}
    with pytest.raises(TypeError, match="proximal_step_metric"):
        tx.update(PreconditionedUpdates({"w": jnp.ones((2, 2))}, {"w": op}), tx.init(params), params)


def test_invalid_solver_options_name_the_argument():
    # proximal_step_metric's own ValueErrors: tests/test_contracts.py.
    with pytest.raises(ValueError, match="search_max_size"):
        solve_metric_prox(L1(), jnp.ones(2), None, 1.0, 1.0, search_max_size=2.5)
