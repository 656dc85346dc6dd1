"""A tiny regression MLP shared by the subprocess scripts and the tests that compare against them.

Plain JAX (no Flax) so the multi-device scripts start fast. Everything is deterministic: the same parameters,
batches and optimizer in every process, so a single-device run is the reference for the distributed ones.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from proxgen_jax._tree import kernels_only
from proxgen_jax.preconditioners.adam import scale_by_adam_precond
from proxgen_jax.transforms.prox_transforms import prox_lq

D_IN, D_HIDDEN, D_OUT = 16, 32, 8
BATCH = 64  # divisible by 8 devices and by 2 processes x 2 devices
STEPS = 6
LAM, LR = 0.005, 0.02


def init_params(seed: int = 0) -> dict:
    """``{"dense0": {"kernel", "bias"}, "dense1": {...}}`` in float32, as NumPy arrays."""
    rng = np.random.default_rng(seed)
    return {
        "dense0": {"kernel": (rng.standard_normal((D_IN, D_HIDDEN)) / np.sqrt(D_IN)).astype(np.float32),
                   "bias": (0.1 * rng.standard_normal(D_HIDDEN)).astype(np.float32)},
        "dense1": {"kernel": (rng.standard_normal((D_HIDDEN, D_OUT)) / np.sqrt(D_HIDDEN)).astype(np.float32),
                   "bias": (0.1 * rng.standard_normal(D_OUT)).astype(np.float32)},
    }


def batches(steps: int = STEPS, batch: int = BATCH, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` of shapes ``(steps, batch, D_IN)`` and ``(steps, batch, D_OUT)``: a sparse linear teacher."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((D_IN, D_OUT)) * (rng.random((D_IN, D_OUT)) < 0.3)
    x = rng.standard_normal((steps, batch, D_IN))
    y = np.tanh(x @ w) + 0.05 * rng.standard_normal((steps, batch, D_OUT))
    return x.astype(np.float32), y.astype(np.float32)


def loss_fn(params, x, y):
    h = jnp.tanh(x @ params["dense0"]["kernel"] + params["dense0"]["bias"])
    pred = h @ params["dense1"]["kernel"] + params["dense1"]["bias"]
    return jnp.mean((pred - y) ** 2)


def make_tx() -> optax.GradientTransformation:
    """Proximal Adam with ℓ½ on the kernels, a scheduled α_t (so the prox keeps a ``ProximalStepState``)."""
    lr = optax.linear_schedule(LR, LR / 2, STEPS)
    return optax.chain(scale_by_adam_precond(), prox_lq(q=0.5, lam=LAM, learning_rate=lr, mask=kernels_only))


def train_step(tx, params, state, x, y):
    """One step with the gradient of the mean loss over the (global) batch."""
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss


def train_single_device(steps: int = STEPS) -> tuple[dict, list[float]]:
    """The reference: the whole batch on one device. Returns final params (NumPy) and the losses."""
    tx = make_tx()
    params = jax.tree.map(jnp.asarray, init_params())
    state = tx.init(params)
    xs, ys = batches(steps)
    step = jax.jit(lambda p, s, x, y: train_step(tx, p, s, x, y))
    losses = []
    for x, y in zip(xs, ys):
        params, state, loss = step(params, state, x, y)
        losses.append(float(loss))
    return jax.tree.map(np.asarray, params), losses
