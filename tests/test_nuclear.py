"""The nuclear norm: its Euclidean prox (singular-value soft thresholding) and its exact prox in Adam's metric.

Oracles, all float64 NumPy/SciPy and independent of the library: the prox optimality condition
``(z − x)/step ∈ λ∂‖x‖_*`` checked through the SVD of ``x``; and ``scipy.optimize.minimize`` (L-BFGS) on the
smooth factorised form ``min_{A,B} λ(‖A‖² + ‖B‖²)/2 + ½Σ w(ABᵀ − z)²`` of the same convex problem
(``‖X‖_* = min_{ABᵀ=X} (‖A‖² + ‖B‖²)/2``), run from our answer (scipy may only improve it) and from random
starts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.optimize

import proxgen_jax as pg
from proxgen_jax.regularizers.nuclear import TOL, solve_nuclear_prox


# ----------------------------------------------------------------------------------------------- oracles
def objective(x, z, w, lam):
    """``λ‖x‖_* + ½ Σ w (x − z)²`` in float64."""
    x = np.asarray(x, np.float64)
    return lam * np.linalg.svd(x, compute_uv=False).sum() + 0.5 * np.sum(w * (x - z) ** 2)


def scipy_min(z, w, lam, start):
    """The convex objective's minimum by L-BFGS on the factorised form, from ``start`` (its balanced factors)."""
    m, n = z.shape
    k = min(m, n)

    def fg(p):
        a, b = p[:m * k].reshape(m, k), p[m * k:].reshape(n, k)
        e = a @ b.T - z
        r = w * e
        return lam / 2 * (p @ p) + 0.5 * np.sum(r * e), np.concatenate([(lam * a + r @ b).ravel(),
                                                                      (lam * b + r.T @ a).ravel()])

    u, s, vt = np.linalg.svd(np.asarray(start, np.float64), full_matrices=False)
    p0 = np.concatenate([(u * np.sqrt(s)).ravel(), (vt.T * np.sqrt(s)).ravel()])
    res = scipy.optimize.minimize(fg, p0, jac=True, method="L-BFGS-B",
                                  options=dict(maxiter=5000, gtol=1e-9, ftol=0.0, maxcor=30))
    a, b = res.x[:m * k].reshape(m, k), res.x[m * k:].reshape(n, k)
    return objective(a @ b.T, z, w, lam)


def assert_in_subdifferential(x, z, step, lam, atol):
    """``G = (z − x)/(step·λ) ∈ ∂‖x‖_*``: ``U₁ᵀGV₁ = I``, ``P_U^⊥ G V₁ = 0``, ``U₁ᵀ G P_V^⊥ = 0`` and
    ``‖P_U^⊥ G P_V^⊥‖₂ ≤ 1`` (``x = U₁ΣV₁ᵀ``, its numerical rank read from the SVD); returns the rank."""
    x, z = np.asarray(x, np.float64), np.asarray(z, np.float64)
    g = (z - x) / (step * lam)
    u, s, vt = np.linalg.svd(x)
    r = int(np.sum(s > 1e-5 * max(1.0, np.abs(z).max())))
    u1, v1 = u[:, :r], vt[:r].T
    pu, pv = np.eye(x.shape[0]) - u1 @ u1.T, np.eye(x.shape[1]) - v1 @ v1.T
    np.testing.assert_allclose(u1.T @ g @ v1, np.eye(r), atol=atol)
    np.testing.assert_allclose(pu @ g @ v1, 0, atol=atol)
    np.testing.assert_allclose(u1.T @ g @ pv, 0, atol=atol)
    assert np.linalg.norm(pu @ g @ pv, 2) <= 1 + atol
    return r


def random_low_rank(rng, shape, rank, noise=0.0):
    m, n = shape
    return rng.standard_normal((m, rank)) @ rng.standard_normal((rank, n)) + noise * rng.standard_normal(shape)


# ----------------------------------------------------------------------------------------------- Euclidean
def test_euclidean_prox_satisfies_the_optimality_condition_and_matches_scipy():
    rng = np.random.default_rng(0)
    reg = pg.NuclearNorm()
    ranks = set()
    for i in range(24):
        shape = [(2, 2), (3, 5), (6, 4), (5, 5)][i % 4]
        z = random_low_rank(rng, shape, rng.integers(1, min(shape) + 1), noise=0.1).astype(np.float32)
        step = float(rng.uniform(0.2, 2.0))
        lam = float(np.linalg.svd(z, compute_uv=False).max() / step * rng.uniform(0.05, 1.2))
        x = np.asarray(reg.prox(jnp.asarray(z), step, lam), np.float64)
        ranks.add(assert_in_subdifferential(x, z, step, lam, atol=2e-4))
        z64, w = z.astype(np.float64), np.full(shape, 1 / step)
        starts = [x] + ([rng.standard_normal(shape)] if i % 4 == 0 else [])
        best = min(scipy_min(z64, w, lam, st) for st in starts)
        assert objective(x, z64, w, lam) <= best * (1 + 1e-6) + 1e-9
    assert len(ranks) >= 3 and 0 in ranks  # exact zeros of whole singular values, at several ranks


def test_value_and_subgradient_from_the_definitions():
    rng = np.random.default_rng(1)
    reg = pg.NuclearNorm()
    x = random_low_rank(rng, (5, 4), 2).astype(np.float32)
    s = np.linalg.svd(x.astype(np.float64), compute_uv=False)
    np.testing.assert_allclose(float(reg.value(x, 0.3)), 0.3 * s.sum(), rtol=1e-5)
    g = np.asarray(reg.subgradient(x, 0.3), np.float64)  # λ U₁V₁ᵀ: in λ∂‖x‖_*, and ⟨g, x⟩ = λ‖x‖_*
    np.testing.assert_allclose(np.sum(g * x), 0.3 * s.sum(), rtol=1e-5)
    np.testing.assert_allclose(np.linalg.svd(g, compute_uv=False)[:2], [0.3, 0.3], rtol=1e-5)
    assert np.linalg.svd(g, compute_uv=False)[2:].max() < 1e-5
    np.testing.assert_array_equal(np.asarray(reg.subgradient(jnp.zeros((3, 2)), 1.0)), 0)


def test_conv_kernels_are_matricised_as_documented():
    rng = np.random.default_rng(2)
    k = jnp.asarray(rng.standard_normal((3, 3, 4, 5)), jnp.float32)
    flat = pg.NuclearNorm().prox(k, 0.5, 2.0)
    np.testing.assert_allclose(flat, pg.NuclearNorm().prox(k.reshape(36, 5), 0.5, 2.0).reshape(k.shape), atol=1e-6)
    batched = pg.NuclearNorm(matricize="batch").prox(k, 0.5, 2.0)
    for i in range(3):
        for j in range(3):
            np.testing.assert_allclose(batched[i, j], pg.NuclearNorm().prox(k[i, j], 0.5, 2.0), atol=1e-6)
    s = np.linalg.svd(np.asarray(k, np.float64).reshape(36, 5), compute_uv=False)
    np.testing.assert_allclose(float(pg.NuclearNorm().value(k, 1.0)), s.sum(), rtol=1e-5)


# ----------------------------------------------------------------------------------------------- Adam's metric
def adam_metric_step(shape, reg, lam, alpha):
    """``(z, c) -> θ_{t+1}`` through the public chain: with ``b1 = b2 = eps = 0`` Adam's first step has metric
    ``|g|`` and direction ``sign g``, so ``g = c·s``, ``θ_t = z + α s`` put any ``(z, c)`` before the prox."""
    tx = optax.chain(pg.scale_by_adam_precond(b1=0.0, b2=0.0, eps=0.0), pg.proximal_step_metric(reg, lam, alpha))
    update = jax.jit(tx.update)

    def step(z, c, s):
        p = {"w": jnp.asarray(z + alpha * s, jnp.float32)}
        u, _ = update({"w": jnp.asarray(c * s, jnp.float32)}, tx.init(p), p)
        zz = np.asarray(p["w"], np.float64) - alpha * s  # the centre in float64, as the chain saw it
        return np.asarray(optax.apply_updates(p, u)["w"], np.float64), zz

    return step


@pytest.mark.parametrize("shape", [(2, 3), (3, 3), (4, 3), (5, 4)])
def test_metric_prox_after_adam_is_the_exact_convex_prox_to_the_stated_tolerance(shape):
    """13 random problems per shape (52 in all), metric spread up to 1e3 within a matrix:
    ``F(ours) ≤ F(scipy)·(1 + tol)``."""
    rng = np.random.default_rng(sum(shape))
    alpha, lam = 1.0, 1.0
    step = adam_metric_step(shape, pg.NuclearNorm(), lam, alpha)
    gaps, ranks = [], []
    for i in range(13):
        z = rng.standard_normal(shape).astype(np.float32)
        c = np.exp(rng.uniform(np.log(0.1), np.log(3))) * np.exp(rng.uniform(0, np.log(1e3), shape))
        c = c.astype(np.float32)
        s = np.where(rng.random(shape) < 0.5, -1.0, 1.0).astype(np.float32)
        x, zz = step(z, c, s)
        w = c.astype(np.float64) / alpha
        starts = [x] + ([rng.standard_normal(shape)] if i % 6 == 0 else [])
        best = min(scipy_min(zz, w, lam, st) for st in starts)
        gaps.append((objective(x, zz, w, lam) - best) / best)
        ranks.append(int(np.sum(np.linalg.svd(x, compute_uv=False) > 1e-5)))
    assert max(gaps) <= TOL, max(gaps)  # measured: ≤ 9.9e-7 (tol = 1e-6)
    assert len(set(ranks)) >= 2, ranks  # low-rank answers, not just the unconstrained z


def test_metric_prox_certificate_bounds_the_true_gap_at_tighter_tolerances():
    rng = np.random.default_rng(4)
    for tol in (1e-7, 1e-8):
        for _ in range(6):
            z = rng.standard_normal((4, 3)).astype(np.float32)
            step = np.exp(-rng.uniform(0, np.log(300), (4, 3))).astype(np.float32)
            res = solve_nuclear_prox(z, step, 1.0, tol=tol)
            w = 1 / step.astype(np.float64)
            f = objective(res.x, z.astype(np.float64), w, 1.0)
            best = scipy_min(z.astype(np.float64), w, 1.0, np.asarray(res.x, np.float64))
            assert float(res.gap) <= tol * float(res.objective)
            assert (f - best) / best <= tol + 1e-7  # float32 evaluation of F: ~1e-7 relative


def test_constant_metric_is_the_svt_in_one_iteration():
    rng = np.random.default_rng(5)
    z = jnp.asarray(rng.standard_normal((5, 4)), jnp.float32)
    res = solve_nuclear_prox(z, jnp.full((5, 4), 0.5), 1.5)
    assert int(res.iterations) == 1
    np.testing.assert_allclose(res.x, pg.NuclearNorm().prox(z, 0.5, 1.5), atol=1e-6)


def test_kfac_metric_through_the_inner_solver():
    """A Kronecker metric goes to solve_metric_prox, whose APG takes the Euclidean SVT (scalar step) inside."""
    from proxgen_jax.solvers.metric_operators import DenseMetric
    from proxgen_jax.solvers.metric_prox import solve_metric_prox

    rng = np.random.default_rng(6)
    a = rng.standard_normal((12, 12))
    m = a @ a.T / 12 + 0.2 * np.eye(12)
    vals, vecs = np.linalg.eigh(m)
    op = DenseMetric.from_eigh(jnp.asarray(vecs, jnp.float32), jnp.asarray(vals, jnp.float32), (4, 3))
    u = rng.standard_normal((4, 3))
    res = solve_metric_prox(pg.NuclearNorm(), jnp.asarray(u, jnp.float32), op,
                            1.0, 0.5, inner_steps=2000, tol=1e-9)
    x = np.asarray(res.x, np.float64)

    def f(p):
        d = p - u.ravel()
        return 0.5 * np.linalg.svd(p.reshape(4, 3), compute_uv=False).sum() + 0.5 * d @ m @ d

    ref = scipy.optimize.minimize(f, x.ravel(), method="Powell", options=dict(xtol=1e-10, ftol=1e-14, maxfev=40000))
    assert f(x.ravel()) <= ref.fun * (1 + 1e-5)


# ----------------------------------------------------------------------------------------------- numerics, contracts
def test_jit_and_vmap_over_lambda():
    rng = np.random.default_rng(7)
    reg = pg.NuclearNorm()
    z = jnp.asarray(rng.standard_normal((4, 3)), jnp.float32)
    step = jnp.asarray(np.exp(rng.uniform(-3, 0, (4, 3))), jnp.float32)
    lams = jnp.asarray([0.0, 0.3, 1.0, 30.0])
    batched = jax.jit(jax.vmap(lambda lam: reg.prox(z, step, lam)))(lams)
    for i, lam in enumerate(lams):
        np.testing.assert_allclose(batched[i], jax.jit(reg.prox)(z, step, lam), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(batched[0], z, atol=1e-6)  # λ = 0: the identity
    np.testing.assert_array_equal(batched[3], 0)  # λ huge: exactly zero


def test_bf16_keeps_its_dtype():
    rng = np.random.default_rng(7)
    reg = pg.NuclearNorm()
    z = jnp.asarray(rng.standard_normal((4, 3)), jnp.float32)
    step = jnp.asarray(np.exp(rng.uniform(-3, 0, (4, 3))), jnp.float32)
    for s in (0.5, step):
        out = reg.prox(z.astype(jnp.bfloat16), s, 0.3)
        assert out.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(out, np.float32), reg.prox(z, s, 0.3), atol=2e-2)
    params = {"k": z.astype(jnp.bfloat16), "b": jnp.zeros(3, jnp.bfloat16)}
    tx = optax.chain(pg.scale_by_adam_precond(), pg.prox_nuclear(0.1, 1e-2))
    u, _ = jax.jit(tx.update)(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
    assert all(v.dtype == jnp.bfloat16 for v in jax.tree.leaves(optax.apply_updates(params, u)))


def test_nan_in_gives_nan_out():
    reg = pg.NuclearNorm()
    z = jnp.ones((4, 3)).at[1, 2].set(jnp.nan)
    for step in (0.5, jnp.full((4, 3), 0.5)):
        for lam in (0.1, 1e6):
            assert np.all(np.isnan(np.asarray(reg.prox(z, step, lam))))
    out = reg.prox(jnp.ones((4, 3)), jnp.full((4, 3), 0.5).at[0, 0].set(jnp.nan), 0.1)
    assert np.all(np.isnan(np.asarray(out)))
    stack = jnp.ones((2, 4, 3)).at[0, 1, 1].set(jnp.nan)  # "batch": only the matrix with the NaN
    out = pg.NuclearNorm(matricize="batch").prox(stack, jnp.full((2, 4, 3), 0.5), 0.1)
    assert np.all(np.isnan(np.asarray(out[0]))) and np.all(np.isfinite(np.asarray(out[1])))


def test_invalid_arguments_raise_value_errors_naming_them():
    reg = pg.NuclearNorm()
    for bad in (-1.0, float("nan")):
        for call in (lambda b: reg.prox(jnp.ones((2, 2)), 1.0, b), lambda b: reg.value(jnp.ones((2, 2)), b),
                     lambda b: pg.prox_nuclear(lam=b)):
            with pytest.raises(ValueError, match="`lam`"):
                call(bad)
    with pytest.raises(ValueError, match="ndim ≥ 2"):
        reg.prox(jnp.ones(3), 1.0, 1.0)
    for kwargs, name in (({"matricize": "rows"}, "matricize"), ({"tol": 0.0}, "tol"), ({"max_iters": 0}, "max_iters")):
        with pytest.raises(ValueError, match=f"`{name}`"):
            pg.NuclearNorm(**kwargs)
        with pytest.raises(ValueError, match=f"`{name}`"):
            pg.prox_nuclear(**kwargs)


# ----------------------------------------------------------------------------------------------- training
def test_training_recovers_a_low_rank_teacher():
    """Regression on a rank-2 teacher ``W* (12×10)``: Adam leaves a full-rank kernel; ProxGen with the nuclear norm
    (exact prox in Adam's metric) finds a rank-2 one with an error as small."""
    rng = np.random.default_rng(8)
    d_in, d_out, n = 12, 10, 256
    teacher = random_low_rank(rng, (d_in, d_out), 2) / np.sqrt(d_in)
    x = rng.standard_normal((n, d_in)).astype(np.float32)
    y = (x @ teacher + 0.05 * rng.standard_normal((n, d_out))).astype(np.float32)

    def loss(p):
        return jnp.mean((x @ p["w"] - y) ** 2)

    def train(tx, steps=400):
        p = {"w": jnp.zeros((d_in, d_out), jnp.float32)}
        state = tx.init(p)

        @jax.jit
        def step(p, state):
            u, state = tx.update(jax.grad(loss)(p), state, p)
            return optax.apply_updates(p, u), state

        for _ in range(steps):
            p, state = step(p, state)
        return np.asarray(p["w"], np.float64)

    plain = train(optax.adam(1e-2))
    prox = train(optax.chain(pg.scale_by_adam_precond(), pg.prox_nuclear(1e-2, 1e-2)))

    def rank(w):
        s = np.linalg.svd(w, compute_uv=False)
        return int(np.sum(s > 1e-5 * s[0]))

    assert rank(plain) == min(d_in, d_out)
    assert rank(prox) == 2
    err = lambda w: np.linalg.norm(w - teacher) / np.linalg.norm(teacher)  # noqa: E731
    assert err(prox) < 0.05 and err(prox) <= 1.5 * err(plain) + 0.01, (err(prox), err(plain))
