"""The optax-facing behaviour of ``preconditioner → proximal_step`` chains.

The contracts every transformation shares (jit without retrace, inject_hyperparams, MultiSteps, apply_if_finite
and NaN propagation, bf16, vmap over λ, state bytes, ValueErrors, update without params) are in
``tests/test_contracts.py``; this file keeps what is specific to the chain's mathematics and placement.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import proxgen_jax as pg


def _params(dtype=jnp.float32):
    k = jax.random.PRNGKey(0)
    return {
        "dense": {"kernel": jax.random.normal(k, (6, 5), dtype) * 0.3, "bias": jnp.full((5,), 0.2, dtype)},
        "conv": {"kernel": jax.random.normal(jax.random.fold_in(k, 1), (3, 3, 2, 4), dtype) * 0.3},
    }


def _grads(params, seed):
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return jax.tree.unflatten(tree, [jax.random.normal(k, x.shape, x.dtype) * 0.1 for k, x in zip(keys, leaves)])


def _run(tx, params, steps=5, jit=True):
    state = tx.init(params)
    step = jax.jit(tx.update) if jit else tx.update
    for t in range(steps):
        updates, state = step(_grads(params, t), state, params)
        params = optax.apply_updates(params, updates)
    return params, state


def test_zero_lambda_is_exactly_optax_adam():
    params = _params()
    ours, _ = _run(optax.chain(pg.scale_by_adam_precond(), pg.proximal_step(None, 0.0, 1e-2)), params)
    ref, _ = _run(optax.adam(1e-2), params)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), ours, ref)


def test_card_line_runs_verbatim_with_documented_defaults():
    params = _params()
    card, _ = _run(optax.chain(pg.scale_by_adam_precond(), pg.prox_lq(q=0.5)), params, steps=3)
    explicit, _ = _run(optax.chain(pg.scale_by_adam_precond(b1=0.9, b2=0.999, eps=1e-8),
                                   pg.proximal_step(pg.Lq(0.5), lam=1e-4, learning_rate=1e-3)), params, steps=3)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), card, explicit)


def test_euclidean_prox_after_plain_optax_transform_is_original_proxquant():
    """After optax.scale_by_adam the metric is Euclidean: θ+ = prox_{αλR}(θ − α u) with a scalar step α."""
    params = _params()
    lr, lam = 0.05, 0.3
    reg = pg.regularizers.binary(1.0)
    tx = optax.chain(optax.scale_by_adam(), pg.proximal_step(reg, lam, lr))
    state = tx.init(params)
    adam = optax.scale_by_adam()
    adam_state = adam.init(params)
    g = _grads(params, 0)
    updates, _ = tx.update(g, state, params)
    u, _ = adam.update(g, adam_state, params)
    expected = jax.tree.map(lambda p, d: reg.prox(p - lr * d, lr, lam), params, u)
    got = optax.apply_updates(params, updates)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), got, expected)
    # ... and it differs from the revised (preconditioned-metric) step.
    rev = optax.chain(pg.scale_by_adam_precond(), pg.proximal_step(reg, lam, lr))
    rev_updates, _ = rev.update(g, rev.init(params), params)
    assert not np.allclose(np.asarray(rev_updates["dense"]["kernel"]), np.asarray(updates["dense"]["kernel"]))


@pytest.mark.parametrize("middle", [
    optax.clip_by_global_norm(1.0), optax.scale(-1.0), optax.clip(0.1), optax.scale_by_learning_rate(1.0),
    optax.add_noise(0.1, 0.5, 0)], ids=["clip_by_global_norm", "scale", "clip", "scale_by_lr", "add_noise"])
def test_transform_between_preconditioner_and_prox_fails_loudly(middle):
    params = _params()
    tx = optax.chain(pg.scale_by_adam_precond(), middle, pg.prox_l1())
    with pytest.raises(TypeError, match="preconditioner"):
        tx.update(_grads(params, 0), tx.init(params), params)


def test_weight_decay_between_fails_and_identity_passes():
    params = _params()
    bad = optax.chain(pg.scale_by_adam_precond(), optax.add_decayed_weights(1e-4), pg.prox_l1())
    with pytest.raises((TypeError, ValueError)):
        bad.update(_grads(params, 0), bad.init(params), params)
    ok = optax.chain(pg.scale_by_adam_precond(), optax.identity(), pg.prox_l1())
    ok.update(_grads(params, 0), ok.init(params), params)


def test_preconditioner_output_refuses_arithmetic():
    params = _params()
    out, _ = pg.scale_by_adam_precond().update(_grads(params, 0), pg.scale_by_adam_precond().init(params))
    with pytest.raises(TypeError, match="prox"):
        _ = 2.0 * out
    with pytest.raises(TypeError, match="prox"):
        jnp.asarray(out)


def test_mu_dtype():
    """(State bytes equal to ``optax.adam``'s: tests/test_contracts.py.)"""
    params = _params()
    st = pg.scale_by_adam_precond(mu_dtype=jnp.bfloat16).init(params)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(st.mu))


def test_mask_tree_callable_and_kernels_only():
    params = _params()
    params = jax.tree.map(lambda x: x * 1e-3, params)
    tx = optax.chain(pg.scale_by_adam_precond(), pg.prox_l1(lam=10.0, learning_rate=1e-2, mask=pg.kernels_only))
    out, _ = _run(tx, params, steps=1)
    assert float(jnp.mean(out["dense"]["kernel"] == 0)) == 1.0
    assert float(jnp.mean(out["conv"]["kernel"] == 0)) == 1.0
    assert float(jnp.mean(out["dense"]["bias"] == 0)) == 0.0
    tree_mask = {"dense": {"kernel": False, "bias": False}, "conv": {"kernel": True}}
    out2, _ = _run(optax.chain(pg.scale_by_adam_precond(), pg.prox_l1(lam=10.0, learning_rate=1e-2, mask=tree_mask)),
                   params, steps=1)
    assert float(jnp.mean(out2["dense"]["kernel"] == 0)) == 0.0 and float(jnp.mean(out2["conv"]["kernel"] == 0)) == 1.0


def test_mask_mismatch_names_the_path():
    params = _params()
    with pytest.raises(ValueError, match=r"\['conv'\]\['kernel'\]"):
        pg.prox_l1(mask={"dense": {"kernel": True, "bias": False}}).init(params)


def test_schedules_for_lambda_and_learning_rate():
    params = _params()
    lam_sched = optax.linear_schedule(0.0, 1.0, 10)
    lr_sched = optax.constant_schedule(1e-2)
    tx = optax.chain(pg.scale_by_adam_precond(), pg.prox_l1(lam=lam_sched, learning_rate=lr_sched))
    state = tx.init(params)
    g = _grads(params, 0)
    u, state = tx.update(g, state, params)   # λ_0 = 0: plain Adam step
    ref, _ = optax.adam(1e-2).update(g, optax.adam(1e-2).init(params), params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), u, ref)
    assert int(state[1].count) == 1


