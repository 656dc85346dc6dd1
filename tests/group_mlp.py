"""A tiny MLP on synthetic data where only input features 0, 1, 2 matter, and the checks of one Adam + group-prox
step on it — shared by the group-sparsity tests."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import proxgen_jax as pg


def mlp_params(seed=0, dtype=jnp.float32):
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    return {"dense0": {"kernel": (jax.random.normal(k1, (8, 16)) * 0.3).astype(dtype), "bias": jnp.zeros(16, dtype)},
            "dense1": {"kernel": (jax.random.normal(k2, (16, 1)) * 0.3).astype(dtype), "bias": jnp.zeros(1, dtype)}}


def mlp(params, x):
    p = jax.tree.map(lambda v: v.astype(jnp.float32), params)
    h = jnp.tanh(x @ p["dense0"]["kernel"] + p["dense0"]["bias"])
    return (h @ p["dense1"]["kernel"] + p["dense1"]["bias"])[:, 0]


def feature_data(seed=0, n=128):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 8)).astype(np.float32)
    y = (np.sin(x[:, 0]) + 0.5 * x[:, 1] * x[:, 2]).astype(np.float32)  # only features 0, 1, 2 matter
    return jnp.asarray(x), jnp.asarray(y)


def first_adam_step(prox, lr, eps):
    """One jitted step of ``chain(scale_by_adam_precond(eps), prox)`` on the MLP, and NumPy's view of it.

    Returns ``(g, new, z, c)``: the gradients, the new params, and for ``dense0/kernel`` the NumPy float64
    first Adam step ``m̂ = g``, ``v̂ = g²``, ``c = |g| + δ``, ``z = θ − α m̂/c`` (so the prox's step is ``α/c``).
    """
    params = mlp_params()
    x, y = feature_data()
    tx = optax.chain(pg.scale_by_adam_precond(eps=eps), prox)
    g = jax.jit(jax.grad(lambda p: jnp.mean((mlp(p, x) - y) ** 2)))(params)
    new = jax.jit(lambda g, s, p: optax.apply_updates(p, tx.update(g, s, p)[0]))(g, tx.init(params), params)
    gk = np.asarray(g["dense0"]["kernel"], np.float64)
    c = np.abs(gk) + eps
    return g, new, np.asarray(params["dense0"]["kernel"], np.float64) - lr * gk / c, c


def assert_bias_took_plain_adam_step(g, new, lr, eps):
    """``dense0/bias`` (group axes ``None``: unregularised) moved by the plain first Adam step from 0."""
    gb = np.asarray(g["dense0"]["bias"], np.float64)
    np.testing.assert_allclose(np.asarray(new["dense0"]["bias"]), -lr * gb / (np.abs(gb) + eps), rtol=1e-5,
                               atol=1e-7)


def assert_unfit_leaf_is_named(make_prox, match):
    """Group axes ``(1,)`` do not fit a bias: ``init`` raises naming its path; masked to kernels it is fine."""
    params = {"dense": {"kernel": jnp.ones((4, 3)), "bias": jnp.ones(3)}}
    with pytest.raises(ValueError, match=match):
        optax.chain(pg.scale_by_adam_precond(), make_prox(mask=None)).init(params)
    optax.chain(pg.scale_by_adam_precond(), make_prox(mask=pg.kernels_only)).init(params)
