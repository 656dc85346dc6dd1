"""Group ℓ1,2 in a diagonal metric: ``argmin_x λw‖x‖₂ + Σ_i (x_i − z_i)²/(2a_i)`` per group.

References are independent of the library: a float64 NumPy bisection on the radius ρ (whose characterisation is
itself checked against scipy.optimize on the convex problem), NumPy block soft thresholding, and a NumPy
re-implementation of one ProxGen-Adam step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.optimize

import proxgen_jax as pg
from proxgen_jax.regularizers import group_l12
from proxgen_jax.regularizers.group_l12 import GroupL12
from proxgen_jax.transforms.prox_group import (
    input_feature_groups,
    output_unit_groups,
    prox_group_l12,
)

from group_mlp import (
    assert_bias_took_plain_adam_step,
    assert_unfit_leaf_is_named,
    feature_data,
    first_adam_step,
    mlp,
    mlp_params,
)
from oracles import group_objective as objective
from oracles import group_prox_bisection as ref_group_prox

TOL = {np.float32: 1e-5, np.float64: 1e-10}


# ---------------------------------------------------------------------------------------------------------------
# Independent float64 references
# ---------------------------------------------------------------------------------------------------------------
def block_soft_threshold(z, t):
    """NumPy: rows of ``z`` shrunk by ``t`` in ℓ2 norm."""
    n = np.linalg.norm(z, axis=1, keepdims=True)
    return np.where(n <= t, 0.0, z * (1 - t / np.where(n == 0, 1, n)))


def random_groups(rng, groups, n, spread=(-8, 8)):
    """z over 6 decades of scale, a log-uniform over 16 decades, μ from 1e-6× to 2× the zero threshold."""
    z = rng.standard_normal((groups, n)) * 10 ** rng.uniform(-3, 3, (groups, 1))
    a = 10 ** rng.uniform(*spread, (groups, n))
    thr = np.linalg.norm(z / a, axis=1)
    kappa = np.concatenate([1 - 10 ** rng.uniform(-7, -1, groups // 3),          # just past the threshold
                            10 ** rng.uniform(-6, -1, groups // 3),              # mild shrinkage
                            rng.uniform(1.0, 2.0, groups - 2 * (groups // 3))])  # zero groups
    return z, a, thr * kappa


# ---------------------------------------------------------------------------------------------------------------
# The reference itself is right (scipy on the convex problem)
# ---------------------------------------------------------------------------------------------------------------
def test_reference_matches_scipy_minimiser():
    rng = np.random.default_rng(1)
    z, a, mu = random_groups(rng, 30, 5, spread=(-1, 1))
    x_ref = ref_group_prox(z, a, mu)
    for i in range(len(z)):
        def f(x, i=i):
            return mu[i] * np.sqrt(np.sum(x * x) + 1e-300) + 0.5 * np.sum((x - z[i]) ** 2 / a[i])
        best = min((scipy.optimize.minimize(f, x0, method="Nelder-Mead",
                                            options=dict(xatol=1e-13, fatol=1e-15, maxiter=40000, maxfev=40000))
                    for x0 in (z[i], 0.5 * z[i], np.zeros_like(z[i]) + 1e-9)), key=lambda r: r.fun)
        f_ref = f(x_ref[i])
        assert f_ref <= best.fun + 1e-9 * max(abs(best.fun), 1e-300)
        np.testing.assert_allclose(x_ref[i], best.x, atol=1e-5 * (1 + np.abs(z[i]).max()))


# ---------------------------------------------------------------------------------------------------------------
# The prox
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 2, 3, 16, 300])
def test_prox_objective_gap_sixteen_decades(dtype, n):
    rng = np.random.default_rng(n + (7 if dtype == np.float64 else 0))
    z, a, mu = random_groups(rng, 1500 if n < 100 else 150, n)
    # The library sees dtype-rounded inputs; the reference solves that same rounded problem in float64.
    z, a, mu = (v.astype(dtype).astype(np.float64) for v in (z, a, mu))
    with jax.enable_x64(dtype == np.float64):
        x = GroupL12(group_axes=(1,)).prox(jnp.asarray(z, dtype), jnp.asarray(a, dtype),
                                           jnp.asarray(mu[:, None], dtype))
        assert x.dtype == dtype
        x = np.asarray(x, np.float64)
    x_ref = ref_group_prox(z, a, mu)
    f_ref = objective(x_ref, z, a, mu)
    gap = (objective(x, z, a, mu) - f_ref) / np.abs(f_ref)
    assert np.all(np.isfinite(x))
    assert gap.max() <= TOL[dtype], gap.max()
    # Exact zeros exactly where the reference has them, away from the threshold by more than rounding.
    ref_zero = np.all(x_ref == 0, axis=1)
    clear = np.abs(np.linalg.norm(z / a, axis=1) / mu - 1) > (1e-5 if dtype == np.float32 else 1e-13)
    np.testing.assert_array_equal(np.all(x == 0, axis=1)[clear], ref_zero[clear])
    assert not np.any((x == 0) & ~np.all(x == 0, axis=1, keepdims=True))  # no partially zeroed group


def test_radius_error_bound_is_a_bound_and_exact_for_equal_steps():
    """``ρ* − ρ ≤ (1 − 1/‖p(ρ)‖)·‖z‖`` for every ``ρ ≤ ρ*`` (float64, ρ* by bisection), with equality for equal a."""
    rng = np.random.default_rng(5)
    z, a, mu = random_groups(rng, 600, 9)
    keep = np.linalg.norm(z / a, axis=1) > mu * (1 + 1e-6)  # nonzero groups
    z, a, mu = z[keep], a[keep], mu[keep]
    x_ref = ref_group_prox(z, a, mu)
    root = np.linalg.norm(x_ref, axis=1)
    b = mu[:, None] * a
    with jax.enable_x64(True):
        for frac in (0.0, 1e-6, 0.3, 0.9, 1 - 1e-6):
            rho = root * frac
            norm2_p = np.sum((z / (rho[:, None] + b)) ** 2, axis=1)
            bound = np.asarray(group_l12.radius_error_bound(jnp.asarray(norm2_p), jnp.linalg.norm(z, axis=1)))
            assert np.all(root - rho <= bound * (1 + 1e-9) + 1e-12 * root), frac
        # Equal steps: s(ρ) = (ρ + b)/‖z‖ is linear and the bound is the distance itself.
        a_eq = np.broadcast_to(a[:, :1], a.shape)
        x_eq = ref_group_prox(z, a_eq, np.linalg.norm(z / a_eq, axis=1) * 0.5)
        root_eq = np.linalg.norm(x_eq, axis=1)
        b_eq = 0.5 * np.linalg.norm(z / a_eq, axis=1)[:, None] * a_eq
        rho = 0.5 * root_eq
        norm2_p = np.sum((z / (rho[:, None] + b_eq)) ** 2, axis=1)
        bound = np.asarray(group_l12.radius_error_bound(jnp.asarray(norm2_p), jnp.linalg.norm(z, axis=1)))
        np.testing.assert_allclose(bound, root_eq - rho, rtol=1e-9)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_unrolled_steps_and_certified_early_exit(dtype):
    """Both radius solvers (unrolled: off the CPU; certified early exit: on it) against the bisection reference.

    With room for many steps the early exit may stop only where ``ρ* − ρ ≤ ε·ρ`` is proved, so each nonzero
    group's ``x`` must then be within ``ε‖x*‖`` (plus rounding) of the reference: a check of the certificate
    itself, on data spread over 16 decades where it is least sharp.
    """
    rng = np.random.default_rng(11)
    z, a, mu = random_groups(rng, 900, 24)
    z, a, mu = (v.astype(dtype).astype(np.float64) for v in (z, a, mu))
    x_ref = ref_group_prox(z, a, mu)
    f_ref = objective(x_ref, z, a, mu)
    eps = group_l12.RADIUS_TOL[np.dtype(dtype).itemsize]
    steps = group_l12.NEWTON_STEPS[np.dtype(dtype).itemsize]
    with jax.enable_x64(dtype == np.float64):
        args = (jnp.asarray(z, dtype), jnp.asarray(a, dtype), jnp.asarray(mu[:, None], dtype), (1,))
        for adaptive, n_steps in ((False, steps), (True, steps), (True, 60)):
            x = np.asarray(group_l12._group_prox_diag(*args, n_steps, adaptive=adaptive), np.float64)
            gap = (objective(x, z, a, mu) - f_ref) / np.abs(f_ref)
            assert gap.max() <= TOL[dtype], (adaptive, n_steps, gap.max())
    # Rounding alone moves x by up to ~eps_mach·‖z‖ (the sums near the root): relative to ‖x*‖ that is large
    # for groups shrunk almost to zero, so the bound is ε plus that conditioning term.
    nonzero = np.linalg.norm(z / a, axis=1) / mu > 1 + (1e-5 if dtype == np.float32 else 1e-13)  # clear of ties
    norm_ref = np.linalg.norm(x_ref, axis=1)[nonzero]
    err = np.linalg.norm(x - x_ref, axis=1)[nonzero] / norm_ref
    conditioning = np.linalg.norm(z, axis=1)[nonzero] / norm_ref
    assert np.all(err <= eps + 2 * np.finfo(dtype).eps * conditioning), err.max()


@pytest.mark.parametrize("adaptive", [True, False], ids=["early_exit", "unrolled"])
def test_gradient_is_the_implicit_derivative_of_the_exact_prox(adaptive):
    """Reverse mode through the prox (e.g. hypergradients in λ): central finite differences in float64.

    The radius is differentiated implicitly at its root, so the early-exit ``while`` loop (no reverse-mode rule
    of its own) differentiates too, and both solvers give the derivative of the exact prox.
    """
    rng = np.random.default_rng(8)
    z = rng.standard_normal((5, 7))
    a = 10 ** rng.uniform(-2, 2, (5, 7))
    lam = 0.3 * np.min(np.linalg.norm(z / a, axis=1))  # every group nonzero, away from the threshold
    w = rng.standard_normal((5, 7))
    with jax.enable_x64(True):
        @jax.jit
        def f(z, a, lam):
            x = group_l12._group_prox_diag(z, a, lam, (1,), 6, adaptive=adaptive)
            return jnp.sum(jnp.asarray(w) * x)

        grads = jax.jit(jax.grad(f, argnums=(0, 1, 2)))(jnp.asarray(z), jnp.asarray(a), jnp.asarray(lam))
        h = 1e-6
        for k, v in enumerate((z, a, lam)):
            v = np.asarray(v, np.float64)
            fd = np.zeros_like(v)
            for idx in np.ndindex(v.shape):
                e = np.zeros_like(v)
                e[idx] = h * abs(v[idx])
                args = [z, a, lam]
                args[k] = v + e
                up = float(f(*args))
                args[k] = v - e
                fd[idx] = (up - float(f(*args))) / (2 * e[idx])
            np.testing.assert_allclose(np.asarray(grads[k]), fd, rtol=1e-6, atol=1e-7 * np.abs(fd).max())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_equal_steps_reduce_to_block_soft_thresholding(dtype):
    rng = np.random.default_rng(3)
    z = rng.standard_normal((400, 7)) * 10 ** rng.uniform(-2, 2, (400, 1))
    a = 10 ** rng.uniform(-6, 6, (400, 1))
    mu = np.linalg.norm(z, axis=1) / a[:, 0] * rng.uniform(0.0, 1.5, 400)  # ~1/3 zero groups
    z, a, mu = (v.astype(dtype) for v in (z, a, mu))
    expect = block_soft_threshold(z.astype(np.float64), (a[:, 0] * mu).astype(np.float64)[:, None])
    with jax.enable_x64(dtype == np.float64):
        reg = GroupL12(group_axes=(1,))
        full = np.asarray(reg.prox(jnp.asarray(z), jnp.asarray(np.broadcast_to(a, z.shape)),
                                   jnp.asarray(mu[:, None])))                    # general (Newton) path
        scalar = np.stack([np.asarray(reg.prox(jnp.asarray(z[i:i + 1]), a[i, 0], mu[i])) for i in range(5)])[:, 0]
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    err = np.abs(full - expect) / np.abs(z).max(axis=1, keepdims=True)  # relative to the group's scale
    assert err.max() <= rtol, err.max()
    np.testing.assert_array_equal(full == 0, expect == 0)
    np.testing.assert_allclose(scalar, expect[:5], rtol=rtol, atol=1e-30)


@pytest.mark.parametrize("scale", [2.0 ** -20, 1.0, 2.0 ** 20])
def test_zero_condition_holds_exactly_at_the_boundary(scale):
    # ‖z/a‖ = μ exactly in binary: z_i/a_i = ±μ/2 on four coordinates, a over 16 powers of two.
    a = np.array([2.0 ** -26, 2.0 ** -3, 1.0, 2.0 ** 26], np.float32) * np.float32(scale)
    mu = np.float32(0.75)
    z = np.array([1, -1, 1, -1], np.float32) * a * (mu / 2)
    assert np.linalg.norm(z.astype(np.float64) / a, 2) == mu
    reg = GroupL12(group_axes=None)
    at = np.asarray(reg.prox(jnp.asarray(z), jnp.asarray(a), mu))
    np.testing.assert_array_equal(at, 0.0)
    above = z * np.float32(1 + 2.0 ** -12)
    x = np.asarray(reg.prox(jnp.asarray(above), jnp.asarray(a), mu))
    assert np.all(x != 0) and np.all(np.sign(x) == np.sign(z))
    x_ref = ref_group_prox(above[None].astype(np.float64), a[None].astype(np.float64), float(mu))[0]
    assert np.linalg.norm(x - x_ref) <= 1e-4 * np.linalg.norm(above) + 1e-3 * np.linalg.norm(x_ref)
    assert np.linalg.norm(x) < 1e-3 * np.linalg.norm(above)  # continuity: tiny just past the threshold
    below = z * np.float32(1 - 2.0 ** -12)
    np.testing.assert_array_equal(np.asarray(reg.prox(jnp.asarray(below), jnp.asarray(a), mu)), 0.0)


def test_group_axes_select_rows_filters_and_whole_leaf():
    rng = np.random.default_rng(4)
    lam = 0.3
    # Dense (in, out), group_axes=(1,): one group per input feature = per row.
    z = rng.standard_normal((6, 5)).astype(np.float32)
    a = (10 ** rng.uniform(-2, 1, (6, 5))).astype(np.float32)
    got = np.asarray(GroupL12(group_axes=(1,)).prox(z, a, lam))
    np.testing.assert_allclose(got, ref_group_prox(z, a, lam), rtol=2e-5, atol=1e-6)
    got_neg = np.asarray(GroupL12(group_axes=-1).prox(z, a, lam))
    np.testing.assert_array_equal(got_neg, got)
    # Dense, group_axes=(0,): one group per output neuron = per column, weighting sqrt → w = √6.
    got = np.asarray(GroupL12(group_axes=(0,), weighting="sqrt").prox(z, a, lam))
    np.testing.assert_allclose(got.T, ref_group_prox(z.T, a.T, lam * np.sqrt(6)), rtol=2e-5, atol=1e-6)
    # Conv (h, w, in, out), (0, 1, 2): one group per output filter.
    zc = (rng.standard_normal((3, 3, 2, 4)) * np.array([0.01, 1.0, 0.01, 1.0])).astype(np.float32)
    ac = (10 ** rng.uniform(-2, 1, zc.shape)).astype(np.float32)
    thr = np.linalg.norm((zc / ac).reshape(18, 4), axis=0) / np.sqrt(18)  # per-filter zero threshold of λ
    lam_c = float(np.sqrt(np.max(thr[[0, 2]]) * np.min(thr[[1, 3]])))     # between the small and large ones
    assert np.max(thr[[0, 2]]) < lam_c < np.min(thr[[1, 3]])
    got = np.asarray(GroupL12(group_axes=(0, 1, 2), weighting="sqrt").prox(zc, ac, lam_c))
    ref = ref_group_prox(zc.reshape(18, 4).T, ac.reshape(18, 4).T, lam_c * np.sqrt(18)).T.reshape(zc.shape)
    np.testing.assert_allclose(got, ref, rtol=2e-5, atol=1e-6)
    np.testing.assert_array_equal(np.all(got == 0, axis=(0, 1, 2)), [True, False, True, False])
    # None: the whole leaf is one group; (): every entry its own group = ℓ1 soft thresholding.
    got = np.asarray(GroupL12(group_axes=None).prox(zc, ac, 0.5))
    np.testing.assert_allclose(got.ravel(), ref_group_prox(zc.reshape(1, -1), ac.reshape(1, -1), 0.5)[0],
                               rtol=2e-5, atol=1e-6)
    got = np.asarray(GroupL12(group_axes=()).prox(zc, ac, 0.5))
    np.testing.assert_allclose(got, np.sign(zc) * np.maximum(np.abs(zc) - 0.5 * ac, 0), rtol=1e-5, atol=1e-6)


def test_value_and_subgradient():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 3, 2, 4)).astype(np.float32)
    x[..., 1] = 0.0
    reg = GroupL12(group_axes=(0, 1, 2), weighting="sqrt")
    norms = np.linalg.norm(x.reshape(18, 4), axis=0)
    np.testing.assert_allclose(float(reg.value(x, 0.1)), 0.1 * np.sqrt(18) * norms.sum(), rtol=1e-6)
    g = np.asarray(reg.subgradient(x, 0.1))
    expect = 0.1 * np.sqrt(18) * x / np.where(norms == 0, 1, norms)
    np.testing.assert_allclose(g, expect, rtol=1e-6, atol=1e-8)
    np.testing.assert_array_equal(g[..., 1], 0.0)  # minimal-norm element on a zero group
    # The subgradient is the gradient where differentiable.
    auto = jax.grad(lambda v: reg.value(v, 0.1))(jnp.asarray(x[..., [0, 2, 3]]))
    np.testing.assert_allclose(np.asarray(reg.subgradient(x[..., [0, 2, 3]], 0.1)), auto, rtol=1e-5)


def test_nan_in_nan_out_and_degenerate_inputs():
    reg = GroupL12(group_axes=(1,))
    z = np.array([[1.0, np.nan, 2.0], [3.0, 4.0, 5.0], [0.0, 0.0, 0.0]], np.float32)
    a = np.array([[1e-8, 1.0, 1e8]] * 3, np.float32)
    x = np.asarray(reg.prox(z, a, 0.1))
    assert np.all(np.isnan(x[0])) and np.all(np.isfinite(x[1:])) and np.all(x[2] == 0)
    a_nan = a.copy()
    a_nan[1, 0] = np.nan
    x = np.asarray(reg.prox(np.nan_to_num(z), a_nan, 0.1))
    assert np.all(np.isnan(x[1])) and np.all(np.isfinite(x[[0, 2]]))
    assert np.all(np.isnan(np.asarray(reg.prox(np.nan_to_num(z), a, np.nan))[:2]))
    # λ = 0: identity (including zero groups), no NaN.
    zz = np.nan_to_num(z)
    np.testing.assert_array_equal(np.asarray(reg.prox(zz, a, 0.0)), zz)
    # Scale invariance: z·s, μ·s for s over 30 decades (a fixed over 16) solve the same problem.
    base = np.asarray(reg.prox(zz[1:2], a[1:2], 2e-8), np.float64)
    assert np.all(base != 0)
    for s in (1e-15, 1e-10, 1e-3, 1e5, 1e15):
        zs = (zz[1:2] * s).astype(np.float32)
        xs = np.asarray(reg.prox(zs, a[1:2], np.float32(2e-8 * s)), np.float64)
        np.testing.assert_allclose(xs / s, base, rtol=1e-5)
        xr = ref_group_prox(zs, a[1:2], np.float32(2e-8 * s))
        fr = objective(xr, zs, a[1:2], np.float32(2e-8 * s))
        assert (objective(xs, zs, a[1:2], np.float32(2e-8 * s)) - fr) / fr <= 1e-5


def test_jit_vmap_and_dtypes():
    rng = np.random.default_rng(6)
    z = rng.standard_normal((4, 6, 5)).astype(np.float32)
    a = (10 ** rng.uniform(-3, 3, z.shape)).astype(np.float32)
    reg = GroupL12(group_axes=(1,))
    direct = np.stack([np.asarray(reg.prox(z[i], a[i], 0.7)) for i in range(4)])
    vm = jax.jit(jax.vmap(lambda zz, aa: reg.prox(zz, aa, 0.7)))(z, a)
    np.testing.assert_allclose(vm, direct, rtol=1e-6, atol=1e-7)
    out = reg.prox(jnp.asarray(z[0], jnp.bfloat16), jnp.asarray(a[0]), 0.7)
    assert out.dtype == jnp.bfloat16
    # λ as a tracer (e.g. vmapped over a λ path).
    lams = jnp.array([0.0, 0.5, 5.0])
    path = jax.vmap(lambda lam: reg.prox(z[0], a[0], lam))(lams)
    np.testing.assert_array_equal(path[0], z[0])
    assert np.sum(np.all(np.asarray(path[2]) == 0, axis=1)) >= np.sum(np.all(np.asarray(path[1]) == 0, axis=1))


def test_invalid_arguments_raise():
    with pytest.raises(ValueError, match="weighting"):
        GroupL12(weighting="size")
    with pytest.raises(ValueError, match="group_axes"):
        GroupL12(group_axes=(1.5,))
    with pytest.raises(ValueError, match="newton_steps"):
        GroupL12(newton_steps=-1)
    with pytest.raises(ValueError, match="does not fit"):
        GroupL12(group_axes=(2,)).prox(jnp.ones((3, 4)), jnp.ones((3, 4)), 0.1)
    with pytest.raises(ValueError, match="repeats"):
        GroupL12(group_axes=(1, -1)).prox(jnp.ones((3, 4)), jnp.ones((3, 4)), 0.1)
    # prox_group_l12's own ValueErrors (weighting, lam, ...): tests/test_contracts.py.
    assert_unfit_leaf_is_named(lambda mask: prox_group_l12(group_axes=(1,), mask=mask), r"\['dense'\]\['bias'\]")


# ---------------------------------------------------------------------------------------------------------------
# The optax transformation
# ---------------------------------------------------------------------------------------------------------------
def test_adam_chain_step_matches_numpy_and_zeroes_whole_groups():
    """One full step of optax.chain(scale_by_adam_precond(), prox_group_l12) vs NumPy Adam + reference prox."""
    lr, lam, eps = 0.05, 0.5, 1e-8
    g, new, z, c = first_adam_step(prox_group_l12(lam, lr, group_axes=input_feature_groups, weighting="sqrt"),
                                   lr, eps)
    expect = ref_group_prox(z, lr / c, lam * np.sqrt(16))
    got = np.asarray(new["dense0"]["kernel"])
    np.testing.assert_allclose(got, expect, rtol=1e-4, atol=1e-6)
    rows_zero = np.all(got == 0, axis=1)
    np.testing.assert_array_equal(rows_zero, np.all(expect == 0, axis=1))
    assert 0 < rows_zero.sum() < 8
    assert not np.any((got == 0) & ~rows_zero[:, None])
    # Leaves with group_axes None from the callable (biases, the (16,1) kernel is 2-D: regularised) —
    # biases take the plain Adam step.
    assert_bias_took_plain_adam_step(g, new, lr, eps)


def test_training_removes_irrelevant_input_features():
    params = mlp_params(1)
    x, y = feature_data(1, 256)
    loss = lambda p: jnp.mean((mlp(p, x) - y) ** 2)
    tx = optax.chain(pg.scale_by_adam_precond(),
                     prox_group_l12(optax.linear_schedule(0.0, 0.05, 100), 0.02, group_axes=(1,),
                                    mask=lambda p: {"dense0": {"kernel": True, "bias": False},
                                                    "dense1": {"kernel": False, "bias": False}}))
    state = tx.init(params)

    @jax.jit
    def step(p, s):
        u, s = tx.update(jax.grad(loss)(p), s, p)
        return optax.apply_updates(p, u), s

    for _ in range(300):
        params, state = step(params, state)
    k = np.asarray(params["dense0"]["kernel"])
    rows_zero = np.all(k == 0, axis=1)
    assert not rows_zero[:3].any(), "relevant features 0-2 must survive"
    assert rows_zero[3:].sum() >= 3, rows_zero  # spurious sample correlations may keep one or two
    assert not np.any((k == 0) & ~rows_zero[:, None])
    assert float(loss(params)) < 0.5 * float(jnp.var(y))


def test_euclidean_fallback_is_block_soft_thresholding():
    """After a plain optax transform (no metric) the prox uses a_i = α: block soft thresholding."""
    params = {"w": jnp.asarray(np.random.default_rng(7).standard_normal((5, 4)), jnp.float32)}
    grads = {"w": jnp.full((5, 4), 0.1, jnp.float32)}
    lr, lam = 0.1, 2.0
    tx = optax.chain(optax.identity(), prox_group_l12(lam, lr, group_axes=(1,)))
    updates, _ = tx.update(grads, tx.init(params), params)
    got = np.asarray(optax.apply_updates(params, updates)["w"])
    z = np.asarray(params["w"], np.float64) - lr * 0.1
    np.testing.assert_allclose(got, block_soft_threshold(z, lr * lam), rtol=1e-5, atol=1e-7)


def test_output_unit_groups_helper():
    assert output_unit_groups(None, jnp.ones((3, 3, 2, 4))) == (0, 1, 2)
    assert output_unit_groups(None, jnp.ones((5, 4))) == (0,)
    assert output_unit_groups(None, jnp.ones(4)) is None
    assert input_feature_groups(None, jnp.ones((5, 4))) == (1,)
    assert input_feature_groups(None, jnp.ones((3, 3, 2, 4))) is None


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_certified_solver_on_nearly_equal_steps_and_its_shortcuts(dtype):
    """The training regime: ``a`` varies mildly within each group, no group is near zero.

    Every group then clears the Jensen margin (the zero test and the one-term bound are skipped) and Newton
    steps are certified by their bracket width; the answer must still be within ``ε‖x*‖`` of the reference, and
    the same as with the full setup (forced here by one zero group in the leaf) up to rounding.
    """
    rng = np.random.default_rng(12)
    z = rng.standard_normal((300, 40)) * 10 ** rng.uniform(-3, 3, (300, 1))
    a = 10 ** rng.uniform(-3, 3, (300, 1)) * rng.uniform(0.5, 2.0, (300, 40))
    mu = np.linalg.norm(z / a, axis=1) * 10 ** rng.uniform(-4, -1.5, 300)  # ‖z‖ − b̄ well above κ‖z‖
    z, a, mu = (v.astype(dtype).astype(np.float64) for v in (z, a, mu))
    x_ref = ref_group_prox(z, a, mu)
    eps = group_l12.RADIUS_TOL[np.dtype(dtype).itemsize]
    with jax.enable_x64(dtype == np.float64):
        args = (jnp.asarray(z, dtype), jnp.asarray(a, dtype), jnp.asarray(mu[:, None], dtype), (1,))
        nz, rho_j = group_l12._jensen_start(*args)
        assert bool(jnp.all(rho_j > group_l12.JENSEN_MARGIN * nz))
        x = np.asarray(group_l12._group_prox_diag(*args, 4, adaptive=True), np.float64)
        # One zero group (z = 0) in the same leaf takes the full setup for all groups.
        zf, af, muf = (np.concatenate([v, v[:1] * 0 + (1 if v is not z else 0)]) for v in (z, a, mu))
        x_full = np.asarray(group_l12._group_prox_diag(jnp.asarray(zf, dtype), jnp.asarray(af, dtype),
                                                      jnp.asarray(muf[:, None], dtype), (1,), 4, adaptive=True),
                            np.float64)
    assert np.all(x_full[-1] == 0)
    norm_ref = np.linalg.norm(x_ref, axis=1)
    err = np.linalg.norm(x - x_ref, axis=1) / norm_ref
    conditioning = np.linalg.norm(z, axis=1) / norm_ref
    assert np.all(err <= eps + 2 * np.finfo(dtype).eps * conditioning), err.max()
    np.testing.assert_allclose(x_full[:-1], x, rtol=4 * eps, atol=0)
