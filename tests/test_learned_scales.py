"""Learned quantisation scales in the metric, against brute force, through the public transform."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import proxgen_jax as pg
from oracles import brute_force_prox, objective
from proxgen_jax.solvers.scale_fit import lloyd_scale, weighted_distance

ALPHA = 0.1
TERNARY = (-1.0, 0.0, 1.0)


def _place(z, c, dtype, seed=0):
    """(θ, g) whose first ``scale_by_adam_precond(b1=0, b2=0, eps=0)`` step sees centre ``z`` and metric ``c``."""
    s = np.random.default_rng(seed).choice([-1.0, 1.0], size=z.shape)
    theta = (z + ALPHA * s).astype(dtype)
    return theta, (c * s).astype(dtype), (theta - dtype(ALPHA) * s.astype(dtype)).astype(np.float64)


def _first_step(link, theta, grads):
    tx = optax.chain(pg.scale_by_adam_precond(b1=0.0, b2=0.0, eps=0.0), link)
    p = {"w": jnp.asarray(theta)}
    u, state = tx.update({"w": jnp.asarray(grads)}, tx.init(p), p)
    return np.asarray(optax.apply_updates(p, u)["w"]).astype(np.float64), pg.learned_scales(state)[0]


def _grid_optimum(z, c, levels):
    """min_s Σ c (z − s·nearest)² per channel (columns) by a fine grid plus golden refinement, float64."""
    best = []
    for j in range(z.shape[1]):
        zj, cj = z[:, j], c[:, j]
        lev = np.asarray(levels)

        def cost(s):
            near = lev[np.argmin(np.abs(zj[:, None] / s - lev[None, :]), axis=1)]
            return np.sum(cj * (zj - s * near) ** 2)

        grid = np.linspace(1e-3, 2 * np.max(np.abs(zj)), 20001)
        vals = np.array([cost(s) for s in grid])
        i = int(np.argmin(vals))
        lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
        for _ in range(80):
            m1, m2 = lo + (hi - lo) * 0.382, lo + (hi - lo) * 0.618
            lo, hi = (lo, m2) if cost(m1) < cost(m2) else (m1, hi)
        best.append(cost(0.5 * (lo + hi)))
    return np.array(best)


@pytest.mark.parametrize("levels", [(-1.0, 1.0), TERNARY], ids=["binary", "ternary"])
def test_channel_scale_is_the_metric_weighted_optimum(levels):
    """q = 0 and a large λ put every coordinate on s·ℓ; s must minimise Σ c (z − s ℓ)² (grid search)."""
    rng = np.random.default_rng(1)
    z = rng.normal(size=(12, 4)) * np.array([0.5, 1.0, 2.0, 0.1])
    c = 10 ** rng.uniform(-1, 1, size=z.shape)
    theta, grads, z_seen = _place(z, c, np.float32)
    x, s = _first_step(pg.prox_quantize(levels, q=0.0, lam=1e3, learning_rate=ALPHA, scale="channel"), theta, grads)
    s = np.asarray(s, np.float64).reshape(-1)
    np.testing.assert_allclose(np.abs(x)[x != 0], np.broadcast_to(s, x.shape)[x != 0], rtol=1e-6)
    ours = np.sum(np.abs(grads) * (z_seen - x) ** 2, axis=0)
    best = _grid_optimum(z_seen, np.abs(grads).astype(np.float64), levels)
    assert np.all(ours <= best * (1 + 1e-5) + 1e-12), (ours, best)
    # The Euclidean fit (ordinary least squares) is a different, worse answer in this metric.
    s_ols = np.sum(np.abs(z_seen), 0) / z.shape[0] if levels == (-1.0, 1.0) else None
    if s_ols is not None:
        assert np.max(np.abs(s_ols - s) / s) > 1e-3


def test_scaled_prox_matches_brute_force():
    rng = np.random.default_rng(2)
    z = rng.normal(size=(10, 3))
    c = 10 ** rng.uniform(-1, 1, size=z.shape)
    theta, grads, z_seen = _place(z, c, np.float64)
    with jax.enable_x64(True):
        x, s = _first_step(pg.prox_quantize(TERNARY, q=0.5, lam=0.05, learning_rate=ALPHA, scale="channel"),
                           theta, grads)
    s = np.asarray(s).reshape(-1)
    a = ALPHA / np.abs(grads)
    for j in range(3):
        lv = tuple(s[j] * v for v in TERNARY)
        ref, _ = brute_force_prox("quant", z_seen[:, j], a[:, j], 0.05, q=0.5, levels=lv)
        f_ours = objective("quant", x[:, j], z_seen[:, j], a[:, j], 0.05, q=0.5, levels=lv)
        f_ref = objective("quant", ref, z_seen[:, j], a[:, j], 0.05, q=0.5, levels=lv)
        assert np.all(f_ours <= f_ref + 1e-10 * np.maximum(1, np.abs(f_ref)))


def test_lloyd_never_increases_the_weighted_distance_and_reaches_a_fixed_point():
    rng = np.random.default_rng(3)
    levels = pg.uniform_levels(2)
    z = jnp.asarray(rng.normal(size=(64, 5)))
    c = jnp.asarray(10 ** rng.uniform(-1, 1, size=(64, 5)))
    s = jnp.asarray(rng.uniform(0.1, 3.0, size=(1, 5)))
    prev = weighted_distance(z, c, s, levels, (0,))
    for _ in range(30):
        s = lloyd_scale(z, c, s, levels, (0,), iterations=1)
        now = weighted_distance(z, c, s, levels, (0,))
        assert np.all(np.asarray(now) <= np.asarray(prev) * (1 + 1e-6))
        prev = now
    np.testing.assert_allclose(lloyd_scale(z, c, s, levels, (0,), iterations=1), s, rtol=1e-6)


def test_quantize_snaps_to_learned_levels_and_state_is_one_scale_per_channel():
    params = {"dense": {"kernel": jnp.asarray(np.random.default_rng(4).normal(size=(6, 3)), jnp.float32),
                        "bias": jnp.zeros(3)}}
    tx = pg.revised_proxquant(1e-2, q=1.0, lam=1e-3, scale="channel", mask=pg.kernels_only)
    state = tx.init(params)
    scales = pg.learned_scales(state)
    assert scales[1].shape == (1, 3) and scales[0] is None  # leaves: bias, kernel
    snapped = pg.quantize(params, (-1.0, 1.0), scales=scales)
    np.testing.assert_array_equal(snapped["dense"]["bias"], params["dense"]["bias"])
    np.testing.assert_allclose(np.abs(snapped["dense"]["kernel"]), np.broadcast_to(scales[1], (6, 3)), rtol=1e-6)
    adam_bytes = sum(x.nbytes for x in jax.tree.leaves(optax.adam(1e-2).init(params)))
    ours = sum(x.nbytes for x in jax.tree.leaves(state))
    assert ours == adam_bytes + 3 * 4 + 4  # plus one float32 scale per channel and a step count


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="scale"):
        pg.prox_quantize((-1, 1), scale="row")
    with pytest.raises(ValueError, match="bits"):
        pg.uniform_levels(0)
