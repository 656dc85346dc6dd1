"""Group MCP in a diagonal metric: ``argmin_x P_{μ,γ}(‖x‖₂) + Σ_i (x_i − z_i)²/(2a_i)`` per group.

The reference is independent of the library's method (no roots of h, no Newton): a float64 NumPy global
minimisation over the radius. For every radius ``ρ < ‖z‖`` the inner problem ``min_{‖x‖=ρ} Σ (x_i − z_i)²/(2a_i)``
is solved by ``x(ν) = z/(1 + aν)`` with the multiplier ``ν ≥ 0`` fixed by ``‖x(ν)‖ = ρ`` (``ρ ≥ ‖z‖`` never
helps: both terms grow), so ``min_ρ`` is a 1-D minimisation over ``ν ∈ [0, ∞]`` of ``F(x(ν))``: a dense log grid
plus golden-section refinement, and the end points ``x = z`` (``ν = 0``) and ``x = 0`` (``ν = ∞``). The reference
itself is checked against a direct 2-D brute-force grid (groups of size 2) and the 1-D brute-force oracle.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import proxgen_jax as pg
from proxgen_jax.regularizers.group_mcp import GroupMCP
from proxgen_jax.regularizers.mcp import MCP
from proxgen_jax.transforms.prox_group import input_feature_groups, prox_group_mcp

from group_mlp import (
    assert_bias_took_plain_adam_step,
    assert_unfit_leaf_is_named,
    feature_data,
    first_adam_step,
    mlp,
    mlp_params,
)
from oracles import brute_force_prox
from oracles import objective as elementwise_objective

TOL = {np.float32: 1e-5, np.float64: 1e-10}


# ---------------------------------------------------------------------------------------------------------------
# Independent float64 reference
# ---------------------------------------------------------------------------------------------------------------
def mcp(rho, mu, gamma):
    return np.where(rho <= gamma * mu, mu * rho - rho * rho / (2 * gamma), gamma * mu * mu / 2)


def objective(x, z, a, mu, gamma):
    """``P_{μ,γ}(‖x‖) + Σ (x − z)²/(2a)`` per row, float64."""
    x, z, a = (np.asarray(v, np.float64) for v in (x, z, a))
    mu = np.asarray(mu, np.float64).reshape(-1)
    return mcp(np.linalg.norm(x, axis=1), mu, gamma) + 0.5 * np.sum((x - z) ** 2 / a, axis=1)


def _curve(u, z, a, mu, gamma):
    """``F(x(ν))`` at ``ν = exp(u)``: ``u`` is (G, K), ``z``/``a`` (G, n)."""
    q = a[:, None, :] * np.exp(u)[:, :, None]
    w = 1.0 / (1.0 + q)
    rho = np.linalg.norm(z[:, None, :] * w, axis=-1)
    quad = 0.5 * np.sum((z[:, None, :] * q * w) ** 2 / a[:, None, :], axis=-1)  # (x − z)² = (z aν/(1 + aν))²
    return mcp(rho, mu[:, None], gamma) + quad


def ref_group_mcp(z, a, mu, gamma, grid=800, golden=90):
    """Rows of ``z`` are groups. Returns ``(x, F(x), F(0), min F over x ≠ 0)``, all float64."""
    z, a = np.asarray(z, np.float64), np.asarray(a, np.float64)
    groups, n = z.shape
    mu = np.broadcast_to(np.asarray(mu, np.float64), (groups,))
    # ν from where x(ν) = z to rounding to where ‖x(ν)‖ < 1e-18‖z‖.
    lo, hi = np.log(1e-18 / a.max(axis=1)), np.log(1e18 / a.min(axis=1))
    s = np.linspace(0.0, 1.0, grid)
    best_u, best_f = np.empty(groups), np.empty(groups)
    rows = max(1, 400_000 // (grid * n))
    for g0 in range(0, groups, rows):
        sl = slice(g0, g0 + rows)
        zc, ac, mc = z[sl], a[sl], mu[sl]
        u = lo[sl, None] + (hi - lo)[sl, None] * s
        f = _curve(u, zc, ac, mc, gamma)
        r = np.arange(len(u))
        # Refine around the best grid point and around the best interior grid-local minimum.
        local = (f[:, 1:-1] <= f[:, :-2]) & (f[:, 1:-1] <= f[:, 2:])
        f_local = np.where(local, f[:, 1:-1], np.inf)
        i_best = np.argmin(f, axis=1)
        i_local = np.where(np.isfinite(f_local.min(axis=1)), np.argmin(f_local, axis=1) + 1, i_best)
        u_out, f_out = [], []
        for i in (i_best, i_local):
            left, right = u[r, np.maximum(i - 1, 0)], u[r, np.minimum(i + 1, grid - 1)]
            phi = (np.sqrt(5.0) - 1) / 2
            for _ in range(golden):
                c, d = right - phi * (right - left), left + phi * (right - left)
                go_left = _curve(c[:, None], zc, ac, mc, gamma)[:, 0] < _curve(d[:, None], zc, ac, mc, gamma)[:, 0]
                right, left = np.where(go_left, d, right), np.where(go_left, left, c)
            um = 0.5 * (left + right)
            fm = _curve(um[:, None], zc, ac, mc, gamma)[:, 0]
            better = fm < f[r, i]
            u_out.append(np.where(better, um, u[r, i]))
            f_out.append(np.where(better, fm, f[r, i]))
        pick = f_out[1] < f_out[0]
        best_u[sl] = np.where(pick, u_out[1], u_out[0])
        best_f[sl] = np.where(pick, f_out[1], f_out[0])
    x_curve = z / (1 + a * np.exp(best_u)[:, None])
    f_curve = objective(x_curve, z, a, mu, gamma)
    f_zero = 0.5 * np.sum(z * z / a, axis=1)
    f_z = mcp(np.linalg.norm(z, axis=1), mu, gamma)
    use_z = f_z <= np.minimum(f_curve, f_zero)
    use_curve = ~use_z & (f_curve < f_zero)
    x = np.where(use_z[:, None], z, np.where(use_curve[:, None], x_curve, 0.0))
    f_nonzero = np.minimum(f_z, f_curve)
    return x, np.minimum(f_nonzero, f_zero), f_zero, f_nonzero


def random_groups(rng, groups, n, gamma):
    """z over 6 decades of scale; a log-uniform over a random sub-range of 1e-8…1e8 (half the groups: all of it),
    so groups range from convex (all a_i < γ) to strongly non-convex; μ near one of the thresholds of the problem
    (zero test ‖z/a‖, ‖z‖/γ where z stops being shrunk, the hard-threshold tie √(Σz²/a/γ)) or off them."""
    z = rng.standard_normal((groups, n)) * 10 ** rng.uniform(-3, 3, (groups, 1))
    lo = np.where(rng.random(groups) < 0.5, -8.0, rng.uniform(-8, 8, groups))
    hi = np.where(lo == -8.0, 8.0, rng.uniform(lo, 8))
    a = 10 ** rng.uniform(lo[:, None], hi[:, None], (groups, n))
    thresholds = np.stack([np.linalg.norm(z / a, axis=1), np.linalg.norm(z, axis=1) / gamma,
                           np.sqrt(np.sum(z * z / a, axis=1) / gamma)])
    t = thresholds[rng.integers(0, 3, groups), np.arange(groups)]
    near = 1 + rng.choice([-1.0, 1.0], groups) * 10 ** rng.uniform(-12, -1, groups)
    factor = np.choose(rng.integers(0, 3, groups), [near, 10 ** rng.uniform(-2, 2, groups),
                                                    10 ** rng.uniform(-8, -2, groups)])
    return z, a, t * factor


def firm_threshold(z, a, mu, gamma):
    """NumPy group firm / hard thresholding (rows are groups, scalar a per row)."""
    z = np.asarray(z, np.float64)
    a = np.broadcast_to(np.asarray(a, np.float64).reshape(-1, 1), (len(z), 1))
    mu = np.broadcast_to(np.asarray(mu, np.float64).reshape(-1, 1), (len(z), 1))
    n = np.linalg.norm(z, axis=1, keepdims=True)
    firm = z * gamma / (gamma - np.where(a < gamma, a, 0)) * (1 - a * mu / np.where(n > 0, n, 1))
    firm = np.where(n <= a * mu, 0.0, np.where(n <= gamma * mu, firm, z))
    hard = np.where(n * n < mu * mu * a * gamma, 0.0, z)
    return np.where(a < gamma, firm, hard)


# ---------------------------------------------------------------------------------------------------------------
# The reference itself is right
# ---------------------------------------------------------------------------------------------------------------
def test_reference_matches_2d_brute_force():
    """Groups of size 2: the reference is at least as good as a dense 2-D grid search with zoom refinement."""
    rng = np.random.default_rng(11)
    gamma = 1.0
    z = rng.standard_normal((48, 2))
    a = 10 ** rng.uniform(-1.5, 1.5, (48, 2))  # convex, mixed and non-convex groups
    t = np.stack([np.linalg.norm(z / a, axis=1), np.linalg.norm(z, axis=1) / gamma,
                  np.sqrt(np.sum(z * z / a, axis=1) / gamma)])
    mu = t[np.arange(48) % 3, np.arange(48)] * rng.uniform(0.7, 1.3, 48)
    x_ref, f_ref, _, _ = ref_group_mcp(z, a, mu, gamma)
    np.testing.assert_allclose(objective(x_ref, z, a, mu, gamma), f_ref, rtol=1e-14)
    # The minimiser lies in the box between 0 and z (|x_i| > |z_i| or a flipped sign only costs).
    lo, hi = np.minimum(z, 0), np.maximum(z, 0)
    for size, rounds in ((301, 1), (41, 7)):
        t1 = np.linspace(0, 1, size)
        g1 = lo[:, 0, None, None] + (hi - lo)[:, 0, None, None] * t1[None, :, None]
        g2 = lo[:, 1, None, None] + (hi - lo)[:, 1, None, None] * t1[None, None, :]
        for _ in range(rounds):
            g1b, g2b = np.broadcast_arrays(g1, g2)
            pts = np.stack([g1b, g2b], axis=-1).reshape(48, -1, 2)
            f = (mcp(np.linalg.norm(pts, axis=-1), mu[:, None], gamma)
                 + 0.5 * np.sum((pts - z[:, None]) ** 2 / a[:, None], axis=-1))
            best = pts[np.arange(48), np.argmin(f, axis=1)]
            width = (hi - lo) / (size - 1) * (2.0 if rounds > 1 else 3.0)
            lo, hi = np.maximum(best - width, np.minimum(z, 0)), np.minimum(best + width, np.maximum(z, 0))
            g1 = lo[:, 0, None, None] + (hi - lo)[:, 0, None, None] * t1[None, :, None]
            g2 = lo[:, 1, None, None] + (hi - lo)[:, 1, None, None] * t1[None, None, :]
    f_brute = np.minimum(f.min(axis=1), np.minimum(0.5 * np.sum(z * z / a, axis=1), mcp(np.linalg.norm(z, axis=1),
                                                                                         mu, gamma)))
    assert np.all(f_ref <= f_brute * (1 + 1e-12)), np.max(f_ref / f_brute - 1)
    assert np.all(f_brute <= f_ref * (1 + 1e-6)), np.max(f_brute / f_ref - 1)  # the grid search got close
    assert 0 < np.sum(np.all(x_ref == 0, axis=1)) < 48 and np.sum(np.all(x_ref == z, axis=1)) > 0


def test_reference_matches_1d_oracle():
    rng = np.random.default_rng(12)
    z = rng.standard_normal(400) * 10 ** rng.uniform(-2, 2, 400)
    a = 10 ** rng.uniform(-4, 4, 400)
    gamma, lam = 2.0, np.abs(z) * 10 ** rng.uniform(-2, 1, 400) / 2.0
    _, f_ref, _, _ = ref_group_mcp(z[:, None], a[:, None], lam, gamma)
    _, f_brute = brute_force_prox("mcp", z, a, lam, gamma=gamma)
    assert np.all(f_ref <= f_brute + 1e-12 * np.abs(f_brute))
    np.testing.assert_allclose(f_ref, f_brute, rtol=1e-8)


# ---------------------------------------------------------------------------------------------------------------
# The prox
# ---------------------------------------------------------------------------------------------------------------
# (group size, groups, γ): 11,600 groups over both dtypes; γ a power of two so that it is exact in float32.
CASES = [(1, 1500, 1.0), (2, 1500, 2.0 ** -10), (3, 1200, 2.0 ** 10), (8, 1000, 1.0), (32, 500, 0.125),
         (300, 100, 8.0)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n,groups,gamma", CASES)
def test_prox_objective_gap_against_reference(dtype, n, groups, gamma):
    rng = np.random.default_rng(n + (100 if dtype == np.float64 else 0))
    z, a, mu = random_groups(rng, groups, n, gamma)
    # The library sees dtype-rounded inputs; the reference solves that same rounded problem in float64.
    z, a, mu = (v.astype(dtype).astype(np.float64) for v in (z, a, mu))
    with jax.enable_x64(dtype == np.float64):
        x = GroupMCP(gamma, group_axes=(1,)).prox(jnp.asarray(z, dtype), jnp.asarray(a, dtype),
                                                  jnp.asarray(mu[:, None], dtype))
        assert x.dtype == dtype
        x = np.asarray(x, np.float64)
    assert np.all(np.isfinite(x))
    _, f_ref, f_zero, f_nonzero = ref_group_mcp(z, a, mu, gamma)
    gap = (objective(x, z, a, mu, gamma) - f_ref) / np.abs(f_ref)
    assert gap.max() <= TOL[dtype], (gap.max(), np.argmax(gap))
    assert gap.min() >= -1e-12, (gap.min(), np.argmin(gap))  # nothing beats the reference
    # Exact zeros where zero is clearly the minimiser, none where it clearly is not; no partial zeros.
    lib_zero = np.all(x == 0, axis=1)
    np.testing.assert_array_equal(lib_zero[f_zero < (1 - 1e-4) * f_nonzero], True)
    assert not np.any(x[f_nonzero < (1 - 1e-4) * f_zero] == 0)
    assert not np.any((x == 0) & ~lib_zero[:, None])
    # Every regime is exercised: zero groups, kept groups (x = z) and interior solutions.
    assert lib_zero.any() and np.all(x == z, axis=1).any() and (~lib_zero & ~np.all(x == z, axis=1)).any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_equal_steps_reduce_to_group_firm_and_hard_thresholding(dtype):
    rng = np.random.default_rng(3)
    gamma = 2.0
    z = rng.standard_normal((600, 7)) * 10 ** rng.uniform(-2, 2, (600, 1))
    ratio = np.concatenate([10 ** rng.uniform(-6, np.log10(0.8), 300), 10 ** rng.uniform(np.log10(1.25), 6, 300)])
    a = gamma * ratio  # firm (a/γ ≤ 0.8) and hard (a/γ ≥ 1.25) regimes, clear of the degenerate a = γ
    nz = np.linalg.norm(z, axis=1)
    zero_thr = np.where(a < gamma, nz / a, nz / np.sqrt(a * gamma))  # μ at which the group turns zero
    mu = np.where(rng.random(600) < 0.5, zero_thr * rng.uniform(0.3, 1.6, 600), nz / gamma * rng.uniform(0.5, 2, 600))
    z, a, mu = (v.astype(dtype) for v in (z, a, mu))
    expect = firm_threshold(z, a, mu, gamma)
    with jax.enable_x64(dtype == np.float64):
        reg = GroupMCP(gamma, group_axes=(1,))
        full = np.asarray(reg.prox(jnp.asarray(z), jnp.asarray(np.broadcast_to(a[:, None], z.shape)),
                                   jnp.asarray(mu[:, None])), np.float64)  # general (Newton) path
        scalar = np.concatenate([np.asarray(reg.prox(jnp.asarray(z[i:i + 1]), a[i], mu[i]), np.float64)
                                 for i in range(0, 600, 50)])  # closed form
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    clear = np.abs(mu / zero_thr - 1) > 1e-4  # away from the zero threshold (the hard one jumps there)
    err = np.abs(full - expect) / np.abs(z).max(axis=1, keepdims=True)  # relative to the group's scale
    assert err[clear].max() <= rtol, err[clear].max()
    np.testing.assert_array_equal((full == 0)[clear], (expect == 0)[clear])
    np.testing.assert_allclose(scalar, expect[::50], rtol=rtol, atol=0)
    assert (expect == 0).all(axis=1).sum() > 100 and (expect == z).all(axis=1).sum() > 100


def test_scalar_step_thresholds_exactly():
    """Euclidean closed form: zero at/below ‖z‖ = aλ (firm) and below ‖z‖² = λ²aγ (hard, z at the tie)."""
    reg = GroupMCP(4.0, group_axes=None)
    z = np.array([3.0, -4.0], np.float32)  # ‖z‖ = 5
    np.testing.assert_array_equal(reg.prox(z, 0.5, 10.0), 0.0)                  # ‖z‖ = aλ: zero
    x = np.asarray(reg.prox(z, 0.5, 10.0 * (1 - 2.0 ** -20)))                    # just above: tiny, same signs
    assert np.all(np.sign(x) == np.sign(z)) and np.abs(x).max() < 1e-4
    np.testing.assert_array_equal(reg.prox(z, 0.5, 1.25), z)                      # ‖z‖ = γλ: kept
    np.testing.assert_allclose(reg.prox(z, 0.5, 2.0), z * 4 / 3.5 * (1 - 1 / 5), rtol=1e-6)
    # a = 16 ≥ γ = 4: hard threshold λ√(aγ) = 8λ; at λ = 5/8 exactly the tie keeps z.
    np.testing.assert_array_equal(reg.prox(z, 16.0, 0.625), z)
    np.testing.assert_array_equal(reg.prox(z, 16.0, 0.625 * (1 + 2.0 ** -20)), 0.0)
    np.testing.assert_array_equal(reg.prox(z, 4.0, 1.25 * (1 + 2.0 ** -20)), 0.0)  # a = γ is the hard regime


@pytest.mark.parametrize("scale", [2.0 ** -20, 1.0, 2.0 ** 20])
def test_zero_condition_holds_exactly_at_the_boundary(scale):
    # Convex group (all a_i < γ), ‖z/a‖ = μ exactly in binary: z_i/a_i = ±μ/2 on four coordinates.
    a = np.array([2.0 ** -26, 2.0 ** -3, 1.0, 2.0 ** 10], np.float32) * np.float32(scale)
    gamma = 2.0 ** 12 * scale
    mu = np.float32(0.75)
    z = np.array([1, -1, 1, -1], np.float32) * a * (mu / 2)
    assert np.linalg.norm(z.astype(np.float64) / a, 2) == mu
    reg = GroupMCP(gamma, group_axes=None)
    np.testing.assert_array_equal(np.asarray(reg.prox(jnp.asarray(z), jnp.asarray(a), mu)), 0.0)
    below = z * np.float32(1 - 2.0 ** -12)
    np.testing.assert_array_equal(np.asarray(reg.prox(jnp.asarray(below), jnp.asarray(a), mu)), 0.0)
    above = z * np.float32(1 + 2.0 ** -12)
    x = np.asarray(reg.prox(jnp.asarray(above), jnp.asarray(a), mu))
    assert np.all(x != 0) and np.all(np.sign(x) == np.sign(z))
    assert np.linalg.norm(x) < 1e-3 * np.linalg.norm(above)  # continuity: tiny just past the threshold
    _, f_ref, _, _ = ref_group_mcp(above[None], a[None], float(mu), gamma)
    assert objective(x[None], above[None], a[None], [mu], gamma)[0] <= f_ref[0] * (1 + 1e-5)


def test_size_one_groups_are_elementwise_mcp():
    rng = np.random.default_rng(5)
    z = (rng.standard_normal((50, 40)) * 10 ** rng.uniform(-3, 3, (50, 1))).astype(np.float32)
    a = (10 ** rng.uniform(-8, 8, z.shape)).astype(np.float32)
    gamma = 1.0
    lam = (np.abs(z) / a * 10 ** rng.uniform(-2, 1, z.shape)).astype(np.float32)
    got = np.asarray(GroupMCP(gamma, group_axes=()).prox(z, a, lam), np.float64)
    elem = np.asarray(MCP(gamma).prox(z, a, lam), np.float64)
    f_got = elementwise_objective("mcp", got, z, a, lam, gamma=gamma)
    f_elem = elementwise_objective("mcp", elem, z, a, lam, gamma=gamma)
    assert np.all(np.abs(f_got - f_elem) <= 1e-6 * np.abs(f_elem))
    assert np.mean(np.isclose(got, elem, rtol=1e-5, atol=0)) > 0.99 and np.sum(got == 0) > 100


def test_nan_in_nan_out_and_degenerate_inputs():
    reg = GroupMCP(1.0, group_axes=(1,))
    z = np.array([[1.0, np.nan, 2.0], [3.0, 4.0, 5.0], [0.0, 0.0, 0.0]], np.float32)
    a = np.array([[1e-8, 1.0, 1e8]] * 3, np.float32)
    x = np.asarray(reg.prox(z, a, 0.1))
    assert np.all(np.isnan(x[0])) and np.all(np.isfinite(x[1:])) and np.all(x[2] == 0)
    a_nan = a.copy()
    a_nan[1, 0] = np.nan
    zz = np.nan_to_num(z)
    x = np.asarray(reg.prox(zz, a_nan, 0.1))
    assert np.all(np.isnan(x[1])) and np.all(np.isfinite(x[[0, 2]]))
    assert np.all(np.isnan(np.asarray(reg.prox(zz, a, np.nan))))
    assert np.all(np.isnan(np.asarray(reg.prox(z, 0.5, 0.1))[0]))        # scalar step too
    assert np.all(np.isnan(np.asarray(reg.prox(zz, np.float32(np.nan), 0.1))))
    # λ = 0: identity (including zero groups), no NaN; huge λ: all zero.
    np.testing.assert_array_equal(np.asarray(reg.prox(zz, a, 0.0)), zz)
    np.testing.assert_array_equal(np.asarray(reg.prox(zz, a, 1e30)), 0.0)
    # Scale invariance: z·s, μ·s for s over 30 decades (a over 16) solve the same problem.
    reg = GroupMCP(1e3, group_axes=(1,))
    base = np.asarray(reg.prox(zz[1:2], a[1:2], 0.1), np.float64)
    assert np.all(base != 0) and np.all(base[0, 1:] < zz[1, 1:])  # an interior solution
    for s in (1e-15, 1e-10, 1e-3, 1e5, 1e15):
        zs = (zz[1:2] * s).astype(np.float32)
        mus = np.float32(0.1 * s)
        xs = np.asarray(reg.prox(zs, a[1:2], mus), np.float64)
        np.testing.assert_allclose(xs / s, base, rtol=1e-5)
        _, fr, _, _ = ref_group_mcp(zs, a[1:2], mus, 1e3)
        assert (objective(xs, zs, a[1:2], mus, 1e3) - fr) / fr <= 1e-5


def test_jit_vmap_and_dtypes():
    rng = np.random.default_rng(6)
    z = rng.standard_normal((4, 6, 5)).astype(np.float32)
    a = (10 ** rng.uniform(-3, 3, z.shape)).astype(np.float32)
    reg = GroupMCP(2.0, group_axes=(1,))
    direct = np.stack([np.asarray(reg.prox(z[i], a[i], 0.7)) for i in range(4)])
    vm = jax.jit(jax.vmap(lambda zz, aa: reg.prox(zz, aa, 0.7)))(z, a)
    np.testing.assert_allclose(vm, direct, rtol=1e-6, atol=1e-7)
    out = reg.prox(jnp.asarray(z[0], jnp.bfloat16), jnp.asarray(a[0]), 0.7)
    assert out.dtype == jnp.bfloat16
    path = jax.vmap(lambda lam: reg.prox(z[0], a[0], lam))(jnp.array([0.0, 0.5, 1e6]))  # λ as a tracer
    np.testing.assert_array_equal(path[0], z[0])
    np.testing.assert_array_equal(path[2], 0.0)


def test_value_and_subgradient():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 3, 2, 5)).astype(np.float32)
    x[..., 1] = 0.0
    x[..., 3] *= 100  # beyond γλw: flat penalty, zero gradient
    lam, gamma = 2.0, 3.0  # γλw ≈ 25: groups 0, 2, 4 below it, group 3 beyond
    reg = GroupMCP(gamma, group_axes=(0, 1, 2), weighting="sqrt")
    w = np.sqrt(18)
    norms = np.linalg.norm(x.reshape(18, 5).astype(np.float64), axis=0)
    value, subgradient = jax.jit(reg.value), jax.jit(reg.subgradient)
    np.testing.assert_allclose(float(value(x, lam)), np.sum(mcp(norms, lam * w, gamma)), rtol=1e-6)
    g = np.asarray(subgradient(x, lam))
    np.testing.assert_array_equal(g[..., 1], 0.0)  # minimal-norm element on a zero group
    np.testing.assert_array_equal(g[..., 3], 0.0)
    expect = np.maximum(lam * w - norms / gamma, 0) * x / np.where(norms == 0, 1, norms)
    np.testing.assert_allclose(g, expect, rtol=1e-5, atol=1e-8)
    nonzero = x[..., [0, 2, 3, 4]]
    auto = jax.jit(jax.grad(value))(jnp.asarray(nonzero), lam)  # the gradient where differentiable
    np.testing.assert_allclose(np.asarray(subgradient(nonzero, lam)), auto, rtol=1e-5, atol=1e-7)
    assert GroupMCP(gamma, group_axes=None).value(np.zeros(4), lam) == 0


def test_invalid_arguments_raise():
    for bad in (0.0, -1.0, np.nan):  # (prox_group_mcp's own ValueErrors: tests/test_contracts.py)
        with pytest.raises(ValueError, match="gamma"):
            GroupMCP(bad)
    with pytest.raises(ValueError, match="weighting"):
        GroupMCP(weighting="size")
    with pytest.raises(ValueError, match="group_axes"):
        GroupMCP(group_axes=(1.5,))
    with pytest.raises(ValueError, match="does not fit"):
        GroupMCP(group_axes=(2,)).prox(jnp.ones((3, 4)), jnp.ones((3, 4)), 0.1)
    assert_unfit_leaf_is_named(lambda mask: prox_group_mcp(group_axes=(1,), mask=mask),
                               r"prox_group_mcp: parameter \['dense'\]\['bias'\]")


# ---------------------------------------------------------------------------------------------------------------
# The optax transformation
# ---------------------------------------------------------------------------------------------------------------
def test_adam_chain_step_matches_numpy_reference():
    """One step of optax.chain(scale_by_adam_precond(), prox_group_mcp) vs NumPy Adam + the reference prox."""
    lr, lam, gamma, eps = 0.05, 0.4, 1.0, 1e-8
    g, new, z, c = first_adam_step(
        prox_group_mcp(lam, lr, gamma=gamma, group_axes=input_feature_groups, weighting="sqrt"), lr, eps)
    expect, f_ref, _, _ = ref_group_mcp(z, lr / c, lam * 4.0, gamma)
    got = np.asarray(new["dense0"]["kernel"], np.float64)
    # Objective first: some rows are nearly degenerate (a_i ≈ γ: a flat objective), where float32 rounding of z
    # moves the minimiser by more than it moves the objective.
    gap = (objective(got, z, lr / c, lam * 4.0, gamma) - f_ref) / f_ref
    assert gap.max() <= 1e-6, gap
    np.testing.assert_allclose(got, expect, rtol=1e-3, atol=1e-6)
    rows_zero = np.all(got == 0, axis=1)
    np.testing.assert_array_equal(rows_zero, np.all(expect == 0, axis=1))
    assert 0 < rows_zero.sum() < 8
    assert_bias_took_plain_adam_step(g, new, lr, eps)  # group_axes None for biases


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_jitted_training_removes_irrelevant_input_features(dtype):
    params = mlp_params(1, dtype)
    x, y = feature_data(1, 256)
    loss = lambda p: jnp.mean((mlp(p, x) - y) ** 2)
    tx = optax.chain(pg.scale_by_adam_precond(),
                     prox_group_mcp(optax.linear_schedule(0.0, 0.02, 100), 0.02, gamma=100.0, group_axes=(1,),
                                    mask=lambda p: {"dense0": {"kernel": True, "bias": False},
                                                    "dense1": {"kernel": False, "bias": False}}))
    state = tx.init(params)

    @jax.jit
    def step(p, s):
        u, s = tx.update(jax.grad(loss)(p), s, p)
        return optax.apply_updates(p, u), s

    for _ in range(300):
        params, state = step(params, state)
    assert all(leaf.dtype == dtype for leaf in jax.tree.leaves(params))
    k = np.asarray(params["dense0"]["kernel"], np.float32)
    rows_zero = np.all(k == 0, axis=1)
    assert not rows_zero[:3].any(), "relevant features 0-2 must survive"
    assert rows_zero[3:].sum() >= 3, rows_zero
    assert not np.any((k == 0) & ~rows_zero[:, None])
    assert float(loss(params)) < 0.5 * float(jnp.var(y))


def test_euclidean_fallback_is_group_firm_thresholding():
    """After a plain optax transform (no metric) the prox uses a_i = α: group firm thresholding."""
    params = {"w": jnp.asarray(np.random.default_rng(8).standard_normal((6, 4)), jnp.float32)}
    grads = {"w": jnp.full((6, 4), 0.1, jnp.float32)}
    lr, lam, gamma = 0.5, 1.5, 2.0
    tx = optax.chain(optax.identity(), prox_group_mcp(lam, lr, gamma=gamma, group_axes=(1,)))
    updates, _ = tx.update(grads, tx.init(params), params)
    got = np.asarray(optax.apply_updates(params, updates)["w"])
    z = np.asarray(params["w"], np.float64) - lr * 0.1
    np.testing.assert_allclose(got, firm_threshold(z, lr, lam, gamma), rtol=1e-5, atol=1e-7)
