# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Binary networks: revised ProxQuant, ProxQuant and BinaryConnect
#
# A binary network keeps its weights in $\{-1, +1\}$. Three ways to train one:
#
# * **BinaryConnect** (Courbariaux et al., 2015): real latent weights, the forward pass uses
#   $\operatorname{sign}(\theta)$, gradients pass straight through, latents are clipped to $[-1, 1]$ —
#   `proxgen_jax.baselines.binarize_params` and `clip_latent`;
# * **ProxQuant** (Bai et al., 2019): Adam, then the *Euclidean* prox of the W-shaped regularizer
#   $R(\theta) = \sum_i \operatorname{dist}(\theta_i, \{-1, 1\})$ with λ ramped up — `proxgen_jax.baselines.proxquant`;
# * **revised ProxQuant** (ProxGen, Table 2): the same regularizer, its prox taken in Adam's metric
#   $C_t+\delta I$ — `pg.revised_proxquant`.
#
# All three finish with a hard quantisation `pg.quantize(params, (-1, 1), mask)` (each weight to its nearest
# level). As in those papers, the first and the last layer stay in full precision (`binary_mask`; in this small
# CNN that leaves the middle 3×3×16×32 convolution, 4 608 weights, to binarise). The two
# proximal methods move weights by different amounts per unit of λ (ProxQuant by $\alpha_t\lambda_t$,
# ProxGen by $\alpha_t\lambda_t/(C_t+\delta)$), so each gets its own final λ, ramped linearly from 0.

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
import jax
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import nnx

import proxgen_jax as pg

plt.rcParams.update({"figure.dpi": 72, "axes.grid": True, "grid.alpha": 0.3})
print(f"jax {jax.__version__} | backend {jax.default_backend()} | devices {jax.devices()} | QUICK = {QUICK}")

# %%
from proxgen_jax.train.data import load_digits_split
from proxgen_jax.train.loop import fit, masked_values

# scikit-learn's 8×8 digits: 1347 training / 450 test images, (N, 8, 8, 1) in [0, 1]. `fit(tx, DATA, ...)` trains a
# fresh SmallCNN (conv 16 → conv 32 → pool → linear) or MLP with any optax transformation and records, per epoch,
# the training loss, the objective F = f + λR, test accuracy and the fraction of exactly-zero weights.
DATA = load_digits_split(seed=0)
if QUICK:
    DATA = tuple(a[:256] for a in DATA)
x_tr, y_tr, x_te, y_te = DATA

# %%
from proxgen_jax.baselines import binarize_params, clip_latent, proxquant
from proxgen_jax.train.models import SmallCNN
from proxgen_jax.train.optimizers import binary_mask

LR = 3e-3
EPOCHS = 2 if QUICK else 20
BATCH = 64
STEPS = EPOCHS * (len(x_tr) // BATCH)
LAM_REVISED, LAM_PROXQUANT = 3e-2, 3.0

mask = binary_mask  # kernels of every layer but the first conv and the head
p0 = nnx.to_pure_dict(nnx.state(SmallCNN(10, rngs=nnx.Rngs(0)), nnx.Param))
print({jax.tree_util.keystr(p): m for p, m in jax.tree_util.tree_flatten_with_path(mask(p0))[0]})


def quantize(p):
    """The final hard quantisation: every binarised weight to its nearest level in {−1, +1}."""
    return pg.quantize(p, (-1.0, 1.0), mask)


# Per epoch `fit` also records `quantized_fraction`: the fraction of the binarised weights already exactly at ±1
# (before the final rounding).
METHODS = {
    "revised ProxQuant": {"tx": pg.revised_proxquant(LR, q=1.0, lam=optax.linear_schedule(0.0, LAM_REVISED, STEPS),
                                                      mask=mask)},
    "ProxQuant": {"tx": proxquant(LR, lam_max=LAM_PROXQUANT, ramp_steps=STEPS, mask=mask)},
    "BinaryConnect": {"tx": optax.chain(optax.adam(LR), clip_latent(1.0, mask=mask)),
                      "forward": lambda p: binarize_params(p, mask)},
    "Adam, then quantize": {"tx": optax.adam(LR)},
}
runs = {}
for name, kw in METHODS.items():
    runs[name] = fit(kw["tx"], DATA, epochs=EPOCHS, batch_size=BATCH, forward=kw.get("forward"), finalize=quantize,
                     mask=mask)
    h = runs[name].history
    print(f"{name:20s} binary test accuracy {h['test_acc'][-1]:.3f}  "
          f"weights on ±1 before rounding {h['quantized_fraction'][-1]:6.1%}  {h['final']['time_s']:.1f} s")
full = fit(optax.adam(LR), DATA, epochs=EPOCHS, batch_size=BATCH).history
print(f"{'full precision Adam':20s} test accuracy {full['test_acc'][-1]:.3f}")


# %% [markdown]
# ## Before and after the final hard quantisation
# A method that has already driven its weights onto ±1 loses nothing when they are rounded.

# %%
print(f"{'method':20s} {'latent/forward':>14s} {'after quantize':>15s}")
for name, run in runs.items():
    fwd = METHODS[name].get("forward") or (lambda p: p)
    q = quantize(run.params)
    before, after = run.evaluate(fwd(run.params), x_te, y_te)[1], run.evaluate(q, x_te, y_te)[1]
    print(f"{name:20s} {before:14.3f} {after:15.3f}")
    for leaf, on, orig in zip(jax.tree.leaves(q), jax.tree.leaves(mask(q)), jax.tree.leaves(run.params)):
        if on:
            assert set(np.unique(np.asarray(leaf))) <= {-1.0, 1.0}
        else:
            np.testing.assert_array_equal(leaf, orig)  # full-precision layers are untouched

# %%
ep = np.arange(1, EPOCHS + 1)
fig, ax = plt.subplots(1, 3, figsize=(13, 3.2))
for name, run in runs.items():
    ax[0].plot(ep, run.history["test_acc"], "-o", ms=3, label=name)
    ax[1].plot(ep, run.history["quantized_fraction"], "-o", ms=3, label=name)
ax[0].axhline(full["test_acc"][-1], color="k", ls=":", lw=1, label="full precision")
ax[0].set_title("test accuracy of the binarised network")
ax[1].set_title("fraction of weights exactly at ±1")
for a in ax[:2]:
    a.set_xlabel("epoch")
ax[0].legend(fontsize=8)
bins = np.linspace(-1.05, 1.05, 85)
for name, run in runs.items():
    if name == "Adam, then quantize":
        continue
    w = masked_values(run.params, mask)
    ax[2].hist(w, bins=bins, histtype="step", lw=1.5, log=True, label=name)
ax[2].set_title("latent binarised-layer weights at the end")
ax[2].legend(fontsize=8)
fig.tight_layout()
plt.show()
