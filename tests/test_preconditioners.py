"""Each preconditioner's direction and metric against a NumPy float64 re-implementation of its recursion."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import proxgen_jax as pg


def _grads(steps=6, d=7, seed=0):
    return np.random.default_rng(seed).normal(size=(steps, d))


def _run(tx, grads):
    with jax.enable_x64(True):
        params = jnp.zeros(grads.shape[1])
        state = tx.init(params)
        out = []
        for g in grads:
            upd, state = tx.update(jnp.asarray(g), state, params)
            d, c, _ = pg.preconditioners.split_updates(upd)
            out.append((np.asarray(d), None if c is None else np.asarray(c)))
    return out


@pytest.mark.parametrize("bias_correction", [True, False])
@pytest.mark.parametrize("amsgrad", [False, True])
def test_adam(bias_correction, amsgrad):
    grads = _grads()
    b1, b2, eps = 0.8, 0.95, 1e-3
    out = _run(pg.scale_by_adam_precond(b1, b2, eps, bias_correction=bias_correction, amsgrad=amsgrad), grads)
    m = v = vmax = np.zeros(grads.shape[1])
    C = np.zeros(grads.shape[1])
    for t, (g, (d, c)) in enumerate(zip(grads, out), start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        if not bias_correction and not amsgrad:
            # The paper's recursion C_t = sqrt(β C_{t-1}² + (1-β) g_t²) is the same thing.
            C = np.sqrt(b2 * C**2 + (1 - b2) * g**2)
            np.testing.assert_allclose(c, C + eps, rtol=1e-12)
        mh, vh = (m / (1 - b1**t), v / (1 - b2**t)) if bias_correction else (m, v)
        vmax = np.maximum(vmax, vh)
        metric = np.sqrt(vmax if amsgrad else vh) + eps
        np.testing.assert_allclose(c, metric, rtol=1e-12)
        np.testing.assert_allclose(d, mh / metric, rtol=1e-12)


@pytest.mark.parametrize("momentum", [0.0, 0.7])
def test_rmsprop(momentum):
    grads = _grads()
    decay, eps = 0.9, 1e-6
    out = _run(pg.scale_by_rmsprop_precond(decay, eps, momentum=momentum), grads)
    v = m = np.zeros(grads.shape[1])
    for g, (d, c) in zip(grads, out):
        v = decay * v + (1 - decay) * g**2
        m = momentum * m + (1 - momentum) * g
        np.testing.assert_allclose(c, np.sqrt(v) + eps, rtol=1e-12)
        np.testing.assert_allclose(d, (m if momentum else g) / (np.sqrt(v) + eps), rtol=1e-12)


def test_adagrad():
    grads = _grads()
    out = _run(pg.scale_by_adagrad_precond(0.1, 1e-7), grads)
    s = np.full(grads.shape[1], 0.1)
    for g, (d, c) in zip(grads, out):
        s = s + g**2
        np.testing.assert_allclose(c, np.sqrt(s) + 1e-7, rtol=1e-12)
        np.testing.assert_allclose(d, g / (np.sqrt(s) + 1e-7), rtol=1e-12)


def test_sgd_and_ema_momentum():
    grads = _grads()
    out = _run(pg.scale_by_sgd_precond(0.9, delta=2.0), grads)
    plain = _run(pg.ema_momentum(0.9), grads)
    m = np.zeros(grads.shape[1])
    for g, (d, c), (u, none) in zip(grads, out, plain):
        m = 0.9 * m + 0.1 * g
        np.testing.assert_allclose(c, 2.0)
        np.testing.assert_allclose(d, m / 2.0, rtol=1e-12)
        np.testing.assert_allclose(u, m, rtol=1e-12)
        assert none is None


def test_proximal_sgd_step_is_euclidean_prox():
    """θ+ = prox_{αλ|·|}(θ − α m) with the EMA momentum and δ = 1."""
    import optax  # noqa: PLC0415

    params = jnp.array([0.5, -0.02, 0.01, 2.0])
    g = jnp.array([0.1, 0.3, -0.2, 0.0])
    tx = optax.chain(pg.ema_momentum(0.5), pg.prox_l1(lam=0.1, learning_rate=0.2))
    u, _ = tx.update(g, tx.init(params), params)
    m = 0.5 * g
    z = params - 0.2 * m
    expected = np.sign(z) * np.maximum(np.abs(z) - 0.02, 0)
    np.testing.assert_allclose(params + u, expected, rtol=1e-6, atol=1e-8)
