"""Baseline optimizers against float64 NumPy re-implementations of their published update rules.

* subgradient Adam: Kingma & Ba's Adam on ``g + ∂(λR)``;
* Prox-SGD: Yang et al. (ICLR 2020), Alg. 1 with the schedules and bias correction of the authors' code;
* ProxQuant: Bai et al. (ICLR 2019), Adam then the authors' binary prox formula, linear λ ramp, clip;
  revised ProxQuant (ProxGen Table 2): the same prox with the step divided by Adam's ``√v̂ + δ``.

None of the references calls proxgen_jax. Validation, jit, bf16 and the optax wrappers: tests/test_contracts.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import proxgen_jax as pg
from proxgen_jax.baselines.prox_sgd import prox_sgd
from proxgen_jax.baselines.proxquant import binarize_and_freeze, hard_binarize, linear_ramp, proxquant
from proxgen_jax.baselines.subgradient import add_subgradient, subgradient_adam
from proxgen_jax.regularizers import L1, Lq

from oracles import brute_force_prox


# ---------------------------------------------------------------------------------------------------------
# NumPy references (float64)
# ---------------------------------------------------------------------------------------------------------
def np_adam(b1=0.9, b2=0.999, eps=1e-8):
    state = {"m": 0.0, "v": 0.0, "t": 0}

    def step(g):
        state["t"] += 1
        t = state["t"]
        state["m"] = b1 * state["m"] + (1 - b1) * g
        state["v"] = b2 * state["v"] + (1 - b2) * g * g
        mhat = state["m"] / (1 - b1 ** t)
        vhat = state["v"] / (1 - b2 ** t)
        return mhat, np.sqrt(vhat) + eps          # direction numerator, metric C_t + δ
    return step


def soft(z, thr):
    return np.sign(z) * np.maximum(np.abs(z) - thr, 0.0)


def np_prox_sgd(theta, grads_fn, steps, lam, eps0=0.06, rho0=0.9, a=0.5, b=0.5, beta=0.999, delta=1e-8,
                box=None):
    """Yang et al.'s Prox-SGD for ℓ1 (+ box), written from the paper / reference code, float64."""
    theta = np.asarray(theta, np.float64).copy()
    v = np.zeros_like(theta)
    r = np.zeros_like(theta)
    traj = []
    for t in range(steps):                          # 0-based iteration counter
        g = grads_fn(theta)
        rho = rho0 / (t + 4) ** b
        eps = eps0 / (t + 4) ** a
        v = (1 - rho) * v + rho * g
        r = beta * r + (1 - beta) * g * g
        tau = np.sqrt(r / (1 - beta ** (t + 1))) + delta
        x_hat = soft(theta - v / tau, lam / tau)
        if box is not None:
            x_hat = np.clip(x_hat, *box)
        theta = theta + eps * (x_hat - theta)
        traj.append(theta.copy())
    return traj


def run_tx(tx, params, grads_fn, steps):
    state = tx.init(params)
    traj = []
    for _ in range(steps):
        g = jax.tree.map(lambda p: jnp.asarray(grads_fn(np.asarray(p, np.float64)), jnp.float32), params)
        upd, state = tx.update(g, state, params)
        params = optax.apply_updates(params, upd)
        traj.append(params)
    return traj


def quadratic(d, seed):
    """Gradient of ½(θ − c)ᵀA(θ − c) with a random SPD A: gradients depend on the iterate."""
    rng = np.random.default_rng(seed)
    m = rng.standard_normal((d, d))
    A = m @ m.T / d + 0.5 * np.eye(d)
    c = rng.standard_normal(d)
    return lambda th: A @ (th - c)


# ---------------------------------------------------------------------------------------------------------
# Subgradient
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("q", [1.0, 0.5])
def test_subgradient_adam_matches_numpy_adam_on_subgradient(q):
    d, lam, lr = 12, 0.05, 1e-2
    rng = np.random.default_rng(1)
    theta0 = rng.uniform(0.2, 1.5, d) * rng.choice([-1, 1], d)
    gf = quadratic(d, 2)
    reg = L1() if q == 1 else Lq(q)
    traj = run_tx(subgradient_adam(lr, reg, lam), {"w": jnp.asarray(theta0, jnp.float32)}, gf, 6)
    adam, th = np_adam(), theta0.copy()
    for params in traj:
        sub = lam * q * np.abs(th) ** (q - 1) * np.sign(th)   # d/dθ λ|θ|^q, θ ≠ 0
        num, metric = adam(gf(th) + sub)
        th = th - lr * num / metric
        np.testing.assert_allclose(np.asarray(params["w"]), th, rtol=2e-5, atol=2e-6)


def test_subgradient_matches_autograd_off_zero_and_is_finite_at_zero():
    lam, q = 0.3, 0.5
    x = jnp.array([-2.0, -1e-3, 1e-6, 0.7, 0.0])
    tx = add_subgradient(Lq(q), lam)
    upd, _ = tx.update({"w": jnp.zeros(5)}, tx.init({"w": x}), {"w": x})
    auto = jax.grad(lambda w: lam * jnp.sum(jnp.abs(w) ** q))(x)
    got = np.asarray(upd["w"])
    np.testing.assert_allclose(got[:4], np.asarray(auto)[:4], rtol=1e-5)
    assert got[2] > 100.0                      # λq|θ|^{q−1} is huge at tiny |θ| (faithful)
    assert not np.isfinite(np.asarray(auto)[4])  # autograd of |x|**q: NaN/inf at 0 ...
    assert got[4] == 0.0                       # ... the core subgradient: 0


def test_add_subgradient_schedule_and_mask():
    sched = optax.linear_schedule(0.0, 1.0, 4)      # λ_t = t/4
    params = {"kernel": jnp.array([2.0, -3.0]), "bias": jnp.array([5.0])}
    tx = add_subgradient(L1(), sched, mask=pg.kernels_only)
    state = tx.init(params)
    zeros = jax.tree.map(jnp.zeros_like, params)
    for t in range(3):
        upd, state = tx.update(zeros, state, params)
        np.testing.assert_allclose(np.asarray(upd["kernel"]), t / 4 * np.array([1.0, -1.0]), atol=1e-7)
        np.testing.assert_array_equal(np.asarray(upd["bias"]), [0.0])


# ---------------------------------------------------------------------------------------------------------
# Prox-SGD
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("box", [None, (-0.5, 0.5)])
def test_prox_sgd_matches_published_rule(box):
    d, lam = 16, 0.05
    rng = np.random.default_rng(3)
    theta0 = rng.standard_normal(d)
    gf = quadratic(d, 4)
    ref = np_prox_sgd(theta0, gf, 8, lam, box=box)
    traj = run_tx(prox_sgd(lam, box=box), {"w": jnp.asarray(theta0, jnp.float32)}, gf, 8)
    for params, th in zip(traj, ref):
        np.testing.assert_allclose(np.asarray(params["w"]), th, rtol=1e-5, atol=1e-6)
    if box is not None:   # the clip must have been active: the unconstrained run leaves the box
        free = np_prox_sgd(theta0, gf, 8, lam)
        assert np.max(np.abs(free[-1] - ref[-1])) > 1e-3


def test_prox_sgd_schedules_first_steps():
    """With g ≡ 1 and λ = 0, θ̂_t = θ_t − v_t/τ_t; check ε_t = ε0/(t+4)^a and ρ_t = ρ0/(t+4)^b directly."""
    eps0, rho0, a, b = 0.3, 0.8, 0.6, 0.25
    tx = prox_sgd(0.0, eps0=eps0, rho0=rho0, a=a, b=b)
    p = {"w": jnp.zeros(1)}
    state = tx.init(p)
    v = 0.0
    for t in range(4):
        rho = rho0 / (t + 4) ** b
        v = (1 - rho) * v + rho * 1.0
        tau = 1.0 + 1e-8                  # bias-corrected RMS of a constant unit gradient
        expected = eps0 / (t + 4) ** a * (-v / tau)   # θ = 0 kept by resetting params below
        upd, state = tx.update({"w": jnp.ones(1)}, state, p)
        np.testing.assert_allclose(float(upd["w"][0]), expected, rtol=2e-5)


def test_prox_sgd_hat_step_is_exact_prox_for_other_regularizers():
    """θ̂ = θ + update/ε_0 must be the global minimiser of λ|x|^½ + τ(x − z)²/2 (brute force)."""
    lam, d = 0.2, 40
    rng = np.random.default_rng(5)
    theta = rng.standard_normal(d)
    g = rng.standard_normal(d) * rng.uniform(0.1, 3, d)
    tx = prox_sgd(lam, regularizer=Lq(0.5))
    upd, _ = tx.update({"w": jnp.asarray(g, jnp.float32)}, tx.init({"w": jnp.asarray(theta, jnp.float32)}),
                       {"w": jnp.asarray(theta, jnp.float32)})
    eps = 0.06 / 4 ** 0.5
    hat = theta.astype(np.float32) + np.asarray(upd["w"], np.float64) / eps
    v = 0.9 / 2 * g
    tau = np.abs(g) + 1e-8                 # r = (1−β)g², divided by (1 − β)
    z = theta - v / tau
    ref, _ = brute_force_prox("lq", z, 1 / tau, lam, q=0.5)
    np.testing.assert_allclose(hat, ref, atol=2e-5)


def test_prox_sgd_never_creates_exact_zeros_from_nonzero_start():
    """θ_{t+1} = (1 − ε_t)θ_t + ε_t θ̂_t: a coordinate with θ̂_t = 0 shrinks but stays nonzero."""
    tx = prox_sgd(10.0)                    # huge λ: θ̂_t = 0 everywhere
    params = {"w": jnp.array([1.0, -0.5, 1e-3])}
    state = tx.init(params)
    for _ in range(50):
        upd, state = tx.update({"w": jnp.array([0.1, 0.1, 0.1])}, state, params)
        params = optax.apply_updates(params, upd)
    expected = np.array([1.0, -0.5, 1e-3]) * np.prod([1 - 0.06 / (t + 4) ** 0.5 for t in range(50)])
    np.testing.assert_allclose(np.asarray(params["w"]), expected, rtol=1e-5)
    assert np.all(np.asarray(params["w"]) != 0)


def test_prox_sgd_mask():
    params = {"kernel": jnp.array([0.01, -0.02]), "bias": jnp.array([0.01])}
    tx = prox_sgd(1.0, mask=pg.kernels_only, box=(-1.0, 1.0))
    upd, state = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
    eps = 0.06 / 2
    # kernel: z = θ − 0.45, |z| < λ/τ = 1 → θ̂ = 0; bias: unregularised, θ̂ = z
    np.testing.assert_allclose(np.asarray(upd["kernel"]), -eps * np.array([0.01, -0.02]), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(upd["bias"]), eps * np.array([-0.45]), rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# ProxQuant and revised ProxQuant
# ---------------------------------------------------------------------------------------------------------
def authors_binary_prox(p, reg):
    """Bai et al.'s ``prox_operator(reg, 'binary')``: sign(p)·(relu(||p| − 1| − reg)·sign(|p| − 1) + 1)."""
    a = np.abs(p)
    return np.sign(p) * (np.maximum(np.abs(a - 1) - reg, 0) * np.sign(a - 1) + 1)


def test_linear_ramp_schedule():
    s = linear_ramp(0.5, 10)
    np.testing.assert_allclose([float(s(t)) for t in (0, 1, 5, 10, 25)], [0, 0.05, 0.25, 0.5, 0.5], rtol=1e-6)
    s = linear_ramp(0.6, 12, ramp_every=4)     # authors' λ = reg_rate·epoch with 4 steps per epoch
    np.testing.assert_allclose([float(s(t)) for t in range(14)],
                               [0.2 * (t // 4) for t in range(12)] + [0.6, 0.6], rtol=1e-6)
    with pytest.raises(ValueError, match="ramp_steps"):
        linear_ramp(1.0, 0)


@pytest.mark.parametrize("revised", [False, True])
def test_proxquant_and_revised_match_numpy(revised):
    d, lr, lam_max, ramp = 20, 0.05, 4.0, 6
    rng = np.random.default_rng(7)
    theta0 = rng.uniform(-1.4, 1.4, d)
    gf = quadratic(d, 8)
    if revised:
        tx = pg.revised_proxquant(lr, 1.0, linear_ramp(lam_max, ramp))
    else:
        tx = proxquant(lr, lam_max, ramp_steps=ramp)
    traj = run_tx(tx, {"w": jnp.asarray(theta0, jnp.float32)}, gf, 8)
    adam, th = np_adam(), theta0.copy()
    for t, params in enumerate(traj):
        lam_t = lam_max * min(t, ramp) / ramp
        num, metric = adam(gf(th))
        z = th - lr * num / metric
        step = lr / metric if revised else lr
        if revised:   # exact prox of λ dist(·, {±1}) in the metric: soft-threshold towards the nearest level
            lev = np.where(z >= 0, 1.0, -1.0)
            th = lev + soft(z - lev, step * lam_t)
        else:
            th = np.clip(authors_binary_prox(z, step * lam_t), -1, 1)
        np.testing.assert_allclose(np.asarray(params["w"]), th, rtol=1e-5, atol=2e-6)
    if not revised:
        assert np.all(np.abs(np.asarray(traj[-1]["w"])) <= 1)


def test_proxquant_differs_from_revised_by_the_metric():
    """Same gradients, same λ: ProxQuant thresholds by αλ, revised by αλ/(√v̂+δ) — different iterates."""
    params = {"w": jnp.array([0.3, -0.6, 0.9])}
    g = {"w": jnp.array([1e-3, -2e-3, 5e-4])}    # small gradients: √v̂ ≪ 1, the revised threshold is larger
    pq = proxquant(1e-2, 1.0, ramp_steps=1, clip=False)
    rv = pg.revised_proxquant(1e-2, 1.0, 1.0)
    sp, sr = pq.init(params), rv.init(params)
    pp, pr = params, params
    for _ in range(3):
        u, sp = pq.update(g, sp, pp)
        pp = optax.apply_updates(pp, u)
        u, sr = rv.update(g, sr, pr)
        pr = optax.apply_updates(pr, u)
    # revised: threshold αλ/|g| ≫ distance to ±1 → exactly on the levels; ProxQuant: still moving
    np.testing.assert_array_equal(np.asarray(pr["w"]), [1.0, -1.0, 1.0])
    assert np.all(np.abs(np.abs(np.asarray(pp["w"])) - 1) > 0.05)


def test_hard_binarize_and_freeze():
    params = {"kernel": jnp.array([0.2, -0.9, 0.0, -0.0]), "bias": jnp.array([0.3])}
    bp, frozen = binarize_and_freeze(params, pg.kernels_only)
    np.testing.assert_array_equal(np.asarray(bp["kernel"]), [1, -1, 1, 1])
    assert bp["bias"] is params["bias"]
    assert frozen == {"kernel": True, "bias": False}
    tx = optax.chain(optax.adam(1e-1), optax.masked(optax.set_to_zero(), frozen))
    upd, _ = tx.update(jax.tree.map(jnp.ones_like, bp), tx.init(bp), bp)
    np.testing.assert_array_equal(np.asarray(upd["kernel"]), 0)
    assert float(upd["bias"][0]) != 0
    assert hard_binarize(jnp.array([0.5, -2.0], jnp.bfloat16)).dtype == jnp.bfloat16


def test_prox_sgd_accepts_lam_schedule():
    """λ_t = 0 at t = 0 then 10: the first step is the plain two-stage step, the second thresholds to 0."""
    tx = prox_sgd(lambda t: jnp.where(t < 1, 0.0, 10.0))
    p = {"w": jnp.array([0.2])}
    state = tx.init(p)
    upd, state = tx.update({"w": jnp.array([1.0])}, state, p)
    np.testing.assert_allclose(float(upd["w"][0]), 0.03 * (-0.45), rtol=1e-5)   # θ̂ = θ − v/τ
    upd, state = tx.update({"w": jnp.array([1.0])}, state, p)
    np.testing.assert_allclose(float(upd["w"][0]), 0.06 / 5 ** 0.5 * (0 - 0.2), rtol=1e-5)   # θ̂ = 0
