"""BinaryConnect (STE, binarised forward pass, latent clipping) and ℓ0-hc (hard-concrete gates).

References are written in NumPy from the papers: Courbariaux et al. 2015 (Eq. 1–3, Alg. 1) and Louizos et
al. 2018 (Eq. 9–13), with gate statistics checked by Monte Carlo and by numerical integration.
"""

from __future__ import annotations

import math

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import proxgen_jax as pg
from proxgen_jax.baselines.binary_connect import binarize_params, clip_latent, sign_ste, stochastic_sign_ste
from proxgen_jax.baselines.l0_hc import (
    L0Dense,
    count_zero_weights,
    hard_concrete_prob_zero,
    hard_concrete_sample,
    l0_penalty,
)


# ---------------------------------------------------------------------------------------------------------
# BinaryConnect
# ---------------------------------------------------------------------------------------------------------
def test_sign_ste_forward_and_straight_through_gradient():
    w = np.array([-3.0, -1.0, -0.4, -0.0, 0.0, 0.2, 1.0, 1.0001, 7.0], np.float32)
    c = np.arange(1, 10, dtype=np.float32)
    fwd = np.asarray(sign_ste(jnp.asarray(w)))
    np.testing.assert_array_equal(fwd, np.where(w >= 0, 1.0, -1.0))   # sign(0) = +1, never 0
    grad = np.asarray(jax.grad(lambda w: jnp.sum(jnp.asarray(c) * sign_ste(w)))(jnp.asarray(w)))
    np.testing.assert_array_equal(grad, np.where(np.abs(w) <= 1, c, 0.0))
    assert np.isnan(np.asarray(sign_ste(jnp.array([np.nan]))))[0]
    assert sign_ste(jnp.array([0.5], jnp.bfloat16)).dtype == jnp.bfloat16


def test_binarized_linen_dense_gradient_is_straight_through():
    """For y = x·sign(W) + b and L = ½‖y − t‖², ∂L/∂W = xᵀ(y − t) ⊙ 1_{|W| ≤ 1}, ∂L/∂b = Σ(y − t)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 4)).astype(np.float32)
    tgt = rng.standard_normal((5, 3)).astype(np.float32)
    model = linen.Dense(3)
    params = model.init(jax.random.key(0), jnp.asarray(x))["params"]
    W = rng.uniform(-1.5, 1.5, (4, 3)).astype(np.float32)
    params = {"kernel": jnp.asarray(W), "bias": jnp.asarray(rng.standard_normal(3).astype(np.float32))}

    def loss(p):
        y = model.apply({"params": binarize_params(p, pg.kernels_only)}, jnp.asarray(x))
        return 0.5 * jnp.sum((y - tgt) ** 2)

    g = jax.grad(loss)(params)
    Wb = np.where(W >= 0, 1.0, -1.0)
    res = x.astype(np.float64) @ Wb + np.asarray(params["bias"], np.float64) - tgt
    np.testing.assert_allclose(np.asarray(g["kernel"]), (x.T @ res) * (np.abs(W) <= 1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(g["bias"]), res.sum(0), rtol=1e-5, atol=1e-5)


def test_binarized_nnx_model_via_split_merge():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((6, 3)).astype(np.float32))
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)

    def loss(p):
        y = nnx.merge(graphdef, binarize_params(p, pg.kernels_only))(x)
        return jnp.sum(y)

    g = jax.grad(loss)(params)
    W = np.asarray(params["kernel"][...])
    expected = np.repeat(np.asarray(x).sum(0)[:, None], 2, axis=1) * (np.abs(W) <= 1)
    np.testing.assert_allclose(np.asarray(g["kernel"][...]), expected, rtol=1e-5)
    y = nnx.merge(graphdef, binarize_params(params, pg.kernels_only))(x)
    np.testing.assert_allclose(np.asarray(y), np.asarray(x) @ np.where(W >= 0, 1.0, -1.0)
                               + np.asarray(params["bias"][...]), rtol=1e-5, atol=1e-6)


def test_clip_latent_binaryconnect_step():
    """BinaryConnect Alg. 1: w ← clip(w − η g, −1, 1) on the masked leaves; never outside the box."""
    rng = np.random.default_rng(2)
    w = rng.uniform(-1, 1, 2000).astype(np.float32)
    g = rng.standard_normal(2000).astype(np.float32)
    params = {"kernel": jnp.asarray(w), "bias": jnp.asarray(w[:3] * 5)}
    grads = {"kernel": jnp.asarray(g), "bias": jnp.ones(3)}
    tx = optax.chain(optax.sgd(0.5), clip_latent(1.0, mask=pg.kernels_only))
    upd, _ = tx.update(grads, tx.init(params), params)
    new = optax.apply_updates(params, upd)
    np.testing.assert_allclose(np.asarray(new["kernel"]), np.clip(w - 0.5 * g, -1, 1), atol=2e-7)
    assert np.all(np.abs(np.asarray(new["kernel"])) <= 1.0)          # exactly inside after rounding
    np.testing.assert_allclose(np.asarray(new["bias"]), w[:3] * 5 - 0.5, rtol=1e-6)   # unmasked: no clip
    with pytest.raises(ValueError, match="bound"):
        clip_latent(0.0)


def test_stochastic_binarization_probability():
    """P(w_b = +1) = clip((w + 1)/2, 0, 1) (Courbariaux et al., Eq. 2–3), by Monte Carlo."""
    w = jnp.array([-1.5, -0.6, 0.0, 0.5, 0.9])
    draws = jax.vmap(lambda k: stochastic_sign_ste(k, w))(jax.random.split(jax.random.key(3), 20000))
    freq = np.mean(np.asarray(draws) == 1, axis=0)
    np.testing.assert_allclose(freq, np.clip((np.asarray(w) + 1) / 2, 0, 1), atol=0.012)
    assert set(np.unique(np.asarray(draws))) <= {-1.0, 1.0}
    g = jax.grad(lambda w: jnp.sum(stochastic_sign_ste(jax.random.key(0), w)))(w)
    np.testing.assert_array_equal(np.asarray(g), [0, 1, 1, 1, 1])


# ---------------------------------------------------------------------------------------------------------
# ℓ0-hc
# ---------------------------------------------------------------------------------------------------------
BETA, GAMMA, ZETA = 2 / 3, -0.1, 1.1


def np_quantile_gate(u, log_alpha):
    s = 1 / (1 + np.exp(-(np.log(u) - np.log1p(-u) + log_alpha) / BETA))
    return np.clip(s * (ZETA - GAMMA) + GAMMA, 0, 1)


def test_hard_concrete_gate_statistics_monte_carlo():
    log_alpha = jnp.array([-3.0, -0.5, 0.0, 1.0, 4.0])
    z = np.asarray(jax.vmap(lambda k: hard_concrete_sample(k, log_alpha))(
        jax.random.split(jax.random.key(0), 40000)), np.float64)
    la = np.asarray(log_alpha, np.float64)
    # Louizos et al.: P(z = 0) = Q(0) = σ(β log(−γ/ζ) − log α); P(z = 1) = 1 − Q(1)
    p0 = 1 / (1 + np.exp(-(BETA * np.log(-GAMMA / ZETA) - la)))
    p1 = 1 / (1 + np.exp(-(la - BETA * np.log((1 - GAMMA) / (ZETA - 1)))))
    tol = 4 * np.sqrt(0.25 / z.shape[0])
    np.testing.assert_allclose((z == 0).mean(0), p0, atol=tol)
    np.testing.assert_allclose((z == 1).mean(0), p1, atol=tol)
    np.testing.assert_allclose(np.asarray(hard_concrete_prob_zero(log_alpha)), p0, rtol=1e-5)
    # E[z] by numerical integration of the quantile function over u ∈ (0, 1)
    u = (np.arange(200000) + 0.5) / 200000
    mean = np_quantile_gate(u[:, None], la[None, :]).mean(0)
    np.testing.assert_allclose(z.mean(0), mean, atol=tol)
    assert z.min() >= 0 and z.max() <= 1


@pytest.mark.parametrize("gates", ["input", "weight"])
def test_l0dense_expected_l0_test_gates_and_zero_count(gates):
    layer = L0Dense(6, 4, rngs=nnx.Rngs(0), gates=gates)
    shape = layer.log_alpha.shape
    la = np.linspace(-8, 5, int(np.prod(shape))).reshape(shape)
    layer.log_alpha[...] = jnp.asarray(la, jnp.float32)
    per_gate = 4 if gates == "input" else 1
    p0 = 1 / (1 + np.exp(-(BETA * np.log(-GAMMA / ZETA) - la)))
    np.testing.assert_allclose(float(layer.expected_l0()), per_gate * np.sum(1 - p0), rtol=1e-5)
    # Monte Carlo: expected number of nonzero kernel entries under sampled gates
    keys = jax.random.split(jax.random.key(1), 20000)
    z = np.asarray(jax.vmap(lambda k: layer.sample_gates(k))(keys))
    nz = ((z != 0).reshape(z.shape[0], -1).sum(1) * per_gate).mean()
    assert abs(nz - float(layer.expected_l0())) < 0.1
    # test-time gates and exactly-zero weights
    zhat = np.clip(1 / (1 + np.exp(-la)) * (ZETA - GAMMA) + GAMMA, 0, 1)
    np.testing.assert_allclose(np.asarray(layer.test_gates()), zhat, rtol=1e-5, atol=1e-7)
    W = np.asarray(layer.kernel[...])
    Wt = W * (zhat[:, None] if gates == "input" else zhat)
    assert int(layer.num_zero_weights()) == int(np.sum(Wt == 0)) > 0
    assert count_zero_weights(layer) == (int(np.sum(Wt == 0)), 24)
    layer.eval()
    x = np.random.default_rng(0).standard_normal((3, 6)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(layer(jnp.asarray(x))), x @ Wt + np.asarray(layer.bias[...]),
                               rtol=1e-5, atol=1e-5)


def test_l0dense_init_training_mode_and_gradients():
    layer = L0Dense(50, 3, rngs=nnx.Rngs(0), droprate_init=0.2)
    la = np.asarray(layer.log_alpha[...])
    assert abs(la.mean() - math.log(0.8 / 0.2)) < 0.01 and 0.003 < la.std() < 0.02
    x = jnp.ones((4, 50))
    y1, y2 = layer(x), layer(x)
    assert not np.allclose(np.asarray(y1), np.asarray(y2))              # fresh gates per call
    np.testing.assert_allclose(np.asarray(y1[0]), np.asarray(y1[1]))    # shared across the batch
    local = L0Dense(50, 3, rngs=nnx.Rngs(0), local_rep=True)
    y = local(x)
    assert not np.allclose(np.asarray(y[0]), np.asarray(y[1]))          # one sample per example
    g = nnx.grad(lambda m: l0_penalty(m))(layer)
    assert np.all(np.asarray(g.log_alpha[...]) > 0) and np.all(np.isfinite(np.asarray(g.log_alpha[...])))
    layer.log_alpha[...] = jnp.full((50,), 9.0)
    layer.constrain_parameters()
    np.testing.assert_allclose(np.asarray(layer.log_alpha[...]), math.log(100.0), rtol=1e-6)
    for kw, name in [({"droprate_init": 1.0}, "droprate_init"), ({"beta": 0.0}, "beta"),
                     ({"gamma": 0.1}, "gamma"), ({"zeta": 1.0}, "zeta"), ({"gates": "rows"}, "gates")]:
        with pytest.raises(ValueError, match=name):
            L0Dense(2, 2, rngs=nnx.Rngs(0), **kw)


def test_l0dense_training_closes_irrelevant_inputs():
    """Regression on 8 inputs of which 2 matter: with the ℓ0 penalty the 6 irrelevant gates close."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((256, 8)).astype(np.float32)
    y = (2 * X[:, :1] - 3 * X[:, 1:2]).astype(np.float32)
    model = L0Dense(8, 1, rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(model, optax.adam(5e-2), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt):
        def loss_fn(m):
            return jnp.mean((m(X) - y) ** 2) + 0.05 * l0_penalty(m)
        grads = nnx.grad(loss_fn)(model)
        opt.update(model, grads)
        model.constrain_parameters()

    for _ in range(400):
        step(model, opt)
    zhat = np.asarray(model.test_gates())
    assert np.all(zhat[2:] == 0) and np.all(zhat[:2] > 0.9), zhat
    assert count_zero_weights(model) == (6, 8)
