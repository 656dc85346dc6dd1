"""Step time of Adam + the group ℓ1,2 prox vs ``optax.adam`` on a ResNet-34-shaped parameter tree.

Also (``--newton``) the Newton-step study behind ``NEWTON_STEPS``: the worst relative objective gap after
k steps on random groups with ``a_i`` spread over 1e-8…1e8, against a float64 bisection on the radius.

    python benchmarks/group_step_time.py [--quick] [--rounds 7] [--newton] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from step_overhead import make_params, make_step, resnet34_shapes, time_step

from proxgen_jax._tree import kernels_only
from proxgen_jax.preconditioners import scale_by_adam_precond
from proxgen_jax.transforms.prox_group import output_unit_groups, prox_group_l12
from proxgen_jax.transforms.prox_transforms import prox_l1


def noisy_gradients(params, key):
    """Gaussian gradients with a scale per output unit (last axis) spread over two decades, as in training."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    out = []
    for p, k in zip(leaves, keys):
        k1, k2 = jax.random.split(k)
        scale = 10.0 ** jax.random.uniform(k1, p.shape[-1:], minval=-4.0, maxval=-2.0)
        out.append(scale * jax.random.normal(k2, p.shape))
    return jax.tree.unflatten(treedef, out)


def step_overhead(rounds, reps=3, width=64, noisy_steps=50):
    """Median over rounds of (ours / optax.adam), each round timing both back to back (noise hits both).

    The tree and the fixed gradients are ``step_overhead.py``'s. The group prox's cost depends on its data (the
    Newton steps stop once the radius is certified), so the metric group row is timed twice: from the state after
    one step with the fixed gradients (the state ``step_overhead.py`` times; ``a_i`` spread over ~5 decades in
    every filter) and after ``noisy_steps`` steps of noisy gradients.
    """
    params = make_params(resnet34_shapes(width=width), jax.random.PRNGKey(0))
    grads = jax.tree.map(lambda p: 0.01 * jnp.sin(1000.0 * p) + 1e-4, params)
    n = sum(p.size for p in jax.tree.leaves(params))
    rows = {
        "adam_precond + prox_l1(kernels_only)": optax.chain(
            scale_by_adam_precond(), prox_l1(1e-4, 1e-3, mask=kernels_only)),
        "adam_precond + prox_group_l12(output_unit_groups)": optax.chain(
            scale_by_adam_precond(), prox_group_l12(1e-4, 1e-3, group_axes=output_unit_groups)),
        "optax.adam + prox_group_l12 (Euclidean, closed form)": optax.chain(
            optax.scale_by_adam(), prox_group_l12(1e-4, 1e-3, group_axes=output_unit_groups)),
    }
    adam_step = make_step(optax.adam(1e-3))
    adam_state = adam_step(params, optax.adam(1e-3).init(params), grads)[1]
    out = {"n_params": int(n), "backend": jax.default_backend(), "cpus": os.cpu_count(), "rows": {}}
    for name, tx in rows.items():
        step = make_step(tx)
        states = {"after one step": step(params, tx.init(params), grads)[1]}
        if name.startswith("adam_precond + prox_group"):
            p, s = params, tx.init(params)
            for i in range(noisy_steps):
                p, s = step(p, s, noisy_gradients(params, jax.random.PRNGKey(i)))
            states[f"after {noisy_steps} noisy steps"] = s
        for label, state in states.items():
            ours, base = [], []
            for _ in range(rounds):
                base.append(time_step(adam_step, params, adam_state, grads, reps))
                ours.append(time_step(step, params, state, grads, reps))
            key = name if len(states) == 1 else f"{name} [{label}]"
            out["rows"][key] = dict(ratio=float(np.median(np.asarray(ours) / np.asarray(base))),
                                    ours_ms=1e3 * float(np.median(ours)), adam_ms=1e3 * float(np.median(base)))
    return out


def newton_study(groups=3000):
    from proxgen_jax.regularizers.group_l12 import _group_prox_diag

    rng = np.random.default_rng(0)

    def bisect(z, b):
        lo, hi = np.zeros(len(z)), np.linalg.norm(z, axis=1)
        for _ in range(1100):
            mid = 0.5 * (lo + hi)
            big = np.sum((z / (mid[:, None] + b)) ** 2, axis=1) > 1
            lo, hi = np.where(big, mid, lo), np.where(big, hi, mid)
        return 0.5 * (lo + hi)

    def objective(x, z, b):  # F/(λw) = ‖x‖ + Σ (x − z)²/(2b), b = λw·a
        return np.linalg.norm(x, axis=1) + 0.5 * np.sum((x - z) ** 2 / b, axis=1)

    result = {}
    for dt in (np.float32, np.float64):
        worst = np.zeros(9)
        with jax.enable_x64(dt == np.float64):
            for mode in ("uniform", "bimodal"):
                for n in (2, 3, 16, 256):
                    z = rng.standard_normal((groups, n)) * 10 ** rng.uniform(-3, 3, (groups, 1))
                    if mode == "uniform":
                        a = 10 ** rng.uniform(-8, 8, (groups, n))
                    else:
                        a = np.where(rng.random((groups, n)) < 0.5, 1e-8, 1e8)
                    kappa = np.concatenate([1 - 10 ** rng.uniform(-7, -1, groups // 2),
                                            10 ** rng.uniform(-12, -1, groups - groups // 2)])
                    mu = np.linalg.norm(z / a, axis=1) * kappa
                    a = a.astype(dt).astype(np.float64)
                    mu = mu.astype(dt).astype(np.float64)
                    b = mu[:, None] * a
                    z = z.astype(dt).astype(np.float64)
                    r = bisect(z, b)
                    f_ref = objective(z * (r[:, None] / (r[:, None] + b)), z, b)
                    for k in range(9):
                        x = np.asarray(_group_prox_diag(jnp.asarray(z, dt), jnp.asarray(a, dt),
                                                        jnp.asarray(mu[:, None], dt), (1,), k, adaptive=False),
                                       np.float64)
                        worst[k] = max(worst[k], float(np.max((objective(x, z, b) - f_ref) / f_ref)))
        result[np.dtype(dt).name] = [float(w) for w in worst]
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="ResNet-34 at width 16, one round, 5 noisy steps")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--newton", action="store_true", help="also run the Newton-step study")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rounds = args.rounds or (1 if args.quick else 7)
    res = step_overhead(rounds, reps=2 if args.quick else 5, width=16 if args.quick else 64,
                        noisy_steps=5 if args.quick else 50)
    out = {"step_overhead": res}
    print(f"ResNet-34-shaped tree: {res['n_params'] / 1e6:.2f}M float32 params, backend {res['backend']}, "
          f"{res['cpus']} CPUs; median of {rounds} rounds")
    print("| chain | ours ms | adam ms | ratio |\n|---|---|---|---|")
    for name, row in res["rows"].items():
        print(f"| {name} | {row['ours_ms']:.1f} | {row['adam_ms']:.1f} | {row['ratio']:.2f} |")
    if args.newton:
        out["newton_worst_relative_gap_after_k_steps"] = study = newton_study()
        for dtype, worst in study.items():
            print(f"Newton study, {dtype}: worst relative gap after k = 0..8 steps:",
                  " ".join(f"{w:.1e}" for w in worst))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "group_step_time.json"), "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
