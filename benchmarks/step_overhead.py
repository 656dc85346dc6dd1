"""Step time of ``optax.chain(scale_by_adam_precond(), prox_*)`` ÷ ``optax.adam``, jitted, side by side.

The parameter tree has ResNet-34's shapes (CIFAR-10 head, ~21.3M float32 parameters): conv kernels (h, w, in, out),
BatchNorm scales/biases, the final Dense. Every regulariser row is timed interleaved with optax.adam in the same run
(median of repeated rounds), so machine noise hits both sides alike. The state-bytes column compares optimizer state
sizes. Targets (issue 2): ≤ 1.05 for ℓ0/ℓ1, ≤ 1.10 for the others; ≤ 1.30 for group ℓ1,2.

Usage:
  python benchmarks/step_overhead.py [--quick] [--out DIR] [--rounds N] [--only l1/2,l2/3]
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

import proxgen_jax as pg


def resnet34_shapes(num_classes: int = 10, width: int = 64) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of a CIFAR-style ResNet-34 (BasicBlocks [3, 4, 6, 3])."""
    shapes = {"stem/conv/kernel": (3, 3, 3, width), "stem/bn/scale": (width,), "stem/bn/bias": (width,)}
    cin = width
    for stage, (blocks, mult) in enumerate(zip((3, 4, 6, 3), (1, 2, 4, 8))):
        cout = width * mult
        for b in range(blocks):
            pre = f"stage{stage}/block{b}"
            shapes[f"{pre}/conv1/kernel"] = (3, 3, cin, cout)
            shapes[f"{pre}/bn1/scale"] = (cout,)
            shapes[f"{pre}/bn1/bias"] = (cout,)
            shapes[f"{pre}/conv2/kernel"] = (3, 3, cout, cout)
            shapes[f"{pre}/bn2/scale"] = (cout,)
            shapes[f"{pre}/bn2/bias"] = (cout,)
            if cin != cout:
                shapes[f"{pre}/shortcut/kernel"] = (1, 1, cin, cout)
            cin = cout
    shapes["head/kernel"] = (cin, num_classes)
    shapes["head/bias"] = (num_classes,)
    return shapes


def make_params(shapes, key):
    params = {}
    for i, (name, shape) in enumerate(sorted(shapes.items())):
        params[name] = 0.05 * jax.random.normal(jax.random.fold_in(key, i), shape, jnp.float32)
    return params


def regularizer_rows() -> list[tuple[str, object, float]]:
    """(name, regularizer — or a per-leaf callable ``(path, leaf) -> Regularizer | None`` —, target ratio)."""
    R = pg.regularizers
    rows = [
        ("l0", R.L0(), 1.05),
        ("l1", R.L1(), 1.05),
        ("l1/2", R.Lq(0.5), 1.10),
        ("l2/3", R.Lq(2 / 3), 1.10),
        ("lq(q=0.3)", R.Lq(0.3), 1.10),
        ("mcp", R.MCP(3.0), 1.10),
        ("scad", R.SCAD(3.7), 1.10),
        ("binary(q=1)", R.binary(1.0), 1.10),
        ("binary(q=1/2)", R.binary(0.5), 1.10),
    ]
    # Group ℓ1,2: one group per output filter / neuron of every conv and Dense kernel; 1-D leaves plain Adam.
    from proxgen_jax.regularizers.group_l12 import GroupL12  # noqa: PLC0415
    from proxgen_jax.transforms.prox_group import output_unit_groups  # noqa: PLC0415

    def group(path, leaf):
        axes = output_unit_groups(path, leaf)
        return None if axes is None else GroupL12(group_axes=axes)

    rows.append(("group-l12", group, 1.30))
    return rows


def tree_bytes(tree) -> int:
    return int(sum(np.dtype(x.dtype).itemsize * x.size for x in jax.tree.leaves(tree)))


def write_json(out_dir: str | None, name: str, result: dict) -> None:
    """``result`` as ``out_dir/name.json`` (nothing when ``out_dir`` is None)."""
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
            json.dump(result, f, indent=2)


def make_step(tx):
    @jax.jit
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state
    return step


def time_step(step, params, state, grads, reps: int) -> float:
    out = step(params, state, grads)
    jax.block_until_ready(out)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = step(params, state, grads)
        jax.block_until_ready(out)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="ResNet-34 at width 16 (~1.3M params), few rounds")
    ap.add_argument("--out", default=None, help="directory for step_overhead.json")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--only", default=None, help="comma-separated row names to run (default: all)")
    args = ap.parse_args(argv)

    width = 16 if args.quick else 64
    rounds = args.rounds or (3 if args.quick else 15)
    reps = 3 if args.quick else 5
    params = make_params(resnet34_shapes(width=width), jax.random.PRNGKey(0))
    grads = jax.tree.map(lambda p: 0.01 * jnp.sin(1000.0 * p) + 1e-4, params)
    n = sum(x.size for x in jax.tree.leaves(params))
    lr, lam = 1e-3, 1e-4

    adam = optax.adam(lr)
    adam_state = adam.init(params)
    # Warm the state so the preconditioner is not in its first step (C_t ≈ |g|).
    adam_step = make_step(adam)
    base_state = adam_step(params, adam_state, grads)[1]

    rows = []
    print(f"ResNet-34-shaped tree: {n / 1e6:.2f}M float32 params, backend {jax.default_backend()}, "
          f"{os.cpu_count()} CPUs; median of {rounds} rounds x {reps} reps")
    print(f"{'regularizer':16s} {'ours ms':>9s} {'adam ms':>9s} {'ratio':>7s} {'target':>7s} {'state bytes ratio':>18s}")
    only = set(args.only.split(",")) if args.only else None
    for name, reg, target in regularizer_rows():
        if only is not None and name not in only:
            continue
        tx = optax.chain(pg.scale_by_adam_precond(), pg.proximal_step(reg, lam, lr))
        state = tx.init(params)
        step = make_step(tx)
        state = step(params, state, grads)[1]
        ours_t, adam_t = [], []
        for _ in range(rounds):
            adam_t.append(time_step(adam_step, params, base_state, grads, reps))
            ours_t.append(time_step(step, params, state, grads, reps))
        ours, base = float(np.median(ours_t)), float(np.median(adam_t))
        ratio = float(np.median(np.asarray(ours_t) / np.asarray(adam_t)))
        bytes_ratio = tree_bytes(state) / tree_bytes(base_state)
        rows.append(dict(regularizer=name, ours_ms=1e3 * ours, adam_ms=1e3 * base, ratio=ratio, target=target,
                         meets_target=ratio <= target, state_bytes=tree_bytes(state),
                         adam_state_bytes=tree_bytes(base_state), state_bytes_ratio=bytes_ratio))
        print(f"{name:16s} {1e3 * ours:9.2f} {1e3 * base:9.2f} {ratio:7.3f} {target:7.2f} {bytes_ratio:18.3f}", flush=True)

    result = dict(benchmark="step_overhead", quick=args.quick, params=int(n), backend=jax.default_backend(),
                  jax=jax.__version__, optax=optax.__version__, machine=platform.machine(), cpus=os.cpu_count(),
                  rows=rows)
    write_json(args.out, "step_overhead", result)
    return result


if __name__ == "__main__":
    main()
