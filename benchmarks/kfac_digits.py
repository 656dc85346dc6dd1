"""Proximal KFAC vs ProxGen-Adam with ℓ1 on sklearn digits: objective per epoch and cost per step, side by side.

An MLP 64-128-64-10 (ReLU, Flax nnx) is trained on 1400 digits (the rest held out) with
``F(θ) = mean cross-entropy + λ‖W‖₁`` (kernels only):

* ``proxgen_adam``: ``pg.proxgen_adam(lr, L1(), λ, mask=kernels_only)`` (closed-form diagonal prox);
* ``proximal KFAC``: ``scale_by_kfac_precond`` → ``proximal_step_metric`` (inner monotone FISTA), statistics
  from ``kfac_value_and_grad``.

Both see the same mini-batches in the same order. Each epoch records the full-training-set objective, test
accuracy and exact-zero sparsity of the kernels. Step cost: after compilation, the two jitted train steps are
timed interleaved (median over rounds, ``block_until_ready``), so machine noise hits both alike.

Usage:
  python benchmarks/kfac_digits.py [--quick] [--out DIR] [--epochs N] [--lam L]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from sklearn.datasets import load_digits

import proxgen_jax as pg
from proxgen_jax.preconditioners.kfac_capture import kfac_value_and_grad
from proxgen_jax.regularizers import L1
from proxgen_jax.train.models import MLP


def loss_fn(model, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


def make_run(kind, args, sizes):
    model = MLP(sizes[0], hidden=sizes[1:-1], num_classes=sizes[-1], rngs=nnx.Rngs(args.seed))
    if kind == "proxgen_adam":
        tx = pg.proxgen_adam(args.adam_lr, L1(), args.lam, mask=pg.kernels_only)
        opt = nnx.Optimizer(model, tx, wrt=nnx.Param)

        @nnx.jit
        def step(model, opt, xb, yb):
            loss, grads = nnx.value_and_grad(loss_fn)(model, xb, yb)
            opt.update(model, grads)
            return loss
    else:
        tx = pg.proxgen_kfac(args.kfac_lr, L1(), args.lam, momentum=0.9, decay=0.95, damping=args.damping,
                             update_every=args.update_every, inner_steps=args.inner_steps, mask=pg.kernels_only)
        opt = nnx.Optimizer(model, tx, wrt=nnx.Param)

        @nnx.jit
        def step(model, opt, xb, yb):
            loss, grads, stats = kfac_value_and_grad(loss_fn)(model, xb, yb)
            opt.update(model, grads, kfac_stats=stats)
            return loss
    return model, opt, step


def evaluate(model, lam, xtr, ytr, xte, yte):
    params = nnx.state(model, nnx.Param)
    f = float(loss_fn(model, xtr, ytr) + pg.regularization_value(params, L1(), lam, pg.kernels_only))
    acc = float(np.mean(np.argmax(np.asarray(model(xte)), 1) == np.asarray(yte)))
    sp = float(pg.sparsity(params, pg.kernels_only)["total"])
    return f, acc, sp


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer epochs and timing rounds")
    ap.add_argument("--out", default=None, help="directory for kfac_digits.json and kfac_digits.png")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--lam", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--adam-lr", type=float, default=3e-3)
    ap.add_argument("--kfac-lr", type=float, default=0.1)
    ap.add_argument("--damping", type=float, default=1e-2)
    ap.add_argument("--update-every", type=int, default=5)
    ap.add_argument("--inner-steps", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    epochs = args.epochs or (6 if args.quick else 30)
    rounds = 5 if args.quick else 21

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    rng = np.random.default_rng(args.seed)
    perm = rng.permutation(len(x))
    x, y = x[perm], y[perm]
    xtr, ytr, xte, yte = (jnp.asarray(a) for a in (x[:1400], y[:1400], x[1400:], y[1400:]))
    sizes = (64, 128, 64, 10)

    runs = {k: make_run(k, args, sizes) for k in ("proxgen_adam", "proximal_kfac")}
    hist = {k: {"objective": [], "test_acc": [], "sparsity": []} for k in runs}
    for k, (model, _, _) in runs.items():
        f, acc, sp = evaluate(model, args.lam, xtr, ytr, xte, yte)
        hist[k]["objective"].append(f)
        hist[k]["test_acc"].append(acc)
        hist[k]["sparsity"].append(sp)
    nb = len(xtr) // args.batch
    for ep in range(epochs):
        order = rng.permutation(len(xtr))
        for i in range(nb):
            idx = order[i * args.batch:(i + 1) * args.batch]
            xb, yb = xtr[idx], ytr[idx]
            for model, opt, step in runs.values():
                step(model, opt, xb, yb)
        for k, (model, _, _) in runs.items():
            f, acc, sp = evaluate(model, args.lam, xtr, ytr, xte, yte)
            hist[k]["objective"].append(f)
            hist[k]["test_acc"].append(acc)
            hist[k]["sparsity"].append(sp)
        print(f"epoch {ep + 1:3d}  " + "  ".join(
            f"{k}: F={hist[k]['objective'][-1]:.4f} acc={hist[k]['test_acc'][-1]:.3f} "
            f"sparsity={hist[k]['sparsity'][-1]:.3f}" for k in runs), flush=True)

    # Interleaved step timing (compiled already).
    xb, yb = xtr[:args.batch], ytr[:args.batch]
    times = {k: [] for k in runs}
    for _ in range(rounds):
        for k, (model, opt, step) in runs.items():
            jax.block_until_ready(step(model, opt, xb, yb))
            t0 = time.perf_counter()
            for _ in range(10):
                out = step(model, opt, xb, yb)
            jax.block_until_ready(out)
            times[k].append((time.perf_counter() - t0) / 10 * 1e3)
    ms = {k: float(np.median(v)) for k, v in times.items()}
    print("ms/step (median): " + "  ".join(f"{k}={v:.3f}" for k, v in ms.items())
          + f"  ratio kfac/adam={ms['proximal_kfac'] / ms['proxgen_adam']:.2f}")

    result = {"args": vars(args), "epochs": epochs, "sizes": sizes, "history": hist, "ms_per_step": ms,
              "platform": platform.platform(), "jax": jax.__version__, "device": str(jax.devices()[0])}
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "kfac_digits.json"), "w") as fh:
            json.dump(result, fh, indent=1)
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
        for k in runs:
            ep_axis = np.arange(epochs + 1)
            axes[0].plot(ep_axis, hist[k]["objective"], label=f"{k} ({ms[k]:.2f} ms/step)")
            axes[1].plot(ep_axis, hist[k]["test_acc"], label=k)
            axes[2].plot(ep_axis, hist[k]["sparsity"], label=k)
        axes[0].set_yscale("log")
        for ax, t in zip(axes, ("objective f + λ‖W‖₁ (train)", "test accuracy", "kernel sparsity")):
            ax.set_title(t)
            ax.set_xlabel("epoch")
        axes[0].legend()
        fig.tight_layout()
        fig.savefig(os.path.join(args.out, "kfac_digits.png"), dpi=120)
        print(f"wrote {args.out}/kfac_digits.json and .png")


if __name__ == "__main__":
    main()
