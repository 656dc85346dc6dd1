"""ProxGen inside Flax training loops (nnx ``Optimizer`` and linen ``TrainState``) and common optax wrappers.

The chain under test is ``optax.chain(scale_by_adam_precond(), prox_lq(q=0.5, mask=kernels_only))``. Checks:
``kernels_only`` picks exactly the Conv/Dense kernels in nnx States (with and without ``Variable`` wrappers) and
in linen dicts; the first step equals a float64 NumPy Adam step followed by the brute-force prox oracle; a
short training run lowers the loss, zeroes kernel coordinates exactly and leaves every other leaf nonzero.
Then ``optax.clip_by_global_norm`` before the chain (and refused inside it). ``optax.MultiSteps``,
``optax.apply_if_finite``, one compilation with schedules and bfloat16 parameters are contracts of every
transformation: ``tests/test_contracts.py``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.training import train_state

from proxgen_jax._tree import kernels_only
from proxgen_jax.preconditioners.adam import scale_by_adam_precond
from proxgen_jax.preconditioners.preconditioned_updates import MisplacedPreconditionerOutput
from proxgen_jax.transforms.prox_transforms import prox_lq

from compile_counter import count_compiles
from oracles import brute_force_prox

VOCAB, LENGTH, FEATURES, BATCH = 12, 6, 8, 32
LR, LAM, EPS = 1e-2, 5e-3, 1e-8
KERNELS = {"conv", "head"}  # the modules whose kernel is regularised




def make_tx(lam=LAM, lr=LR):
    return optax.chain(scale_by_adam_precond(eps=EPS), prox_lq(q=0.5, lam=lam, learning_rate=lr, mask=kernels_only))


def data(seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, VOCAB, (BATCH, LENGTH))
    w = rng.standard_normal(VOCAB) * (rng.random(VOCAB) < 0.5)
    y = np.tanh(w[tokens].sum(1) / 2)
    return jnp.asarray(tokens, jnp.int32), jnp.asarray(y, jnp.float32)


def flat_paths(tree) -> dict:
    """``{"conv/kernel": leaf, ...}``: dict keys and attribute names only (drops nnx's ``.value``)."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
        out["/".join(n for n in names if n != "value")] = leaf
    return out


def oracle_first_step(params: dict, grads: dict, lr=LR, lam=LAM, eps=EPS) -> dict:
    """Step 1 of proximal Adam in float64: ``m̂ = g``, ``C+δ = |g|+ε``, then the ℓ½ prox by brute force."""
    out = {}
    for key, p in params.items():
        p64, g = np.asarray(p, np.float64), np.asarray(grads[key], np.float64)
        metric = np.abs(g) + eps
        z = p64 - lr * g / metric
        if key.split("/")[-1] == "kernel":
            x, _ = brute_force_prox("lq", z.ravel(), (lr / metric).ravel(), lam, q=0.5)
            out[key] = x.reshape(p.shape)
        else:
            out[key] = z
    return out


def assert_matches_oracle(new: dict, old: dict, grads: dict):
    expected = oracle_first_step(old, grads)
    assert new.keys() == expected.keys()
    assert 0 < np.sum(expected["conv/kernel"] == 0) < expected["conv/kernel"].size  # both prox branches occur
    for key, want in expected.items():
        got = np.asarray(new[key], np.float64)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=key)
        np.testing.assert_array_equal(got == 0, want == 0, err_msg=key)


def assert_sparsity_where_masked(params: dict):
    """Exact zeros in the conv kernel (the 8-weight head kernel may keep all), none in unmasked leaves."""
    for key, leaf in params.items():
        zeros = int(np.sum(np.asarray(leaf) == 0))
        if key.split("/")[0] in KERNELS and key.endswith("kernel"):
            assert zeros < leaf.size, (key, zeros)
            if key == "conv/kernel":
                assert 0.1 * leaf.size < zeros, (key, zeros)
        else:
            assert zeros == 0, (key, zeros)


# --------------------------------------------------------------------------------------------- nnx


class NnxNet(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.embed = nnx.Embed(VOCAB, FEATURES, rngs=rngs)
        self.conv = nnx.Conv(FEATURES, FEATURES, kernel_size=(3,), rngs=rngs)
        self.bn = nnx.BatchNorm(FEATURES, rngs=rngs)
        self.norm = nnx.LayerNorm(FEATURES, rngs=rngs)
        self.head = nnx.Linear(FEATURES, 1, rngs=rngs)

    def __call__(self, tokens):
        h = self.bn(nnx.relu(self.conv(self.embed(tokens))))
        return self.head(self.norm(h.mean(1)))[:, 0]


def nnx_loss(model, tokens, y):
    return jnp.mean((model(tokens) - y) ** 2)


def test_kernels_only_on_nnx_states():
    model = NnxNet(nnx.Rngs(0))
    wrapped = nnx.state(model, nnx.Param)  # what nnx.Optimizer hands to tx.init (Variables in the tree)
    pure = nnx.as_pure(wrapped)  # what nnx.Optimizer hands to tx.update
    for tree in (wrapped, pure):
        chosen = {k for k, v in flat_paths(kernels_only(tree)).items() if v}
        assert chosen == {"conv/kernel", "head/kernel"}
        assert set(flat_paths(tree)) == chosen | {"conv/bias", "head/bias", "bn/scale", "bn/bias", "norm/scale",
                                                  "norm/bias", "embed/embedding"}


def test_nnx_optimizer_loop():
    model = NnxNet(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, make_tx(), wrt=nnx.Param)
    tokens, y = data()
    traces = []

    @nnx.jit
    def train_step(model, optimizer, tokens, y):
        traces.append(1)
        loss, grads = nnx.value_and_grad(nnx_loss)(model, tokens, y)
        optimizer.update(model, grads)
        return loss

    # Step 1 against the float64 oracle.
    before = {k: np.asarray(v) for k, v in flat_paths(nnx.state(model, nnx.Param)).items()}
    grads = flat_paths(nnx.jit(nnx.grad(nnx_loss))(model, tokens, y))
    with count_compiles() as compiles:
        losses = [float(train_step(model, optimizer, tokens, y))]
        assert_matches_oracle(flat_paths(nnx.state(model, nnx.Param)), before, grads)
        losses += [float(train_step(model, optimizer, tokens, y)) for _ in range(29)]
    assert len(traces) == 1 and len(compiles) == 1  # one trace, one compilation for 30 steps
    assert losses[-1] < 0.3 * losses[0], losses
    assert int(optimizer.step[...]) == 30
    assert_sparsity_where_masked(flat_paths(nnx.state(model, nnx.Param)))


# ------------------------------------------------------------------------------------------- linen


class LinenNet(nn.Module):
    @nn.compact
    def __call__(self, tokens, train: bool = True):
        h = nn.Embed(VOCAB, FEATURES, name="embed")(tokens)
        h = nn.relu(nn.Conv(FEATURES, (3,), name="conv")(h))
        h = nn.BatchNorm(use_running_average=not train, name="bn")(h)
        return nn.Dense(1, name="head")(nn.LayerNorm(name="norm")(h.mean(1)))[:, 0]


class TrainState(train_state.TrainState):
    batch_stats: dict


def linen_setup():
    model = LinenNet()
    tokens, y = data()
    variables = model.init(jax.random.key(0), tokens)
    state = TrainState.create(apply_fn=model.apply, params=variables["params"], tx=make_tx(),
                              batch_stats=variables["batch_stats"])
    return state, tokens, y


def linen_grads(state, tokens, y):
    def loss_fn(params):
        pred, updates = state.apply_fn({"params": params, "batch_stats": state.batch_stats}, tokens,
                                       mutable=["batch_stats"])
        return jnp.mean((pred - y) ** 2), updates
    (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return loss, grads, updates["batch_stats"]


def test_kernels_only_on_linen_params():
    state, _, _ = linen_setup()
    chosen = {k for k, v in flat_paths(kernels_only(state.params)).items() if v}
    assert chosen == {"conv/kernel", "head/kernel"}
    assert len(flat_paths(state.params)) == 9


def test_linen_train_state_loop():
    state, tokens, y = linen_setup()
    traces = []

    @jax.jit
    def train_step(state, tokens, y):
        traces.append(1)
        loss, grads, batch_stats = linen_grads(state, tokens, y)
        return state.apply_gradients(grads=grads).replace(batch_stats=batch_stats), loss

    _, grads, _ = jax.jit(linen_grads)(state, tokens, y)
    before = {k: np.asarray(v) for k, v in flat_paths(state.params).items()}
    with count_compiles() as compiles:
        state, loss = train_step(state, tokens, y)
        assert_matches_oracle(flat_paths(state.params), before, flat_paths(grads))
        losses = [float(loss)]
        for _ in range(29):
            state, loss = train_step(state, tokens, y)
            losses.append(float(loss))
    # TrainState.create's `step=0` is a Python int, later a jax Array: two dispatch-cache entries, but the
    # same abstract signature, hence one trace and one compilation.
    assert len(traces) == 1 and len(compiles) == 1
    assert losses[-1] < 0.3 * losses[0], losses
    assert_sparsity_where_masked(flat_paths(state.params))


# ------------------------------------------------------------------------------------ gradient clipping


def small_problem(dtype=jnp.float32):
    rng = np.random.default_rng(3)
    params = {"dense": {"kernel": jnp.asarray(rng.standard_normal((6, 4)), dtype),
                        "bias": jnp.asarray(rng.standard_normal(4), dtype)}}
    x = jnp.asarray(rng.standard_normal((16, 6)), dtype)
    y = jnp.asarray(rng.standard_normal((16, 4)), dtype)

    def loss(p, x=x, y=y):
        return jnp.mean((x @ p["dense"]["kernel"] + p["dense"]["bias"] - y).astype(jnp.float32) ** 2)
    return params, loss, x, y


def run(tx, params, grads_seq):
    state = tx.init(params)
    update = jax.jit(tx.update)
    for g in grads_seq:
        updates, state = update(g, state, params)
        params = optax.apply_updates(params, updates)
    return params, state


def tree_allclose(a, b, **kw):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64), **kw)


def test_clip_before_preconditioner_and_refused_after():
    params, loss, _, _ = small_problem()
    g = jax.tree.map(lambda a: 100.0 * a, jax.grad(loss)(params))
    norm = float(optax.tree.norm(g))
    assert norm > 1.0
    clipped = jax.tree.map(lambda a: a / norm, g)
    got, _ = run(optax.chain(optax.clip_by_global_norm(1.0), make_tx(lam=0.05)), params, [g, g])
    want, _ = run(make_tx(lam=0.05), params, [clipped, clipped])
    tree_allclose(got, want, rtol=1e-6, atol=1e-7)
    # Between the preconditioner and the prox the direction would be changed without its metric: refused.
    wrong = optax.chain(scale_by_adam_precond(), optax.clip_by_global_norm(1e-3),
                        prox_lq(q=0.5, lam=0.05, learning_rate=LR))
    with pytest.raises(MisplacedPreconditionerOutput):
        run(wrong, params, [g])


