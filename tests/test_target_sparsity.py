"""The λ controller ``target_sparsity``: it reaches the sparsity asked for, without overshoot, on cheap problems.

Sparsity is measured here with NumPy on the parameters (``np.mean(w == 0)`` / all-zero columns), independently
of the transformation's own measurement; the PI law is checked against a NumPy re-implementation of the
documented update, and the prox step against a NumPy proximal Adam with soft thresholding.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import proxgen_jax as pg
from proxgen_jax.transforms.target_sparsity import (
    TargetSparsityState,
    sparsity_of,
    sparsity_ramp,
    target_sparsity,
    target_sparsity_info,
)

LR = 1e-2


def _least_squares(d=(96,), n=64, seed=0):
    """``f(w) = ‖A w − b‖²/(2n)`` with a dense ground truth (so every sparsity costs some loss)."""
    rng = np.random.default_rng(seed)
    size = int(np.prod(d))
    a = jnp.asarray(rng.normal(size=(n, size)) / math.sqrt(n), jnp.float32)
    w_true = rng.normal(size=size) * rng.uniform(0.1, 2.0, size=size)
    b = a @ jnp.asarray(w_true, jnp.float32)

    def loss(params):
        w = jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(params)])
        r = a @ w - b
        return 0.5 * jnp.mean(r * r) * n / n

    return loss


def _sparsity(p):
    return jnp.mean(jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(p)]) == 0)


def _scan(tx, params, loss, steps, measure):
    def step(carry, _):
        params, state = carry
        updates, state = tx.update(jax.grad(loss)(params), state, params)
        params = optax.apply_updates(params, updates)
        lam = target_sparsity_info(state)["lam"] if isinstance(state[-1], TargetSparsityState) else jnp.zeros([])
        return (params, state), (measure(params), lam)

    (params, state), (sp, lam) = jax.lax.scan(step, (params, tx.init(params)), None, length=steps)
    return params, state, sp, lam


def _train(tx, params, loss, steps, measure=_sparsity):
    """Jitted full-batch training; returns final params, state, per-step sparsity (of the params) and λ_t."""
    params, state, sp, lam = jax.jit(lambda p: _scan(tx, p, loss, steps, measure))(params)
    return params, state, np.asarray(sp), np.asarray(lam)


def _overshoot(curve, target):
    hit = np.flatnonzero(curve >= target)
    return curve[hit[0]:].max() - target if hit.size else -np.inf


def _init(d=(96,), seed=1):
    return {"w": jnp.asarray(np.random.default_rng(seed).normal(size=d) * 0.5, jnp.float32)}


REGS = {
    "l0": pg.regularizers.L0(),
    "l_half": pg.regularizers.Lq(0.5),
    "l_two_thirds": pg.regularizers.Lq(2.0 / 3.0),
    "l1": pg.regularizers.L1(),
    "mcp": pg.regularizers.MCP(3.0),
    "scad": pg.regularizers.SCAD(3.7),
}


@pytest.mark.parametrize("name", list(REGS))
def test_reaches_targets_without_overshoot(name):
    """50 / 80 / 95 %: final sparsity within ±1 pt, never more than 2 pt above once reached (96 weights)."""
    reg, loss = REGS[name], _least_squares()
    steps, ramp = 300, 150

    @jax.jit
    @jax.vmap
    def run(target):  # the target is traced: one compilation for the three targets
        tx = optax.chain(pg.scale_by_adam_precond(), target_sparsity(reg, target, ramp_steps=ramp, learning_rate=LR))
        return _scan(tx, _init(), loss, steps, _sparsity)[2]

    targets = (0.5, 0.8, 0.95)
    for target, sp in zip(targets, np.asarray(run(jnp.asarray(targets)))):
        # 96 weights: one weight is ~1.04 pt, so "±1 pt" means the nearest achievable count.
        assert abs(sp[-1] - target) <= 0.0105, (name, target, sp[-1])
        assert _overshoot(sp, target) <= 0.02, (name, target, _overshoot(sp, target))
        assert sp[ramp // 3] < target  # it ramps, it does not jump to the target


def test_ramp_schedule_values():
    ramp = sparsity_ramp(0.8, 100, begin=10)
    assert float(ramp(0)) == 0.0 and float(ramp(10)) == 0.0
    np.testing.assert_allclose(float(ramp(60)), 0.8 * (1 - 0.5 ** 3), rtol=1e-6)  # cubic: 1 − (1 − u)³
    np.testing.assert_allclose(float(ramp(110)), 0.8, rtol=1e-6)
    np.testing.assert_allclose(float(ramp(10 ** 6)), 0.8, rtol=1e-6)
    lin = sparsity_ramp(0.5, 40, shape="linear")
    np.testing.assert_allclose(float(lin(10)), 0.125, rtol=1e-6)
    np.testing.assert_allclose(float(sparsity_ramp(0.3, 0)(0)), 0.3)


def test_pi_law_matches_numpy_reimplementation():
    """With the guard off, log λ_t follows the documented PI law on the measured sparsity exactly."""
    kp, ki, kdown, lam0, ramp, target = 0.7, 0.03, 3.0, 1e-3, 40, 0.6
    tx = optax.chain(pg.scale_by_adam_precond(),
                     target_sparsity(pg.regularizers.Lq(0.5), target, ramp_steps=ramp, learning_rate=LR,
                                     lam_init=lam0, gain_p=kp, gain_i=ki, down_factor=kdown, margin=None))
    loss, params = _least_squares(), _init()
    state = tx.init(params)
    step = jax.jit(tx.update)
    integral, s_prev = 0.0, float(np.mean(np.asarray(params["w"]) == 0))
    for t in range(60):
        updates, state = step(jax.grad(loss)(params), state, params)
        params = optax.apply_updates(params, updates)
        goal = target * (1 - (1 - min(t / ramp, 1.0)) ** 3)
        e = math.log(1 - s_prev) - math.log(1 - goal)
        integral += ki * e * (1.0 if e > 0 else kdown)
        log_lam = math.log(lam0) + integral + kp * e
        st = state[1]
        np.testing.assert_allclose(float(st.log_lam), log_lam, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(float(st.target), goal, rtol=1e-5, atol=1e-7)
        s_prev = float(np.mean(np.asarray(params["w"]) == 0))
        assert float(st.sparsity) == pytest.approx(s_prev)


def test_step_is_numpy_proximal_adam_with_the_logged_lambda():
    """Each update is prox^{√v̂+ε}_{αλ_t ℓ1}(θ − α m̂/(√v̂+ε)) − θ, λ_t read from the state (NumPy Adam)."""
    b1, b2, eps = 0.9, 0.999, 1e-8
    tx = optax.chain(pg.scale_by_adam_precond(b1, b2, eps),
                     target_sparsity(pg.regularizers.L1(), 0.7, ramp_steps=20, learning_rate=LR, lam_init=1e-2))
    loss, params = _least_squares(), _init()
    state = tx.init(params)
    update = jax.jit(tx.update)
    theta = np.asarray(params["w"], np.float64)
    m = np.zeros_like(theta)
    v = np.zeros_like(theta)
    for t in range(1, 31):
        g = np.asarray(jax.grad(loss)(params)["w"], np.float64)
        updates, state = update(jax.grad(loss)(params), state, params)
        lam = float(target_sparsity_info(state)["lam"])
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        metric = np.sqrt(v / (1 - b2 ** t)) + eps
        z = theta - LR * (m / (1 - b1 ** t)) / metric
        a = LR / metric
        ref = np.sign(z) * np.maximum(np.abs(z) - a * lam, 0.0)
        params = optax.apply_updates(params, updates)
        np.testing.assert_allclose(np.asarray(params["w"]), ref, rtol=2e-5, atol=2e-6)
        np.testing.assert_array_equal(np.asarray(params["w"]) == 0, ref == 0)
        theta = np.asarray(params["w"], np.float64)


def test_guard_prevents_overshoot_of_an_aggressive_controller():
    """Gains far too high overshoot as a pure PI; the guard keeps every step ≤ ramped target + margin."""
    reg, loss = pg.regularizers.Lq(0.5), _least_squares()
    kw = dict(ramp_steps=60, learning_rate=LR, gain_p=4.0, gain_i=0.5, down_factor=1.0)
    target = 0.8
    free = _train(optax.chain(pg.scale_by_adam_precond(), target_sparsity(reg, target, margin=None, **kw)),
                  _init(), loss, 150)[2]
    assert _overshoot(free, target) > 0.02  # the problem the guard exists for
    margin = 0.005
    _, state, sp, _ = _train(optax.chain(pg.scale_by_adam_precond(),
                                         target_sparsity(reg, target, margin=margin, **kw)), _init(), loss, 150)
    goals = np.asarray(sparsity_ramp(target, 60)(np.arange(150)))
    assert np.all(sp <= goals + margin + 1e-6), np.max(sp - goals)
    assert abs(sp[-1] - target) <= 0.0105
    assert int(state[1].guard_steps) > 0


def test_guard_finds_the_largest_admissible_lambda():
    """On a guarded step, λ_t leaves ≤ s̄_t zeros while a slightly larger λ (core proximal_step) leaves more."""
    reg, loss = pg.regularizers.L0(), _least_squares()
    iters = 16
    tx = optax.chain(pg.scale_by_adam_precond(),
                     target_sparsity(reg, 0.5, ramp_steps=0, learning_rate=LR, lam_init=10.0, guard_iters=iters))
    params = _init()
    state = tx.init(params)
    grads = jax.grad(loss)(params)
    updates, new_state = tx.update(grads, state, params)
    st = new_state[1]
    assert int(st.guard_steps) == 1  # λ_0 = 10 zeroes everything: the guard must step in
    used = float(st.log_lam)

    def sparsity_at(log_lam):
        chain = optax.chain(pg.scale_by_adam_precond(), pg.proximal_step(reg, math.exp(log_lam), LR))
        u, _ = chain.update(grads, chain.init(params), params)
        return float(np.mean(np.asarray(optax.apply_updates(params, u)["w"]) == 0))

    resolution = math.log(1e4 / 1e-12) / 2 ** iters
    assert sparsity_at(used) <= 0.5
    assert sparsity_at(used + 2 * resolution) > 0.5
    assert sparsity_at(used) == pytest.approx(float(st.sparsity))
    new_w = np.asarray(optax.apply_updates(params, updates)["w"])
    assert float(st.sparsity) == pytest.approx(float(np.mean(new_w == 0)))


def test_per_leaf_mode_gives_each_leaf_its_own_lambda():
    """Leaves of very different scales: per_leaf brings each to the target; one global λ does not."""
    rng = np.random.default_rng(3)
    params = {"big": jnp.asarray(rng.normal(size=64) * 3.0, jnp.float32),
              "small": jnp.asarray(rng.normal(size=64) * 0.01, jnp.float32)}
    lsq = _least_squares(d=(128,))
    scale = jnp.concatenate([jnp.full(64, 1.0), jnp.full(64, 100.0)])

    def loss(p):  # the "small" leaf lives at a 100× smaller scale
        return lsq({"w": jnp.concatenate([p["big"], p["small"]]) * scale / 3.0})

    target, leaf_sp = 0.8, (lambda p: jnp.stack([jnp.mean(p["big"] == 0), jnp.mean(p["small"] == 0)]))
    kw = dict(ramp_steps=150, learning_rate=LR)
    _, _, sp, lam = _train(optax.chain(pg.scale_by_adam_precond(),
                                       target_sparsity(pg.regularizers.L1(), target, per_leaf=True, **kw)),
                           params, loss, 300, measure=leaf_sp)
    assert sp.shape == (300, 2) and lam.shape == (300, 2)
    # 64 weights per leaf: one weight is 1.6 pt, and two weights whose thresholds tie (to 1e-4) can only be
    # zeroed together, so the leaf may settle one weight below the ±0.5 pt band.
    np.testing.assert_allclose(sp[-1], target, atol=2 / 64 + 1e-6)
    assert np.all([_overshoot(sp[:, i], target) <= 0.02 for i in range(2)])
    assert lam[-1, 0] > 10 * lam[-1, 1] or lam[-1, 1] > 10 * lam[-1, 0]  # really different λ per leaf
    _, _, sp_g, _ = _train(optax.chain(pg.scale_by_adam_precond(),
                                       target_sparsity(pg.regularizers.L1(), target, **kw)), params, loss, 300,
                           measure=leaf_sp)
    assert abs(sp_g[-1].mean() - target) <= 0.011  # global: the total is on target ...
    assert abs(sp_g[-1, 0] - sp_g[-1, 1]) > 0.1  # ... but the leaves are not


def test_mask_and_callable_regularizer_leave_other_leaves_alone():
    params = {"kernel": jnp.asarray(np.random.default_rng(0).normal(size=(12, 8)), jnp.float32),
              "bias": jnp.full((8,), 1e-6, jnp.float32)}
    tx = optax.chain(pg.scale_by_adam_precond(),
                     target_sparsity(pg.regularizers.L0(), 0.5, ramp_steps=10, learning_rate=LR,
                                     mask=pg.kernels_only))

    def loss(p):
        return jnp.sum((p["kernel"] - 0.01) ** 2) + jnp.sum(p["bias"] ** 2)

    params_f, _, _, _ = _train(tx, params, loss, 40, measure=lambda p: jnp.mean(p["kernel"] == 0))
    assert abs(float(np.mean(np.asarray(params_f["kernel"]) == 0)) - 0.5) <= 0.011
    assert not np.any(np.asarray(params_f["bias"]) == 0)
    ref = optax.chain(pg.scale_by_adam_precond(), pg.proximal_step(None, 0.0, LR))
    bias_ref = _train(ref, params, loss, 40, measure=lambda p: jnp.mean(p["kernel"] == 0))
    np.testing.assert_allclose(params_f["bias"], bias_ref[0]["bias"], rtol=1e-6)
    # The same choice made by a callable regularizer instead of a mask gives the same run.
    by_fn = optax.chain(pg.scale_by_adam_precond(),
                        target_sparsity(lambda path, leaf: pg.regularizers.L0() if leaf.ndim == 2 else None, 0.5,
                                        ramp_steps=10, learning_rate=LR))
    params_c = _train(by_fn, params, loss, 40, measure=lambda p: jnp.mean(p["kernel"] == 0))[0]
    np.testing.assert_array_equal(params_c["kernel"], params_f["kernel"])
    np.testing.assert_array_equal(params_c["bias"], params_f["bias"])


def test_group_l12_counts_zero_groups():
    group_l12 = pytest.importorskip("proxgen_jax.regularizers.group_l12")
    reg = group_l12.GroupL12(group_axes=(0,))  # one group per column
    x = jnp.asarray([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 2.0], [0.0, 0.0, 0.0, 0.0]])
    assert float(sparsity_of(reg, x)) == pytest.approx(2 / 4)  # columns 0 and 2 are zero groups
    assert float(sparsity_of(pg.regularizers.L1(), x)) == pytest.approx(10 / 12)
    assert float(sparsity_of(pg.regularizers.GroupMCP(3.0, group_axes=(0,)), x)) == pytest.approx(2 / 4)

    loss, steps, target = _least_squares(d=(8, 24)), 300, 0.75
    tx = optax.chain(pg.scale_by_adam_precond(), target_sparsity(reg, target, ramp_steps=150, learning_rate=LR))
    params = {"w": jnp.asarray(np.random.default_rng(4).normal(size=(8, 24)) * 0.5, jnp.float32)}
    def col_sp(p):
        return jnp.mean(jnp.all(p["w"] == 0, axis=0))

    params_f, _, sp, _ = _train(tx, params, loss, steps, measure=col_sp)
    assert abs(sp[-1] - target) <= 1 / 24 + 1e-6  # 24 groups: one group is ~4 pt
    assert _overshoot(sp, target) <= 1 / 24 + 1e-6
    w = np.asarray(params_f["w"])
    assert np.all((w == 0).all(axis=0) | (w != 0).all(axis=0))  # whole groups, not scattered zeros


def test_jit_compiles_once_and_state_is_loggable():
    traces = []
    tx = optax.chain(pg.scale_by_adam_precond(),
                     target_sparsity(pg.regularizers.Lq(0.5), 0.6, ramp_steps=20, learning_rate=LR))
    loss, params = _least_squares(), _init()

    @jax.jit
    def step(params, state):
        traces.append(1)
        updates, state = tx.update(jax.grad(loss)(params), state, params)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    for _ in range(25):
        params, state = step(params, state)
    assert len(traces) == 1
    assert isinstance(state[1], TargetSparsityState)
    info = target_sparsity_info(state)
    assert set(info) == {"lam", "sparsity", "target", "count", "guard_steps", "peak_excess"}
    assert int(info["count"]) == 25
    np.testing.assert_allclose(float(info["lam"]), math.exp(float(optax.tree_utils.tree_get(state, "log_lam"))))
    assert float(info["sparsity"]) == pytest.approx(float(np.mean(np.asarray(params["w"]) == 0)))
    assert target_sparsity_info(state[1])["count"] == info["count"]


def test_bfloat16_params_keep_dtype_and_nan_propagates():
    params = {"w": jnp.asarray(np.random.default_rng(0).normal(size=32), jnp.bfloat16)}
    tx = optax.chain(pg.scale_by_adam_precond(), target_sparsity(pg.regularizers.L1(), 0.5, ramp_steps=5))
    state = tx.init(params)
    grads = {"w": jnp.ones(32, jnp.bfloat16)}
    updates, state = jax.jit(tx.update)(grads, state, params)
    assert updates["w"].dtype == jnp.bfloat16
    grads = {"w": jnp.ones(32, jnp.float32).at[3].set(jnp.nan).astype(jnp.bfloat16)}
    updates, state = jax.jit(tx.update)(grads, state, params)
    u = np.asarray(updates["w"], np.float32)
    assert np.isnan(u[3]) and np.all(np.isfinite(np.delete(u, 3)))
    assert np.isfinite(float(state[1].log_lam))


def test_nothing_regularised_is_an_error():
    tx = target_sparsity(pg.regularizers.L1(), 0.5, mask={"w": False})
    with pytest.raises(ValueError, match="no leaf is regularised"):
        tx.init({"w": jnp.ones(3)})
    with pytest.raises(ValueError, match="regularizer"):
        target_sparsity(None, 0.5)
