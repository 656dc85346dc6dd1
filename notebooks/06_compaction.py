# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Compaction: from zero filters to a smaller, faster network
#
# Group sparsity zeroes whole filters, but the zeros stay inside dense arrays: same shapes, same FLOPs, same
# latency. `pg.compact(model, example_input)` builds the physically smaller Flax nnx module — the same classes,
# fewer filters — after reading from the traced forward pass (the jaxpr) which units are tied together, and checks
# that its outputs equal the original's. A zero filter still emits a constant (`relu(bias)`); it goes when that
# constant is 0 or folds exactly into the next layer's bias, and stays when it feeds a zero-padded 3×3 conv.
#
# 1. train the digits CNN with a filter budget (`pg.prox_sparsity(s, group_axes=pg.output_unit_groups)`) and with
#    the group lasso (`pg.prox_group_l12`);
# 2. `pg.compaction_report`: per layer filters, parameters and FLOPs before/after;
# 3. accuracy and jitted CPU latency, dense against compact;
# 4. exporting sparse and quantised kernels bit for bit (`pg.export_nm`, `pg.pack_quantized`).

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
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

import proxgen_jax as pg

plt.rcParams.update({"figure.dpi": 72, "axes.grid": True, "grid.alpha": 0.3})
print(f"jax {jax.__version__} | backend {jax.default_backend()} | devices {jax.devices()} | QUICK = {QUICK}")

# %%
from proxgen_jax.train.cli import trained_model
from proxgen_jax.train.data import load_digits_split
from proxgen_jax.train.loop import fit

DATA = load_digits_split(seed=0)  # 8×8 digits, (N, 8, 8, 1): 1347 training / 450 test images
if QUICK:
    DATA = tuple(a[:256] for a in DATA)
x_tr, y_tr, x_te, y_te = DATA
LR, EPOCHS = 3e-3, (2 if QUICK else 15)
STEPS = (len(x_tr) // 64) * EPOCHS


def conv_kernels(params):
    """The conv kernels (4-D leaves): one group per output filter; the classifier and the biases stay free."""
    return jax.tree.map(lambda a: np.ndim(a) == 4, params)


# %% [markdown]
# ## 1. Two ways to zero filters
# The **filter budget** projects every step, exactly in Adam's metric, onto "at most ⌊(1−s)·n⌋ nonzero filters per
# conv kernel" (s ramped from 0 to 0.6 over the first half of training). The **group lasso** penalises
# λ Σ_filters ‖W_f‖₂ and lets the step decide how many filters vanish.

# %%
budget = pg.prox_sparsity(pg.sparsity_schedule(0.6, begin_step=0, end_step=STEPS // 2), LR,
                          group_axes=pg.output_unit_groups, mask=conv_kernels)
group = pg.prox_group_l12(0.1, LR, group_axes=pg.output_unit_groups, mask=conv_kernels)
runs = {"filter budget s=0.6": optax.chain(pg.scale_by_adam_precond(), budget),
        "group ℓ1,2 λ=0.1": optax.chain(pg.scale_by_adam_precond(), group)}
models = {}
for name, tx in runs.items():
    run = fit(tx, DATA, epochs=EPOCHS, model="cnn", mask=conv_kernels)
    models[name] = trained_model(run, DATA)  # the trained nnx module (checked against the loop's own logits)
    print(f"{name:20s} test accuracy {run.history['final']['test_acc']:.3f}, "
          f"zero filters {100 * run.history['final']['group_sparsity']:.0f} %")

# %% [markdown]
# ## 2. Compact and report
# `compaction_report` compacts (as `compact` does), verifies the outputs on the example input and lists, per
# layer, the filters kept, parameters and FLOPs per example. "dead units kept" names why a zero filter had to stay.

# %%
reports = {name: pg.compaction_report(m, jnp.asarray(x_te[:8])) for name, m in models.items()}
for name, rep in reports.items():
    print(f"\n{name}:\n{rep}\nmax relative output difference {rep.totals['output_rel_error']:.1e}")

# %%
# The compacted model computes the same logits on the whole test set, in its own (smaller) shapes.
for name, rep in reports.items():
    dense, small = models[name], rep.model
    a, b = np.asarray(dense(jnp.asarray(x_te))), np.asarray(small(jnp.asarray(x_te)))
    err = np.max(np.abs(a - b)) / np.max(np.abs(a))
    assert err <= 1e-5 and type(small) is type(dense), err
    assert rep.totals["params_after"] <= rep.totals["params_before"]
    print(f"{name:20s} convs {[c.kernel.shape[-1] for c in dense.convs]} → {[c.kernel.shape[-1] for c in small.convs]}"
          f", test logits equal to {err:.1e}")

# %% [markdown]
# ## 3. Accuracy and latency
# Median CPU time of a jitted eval-mode forward pass, dense and compact calls interleaved. At this size the CPU
# time does **not** follow the FLOPs: XLA's CPU convolutions run odd widths (12, 9, 15 filters) much slower per
# FLOP than multiples of 8, so the exact compaction is often no faster, or slower, at batch 256
# (`benchmarks/compaction.py` measures 0.7–1.0× for 3–5× fewer FLOPs). `compact(..., multiple_of=8)` keeps a few
# removable filters so every width is a multiple of 8 — still exact —, which brings the CNN back to about parity
# and made the small ResNet up to 1.15× faster in the benchmark. The win of compaction here is size and FLOPs.

# %%
from proxgen_jax.compaction.measure import compare

REPEATS = 5 if QUICK else 40
results = {name: compare(models[name], rep.model, x_te, y_te, batch_sizes=(1, 256), repeats=REPEATS)
           for name, rep in reports.items()}
name8 = "filter budget s=0.6"
small8 = pg.compact(models[name8], jnp.asarray(x_te[:8]), multiple_of=8)
results[name8 + ", widths ×8"] = compare(models[name8], small8, x_te, y_te, batch_sizes=(1, 256), repeats=REPEATS)
print(f"{name8}, multiple_of=8: convs {[c.kernel.shape[-1] for c in small8.convs]}")
for name, r in results.items():
    assert r["acc_dense"] == r["acc_small"]  # nothing is lost
    lat = ", ".join(f"batch {b}: {v['dense_cpu_ms']:.3f} → {v['small_cpu_ms']:.3f} ms"
                    for b, v in r["latency"].items())
    print(f"{name:32s} accuracy {r['acc_dense']:.3f} = {r['acc_small']:.3f}; CPU time per call {lat}")

fig, ax = plt.subplots(1, 2, figsize=(12, 3.4))
names = list(results)
for k, b in enumerate((1, 256)):
    d = [results[n]["latency"][b]["dense_cpu_ms"] for n in names]
    s = [results[n]["latency"][b]["small_cpu_ms"] for n in names]
    xs = np.arange(len(names))
    ax[k].bar(xs - 0.2, d, 0.4, label="dense")
    ax[k].bar(xs + 0.2, s, 0.4, label="compact")
    ax[k].set_xticks(xs, [n.replace(", ", ",\n") for n in names], fontsize=8)
    ax[k].set_ylabel("CPU ms per call (median)")
    ax[k].set_title(f"jitted CPU forward, batch {b}")
ax[0].legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 4. Export: N:M and quantised kernels, bit for bit
# `pg.export_nm` stores a 2:4 kernel as its kept values plus the 2-bit-per-value metadata of sparse tensor cores;
# `pg.pack_quantized` stores a binary kernel at 1 bit per weight plus one scale per channel. `pg.unpack` gives
# back the trained weights exactly, and `pg.save_export` / `pg.restore_export` round-trip through Orbax.

# %%
import tempfile

from proxgen_jax.compaction.bits import bits_equal

head = np.asarray(models["filter budget s=0.6"].head.kernel[...])        # (512, 10): (in, out)
blocks = head.T.reshape(10, -1, 4)                                       # blocks of 4 along the input axis
drop = np.argsort(np.abs(blocks), axis=-1)[..., :2]                      # the 2 smallest of each block
nm = blocks.copy()
np.put_along_axis(nm, drop, 0.0, axis=-1)
nm = nm.reshape(10, -1).T.copy()                                          # a 2:4 kernel (what pg.prox_nm trains)
binary = np.asarray(pg.quantize({"k": head}, pg.BINARY_LEVELS, scale="channel")["k"])
export = {"head 2:4": pg.export_nm(nm, 2, 4), "head binary": pg.pack_quantized(binary, "binary")}
path = os.path.join(tempfile.mkdtemp(), "export")
pg.save_export(path, export)
back = pg.restore_export(path)
assert bits_equal(pg.unpack(back["head 2:4"]), nm) and bits_equal(pg.unpack(back["head binary"]), binary)
print(pg.storage_report(back))
