# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Sparse training: ProxGen against subgradient training
#
# The usual way to train with a sparsity penalty in a deep learning library is to add $\lambda R(\theta)$ to
# the loss and let autograd differentiate it: the optimizer then sees a *subgradient* of $R$. ProxGen instead
# takes the exact proximal step of $\alpha_t\lambda R$ in the optimizer's metric $C_t+\delta I$. The paper's
# Sec. 4 compares the two with Adam's preconditioner; this notebook repeats that comparison on a small CNN
# and the 8×8 digits, for six regularizers:
#
# | $R$ | prox in the metric $C_t+\delta I$ (per coordinate) |
# |---|---|
# | ℓ0 | hard thresholding at $\sqrt{2\alpha_t\lambda/(C_t+\delta)}$ |
# | ℓ½, ℓ⅔ | closed-form roots of a quartic / cubic |
# | ℓ1 | soft thresholding at $\alpha_t\lambda/(C_t+\delta)$ |
# | MCP, SCAD | firm thresholding, regime chosen per coordinate |
#
# The subgradient baseline is `subgradient_adam` (Adam on $g_t + \partial(\lambda R)(\theta_t)$), from
# `proxgen_jax.baselines`. For ℓ0 the subgradient is zero almost everywhere, so that baseline is plain Adam.
# λ is set per regularizer (the penalties have different scales); both methods use the same λ and α.

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

# %% [markdown]
# ## The runs
# `pg.proxgen_adam(α, R, λ, mask=kernels_only)` is `optax.chain(scale_by_adam_precond(), proximal_step(R, λ, α))`.

# %%
from proxgen_jax.baselines import subgradient_adam
from proxgen_jax.regularizers import L0, L1, MCP, SCAD, Lq

LR = 3e-3
EPOCHS = 2 if QUICK else 20
REGULARIZERS = {  # name: (R, λ)
    "ℓ0": (L0(), 1e-3),
    "ℓ½": (Lq(0.5), 1e-3),
    "ℓ⅔": (Lq(2 / 3), 1e-3),
    "ℓ1": (L1(), 2e-3),
    "MCP": (MCP(3.0), 1e-2),
    "SCAD": (SCAD(3.7), 1e-2),
}

runs, weights = {}, {}  # (R, method): the history of every epoch, the final parameters
dense = fit(optax.adam(LR), DATA, epochs=EPOCHS).history
print(f"{'Adam (no regularizer)':24s} acc {dense['test_acc'][-1]:.3f}  {dense['final']['time_s']:.1f} s")
for name, (reg, lam) in REGULARIZERS.items():
    for method, tx in (("ProxGen", pg.proxgen_adam(LR, reg, lam, mask=pg.kernels_only)),
                       ("subgradient", subgradient_adam(LR, reg, lam, mask=pg.kernels_only))):
        run = fit(tx, DATA, epochs=EPOCHS, regularizer=reg, lam=lam)
        h = runs[name, method] = run.history
        weights[name, method] = run.params
        print(f"{name:5s} {method:12s} λ={lam:g}  acc {h['test_acc'][-1]:.3f}  sparsity {h['sparsity'][-1]:6.1%}"
              f"  F {h['objective'][-1]:.4f}  {h['final']['time_s']:.1f} s")

# %% [markdown]
# ## Results
# Test accuracy, fraction of exactly-zero kernel weights and the final objective
# $F(\theta) = f(\theta) + \lambda R(\theta)$ on the training set (lower is better; it is what both methods
# minimise).

# %%
print(f"{'R':5s} {'λ':>7s} | {'ProxGen acc':>11s} {'sparsity':>9s} {'F':>8s} |"
      f" {'subgrad acc':>11s} {'sparsity':>9s} {'F':>8s}")
for name, (_, lam) in REGULARIZERS.items():
    p, s = runs[name, "ProxGen"], runs[name, "subgradient"]
    print(f"{name:5s} {lam:7.0e} | {p['test_acc'][-1]:11.3f} {p['sparsity'][-1]:9.1%} {p['objective'][-1]:8.4f} |"
          f" {s['test_acc'][-1]:11.3f} {s['sparsity'][-1]:9.1%} {s['objective'][-1]:8.4f}")
print(f"dense Adam accuracy: {dense['test_acc'][-1]:.3f}")

# Exact zeros come from the prox only: a subgradient step lands on 0.0 with probability ~0.
for name in REGULARIZERS:
    assert runs[name, "ProxGen"]["sparsity"][-1] > 0, name
    assert runs[name, "subgradient"]["sparsity"][-1] < 1e-3, name

# %%
ep = np.arange(1, EPOCHS + 1)
fig, axes = plt.subplots(2, 3, figsize=(12, 6))
for ax, (name, (_, lam)) in zip(axes.ravel(), REGULARIZERS.items()):
    ax.plot(ep, runs[name, "ProxGen"]["objective"], "-o", ms=3, label="ProxGen (Adam)")
    ax.plot(ep, runs[name, "subgradient"]["objective"], "--s", ms=3, label="subgradient (Adam)")
    ax.set_title(f"{name}, λ = {lam:g}")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
axes[0, 0].set_ylabel("F(θ) = f(θ) + λR(θ)")
axes[1, 0].set_ylabel("F(θ) = f(θ) + λR(θ)")
axes[0, 0].legend()
fig.suptitle("objective on the training set")
fig.tight_layout()
plt.show()

names = list(REGULARIZERS)
xs = np.arange(len(names))
fig, ax = plt.subplots(1, 2, figsize=(12, 3))
for off, method in ((-0.2, "ProxGen"), (0.2, "subgradient")):
    ax[0].bar(xs + off, [runs[n, method]["sparsity"][-1] for n in names], 0.4, label=method)
    ax[1].bar(xs + off, [runs[n, method]["test_acc"][-1] for n in names], 0.4, label=method)
ax[1].axhline(dense["test_acc"][-1], color="k", lw=1, ls=":", label="dense Adam")
ax[1].set_ylim(0.8, 1.0)
for a, t in zip(ax, ("fraction of zero kernel weights", "test accuracy")):
    a.set_xticks(xs, names)
    a.set_title(t)
ax[1].legend(loc="lower right")
fig.tight_layout()
plt.show()


# %% [markdown]
# ## What the weights look like
# ℓ½ with ProxGen leaves a spike at exactly zero and a gap around it (the ℓ½ prox jumps from 0 to a non-zero
# value); the subgradient version pushes small weights towards zero but does not land on it — its step
# $\lambda q|\theta|^{q-1}$ grows without bound near 0, so small weights hover around zero instead.

# %%
fig, ax = plt.subplots(1, 2, figsize=(12, 3), sharey=True)
for a, method in zip(ax, ("ProxGen", "subgradient")):
    w = masked_values(weights["ℓ½", method], pg.kernels_only)
    a.hist(w, bins=np.linspace(-0.3, 0.3, 121), log=True)
    a.set_title(f"ℓ½, {method}: {np.mean(w == 0):.1%} exactly zero")
    a.set_xlabel("kernel weight")
fig.tight_layout()
plt.show()

print("per-layer sparsity, ProxGen ℓ½:")
for k, v in pg.sparsity(weights["ℓ½", "ProxGen"], pg.kernels_only).items():
    print(f"  {k:26s} {float(v):6.1%}")
