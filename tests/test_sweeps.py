"""Hyperparameter sweeps in one program: ``jax.vmap`` over λ, and ``optax.inject_hyperparams`` for λ and α_t.

* vmap: the transformation is built *inside* the vmapped step with a traced λ; K models train in one jitted
  step and equal K separate runs with Python-float λ.
* inject_hyperparams: λ and α_t live in the optimizer state; changing them mid-training takes effect at the
  next step (checked against ``optax.adam`` and a float64 Adam + brute-force prox oracle) without a
  recompilation. Callables that are not schedules (``mask``, a per-leaf ``regularizer``), the exponent ``q`` and
  ``momentum`` (which shapes the state) must be ``static_args``; bfloat16 params need ``hyperparam_dtype``.
  Every factory's ``static_args`` (and the error without them) are checked in ``tests/test_contracts.py``.
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from proxgen_jax._tree import kernels_only
from proxgen_jax.aliases import proxgen_adam
from proxgen_jax.preconditioners.adam import scale_by_adam_precond
from proxgen_jax.regularizers import Lq
from proxgen_jax.transforms.prox_transforms import prox_lq

from oracles import brute_force_prox

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "scripts"))

import toy  # noqa: E402
from compile_counter import count_compiles

LAMS = (0.0, 2e-3, 5e-3, 1.5e-2)
EPS = 1e-8




def make_tx(lam):
    """λ may be a Python float or a tracer; α_t is scheduled (so the prox state is a ProximalStepState)."""
    lr = optax.linear_schedule(toy.LR, toy.LR / 2, toy.STEPS)
    return optax.chain(scale_by_adam_precond(), prox_lq(q=0.5, lam=lam, learning_rate=lr, mask=kernels_only))


def test_vmap_over_lambda_equals_separate_runs():
    xs, ys = toy.batches()
    params0 = jax.tree.map(jnp.asarray, toy.init_params())
    lams = jnp.asarray(LAMS, jnp.float32)

    def step(params, state, lam, x, y):
        return toy.train_step(make_tx(lam), params, state, x, y)

    vstep = jax.jit(jax.vmap(step, in_axes=(0, 0, 0, None, None)))
    params = jax.tree.map(lambda a: jnp.broadcast_to(a, (len(LAMS),) + a.shape), params0)
    state = jax.vmap(lambda lam, p: make_tx(lam).init(p))(lams, params)
    with count_compiles() as compiles:
        for x, y in zip(xs, ys):
            params, state, losses = vstep(params, state, lams, x, y)
    assert len(compiles) == 1 and losses.shape == (len(LAMS),)

    swept = {jax.tree_util.keystr(q): np.asarray(v) for q, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    zeros = []
    for k, lam in enumerate(LAMS):
        tx = make_tx(lam)
        p, s = params0, tx.init(params0)
        one = jax.jit(lambda p, s, x, y, tx=tx: toy.train_step(tx, p, s, x, y))
        for x, y in zip(xs, ys):
            p, s, loss = one(p, s, x, y)
        np.testing.assert_allclose(losses[k], loss, rtol=1e-5, atol=1e-6)
        for path, want in jax.tree_util.tree_flatten_with_path(p)[0]:
            got = swept[jax.tree_util.keystr(path)][k]
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=f"λ={lam} {path}")
            np.testing.assert_array_equal(np.asarray(got) == 0, np.asarray(want) == 0)
        zeros.append(sum(int(np.sum(v[k] == 0)) for v in swept.values()))
    # λ = 0 is plain Adam (no zeros); the number of exact zeros grows with λ.
    assert zeros[0] == 0 and all(a < b for a, b in zip(zeros, zeros[1:])), zeros


def test_inject_hyperparams_change_takes_effect():
    xs, ys = toy.batches()
    params = jax.tree.map(jnp.asarray, toy.init_params())
    ours = optax.inject_hyperparams(proxgen_adam, static_args=("mask",))(
        learning_rate=toy.LR, regularizer=Lq(0.5), lam=0.0, eps=EPS, mask=kernels_only)
    adam = optax.inject_hyperparams(optax.adam)(learning_rate=toy.LR, eps=EPS)
    s_ours, s_adam = ours.init(params), adam.init(params)
    assert {"learning_rate", "lam"} <= set(s_ours.hyperparams)
    grad = jax.jit(jax.grad(toy.loss_fn))
    traces = []

    def traced_update(*args):
        traces.append(1)
        return ours.update(*args)

    u_ours, u_adam = jax.jit(traced_update), jax.jit(adam.update)
    p_ours, p_adam = params, params
    for t in range(toy.STEPS):
        if t == 3:  # change λ and α_t mid-training, as arrays of the hyperparameters' dtype
            new_lr, new_lam = toy.LR / 2, 0.02
            s_ours.hyperparams["learning_rate"] = jnp.asarray(new_lr, jnp.float32)
            s_ours.hyperparams["lam"] = jnp.asarray(new_lam, jnp.float32)
            s_adam.hyperparams["learning_rate"] = jnp.asarray(new_lr, jnp.float32)
        g_ours, g_adam = grad(p_ours, xs[t], ys[t]), grad(p_adam, xs[t], ys[t])
        up, s_ours = u_ours(g_ours, s_ours, p_ours)
        ua, s_adam = u_adam(g_adam, s_adam, p_adam)
        new_ours, new_adam = optax.apply_updates(p_ours, up), optax.apply_updates(p_adam, ua)
        if t < 3:  # λ = 0: exactly Adam
            for a, b in zip(jax.tree.leaves(new_ours), jax.tree.leaves(new_adam)):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
                assert not np.any(np.asarray(a) == 0)
        if t == 3:  # the new α_t and λ act now: biases follow Adam at α/2, kernels the oracle prox
            adam_state = s_adam.inner_state[0]
            count = int(adam_state.count)
            for key in ("dense0", "dense1"):
                np.testing.assert_allclose(new_ours[key]["bias"], new_adam[key]["bias"], rtol=1e-5,
                                           atol=1e-7)
                mu = np.asarray(adam_state.mu[key]["kernel"], np.float64) / (1 - 0.9 ** count)
                nu = np.asarray(adam_state.nu[key]["kernel"], np.float64) / (1 - 0.999 ** count)
                metric = np.sqrt(nu) + EPS
                z = np.asarray(p_ours[key]["kernel"], np.float64) - new_lr * mu / metric
                want, _ = brute_force_prox("lq", z.ravel(), (new_lr / metric).ravel(), new_lam, q=0.5)
                got = np.asarray(new_ours[key]["kernel"], np.float64).ravel()
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=key)
                np.testing.assert_array_equal(got == 0, want == 0)
                assert 0 < np.sum(got == 0) < got.size
        p_ours, p_adam = new_ours, new_adam
    # The hyperparameters are state leaves: changing them neither retraces nor recompiles the update.
    assert len(traces) == 1 and u_ours._cache_size() == 1
    assert float(s_ours.hyperparams["lam"]) == pytest.approx(0.02)


def bf16_problem():
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.bfloat16), toy.init_params())
    xs, ys = toy.batches()
    grad = jax.jit(jax.grad(lambda p, x, y: toy.loss_fn(jax.tree.map(lambda a: a.astype(jnp.float32), p), x, y)))
    return params, xs, ys, grad


def test_inject_hyperparams_with_bfloat16_params():
    params, xs, ys, grad = bf16_problem()
    # By default inject_hyperparams casts hyperparameters to the params' dtype: b2 = 0.999 becomes 1.0 in
    # bfloat16. optax.adam then silently returns NaN; the ProxGen factories refuse, naming the argument.
    with pytest.raises(ValueError, match="b2"):
        optax.inject_hyperparams(proxgen_adam)(regularizer=Lq(0.5), lam=toy.LAM).init(params)
    tx = optax.inject_hyperparams(proxgen_adam, hyperparam_dtype=jnp.float32, static_args=("mask",))(
        learning_rate=toy.LR, regularizer=Lq(0.5), lam=toy.LAM, mask=kernels_only)
    state = tx.init(params)
    assert all(v.dtype == jnp.float32 for v in state.hyperparams.values())
    update = jax.jit(tx.update)
    for x, y in zip(xs, ys):
        updates, state = update(grad(params, x, y), state, params)
        params = optax.apply_updates(params, updates)
    assert all(a.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(a, np.float32)))
               for a in jax.tree.leaves(params))
    assert any(np.any(np.asarray(a, np.float32) == 0) for a in jax.tree.leaves(params))


def test_inject_hyperparams_bfloat16_state_dtypes_stable():
    params, xs, ys, grad = bf16_problem()
    tx = optax.inject_hyperparams(proxgen_adam, hyperparam_dtype=jnp.float32)(regularizer=Lq(0.5), lam=toy.LAM)
    state = tx.init(params)
    dtypes = jax.tree.map(lambda a: a.dtype, state.inner_state)
    _, state = jax.jit(tx.update)(grad(params, xs[0], ys[0]), state, params)
    assert jax.tree.map(lambda a: a.dtype, state.inner_state) == dtypes


