"""A tiny MLP on synthetic data where only input features 0, 1, 2 matter — shared by the group-sparsity tests."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


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
