"""Proximal KFAC and full-matrix preconditioners against NumPy re-implementations of the published rules."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.linalg
from flax import nnx

import proxgen_jax as pg
from proxgen_jax.preconditioners.full_matrix import DenseMetric, scale_by_full_matrix_precond
from proxgen_jax.preconditioners.kfac import KroneckerFactors, scale_by_kfac_precond
from proxgen_jax.preconditioners.kfac_capture import kfac_value_and_grad
from proxgen_jax.preconditioners.preconditioned_updates import split_updates
from proxgen_jax.regularizers import L1
from proxgen_jax.solvers.metric_operators import KroneckerMetric
from proxgen_jax.transforms.proximal_step_metric import proximal_step_metric


def spd(rng, n, cond=10.0):
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    return (q * np.logspace(0, np.log10(cond), n)) @ q.T


@pytest.mark.parametrize("mode", ["exact", "factored"])
def test_kronecker_metric_matches_dense_kron(mode):
    rng = np.random.default_rng(0)
    a, g, delta = spd(rng, 4), spd(rng, 3), 1e-2
    if mode == "exact":
        dense = np.kron(a, g) + delta * np.eye(12)
    else:
        pi = np.sqrt((np.trace(a) / 4) / (np.trace(g) / 3))
        dense = np.kron(a + pi * np.sqrt(delta) * np.eye(4), g + np.sqrt(delta) / pi * np.eye(3))
    x = rng.normal(size=(4, 3))
    with jax.enable_x64(True):
        op = KroneckerMetric.from_factors(jnp.asarray(a), jnp.asarray(g), delta, (4, 3), mode)
        np.testing.assert_allclose(np.asarray(op.matvec(jnp.asarray(x))).ravel(), dense @ x.ravel(), rtol=1e-10)
        np.testing.assert_allclose(np.asarray(op.solve(jnp.asarray(x))).ravel(), np.linalg.solve(dense, x.ravel()),
                                   rtol=1e-9)
        np.testing.assert_allclose(np.asarray(op.diagonal()).ravel(), np.diag(dense), rtol=1e-10)
        np.testing.assert_allclose(float(op.max_eigenvalue()), np.linalg.eigvalsh(dense).max(), rtol=1e-10)


class MLP(nnx.Module):
    def __init__(self, sizes, rngs):
        self.layers = nnx.List([nnx.Linear(i, o, rngs=rngs) for i, o in zip(sizes[:-1], sizes[1:])])

    def __call__(self, x):
        for k, layer in enumerate(self.layers):
            x = layer(x)
            if k < len(self.layers) - 1:
                x = nnx.relu(x)
        return x


def ce_loss(model, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


def test_captured_factors_match_numpy_backprop():
    """A = aᵀa/n and G = (1/n)Σ_n g_n g_nᵀ with per-example output gradients g_n, by hand in NumPy."""
    rng = np.random.default_rng(1)
    model = MLP((5, 6, 3), nnx.Rngs(0))
    x = rng.normal(size=(7, 5)).astype(np.float32)
    y = rng.integers(0, 3, 7)
    loss, grads, stats = kfac_value_and_grad(ce_loss)(model, jnp.asarray(x), jnp.asarray(y))
    w1, b1 = np.asarray(model.layers[0].kernel[...], np.float64), np.asarray(model.layers[0].bias[...], np.float64)
    w2, b2 = np.asarray(model.layers[1].kernel[...], np.float64), np.asarray(model.layers[1].bias[...], np.float64)
    h_pre = x @ w1 + b1
    h = np.maximum(h_pre, 0)
    logits = h @ w2 + b2
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    d2 = p - np.eye(3)[y]                 # per-example ∂ℓ_n/∂logits
    d1 = (d2 @ w2.T) * (h_pre > 0)        # per-example ∂ℓ_n/∂h_pre
    n = len(x)
    np.testing.assert_allclose(float(loss), -np.mean(np.log(p[np.arange(n), y])), rtol=1e-5)
    ref = {0: (x.T @ x / n, d1.T @ d1 / n), 1: (h.T @ h / n, d2.T @ d2 / n)}
    for k, (a_ref, g_ref) in ref.items():
        st = stats["layers"][k]
        np.testing.assert_allclose(np.asarray(st["kernel"].a_cov), a_ref, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(np.asarray(st["kernel"].g_cov), g_ref, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(np.asarray(st["bias"].a_cov), [[1.0]])
        np.testing.assert_allclose(np.asarray(st["bias"].g_cov), g_ref, rtol=1e-4, atol=1e-6)
    # The gradients are nnx.grad's.
    ref_grads = nnx.grad(ce_loss)(model, jnp.asarray(x), jnp.asarray(y))
    for a_, b_ in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(np.asarray(a_), np.asarray(b_), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(grads["layers"][1]["kernel"][...]), h.T @ d2 / n, rtol=1e-4, atol=1e-6)


def _np_kfac(grads, factors, steps, *, momentum, decay, damping, update_every):
    """NumPy KFAC (exact damping): debiased EMAs, refresh every k steps, direction M^{-1} m̂ in row-major vec."""
    a_ema = np.zeros_like(factors[0][0])
    g_ema = np.zeros_like(factors[0][1])
    m = np.zeros_like(grads[0])
    out = []
    snap = None
    for t in range(1, steps + 1):
        a_ema = decay * a_ema + (1 - decay) * factors[t - 1][0]
        g_ema = decay * g_ema + (1 - decay) * factors[t - 1][1]
        if (t - 1) % update_every == 0:
            snap = (a_ema / (1 - decay ** t), g_ema / (1 - decay ** t))
        m = momentum * m + (1 - momentum) * grads[t - 1]
        m_hat = m / (1 - momentum ** t)
        dense = np.kron(snap[0], snap[1]) + damping * np.eye(m.size)
        out.append(np.linalg.solve(dense, m_hat.ravel()).reshape(m.shape))
    return out


@pytest.mark.parametrize("update_every", [1, 2])
def test_kfac_direction_matches_numpy(update_every):
    rng = np.random.default_rng(2)
    steps = 3
    grads = [rng.normal(size=(4, 3)) for _ in range(steps)]
    factors = [(spd(rng, 4), spd(rng, 3)) for _ in range(steps)]
    ref = _np_kfac(grads, factors, steps, momentum=0.9, decay=0.8, damping=0.05, update_every=update_every)
    with jax.enable_x64(True):
        tx = scale_by_kfac_precond(0.9, 0.8, 0.05, update_every=update_every, warmup=0)
        params = {"dense": {"kernel": jnp.zeros((4, 3))}}
        state = tx.init(params)
        for t in range(steps):
            stats = {"dense": {"kernel": KroneckerFactors(jnp.asarray(factors[t][0]), jnp.asarray(factors[t][1]))}}
            out, state = tx.update({"dense": {"kernel": jnp.asarray(grads[t])}}, state, params, kfac_stats=stats)
            direction, metric, _ = split_updates(out)
            np.testing.assert_allclose(np.asarray(direction["dense"]["kernel"]), ref[t], rtol=1e-8)
            assert isinstance(metric["dense"]["kernel"], KroneckerMetric)


def test_fallback_leaves_and_error_messages():
    params = {"dense": {"kernel": jnp.zeros((2, 3)), "bias": jnp.zeros(3)}, "norm": {"scale": jnp.ones(3)}}
    with pytest.raises(ValueError, match=r"\['norm'\]\['scale'\].*fallback"):
        scale_by_kfac_precond().init(params)
    tx = scale_by_kfac_precond(damping=0.1, fallback=pg.scale_by_adam_precond(eps=1e-8))
    state = tx.init(params)
    g = {"dense": {"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3)}, "norm": {"scale": jnp.full(3, -2.0)}}
    with pytest.raises(ValueError, match="kfac_stats"):
        tx.update(g, state, params)
    stats = {"dense": {"kernel": KroneckerFactors(jnp.eye(2), jnp.eye(3))}}
    with pytest.raises(ValueError, match=r"\['dense'\]\['bias'\]"):
        tx.update(g, state, params, kfac_stats=stats)
    stats["dense"]["bias"] = KroneckerFactors(jnp.ones((2, 2)), jnp.eye(3))
    with pytest.raises(ValueError, match="factor shapes"):
        tx.update(g, state, params, kfac_stats=stats)
    stats["dense"]["bias"] = KroneckerFactors(jnp.ones((1, 1)), 2 * jnp.eye(3))
    out, _ = tx.update(g, state, params, kfac_stats=stats)
    direction, metric, _ = split_updates(out)
    # Adam after one step: m̂ = g, v̂ = g² → direction g/(|g| + eps) = −1, metric |g| + eps = 2.
    np.testing.assert_allclose(np.asarray(direction["norm"]["scale"]), -1.0, rtol=1e-4)  # float32 debiasing
    np.testing.assert_allclose(np.asarray(metric["norm"]["scale"]), 2.0, rtol=1e-4)
    # Bias block: M = 1·(2I) + 0.1 I after the first (debiased) step, m̂ = g.
    np.testing.assert_allclose(np.asarray(direction["dense"]["bias"]), 1 / 2.1, rtol=1e-6)


def test_full_matrix_adagrad_matches_numpy():
    """C_t = (s₀I + Σ g gᵀ)^{1/2} (scipy's sqrtm), direction (C_t + δI)^{-1} g_t; big leaves stay diagonal."""
    rng = np.random.default_rng(3)
    eps, s0 = 1e-3, 0.1
    with jax.enable_x64(True):
        tx = scale_by_full_matrix_precond(eps=eps, initial_accumulator_value=s0, max_size=6)
        params = {"small": jnp.zeros((2, 3)), "big": jnp.zeros(7)}
        state = tx.init(params)
        s_small, s_big = s0 * np.eye(6), np.full(7, s0)
        for _ in range(3):
            g = {"small": rng.normal(size=(2, 3)), "big": rng.normal(size=7)}
            out, state = tx.update(jax.tree.map(jnp.asarray, g), state, params)
            direction, metric, _ = split_updates(out)
            s_small += np.outer(g["small"].ravel(), g["small"].ravel())
            s_big += g["big"] ** 2
            c = np.real(scipy.linalg.sqrtm(s_small)) + eps * np.eye(6)
            np.testing.assert_allclose(np.asarray(direction["small"]).ravel(), np.linalg.solve(c, g["small"].ravel()),
                                       rtol=1e-7)
            assert isinstance(metric["small"], DenseMetric)
            np.testing.assert_allclose(np.asarray(metric["small"].matrix), c, rtol=1e-7, atol=1e-12)
            np.testing.assert_allclose(np.asarray(direction["big"]), g["big"] / (np.sqrt(s_big) + eps), rtol=1e-10)


def test_full_matrix_prox_step_solves_the_subproblem():
    """One chained step equals the dense ℓ1 subproblem solved by NumPy coordinate descent."""
    from tests.test_prox_metric import cd_l1

    rng = np.random.default_rng(4)
    alpha, lam, eps = 0.5, 0.05, 1e-3
    theta = rng.normal(size=(2, 3))
    g1, g2 = rng.normal(size=(2, 3)), rng.normal(size=(2, 3))
    with jax.enable_x64(True):
        tx = optax.chain(scale_by_full_matrix_precond(eps=eps, initial_accumulator_value=0.5),
                         proximal_step_metric(L1(), lam, alpha, inner_steps=3000))
        params = {"w": jnp.asarray(theta)}
        state = tx.init(params)
        _, state = tx.update({"w": jnp.asarray(g1)}, state, params)
        up, _ = tx.update({"w": jnp.asarray(g2)}, state, params)
    s = 0.5 * np.eye(6) + np.outer(g1.ravel(), g1.ravel()) + np.outer(g2.ravel(), g2.ravel())
    m = np.real(scipy.linalg.sqrtm(s)) + eps * np.eye(6)
    u = theta.ravel() - alpha * np.linalg.solve(m, g2.ravel())
    x_ref = cd_l1(u, m, alpha, lam)
    np.testing.assert_allclose(theta.ravel() + np.asarray(up["w"]).ravel(), x_ref, atol=1e-7)


@pytest.mark.slow  # a training run; benchmarks/kfac_digits.py is the study
def test_proximal_kfac_trains_digits_mlp():
    """Proximal KFAC + ℓ1 on sklearn digits: accurate, sparse, and the objective F = f + λ‖W‖₁ decreases."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(x))
    x, y = x[perm], y[perm]
    xtr, ytr, xte, yte = x[:1400], y[:1400], x[1400:], y[1400:]
    model = MLP((64, 64, 10), nnx.Rngs(0))
    lam = 1e-3
    # The alias is chain(scale_by_kfac_precond(...), proximal_step_metric(...)).
    tx = pg.proxgen_kfac(0.1, L1(), lam, damping=1e-2, update_every=5, inner_steps=10, mask=pg.kernels_only)
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model, opt, xb, yb):
        loss, grads, stats = kfac_value_and_grad(ce_loss)(model, xb, yb)
        opt.update(model, grads, kfac_stats=stats)
        return loss

    def objective():
        params = nnx.state(model, nnx.Param)
        return float(ce_loss(model, xtr, ytr) + pg.regularization_value(params, L1(), lam, pg.kernels_only))

    f0 = objective()
    for _ in range(8):
        order = rng.permutation(len(xtr))
        for i in range(0, len(xtr) - 99, 100):
            idx = order[i:i + 100]
            step(model, opt, jnp.asarray(xtr[idx]), jnp.asarray(ytr[idx]))
    acc = float(np.mean(np.argmax(np.asarray(model(jnp.asarray(xte))), 1) == yte))
    sp = pg.sparsity(nnx.state(model, nnx.Param), pg.kernels_only)["total"]
    assert objective() < 0.5 * f0
    assert acc >= 0.9, acc
    assert float(sp) >= 0.3, float(sp)
