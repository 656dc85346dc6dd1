"""``proxgen_jax.train.loop.fit`` (the notebooks' training loop), ``masked_values`` and ``hidden_kernels``.

The numbers ``fit`` records are checked against NumPy recomputations from what it returns: the final parameters'
exact zeros, the model's logits (an MLP evaluated in float64 NumPy) and the accuracy, and ``log_state`` against
the optimizer's own step counter.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import proxgen_jax as pg
from proxgen_jax.train.loop import fit, masked_values
from proxgen_jax.train.optimizers import hidden_kernels

pytest.importorskip("sklearn")


def _digits(n=128):
    from proxgen_jax.train.data import load_digits_split

    return tuple(a[:n] for a in load_digits_split(seed=0))


def _numpy_mlp(params, x):
    h = np.asarray(x, np.float64).reshape(len(x), -1)
    for k in sorted(params["hidden"], key=int):
        layer = params["hidden"][k]
        h = np.maximum(h @ np.asarray(layer["kernel"], np.float64) + np.asarray(layer["bias"], np.float64), 0)
    return h @ np.asarray(params["head"]["kernel"], np.float64) + np.asarray(params["head"]["bias"], np.float64)


def test_masked_values_concatenates_exactly_the_selected_leaves():
    tree = {"a": {"kernel": jnp.arange(6.0).reshape(2, 3), "bias": jnp.full(3, 7.0)},
            "b": {"kernel": jnp.full((1, 2), -1.0)}}
    got = masked_values(tree, pg.kernels_only)
    np.testing.assert_array_equal(np.sort(got), np.sort(np.r_[np.arange(6.0), -1.0, -1.0]))
    assert masked_values(tree, lambda p: jax.tree.map(lambda _: False, p)).shape == (0,)


def test_hidden_kernels_selects_every_kernel_but_the_heads():
    params = {"hidden": {"0": {"kernel": jnp.ones((4, 3)), "bias": jnp.ones(3)},
                         "1": {"kernel": jnp.ones((3, 3)), "bias": jnp.ones(3)}},
              "head": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)}}
    flags = {jax.tree_util.keystr(p): bool(v) for p, v in jax.tree_util.tree_flatten_with_path(
        hidden_kernels(params))[0]}
    assert {k for k, v in flags.items() if v} == {"['hidden']['0']['kernel']", "['hidden']['1']['kernel']"}


def test_fit_records_what_its_final_parameters_show():
    data = _digits()
    x_tr, y_tr, x_te, y_te = data
    tx = pg.proxgen_adam(1e-2, pg.L1(), 1e-2, mask=pg.kernels_only)
    run = fit(tx, data, epochs=2, model="mlp", hidden=(16,), batch_size=32, regularizer=pg.L1(), lam=1e-2,
              log_state=lambda s: {"count": s[0].count})
    h = run.history
    assert h["epoch"] == [1, 2]
    # One log entry per step, read from the preconditioner's own counter: 1, 2, ..., 2 epochs × 4 steps.
    np.testing.assert_array_equal(h["per_step"]["count"], np.arange(1, 9))
    kernels = masked_values(run.params, pg.kernels_only)
    assert h["sparsity"][-1] == pytest.approx(np.mean(kernels == 0)) and h["sparsity"][-1] > 0
    logits = _numpy_mlp(run.params, x_te)
    np.testing.assert_allclose(np.asarray(run.logits(run.params, x_te), np.float64), logits, rtol=1e-4, atol=1e-4)
    assert h["test_acc"][-1] == pytest.approx(np.mean(np.argmax(logits, 1) == y_te))
    # F = f + λR on the training set, with f the mean cross-entropy of the final parameters (float64 NumPy).
    z = _numpy_mlp(run.params, x_tr)
    z = z - z.max(1, keepdims=True)
    f = np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(len(y_tr)), y_tr])
    assert h["objective"][-1] == pytest.approx(f + 1e-2 * np.abs(kernels).sum(), rel=1e-4)
