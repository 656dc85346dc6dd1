# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # ProxGen quickstart: a sparse CNN in a Flax NNX training loop
#
# ProxGen (Yun, Lozano & Yang, *Adaptive Proximal Gradient Methods for Structured Neural Networks*, NeurIPS
# 2021) trains networks with a
# regularizer that is not smooth — ℓ0, ℓq, ℓ1, MCP, SCAD, quantisation — by taking the *exact* proximal step
# in the metric of an adaptive optimizer (Algorithm 1, Eq. 2):
#
# $$\theta_{t+1} = \operatorname{prox}^{C_t+\delta I}_{\alpha_t \lambda R}
#   \bigl(\theta_t - \alpha_t (C_t+\delta I)^{-1} m_t\bigr).$$
#
# With Adam's preconditioner $C_t = \sqrt{\hat v_t}$ and $R = \|\theta\|_{1/2}^{1/2}$ this is one line of optax:
#
# ```python
# tx = optax.chain(pg.scale_by_adam_precond(), pg.prox_lq(q=0.5))
# ```
#
# Weights become **exactly zero** during training — no pruning pass afterwards. This notebook trains a small
# CNN on scikit-learn's 8×8 digits with `nnx.Optimizer`, then looks at the sparsity of every layer.
# It runs on a CPU in about a minute; on a GPU/TPU runtime JAX uses the accelerator.

# %%
# Setup. Colab: set PROXGEN_GIT_URL to the repository's pip-installable git URL, e.g.
# "git+https://github.com/OWNER/REPO.git" (your fork or upstream), then Runtime > Run all. In a checkout leave it
# empty: if `proxgen_jax` is not importable, the folder above is installed (`pip install -e ..`).
PROXGEN_GIT_URL = ""

import importlib.util
import os
import subprocess
import sys

if importlib.util.find_spec("proxgen_jax") is None:
    assert PROXGEN_GIT_URL or os.path.isfile("../pyproject.toml"), "set PROXGEN_GIT_URL, or run from notebooks/"
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", PROXGEN_GIT_URL or "--editable=.."])
    sys.path.insert(0, os.path.abspath(".."))  # this kernel sees a new editable install only through its path
    importlib.invalidate_caches()
# Quick mode (PROXGEN_QUICK=1, how the tests run every notebook): the same code on less data and fewer steps.
QUICK = os.environ.get("PROXGEN_QUICK") == "1"

# %%
# %matplotlib inline
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import nnx

import proxgen_jax as pg

plt.rcParams.update({"figure.dpi": 72, "axes.grid": True, "grid.alpha": 0.3})
print(f"jax {jax.__version__} | backend {jax.default_backend()} | devices {jax.devices()} | QUICK = {QUICK}")

# %% [markdown]
# ## Data and model
# `load_digits_split` returns NumPy arrays `(N, 8, 8, 1)`; `SmallCNN` is a Flax NNX module (two 3×3 convs, a
# 2×2 max-pool and a linear head).

# %%
from proxgen_jax.train.data import batches, load_digits_split
from proxgen_jax.train.loop import masked_values
from proxgen_jax.train.models import SmallCNN

x_tr, y_tr, x_te, y_te = load_digits_split(seed=0)
if QUICK:
    x_tr, y_tr = x_tr[:256], y_tr[:256]
print("train", x_tr.shape, "test", x_te.shape)

model = SmallCNN(10, rngs=nnx.Rngs(0))
params = nnx.to_pure_dict(nnx.state(model, nnx.Param))  # a plain dict of arrays
for path, p in jax.tree_util.tree_flatten_with_path(params)[0]:
    print(f"{jax.tree_util.keystr(path):24s} {p.shape}")

# %% [markdown]
# ## The optimizer: Adam's preconditioner, then the exact ℓ½ prox
#
# * `scale_by_adam_precond()` emits the direction $m_t$ **and** the metric $C_t$ (instead of the finished Adam
#   step);
# * `prox_lq(q=0.5, lam=λ, learning_rate=α, mask=kernels_only)` takes the step and applies the closed-form ℓ½
#   prox in that metric, coordinate by coordinate. `kernels_only` regularises conv/dense kernels and leaves the
#   biases alone.
#
# `nnx.Optimizer(model, tx, wrt=nnx.Param)` wraps it as usual; `optimizer.update(model, grads)` passes the
# parameters to the prox.

# %%
LR, LAM = 3e-3, 1e-3
EPOCHS = 2 if QUICK else 20

tx = optax.chain(pg.scale_by_adam_precond(), pg.prox_lq(q=0.5, lam=LAM, learning_rate=LR, mask=pg.kernels_only))


def loss_fn(model, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


@nnx.jit
def train_step(model, optimizer, x, y):
    loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
    optimizer.update(model, grads)
    return loss


@nnx.jit
def accuracy(model, x, y):
    return jnp.mean(jnp.argmax(model(x), -1) == y)


def train(tx, epochs, seed=0):
    model = SmallCNN(10, rngs=nnx.Rngs(seed))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    rng = np.random.default_rng(seed)
    hist = {"loss": [], "acc": [], "sparsity": []}
    for _ in range(epochs):
        losses = [train_step(model, optimizer, xb, yb) for xb, yb in batches(x_tr, y_tr, 64, rng)]
        hist["loss"].append(float(np.mean(jax.device_get(losses))))
        hist["acc"].append(float(accuracy(model, x_te, y_te)))
        params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
        hist["sparsity"].append(float(pg.sparsity(params, pg.kernels_only)["total"]))
    return model, hist


t0 = time.perf_counter()
model, hist = train(tx, EPOCHS)
print(f"ProxGen ℓ½: {time.perf_counter() - t0:.1f} s, test accuracy {hist['acc'][-1]:.3f}, "
      f"kernel sparsity {hist['sparsity'][-1]:.1%}")
dense_model, dense_hist = train(optax.adam(LR), EPOCHS)
print(f"Adam (no regularizer): test accuracy {dense_hist['acc'][-1]:.3f}, "
      f"kernel sparsity {dense_hist['sparsity'][-1]:.1%}")

# %% [markdown]
# ## Sparsity per layer
#
# `pg.sparsity(params, mask)` returns the fraction of exactly-zero entries of every selected leaf and the total.
# The zeros are exact (`== 0`), and the biases — outside the mask — are untouched.

# %%
params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
per_layer = pg.sparsity(params, pg.kernels_only)
for name, frac in per_layer.items():
    print(f"{name:28s} {float(frac):6.1%}")

flat = {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
n_zero = {k: int((v == 0).sum()) for k, v in flat.items()}
print("exact zeros per leaf:", n_zero)
assert all(n_zero[k] == 0 for k in flat if "bias" in k), "biases are outside the mask"
assert float(per_layer["total"]) > 0, "the ℓ½ prox produces exact zeros"
assert dense_hist["sparsity"][-1] == 0.0, "plain Adam does not"

# %% [markdown]
# ## Curves and the learned weights
# Left: the training loss; middle: test accuracy; right: the fraction of zero kernel weights per epoch.
# Below, the head's weight matrix (white = exactly zero).

# %%
ep = np.arange(1, EPOCHS + 1)
fig, ax = plt.subplots(1, 3, figsize=(11, 3))
for h, label in ((hist, "ProxGen ℓ½"), (dense_hist, "Adam")):
    ax[0].plot(ep, h["loss"], label=label)
    ax[1].plot(ep, h["acc"], label=label)
    ax[2].plot(ep, h["sparsity"], label=label)
for a, t in zip(ax, ("train loss", "test accuracy", "kernel sparsity")):
    a.set_title(t)
    a.set_xlabel("epoch")
ax[0].legend()
fig.tight_layout()
plt.show()

head = flat[next(k for k in flat if "head" in k and "kernel" in k)]
fig, ax = plt.subplots(1, 2, figsize=(11, 2.6), gridspec_kw={"width_ratios": [3, 1]})
ax[0].imshow((head != 0).T, aspect="auto", cmap="Greys", interpolation="nearest")
ax[0].set_title(f"head kernel {head.shape}: non-zero entries in black ({(head == 0).mean():.0%} zero)")
ax[0].set_xlabel("input feature")
ax[0].set_ylabel("class")
ax[0].grid(False)
w = masked_values(params, pg.kernels_only)
ax[1].hist(w[w != 0], bins=60)
ax[1].set_title("non-zero kernel weights")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Where next
# * `02_sparse_training.ipynb` — ℓ0, ℓ½, ℓ⅔, ℓ1, MCP and SCAD, ProxGen against subgradient training;
# * `03_binary_networks.ipynb` — revised ProxQuant, ProxQuant and BinaryConnect;
# * `04_group_sparsity.ipynb` — pruning whole neurons, Granger causality, a target-sparsity controller;
# * `05_many_devices.ipynb` — the same training sharded over devices.
#
# Other preconditioners plug in the same way: `pg.scale_by_rmsprop_precond()`, `pg.scale_by_adagrad_precond()`,
# `pg.scale_by_sgd_precond(momentum)`; ready-made chains are `pg.proxgen_adam`, `pg.proxgen_sgd`, ….
