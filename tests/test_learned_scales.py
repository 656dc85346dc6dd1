"""Learned quantisation scales in the metric, against brute force, through the public transform."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import proxgen_jax as pg

from oracles import (
    brute_force_prox,
    objective,
    scale_fit_breakpoints,
    scale_fit_enumerated,
)

ALPHA = 0.1
TERNARY = (-1.0, 0.0, 1.0)


def _place(z, c, dtype, seed=0):
    """(θ, g) whose first ``scale_by_adam_precond(b1=0, b2=0, eps=0)`` step sees centre ``z`` and metric ``c``."""
    s = np.random.default_rng(seed).choice([-1.0, 1.0], size=z.shape)
    theta = (z + ALPHA * s).astype(dtype)
    return theta, (c * s).astype(dtype), (theta - dtype(ALPHA) * s.astype(dtype)).astype(np.float64)


def _first_step(link, theta, grads, precond=None):
    tx = optax.chain(precond or pg.scale_by_adam_precond(b1=0.0, b2=0.0, eps=0.0), link)
    p = {"w": jnp.asarray(theta)}
    u, state = jax.jit(tx.update)({"w": jnp.asarray(grads)}, tx.init(p), p)
    return np.asarray(optax.apply_updates(p, u)["w"]).astype(np.float64), pg.learned_scales(state)[0]


def _reachable(theta, level):
    """Whether some float32 ``u`` gives ``fl(θ + u) == level`` (search ±4 ulps around ``fl(level − θ)``)."""
    out = np.zeros(theta.shape, bool)
    for i, (p, t) in enumerate(zip(theta.astype(np.float32), level.astype(np.float32))):
        u = np.float32(t - p)
        for direction in (np.float32(-np.inf), np.float32(np.inf)):
            v = u
            for _ in range(5):
                out[i] |= np.float32(p + v) == t
                v = np.nextafter(v, direction)
    return out


def _assert_landed(x, theta, grid):
    """Every coordinate is exactly on the grid wherever some float32 update can put ``θ_t + u`` there (not always:
    ``fl(θ_t + u)`` can skip the level when ``|level − θ_t|`` is large); elsewhere within an ulp of the step."""
    x32 = np.asarray(x, np.float32)
    near = grid[np.argmin(np.abs(x32[:, None] - grid[None, :]), axis=1)]
    exact = x32 == near
    reachable = _reachable(np.asarray(theta), near)
    assert np.all(exact | ~reachable), (x32[~exact], near[~exact], theta[~exact])
    assert np.all(np.abs(x32 - near) <= np.spacing(np.abs(near - theta).astype(np.float32)))
    return int(np.sum(reachable))


def _cost(z, c, s, levels):
    lev = np.asarray(levels, np.float64)
    near = lev[np.argmin(np.abs(z[:, None] / s - lev[None, :]), axis=1)]
    return float(np.sum(c * (z - s * near) ** 2))


@pytest.mark.parametrize("levels", [pg.BINARY_LEVELS, TERNARY], ids=["binary", "ternary"])
@pytest.mark.parametrize("seed", range(3))
def test_channel_scale_is_the_enumerated_metric_weighted_optimum(levels, seed):
    """Through the public chain (float32): s per channel equals argmin_s Σ c (z − s ℓ)² over every assignment,
    and with q = 0, λ large every coordinate lands exactly on s·ℓ."""
    rng = np.random.default_rng(seed)
    n = 9 if len(levels) == 2 else 7
    z = rng.normal(size=(n, 4)) * np.array([0.5, 1.0, 2.0, 0.1])
    c = 10 ** rng.uniform(-1, 1, size=z.shape)
    theta, grads, z_seen = _place(z, c, np.float32, seed)
    x, s = _first_step(pg.prox_quantize(levels, q=0.0, lam=1e3, learning_rate=ALPHA, scale="channel"), theta, grads)
    assert s.shape == (1, 4) and s.dtype == jnp.float32
    s = np.asarray(s, np.float64)[0]
    c_seen = np.abs(grads).astype(np.float64)
    reachable = 0
    for j in range(4):
        s_ref, _ = scale_fit_enumerated(z_seen[:, j], c_seen[:, j], levels)
        np.testing.assert_allclose(s[j], s_ref, rtol=1e-5)
        reachable += _assert_landed(x[:, j], theta[:, j], np.float32(s[j]) * np.asarray(levels, np.float32))
    assert reachable >= 9
    # The Euclidean fit (ordinary least squares) is a different answer in this metric.
    if len(levels) == 2:
        assert np.max(np.abs(np.mean(np.abs(z_seen), 0) - s) / s) > 1e-3


def test_euclidean_after_plain_adam_is_ordinary_least_squares():
    """After optax.scale_by_adam() (no metric) the fit is PARQ's: s = mean |z| per channel, z = θ − α u."""
    rng = np.random.default_rng(5)
    theta = rng.normal(size=(8, 3)).astype(np.float32)
    grads = rng.normal(size=(8, 3)).astype(np.float32)
    adam = optax.scale_by_adam()
    u, _ = adam.update({"w": jnp.asarray(grads)}, adam.init({"w": jnp.asarray(theta)}))
    z = theta.astype(np.float64) - ALPHA * np.asarray(u["w"], np.float64)
    x, s = _first_step(pg.prox_quantize(pg.BINARY_LEVELS, q=0.0, lam=1e3, learning_rate=ALPHA, scale="channel"),
                       theta, grads, precond=optax.scale_by_adam())
    np.testing.assert_allclose(np.asarray(s, np.float64)[0], np.mean(np.abs(z), 0), rtol=1e-5)
    for j in range(3):
        _assert_landed(x[:, j], theta[:, j], np.float32(np.asarray(s)[0, j]) * np.asarray(pg.BINARY_LEVELS, np.float32))


def test_tensor_scale_and_kbit_step_never_increases_the_weighted_distance():
    """2-bit grid, one scale per tensor: the step's Lloyd refit from the warm start (the state's scale) does not
    increase Σ c (z − s ℓ(z/s))² and is within 1 % of the exact global optimum (breakpoint scan)."""
    levels = pg.uniform_levels(2)
    rng = np.random.default_rng(6)
    z = rng.normal(size=(40, 3))
    c = 10 ** rng.uniform(-1, 1, size=z.shape)
    theta, grads, z_seen = _place(z, c, np.float32, 6)
    link = pg.prox_quantize(levels, q=0.0, lam=1e3, learning_rate=ALPHA, scale="tensor")
    s0 = float(np.asarray(pg.learned_scales(link.init({"w": jnp.asarray(theta)}))[0]).ravel()[0])
    x, s = _first_step(link, theta, grads)
    assert s.shape == (1, 1)
    s = float(np.asarray(s, np.float64).ravel()[0])
    zf, cf = z_seen.ravel(), np.abs(grads).astype(np.float64).ravel()
    assert _cost(zf, cf, s, levels) <= _cost(zf, cf, s0, levels) * (1 + 1e-6)
    assert _cost(zf, cf, s, levels) <= scale_fit_breakpoints(zf, cf, levels)[1] * 1.01
    _assert_landed(x.ravel(), theta.ravel(), np.float32(s) * np.asarray(levels, np.float32))


def test_scaled_prox_matches_brute_force():
    rng = np.random.default_rng(2)
    z = rng.normal(size=(8, 2))
    c = 10 ** rng.uniform(-1, 1, size=z.shape)
    theta, grads, z_seen = _place(z, c, np.float64)
    for q, levels in ((0.5, TERNARY), (1.0, pg.uniform_levels(2))):
        with jax.enable_x64(True):
            x, s = _first_step(pg.prox_quantize(levels, q=q, lam=0.05, learning_rate=ALPHA, scale="channel"),
                               theta, grads)
        s = np.asarray(s).reshape(-1)
        a = ALPHA / np.abs(grads)
        for j in range(2):
            lv = tuple(s[j] * v for v in levels)
            ref, _ = brute_force_prox("quant", z_seen[:, j], a[:, j], 0.05, q=q, levels=lv)
            f_ours = objective("quant", x[:, j], z_seen[:, j], a[:, j], 0.05, q=q, levels=lv)
            f_ref = objective("quant", ref, z_seen[:, j], a[:, j], 0.05, q=q, levels=lv)
            assert np.all(f_ours <= f_ref + 1e-10 * np.maximum(1, np.abs(f_ref))), (q, levels)


def test_per_leaf_levels_and_quantize_snaps_to_the_learned_grid():
    rng = np.random.default_rng(4)
    params = {"a": {"kernel": jnp.asarray(rng.normal(size=(6, 3)), jnp.float32), "bias": jnp.zeros(3)},
              "b": {"kernel": jnp.asarray(rng.normal(size=(3, 5)), jnp.float32)}}

    def levels(path, leaf):  # 1 bit for layer a, 4 bits for layer b, biases not quantised
        if pg.kernels_only({"x": {path[-1].key: leaf}})["x"][path[-1].key] is False:
            return None
        return pg.uniform_levels(1 if path[0].key == "a" else 4)

    tx = optax.chain(pg.scale_by_adam_precond(),
                     pg.prox_quantize(levels, q=0.0, lam=1e3, learning_rate=1e-2, scale="channel"))
    state = tx.init(params)
    update = jax.jit(tx.update)
    new = params
    for k in range(3):  # from the second step on θ_t is near its level, so θ_t + u can land exactly on it
        g = jax.tree.map(lambda x, k=k: jnp.cos(x + k), new)
        u, state = update(g, state, new)
        new = optax.apply_updates(new, u)
    scales = pg.learned_scales(state)  # leaves: a.bias, a.kernel, b.kernel
    assert scales[0] is None and scales[1].shape == (1, 3) and scales[2].shape == (1, 5)
    snapped = pg.quantize(new, levels, scales=scales)
    for key, (lv, s) in {"a": (pg.uniform_levels(1), scales[1]), "b": (pg.uniform_levels(4), scales[2])}.items():
        w = np.asarray(new[key]["kernel"])
        np.testing.assert_array_equal(np.asarray(snapped[key]["kernel"]), w)  # already on the grid: a no-op
        for j in range(w.shape[1]):
            assert np.all(np.isin(w[:, j], np.float32(np.asarray(s)[0, j]) * np.asarray(lv, np.float32)))
    np.testing.assert_array_equal(snapped["a"]["bias"], new["a"]["bias"])
    adam_bytes = sum(x.nbytes for x in jax.tree.leaves(optax.adam(1e-2).init(params)))
    assert sum(x.nbytes for x in jax.tree.leaves(state)) == adam_bytes + (3 + 5) * 4 + 4  # + scales, step count


def test_revised_proxquant_passes_scale_on():
    params = {"dense": {"kernel": jnp.asarray(np.random.default_rng(7).normal(size=(6, 3)), jnp.float32)}}
    tx = pg.revised_proxquant(1e-2, q=1.0, lam=1e-3, scale="channel", levels=pg.TERNARY_LEVELS)
    state = tx.init(params)
    assert pg.learned_scales(state)[0].shape == (1, 3)
    _, state = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
    assert int(state[-1].count) == 1


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="scale"):
        pg.prox_quantize((-1, 1), scale="row")
    with pytest.raises(ValueError, match="channel_axis"):
        pg.prox_quantize((-1, 1), scale="channel", channel_axis=1.5)
    with pytest.raises(ValueError, match="levels"):
        pg.prox_quantize((1.0, 1.0), scale="channel")
    with pytest.raises(ValueError, match=r"levels.*\['w'\]"):
        pg.prox_quantize(lambda p, x: (0.0, 0.0), scale="channel").init({"w": jnp.ones((2, 2))})
    with pytest.raises(ValueError, match="q"):
        pg.prox_quantize((-1, 1), q=1.5, scale="tensor")


@pytest.mark.slow  # a training run through the CLI (9 s)
def test_cli_binary_task_with_learned_channel_scales_on_an_mlp(tmp_path):
    from proxgen_jax.train.cli import main
    res = main(["--task", "binary", "--bits", "2", "--scale", "channel", "--optimizer", "revised_proxquant",
                "--epochs", "2", "--lam", "3e-3", "--no-plots", "--no-progress", "--out", str(tmp_path)])
    assert res["args"]["model"] == "mlp"
    (row,) = res["summary"]
    assert row["method"] == "revised_proxquant[q=1,2b,channel]" and row["test_acc_mean"] > 0.5  # chance: 0.1
