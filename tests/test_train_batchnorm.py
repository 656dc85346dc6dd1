"""``proxgen_jax.train.batchnorm`` and the loop's freeze phase (ProxQuant's protocol).

BatchNorm re-estimation is checked against the population statistics recomputed in float64 NumPy (and, for
several chunks, the size-weighted average of the chunks' own statistics); the fine-tune optimizer against
``optax.adam`` on the trainable leaves and exact zeros on the frozen ones; ``fit(..., freeze_epoch=...)`` by
the final weights (exactly on ±1 and equal to the sign of the weights at the freeze point).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import proxgen_jax as pg
from proxgen_jax.train.batchnorm import freeze_finetune_tx, make_batch_stats_fn, reestimate_batch_stats


class _LinBN(nnx.Module):
    def __init__(self, rngs):
        self.lin = nnx.Linear(3, 4, rngs=rngs)
        self.bn = nnx.BatchNorm(4, momentum=0.9, rngs=rngs)

    def __call__(self, x):
        return self.bn(self.lin(x))


def _split():
    m = _LinBN(nnx.Rngs(0))
    m.train()
    gdef, params, rest = nnx.split(m, nnx.Param, ...)
    return gdef, nnx.to_pure_dict(params), nnx.to_pure_dict(rest)


def _np_stats(params, x):
    z = np.asarray(x, np.float64) @ np.asarray(params["lin"]["kernel"], np.float64) + np.asarray(
        params["lin"]["bias"], np.float64)
    return z.mean(0), z.var(0)


@pytest.mark.parametrize("chunk", [64, 25])
def test_reestimated_statistics_are_the_size_weighted_chunk_statistics(chunk):
    gdef, params, rest = _split()
    x = np.random.default_rng(1).normal(2.0, 3.0, (64, 3)).astype(np.float32)
    got = reestimate_batch_stats(make_batch_stats_fn(gdef), params, rest, x, chunk)
    parts = [(len(x[i:i + chunk]), *_np_stats(params, x[i:i + chunk])) for i in range(0, len(x), chunk)]
    mean = sum(n * m for n, m, _ in parts) / len(x)
    var = sum(n * v for n, _, v in parts) / len(x)
    np.testing.assert_allclose(np.asarray(got["bn"]["mean"]), mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(got["bn"]["var"]), var, rtol=1e-4, atol=1e-5)
    if chunk >= len(x):  # one chunk: exactly the population statistics, whatever the old running values
        pm, pv = _np_stats(params, x)
        np.testing.assert_allclose(np.asarray(got["bn"]["var"]), pv, rtol=1e-4)
        np.testing.assert_allclose(np.asarray(got["bn"]["mean"]), pm, rtol=1e-5, atol=1e-5)


def test_reestimation_rejects_a_bad_chunk():
    gdef, params, rest = _split()
    with pytest.raises(ValueError, match="chunk"):
        reestimate_batch_stats(make_batch_stats_fn(gdef), params, rest, np.zeros((4, 3), np.float32), 0)


def test_finetune_tx_is_adam_on_the_trainable_leaves_and_zero_on_the_frozen():
    params = {"kernel": jnp.array([0.5, -1.0]), "bias": jnp.array([0.1, 0.2, 0.3])}
    frozen = {"kernel": True, "bias": False}
    grads = {"kernel": jnp.array([1.0, 2.0]), "bias": jnp.array([-1.0, 0.5, 3.0])}
    tx = freeze_finetune_tx(1e-2, frozen)
    state = tx.init(params)
    ref = optax.adam(1e-2)
    ref_state = ref.init(params["bias"])
    for _ in range(3):
        upd, state = tx.update(grads, state, params)
        ref_upd, ref_state = ref.update(grads["bias"], ref_state)
        np.testing.assert_array_equal(np.asarray(upd["kernel"]), 0.0)
        np.testing.assert_allclose(np.asarray(upd["bias"]), np.asarray(ref_upd), rtol=1e-6)
    # The frozen leaf carries no Adam moments.
    assert sum(np.size(a) for a in jax.tree.leaves(state)) == sum(np.size(a) for a in jax.tree.leaves(ref_state))
    with pytest.raises(ValueError, match="learning_rate"):
        freeze_finetune_tx(0.0, frozen)


def test_fit_freezes_the_quantised_weights_on_their_signs():
    pytest.importorskip("sklearn")
    from proxgen_jax.train.data import load_digits_split
    from proxgen_jax.train.loop import fit

    data = tuple(a[:256] for a in load_digits_split(seed=0))
    seen = {}

    def finalize(p):
        seen.setdefault("latent", p)  # first call: the end of epoch 1 = the freeze point
        return pg.quantize(p, (-1.0, 1.0), pg.kernels_only)

    tx = pg.revised_proxquant(1e-2, 1.0, 1e-3, mask=pg.kernels_only)
    run = fit(tx, data, epochs=3, model="mlp", hidden=(8,), batch_size=64, mask=pg.kernels_only,
              finalize=finalize, freeze_epoch=1)
    f = run.history["freeze"]
    assert f["epoch"] == 1 and 0.0 <= f["quantized_fraction"] <= 1.0
    k = np.asarray(run.params["hidden"][0]["kernel"])
    assert set(np.unique(k)) <= {-1.0, 1.0}
    latent = np.asarray(seen["latent"]["hidden"][0]["kernel"])
    np.testing.assert_array_equal(k, np.where(latent >= 0, 1.0, -1.0))
    # fine-tuning changed the biases but not one binary weight
    assert run.history["quantized_fraction"][1:] == [1.0, 1.0]
    with pytest.raises(ValueError, match="freeze_epoch"):
        fit(tx, data, epochs=2, model="mlp", hidden=(8,), freeze_epoch=3)
