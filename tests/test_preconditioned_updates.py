"""The preconditioner's output reaches the prox intact, or the library says what went wrong and how to fix it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
import pytest

import proxgen_jax as pg
from proxgen_jax.preconditioners.preconditioned_updates import MisplacedPreconditionerOutput

PARAMS = {"w": jnp.linspace(-1.0, 1.0, 6).reshape(3, 2), "b": jnp.ones(2)}
GRADS = jax.tree.map(lambda x: 0.1 * x + 0.05, PARAMS)


@pytest.mark.parametrize("middle,name", [
    (optax.add_decayed_weights(1e-4), "add_decayed_weights"),
    (optax.scale(2.0), "scale"),
    (optax.clip_by_global_norm(1.0), "clip_by_global_norm"),
    (optax.trace(0.9), "trace"),
])
def test_misplaced_transform_is_named(middle, name):
    tx = optax.chain(pg.scale_by_adam_precond(), middle, pg.prox_l1())
    with pytest.raises(MisplacedPreconditionerOutput, match=rf"`{name}`.*between a ProxGen preconditioner"):
        tx.update(GRADS, tx.init(PARAMS), PARAMS)
    with pytest.raises(MisplacedPreconditionerOutput, match="weight_decay="):  # the fix is in the message
        jax.jit(tx.update)(GRADS, tx.init(PARAMS), PARAMS)


def test_jit_of_preconditioner_alone_fails_with_the_library_message():
    pre = pg.scale_by_adam_precond()
    with pytest.raises(MisplacedPreconditionerOutput, match="returned from jax.jit"):
        jax.jit(pre.update)(GRADS, pre.init(PARAMS))


def test_jit_of_the_whole_chain_equals_eager_and_leaks_nothing():
    tx = optax.chain(pg.scale_by_adam_precond(), pg.prox_l1(lam=0.5, learning_rate=0.1))
    state = tx.init(PARAMS)
    eager, _ = tx.update(GRADS, state, PARAMS)
    jitted, _ = jax.jit(tx.update)(GRADS, state, PARAMS)
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
        assert isinstance(b, jax.Array) and not isinstance(b, jax.core.Tracer)
        assert jnp.allclose(a, b, rtol=1e-6, atol=1e-7)
    pre = pg.scale_by_adam_precond()
    out, _ = pre.update(GRADS, pre.init(PARAMS))  # eager: plain attributes, usable by a prox
    assert set(out.metric) == {"w", "b"} and out.momentum is not None


def test_arithmetic_on_the_output_is_refused():
    pre = pg.scale_by_adam_precond()
    out, _ = pre.update(GRADS, pre.init(PARAMS))
    with pytest.raises(MisplacedPreconditionerOutput):
        out * 2.0
    with pytest.raises(MisplacedPreconditionerOutput):
        jnp.asarray(out)
