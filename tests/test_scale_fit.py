"""The metric-weighted scale fits (proxgen_jax.solvers.scale_fit) against enumeration and an exact breakpoint scan."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import proxgen_jax as pg
from proxgen_jax.solvers.scale_fit import (
    binary_scale,
    fit_scale,
    init_scale,
    lloyd_scale,
    nearest_level,
    ternary_scale,
    weighted_distance,
)

from oracles import scale_fit_breakpoints, scale_fit_enumerated


def _problem(seed, n, channels, dtype=np.float32):
    rng = np.random.default_rng(seed)
    z = (rng.normal(size=(n, channels)) * rng.uniform(0.05, 3.0, size=channels)).astype(dtype)
    c = (10 ** rng.uniform(-2, 2, size=(n, channels))).astype(dtype)
    return z, c


def _cost(z, c, s, levels):
    """Σ c (z − s·nearest)² in float64 NumPy (nearest by argmin over the levels)."""
    lev = np.asarray(levels, np.float64)
    near = lev[np.argmin(np.abs(z[:, None] / s - lev[None, :]), axis=1)]
    return float(np.sum(c * (z - s * near) ** 2))


@pytest.mark.parametrize("levels, fit", [((-1.0, 1.0), binary_scale), ((-1.0, 0.0, 1.0), ternary_scale)],
                         ids=["binary", "ternary"])
@pytest.mark.parametrize("seed", range(6))
def test_closed_forms_equal_the_enumerated_optimum(levels, fit, seed):
    n = 10 if len(levels) == 2 else 7
    z, c = _problem(seed, n, 3)
    s = np.asarray(fit(jnp.asarray(z), jnp.asarray(c), (0,)), np.float64)
    assert s.shape == (1, 3)
    for j in range(3):
        s_ref, _ = scale_fit_enumerated(z[:, j], c[:, j], levels)
        np.testing.assert_allclose(s[0, j], s_ref, rtol=1e-5)


@pytest.mark.parametrize("levels", [(-0.5, 0.5), (-2.0, 0.0, 2.0)], ids=["binary-half", "ternary-2"])
def test_fit_scale_uses_the_closed_form_for_any_symmetric_two_or_three_level_grid(levels):
    z, c = _problem(7, 7, 2)
    s = np.asarray(fit_scale(jnp.asarray(z), jnp.asarray(c), jnp.full((1, 2), 123.0), levels, (0,)), np.float64)
    for j in range(2):
        np.testing.assert_allclose(s[0, j], scale_fit_enumerated(z[:, j], c[:, j], levels)[0], rtol=1e-5)


def test_ternary_scan_on_other_axes_and_ties():
    """Channel axis first (conv-like layout), repeated |z| values and a zero channel."""
    rng = np.random.default_rng(8)
    z = rng.choice([-1.0, -0.3, 0.3, 0.7, 1.0, 2.0], size=(3, 2, 3)).astype(np.float32)
    z[1] = 0.0
    c = (10 ** rng.uniform(-1, 1, size=z.shape)).astype(np.float32)
    s = np.asarray(ternary_scale(jnp.asarray(z), jnp.asarray(c), (1, 2)), np.float64)
    assert s.shape == (3, 1, 1)
    for k in range(3):
        _, f_ref = scale_fit_enumerated(z[k], c[k], (-1.0, 0.0, 1.0))
        np.testing.assert_allclose(_cost(z[k].ravel(), c[k].ravel(), max(s[k, 0, 0], 1e-30), (-1, 0, 1)), f_ref,
                                   rtol=1e-5, atol=1e-12)
    assert s[1, 0, 0] == 0.0


@pytest.mark.parametrize("levels", [pg.uniform_levels(2), pg.uniform_levels(3, zero=True), pg.uniform_levels(4)],
                         ids=["2bit", "3bit-zero", "4bit"])
def test_lloyd_never_increases_the_distance_and_its_fixed_point_is_a_local_minimum(levels):
    z, c = _problem(9, 64, 5)
    zj, cj = jnp.asarray(z), jnp.asarray(c)
    lloyd = jax.jit(lloyd_scale, static_argnums=(3, 4, 5))
    dist = jax.jit(weighted_distance, static_argnums=(3, 4))
    s = jnp.asarray(np.random.default_rng(9).uniform(0.01, 3.0, size=(1, 5)), jnp.float32)
    prev = np.asarray(dist(zj, cj, s, levels, (0,)))
    for _ in range(60):
        s = lloyd(zj, cj, s, levels, (0,), 1)
        now = np.asarray(dist(zj, cj, s, levels, (0,)))
        assert np.all(now <= prev * (1 + 1e-6)), (now, prev)
        prev = now
    s_next = lloyd(zj, cj, s, levels, (0,), 1)
    np.testing.assert_allclose(s_next, s, rtol=1e-6)  # a fixed point
    s64 = np.asarray(s, np.float64)[0]
    for j in range(5):
        f = _cost(z[:, j].astype(np.float64), c[:, j], s64[j], levels)
        for eps in (1e-3, -1e-3):
            assert f <= _cost(z[:, j].astype(np.float64), c[:, j], s64[j] * (1 + eps), levels) * (1 + 1e-9)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_init_scale_is_close_to_the_global_optimum(bits):
    """A candidate scan then Lloyd: within 2.5 % of the exact global optimum (breakpoint scan) on Gaussian weights."""
    levels = pg.uniform_levels(bits)
    rng = np.random.default_rng(bits)
    x = (rng.normal(size=(200, 4)) * np.array([0.1, 0.5, 1.0, 3.0])).astype(np.float32)
    s = np.asarray(init_scale(jnp.asarray(x), levels, (0,)), np.float64)[0]
    for j in range(4):
        _, f_ref = scale_fit_breakpoints(x[:, j], np.ones(200), levels)
        assert _cost(x[:, j].astype(np.float64), np.ones(200), s[j], levels) <= f_ref * 1.025


def test_nearest_level_matches_the_definition():
    """argmin distance (float64), ties up; points within 1e-6 of a midpoint that float32 cannot hold are skipped."""
    for levels in (pg.uniform_levels(3), pg.uniform_levels(4, zero=True), (-1.0, -0.2, 0.5, 3.0)):
        lev = np.asarray(levels)
        mids = (lev[:-1] + lev[1:]) / 2
        y = np.concatenate([np.linspace(-10, 10, 4001), mids]).astype(np.float32)
        got = np.asarray(nearest_level(jnp.asarray(y), levels))
        y64 = y.astype(np.float64)
        d = np.abs(y64[:, None] - lev[None, :])
        ref = lev[len(lev) - 1 - np.argmin(d[:, ::-1], axis=1)]  # ties go up
        inexact = mids[mids.astype(np.float32).astype(np.float64) != mids]
        ok = np.all(np.abs(y64[:, None] - inexact[None, :]) > 1e-6, axis=1) if inexact.size else np.ones(y.size, bool)
        np.testing.assert_array_equal(got[ok], ref[ok].astype(np.float32))
        assert np.isnan(np.asarray(nearest_level(jnp.asarray([np.nan], jnp.float32), levels))[0]) or len(levels) < 5


def test_weighted_distance_matches_numpy():
    z, c = _problem(11, 30, 3)
    s = np.array([[0.3, 1.0, 2.0]], np.float32)
    got = np.asarray(weighted_distance(jnp.asarray(z), jnp.asarray(c), jnp.asarray(s), pg.uniform_levels(2), (0,)))
    for j in range(3):
        np.testing.assert_allclose(got[0, j], _cost(z[:, j].astype(np.float64), c[:, j], s[0, j],
                                                    pg.uniform_levels(2)), rtol=1e-5)


def test_uniform_levels_follow_parq():
    assert pg.uniform_levels(1) == (-0.5, 0.5)
    assert pg.uniform_levels(2) == (-1.5, -0.5, 0.5, 1.5)
    assert pg.uniform_levels(2, zero=True) == pg.TERNARY_LEVELS
    assert len(pg.uniform_levels(4)) == 16 and len(pg.uniform_levels(4, zero=True)) == 15
    for bad in (0, 17, 2.0, True):
        with pytest.raises(ValueError, match="bits"):
            pg.uniform_levels(bad)
    with pytest.raises(ValueError, match="bits"):
        pg.uniform_levels(1, zero=True)
