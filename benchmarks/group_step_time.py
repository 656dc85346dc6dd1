"""Step time of Adam + the group ℓ1,2 prox vs ``optax.adam`` on a ResNet-34-shaped parameter tree.

Also (``--newton``) the Newton-step study behind ``NEWTON_STEPS``: the worst relative objective gap after
k steps on random groups with ``a_i`` spread over 1e-8…1e8, against a float64 bisection on the radius.

    python benchmarks/group_step_time.py [--rounds 5] [--newton] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from proxgen_jax.preconditioners import scale_by_adam_precond
from proxgen_jax.transforms.masks import kernels_only
from proxgen_jax.transforms.prox_group import output_unit_groups, prox_group_l12
from proxgen_jax.transforms.prox_transforms import prox_l1


def resnet34_params(key=0):
    """Flax-like dict of ResNet-34 (ImageNet) parameters: conv kernels, BatchNorm scale/bias, the head."""
    rng = np.random.default_rng(key)
    params = {}

    def conv(name, k, cin, cout):
        params[name] = {"kernel": (rng.standard_normal((k, k, cin, cout)) * np.sqrt(2 / (k * k * cin))).astype(
            np.float32)}
        params[name + "_bn"] = {"scale": np.ones(cout, np.float32), "bias": np.zeros(cout, np.float32)}

    conv("stem", 7, 3, 64)
    cin = 64
    for stage, (cout, blocks) in enumerate([(64, 3), (128, 4), (256, 6), (512, 3)]):
        for blk in range(blocks):
            name = f"s{stage}b{blk}"
            conv(name + "_c1", 3, cin, cout)
            conv(name + "_c2", 3, cout, cout)
            if cin != cout:
                conv(name + "_down", 1, cin, cout)
            cin = cout
    params["head"] = {"kernel": (rng.standard_normal((512, 1000)) * 0.04).astype(np.float32),
                      "bias": np.zeros(1000, np.float32)}
    return jax.tree.map(jnp.asarray, params)


def make_step(tx, params, grads):
    @jax.jit
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    state = step(params, tx.init(params), grads)[1]  # compile, and leave the first step behind
    return step, state


def time_step(step, params, state, grads, reps):
    jax.block_until_ready(step(params, state, grads))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(step(params, state, grads))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


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


def step_overhead(rounds, reps=3):
    """Median over rounds of (ours / optax.adam), each round timing both back to back (noise hits both).

    The group prox's cost depends on its data (the Newton steps stop once the radius is certified), so each
    group row is timed twice: from the state after one step with the fixed gradients below (the same state as
    ``step_overhead.py``; ``a_i`` spread over ~5 decades in every filter) and after 50 steps of noisy gradients.
    """
    params = resnet34_params()
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
    adam_step, adam_state = make_step(optax.adam(1e-3), params, grads)
    out = {"n_params": int(n), "backend": jax.default_backend(), "cpus": os.cpu_count(), "rows": {}}
    for name, tx in rows.items():
        step, state = make_step(tx, params, grads)
        states = {"after one step": state}
        if "group_l12" in name and "Euclidean" not in name:
            p, s = params, tx.init(params)
            for i in range(50):
                p, s = step(p, s, noisy_gradients(params, jax.random.PRNGKey(i)))
            states["after 50 noisy steps"] = s
        for label, state in states.items():
            ours, base = [], []
            for _ in range(rounds):
                base.append(time_step(adam_step, params, adam_state, grads, reps))
                ours.append(time_step(step, params, state, grads, reps))
            key = name if len(states) == 1 else f"{name} [{label}]"
            out["rows"][key] = dict(ratio=float(np.median(np.asarray(ours) / np.asarray(base))),
                                    ours_ms=1e3 * float(np.median(ours)), adam_ms=1e3 * float(np.median(base)))
            print(key, out["rows"][key], flush=True)
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
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--newton", action="store_true", help="also run the Newton-step study")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    out = {"step_overhead": step_overhead(args.rounds)}
    if args.newton:
        out["newton_worst_relative_gap_after_k_steps"] = newton_study()
    print(json.dumps(out, indent=2))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "group_step_time.json"), "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
