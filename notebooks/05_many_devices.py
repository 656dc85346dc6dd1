# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Many devices: the same ProxGen training sharded over devices
#
# ProxGen's update is elementwise given the gradient (the prox acts coordinate by coordinate, or group by group),
# so data parallelism needs nothing special: average the gradients over the devices and every device applies
# the same step. Two ways in JAX:
#
# 1. **`jax.jit` with shardings** — a `Mesh` of the devices, the batch split over them
#    (`NamedSharding(mesh, P("data"))`), parameters and optimizer state replicated; XLA inserts the all-reduce;
# 2. **`jax.pmap`** — one replica per device, gradients averaged with `jax.lax.pmean`.
#
# Both are compared with a single-device run on the same global batches. On a CPU runtime the first cell asks XLA
# for 8 host devices (it must run before `jax` is imported; restart the runtime if it was). On a GPU/TPU runtime
# the real devices are used.

# %%
import os
import sys

FLAG = "--xla_force_host_platform_device_count=8"  # 8 CPU "devices"; no effect on GPU/TPU devices
if "jax" in sys.modules:
    print("jax is already imported: restart the runtime to get 8 CPU devices")
elif FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + FLAG).strip()

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

# %%
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from proxgen_jax.train.data import load_digits_split
from proxgen_jax.train.models import SmallCNN

# Full float32 matmuls (TPUs default to bfloat16 passes), so that the runs can be compared to rounding level.
jax.config.update("jax_default_matmul_precision", "highest")
devices = jax.devices()
N_DEV = len(devices)
mesh = Mesh(np.array(devices), ("data",))
GLOBAL_BATCH = 64 if 64 % N_DEV == 0 else 8 * N_DEV
STEPS = 12 if QUICK else 300
print(f"{N_DEV} devices, global batch {GLOBAL_BATCH} = {N_DEV} × {GLOBAL_BATCH // N_DEV}, {STEPS} steps")

x_tr, y_tr, x_te, y_te = load_digits_split(seed=0)
rng = np.random.default_rng(0)
batch_idx = [rng.choice(len(x_tr), GLOBAL_BATCH, replace=False) for _ in range(STEPS)]  # the same for all runs

graphdef, state = nnx.split(SmallCNN(10, rngs=nnx.Rngs(0)), nnx.Param)
params0 = nnx.to_pure_dict(state)
tx = optax.chain(pg.scale_by_adam_precond(), pg.prox_lq(q=0.5, lam=1e-3, learning_rate=3e-3, mask=pg.kernels_only))


def loss_fn(p, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(nnx.merge(graphdef, p)(x), y).mean()


def step(p, s, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(p, x, y)
    updates, s = tx.update(grads, s, p)
    return optax.apply_updates(p, updates), s, loss


def run(step_fn, params, opt_state, put_batch):
    """Trains for STEPS steps; returns the final params and state, the losses and ms per step."""
    losses, t0 = [], None
    for i, idx in enumerate(batch_idx):
        if i == 1:
            t0 = time.perf_counter()  # time after the first (compiling) step
        params, opt_state, loss = step_fn(params, opt_state, *put_batch(x_tr[idx], y_tr[idx]))
        # Wait for every step: on simulated CPU devices, queueing many collective steps can starve XLA's
        # thread pool (a rendezvous timeout); on real devices this costs little at this size.
        losses.append(float(np.mean(loss)))
    ms = 1e3 * (time.perf_counter() - t0) / max(len(batch_idx) - 1, 1)
    return {"params": params, "state": opt_state, "losses": np.asarray(losses), "ms": ms}


# %% [markdown]
# ## Reference: one device, the whole batch

# %%
dev0 = devices[0]
single_step = jax.jit(step)


def on_dev0(x, y):
    return jax.device_put(x, dev0), jax.device_put(y, dev0)


single = run(single_step, jax.device_put(params0, dev0), jax.device_put(tx.init(params0), dev0), on_dev0)
print(f"single device: final loss {single['losses'][-1]:.4f}, {single['ms']:.1f} ms/step")

# %% [markdown]
# ## 1. `jax.jit` over a mesh: batch sharded, parameters replicated

# %%
replicated = NamedSharding(mesh, P())
batch_sharded = NamedSharding(mesh, P("data"))
sharded_step = jax.jit(step, in_shardings=(replicated, replicated, batch_sharded, batch_sharded),
                       out_shardings=(replicated, replicated, replicated))


def on_mesh(x, y):
    return jax.device_put(x, batch_sharded), jax.device_put(y, batch_sharded)


xb = on_mesh(x_tr[batch_idx[0]], y_tr[batch_idx[0]])[0]
print("batch", xb.shape, "→ per-device shards", sorted({s.data.shape for s in xb.addressable_shards}),
      "on", len(xb.sharding.device_set), "devices")

sharded = run(sharded_step, jax.device_put(params0, replicated), jax.device_put(tx.init(params0), replicated),
              on_mesh)
leaf = jax.tree.leaves(sharded["params"])[0]
print(f"sharded jit: final loss {sharded['losses'][-1]:.4f}, {sharded['ms']:.1f} ms/step; params replicated:",
      leaf.sharding.is_fully_replicated)


# %% [markdown]
# ## 2. `jax.pmap`: one replica per device, `pmean` of the gradients

# %%
def pmap_step(p, s, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(p, x, y)
    grads, loss = jax.lax.pmean((grads, loss), axis_name="data")
    updates, s = tx.update(grads, s, p)
    return optax.apply_updates(p, updates), s, loss


def replicate(tree):
    """One copy per device along a new leading axis."""
    return jax.tree.map(lambda a: np.broadcast_to(np.asarray(a), (N_DEV, *np.shape(a))), tree)


def split(x, y):
    """The global batch as N_DEV per-device batches."""
    return x.reshape(N_DEV, -1, *x.shape[1:]), y.reshape(N_DEV, -1)


def first(tree):
    """Replica 0 of a replicated tree."""
    return jax.tree.map(lambda a: a[0], tree)


pmapped_step = jax.pmap(pmap_step, axis_name="data")
pmapped = run(pmapped_step, replicate(params0), replicate(tx.init(params0)), split)
spread = max(float(np.max(np.abs(np.asarray(a) - np.asarray(a)[:1]))) for a in jax.tree.leaves(pmapped["params"]))
print(f"pmap: final loss {pmapped['losses'][-1]:.4f}, {pmapped['ms']:.1f} ms/step; "
      f"max difference between replicas {spread:.1e}")
pmapped.update(params=first(pmapped["params"]), state=first(pmapped["state"]))


# %% [markdown]
# ## The three agree
# **One step** from the same parameters and optimizer state gives the same result up to float rounding (the
# gradient is summed in a different order by an all-reduce). **Whole runs** then drift apart slowly: the ℓ½ prox
# is discontinuous (a weight at the threshold jumps between 0 and a non-zero value) and training is chaotic, so
# rounding-level differences grow — as they do between two GPUs. Loss, sparsity and accuracy still agree.

# %%
def compare(a, b):
    """Largest |difference| and number of entries that are zero in one tree but not in the other."""
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    diff = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(la, lb))
    flips = sum(int(np.sum((np.asarray(x) == 0) != (np.asarray(y) == 0))) for x, y in zip(la, lb))
    return diff, flips


def one_step_each(params, opt_state, idx):
    x, y = x_tr[idx], y_tr[idx]
    ref = single_step(params, opt_state, *on_dev0(x, y))[0]
    sh = sharded_step(jax.device_put(params, replicated), jax.device_put(opt_state, replicated), *on_mesh(x, y))[0]
    pm = first(pmapped_step(replicate(params), replicate(opt_state), *split(x, y))[0])
    return {"sharded jit": compare(ref, sh), "pmap": compare(ref, pm)}


checks = {"the first step": one_step_each(params0, tx.init(params0), batch_idx[0]),
          "a step from the final single-device state": one_step_each(single["params"], single["state"],
                                                                     batch_idx[-1])}
for where, res in checks.items():
    for name, (diff, flips) in res.items():
        print(f"{where}, {name} vs one device: max |Δθ| = {diff:.1e}, zero/non-zero flips {flips}")
        assert diff < 1e-5 and flips == 0, (where, name, diff, flips)


@jax.jit
def accuracy(p):
    return jnp.mean(jnp.argmax(nnx.merge(graphdef, p)(x_te), -1) == y_te)


n_params = sum(np.size(v) for v in jax.tree.leaves(params0))
ref_sp, ref_acc = float(pg.sparsity(single["params"], pg.kernels_only)["total"]), float(accuracy(single["params"]))
print(f"\nafter {STEPS} steps: single device: kernel sparsity {ref_sp:.2%}, test accuracy {ref_acc:.3f}")
for name, r in (("sharded jit", sharded), ("pmap", pmapped)):
    diff, flips = compare(single["params"], r["params"])
    sp, acc = float(pg.sparsity(r["params"], pg.kernels_only)["total"]), float(accuracy(r["params"]))
    print(f"{name}: kernel sparsity {sp:.2%}, test accuracy {acc:.3f}; max |Δθ| = {diff:.1e}, flips {flips} of "
          f"{n_params}, max |Δloss| over the run {np.max(np.abs(r['losses'] - single['losses'])):.1e}")
    assert abs(sp - ref_sp) < 0.01 and abs(acc - ref_acc) < 0.02, (name, sp, acc)

plt.figure(figsize=(7, 3))
for name, r, ls in (("single device", single, "-"), ("sharded jit", sharded, "--"), ("pmap", pmapped, ":")):
    plt.plot(r["losses"], ls, label=f"{name} ({r['ms']:.1f} ms/step)")
plt.xlabel("step")
plt.ylabel("minibatch loss")
plt.yscale("log")
plt.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# On 8 simulated CPU devices (which share the machine's cores) the sharded runs are *slower* than one device: the
# point here is equality, not speed. On a multi-chip TPU/GPU runtime the same cells spread the batch over real
# chips. Sharding the parameters and optimizer state as well (FSDP-style, `NamedSharding(mesh, P("data", None))`
# on the first axis of every large leaf) also works with every ProxGen transformation — their updates are
# elementwise and need no communication; see `tests/scripts/data_parallel.py`.
