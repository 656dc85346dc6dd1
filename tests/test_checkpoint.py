"""Orbax checkpoints of params + ProxGen optimizer state: save mid-training, restore, continue bit-identically.

The restore target is built the way a fresh process builds it (``jax.eval_shape`` of ``tx.init``), so the
NamedTuple states (``ScaleByAdamPrecondState``, ``ProximalStepState``, ``optax.EmptyState``, optax's
``InjectHyperparamsState``) must come back with their structure, dtypes and values.
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from proxgen_jax._tree import kernels_only
from proxgen_jax.aliases import proxgen_adam
from proxgen_jax.preconditioners.adam import ScaleByAdamPrecondState, scale_by_adam_precond
from proxgen_jax.regularizers import Lq
from proxgen_jax.transforms.prox_transforms import prox_lq
from proxgen_jax.transforms.proximal_step import ProximalStepState

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "scripts"))

import toy  # noqa: E402

BEFORE, AFTER = 3, 3


def optimizers():
    return {
        "scheduled_lr": toy.make_tx(),  # (ScaleByAdamPrecondState, ProximalStepState)
        "constant": optax.chain(scale_by_adam_precond(), prox_lq(q=0.5, lam=toy.LAM, learning_rate=toy.LR,
                                                                 mask=kernels_only)),  # (..., EmptyState)
        "inject_hyperparams": optax.inject_hyperparams(proxgen_adam, static_args=("mask",))(
            learning_rate=toy.LR, regularizer=Lq(0.5), lam=toy.LAM, mask=kernels_only),
    }


def make_step(tx):
    return jax.jit(lambda p, s, x, y: toy.train_step(tx, p, s, x, y))


def assert_identical(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("name", ["scheduled_lr", "constant", "inject_hyperparams"])
def test_restore_and_continue_is_bit_identical(tmp_path, name):
    tx = optimizers()[name]
    step = make_step(tx)
    xs, ys = toy.batches(BEFORE + AFTER)
    params = jax.tree.map(jnp.asarray, toy.init_params())
    state = tx.init(params)
    for t in range(BEFORE):
        params, state, _ = step(params, state, xs[t], ys[t])
    if name == "scheduled_lr":
        assert isinstance(state[0], ScaleByAdamPrecondState) and isinstance(state[1], ProximalStepState)
        assert int(state[1].count) == BEFORE
    if name == "constant":
        assert isinstance(state[1], optax.EmptyState)

    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "ckpt", {"params": params, "opt_state": state})
    checkpointer.wait_until_finished()

    # The uninterrupted run.
    trajectory = []
    p, s = params, state
    for t in range(BEFORE, BEFORE + AFTER):
        p, s, loss = step(p, s, xs[t], ys[t])
        trajectory.append((p, s, loss))

    # A fresh start: an abstract target from the optimizer's init, restored, then continued.
    fresh_tx = optimizers()[name]
    abstract_params = jax.eval_shape(lambda: jax.tree.map(jnp.asarray, toy.init_params()))
    target = {"params": abstract_params, "opt_state": jax.eval_shape(fresh_tx.init, abstract_params)}
    restored = checkpointer.restore(tmp_path / "ckpt", target)
    checkpointer.close()
    assert_identical(restored, {"params": params, "opt_state": state})
    if name == "inject_hyperparams":
        assert set(restored["opt_state"].hyperparams) >= {"learning_rate", "lam"}

    fresh_step = make_step(fresh_tx)
    p, s = restored["params"], restored["opt_state"]
    for t, (want_p, want_s, want_loss) in zip(range(BEFORE, BEFORE + AFTER), trajectory):
        p, s, loss = fresh_step(p, s, xs[t], ys[t])
        assert_identical((p, s, loss), (want_p, want_s, want_loss))
    assert any(np.any(np.asarray(leaf) == 0) for leaf in jax.tree.leaves(p))  # sparsified on the way


class Net(nnx.Module):
    def __init__(self, rngs):
        self.hidden = nnx.Linear(toy.D_IN, toy.D_HIDDEN, rngs=rngs)
        self.out = nnx.Linear(toy.D_HIDDEN, toy.D_OUT, rngs=rngs)

    def __call__(self, x):
        return self.out(jnp.tanh(self.hidden(x)))


def test_nnx_model_and_optimizer_roundtrip(tmp_path):
    xs, ys = toy.batches(BEFORE + AFTER)

    def build(seed):
        model = Net(nnx.Rngs(seed))
        return model, nnx.Optimizer(model, toy.make_tx(), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, x, y):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
        optimizer.update(model, grads)
        return loss

    model, optimizer = build(0)
    for t in range(BEFORE):
        step(model, optimizer, xs[t], ys[t])
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "nnx", {"model": nnx.state(model), "optimizer": nnx.state(optimizer)})
    checkpointer.wait_until_finished()
    losses = [float(step(model, optimizer, xs[t], ys[t])) for t in range(BEFORE, BEFORE + AFTER)]

    model2, optimizer2 = build(1)  # different initial weights: everything must come from the checkpoint
    target = {"model": nnx.state(model2), "optimizer": nnx.state(optimizer2)}
    restored = checkpointer.restore(tmp_path / "nnx", jax.tree.map(ocp.utils.to_shape_dtype_struct, target))
    checkpointer.close()
    nnx.update(model2, restored["model"])
    nnx.update(optimizer2, restored["optimizer"])
    assert int(optimizer2.step[...]) == BEFORE
    losses2 = [float(step(model2, optimizer2, xs[t], ys[t])) for t in range(BEFORE, BEFORE + AFTER)]
    assert losses2 == losses
    assert_identical(nnx.state(model2), nnx.state(model))
    assert_identical(nnx.state(optimizer2), nnx.state(optimizer))
