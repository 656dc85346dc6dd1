"""Arithmetic cost of each row's fused optimizer step: nanoseconds per parameter, leaf in cache, one core.

``step_overhead.py`` times the real ResNet-34-shaped tree, where memory traffic and a shared machine move the ratios
by ±0.05 between runs. This script isolates what a prox adds to Adam's loop: one ``(n/512, 512)`` leaf small enough
for the L2 cache, the process pinned to one core (Linux), ``calls`` jitted steps per timing (best of ``repeats``),
and the per-call overhead removed by differencing two leaf sizes. Host noise still reaches one pinned core: runs of
the same code moved a row's excess by up to ±0.15 ns per parameter, so compare changes by alternating runs. On the
2-core machine of this project a row's excess over ``optax.adam`` here (ns per parameter) and its
``step_overhead.py`` ratio went together: ratio − 1 was
about a third of the excess.

Usage:
  python benchmarks/step_cycles.py [--quick] [--out DIR] [--only l1/2,scad]
"""

from __future__ import annotations

import os

if hasattr(os, "sched_setaffinity"):  # before jax starts its thread pool: every thread stays on this core
    os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})

import argparse
import platform
import time

import jax
import jax.numpy as jnp
import optax
from step_overhead import make_step, regularizer_rows, write_json

import proxgen_jax as pg

SIZES = (1 << 15, 1 << 17)  # float32 elements: 128 KiB and 512 KiB per array


def leaf(n: int) -> dict:
    p = 0.05 * jax.random.normal(jax.random.PRNGKey(0), (n // 512, 512), jnp.float32)
    return {"kernel": p}


def ns_per_param(tx, calls: int, repeats: int) -> float:
    """Best-of-``repeats`` time of ``calls`` steps, differenced over the two sizes, per parameter."""
    per_call = []
    for n in SIZES:
        params = leaf(n)
        grads = jax.tree.map(lambda p: 0.01 * jnp.sin(1000.0 * p) + 1e-4, params)
        step = make_step(tx)
        state = step(params, tx.init(params), grads)[1]  # past the first step (C_t ≈ |g|)
        jax.block_until_ready(step(params, state, grads))
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(calls):
                out = step(params, state, grads)
            jax.block_until_ready(out)
            best = min(best, (time.perf_counter() - t0) / calls)
        per_call.append(best)
    return 1e9 * (per_call[1] - per_call[0]) / (SIZES[1] - SIZES[0])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer calls and repeats")
    ap.add_argument("--out", default=None, help="directory for step_cycles.json")
    ap.add_argument("--only", default=None, help="comma-separated row names (default: every elementwise row)")
    args = ap.parse_args(argv)
    calls, repeats = (20, 3) if args.quick else (200, 9)
    lr, lam = 1e-3, 1e-4
    only = set(args.only.split(",")) if args.only else None

    adam_ns = ns_per_param(optax.adam(lr), calls, repeats)
    print(f"one ({SIZES[0] // 512}|{SIZES[1] // 512}, 512) float32 leaf, {jax.default_backend()}, pinned to one core; "
          f"best of {repeats} x {calls} calls, differenced")
    print(f"{'regularizer':16s} {'ns/param':>9s} {'excess':>8s} {'ratio':>7s}")
    print(f"{'optax.adam':16s} {adam_ns:9.3f} {0.0:8.3f} {1.0:7.3f}", flush=True)
    rows = []
    for name, reg, _target in regularizer_rows():
        if not isinstance(reg, pg.regularizers.Regularizer) or (only is not None and name not in only):
            continue  # the group row has its own benchmark (group_step_time.py)
        ns = ns_per_param(optax.chain(pg.scale_by_adam_precond(), pg.proximal_step(reg, lam, lr)), calls, repeats)
        rows.append(dict(regularizer=name, ns_per_param=ns, excess_ns=ns - adam_ns, ratio=ns / adam_ns))
        print(f"{name:16s} {ns:9.3f} {ns - adam_ns:8.3f} {ns / adam_ns:7.3f}", flush=True)

    result = dict(benchmark="step_cycles", quick=args.quick, sizes=list(SIZES), adam_ns_per_param=adam_ns,
                  backend=jax.default_backend(), jax=jax.__version__, machine=platform.machine(), rows=rows)
    write_json(args.out, "step_cycles", result)
    return result


if __name__ == "__main__":
    main()
