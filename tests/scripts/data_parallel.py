"""Data-parallel ProxGen training on 8 host CPU devices: ``jax.pmap`` and sharded ``jax.jit`` (FSDP-style).

Run by ``tests/test_data_parallel.py`` in a subprocess (the device count must be fixed before jax is
imported): ``python tests/scripts/data_parallel.py OUT_DIR``. Writes ``OUT_DIR/results.npz`` (final params and
losses per method) and ``OUT_DIR/checks.json`` (shardings, collectives); the test compares them with a
single-device run.
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import json  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import toy  # noqa: E402  (tests/scripts is on sys.path: it is this script's directory)

N = 8
COLLECTIVES = re.compile(r"\b(all-gather|all-reduce|reduce-scatter|collective-permute|all-to-all)\b")


def flat(tree) -> dict:
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def run_pmap(results, checks):
    """Replicated params and state, per-device batch shards, ``pmean``'d gradients."""
    tx = toy.make_tx()
    xs, ys = toy.batches()

    def step(params, state, x, y):
        loss, grads = jax.value_and_grad(toy.loss_fn)(params, x, y)
        grads = jax.lax.pmean(grads, "batch")
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, jax.lax.pmean(loss, "batch")

    pstep = jax.pmap(step, axis_name="batch")
    replicate = lambda t: jax.tree.map(lambda a: np.broadcast_to(np.asarray(a), (N,) + np.shape(a)), t)
    params0 = toy.init_params()
    params, state = replicate(params0), replicate(tx.init(params0))
    losses = []
    for x, y in zip(xs, ys):
        params, state, loss = pstep(params, state, x.reshape(N, -1, x.shape[-1]), y.reshape(N, -1, y.shape[-1]))
        losses.append(float(loss[0]))
    host = jax.tree.map(np.asarray, params)
    checks["pmap_replica_spread"] = max(float(np.max(np.abs(a - a[:1]))) for a in jax.tree.leaves(host))
    checks["pmap_state_replica_spread"] = max(
        float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(a[:1], np.float64))))
        for a in jax.tree.leaves(state))
    for k, v in flat(jax.tree.map(lambda a: a[0], host)).items():
        results[f"pmap{k}"] = v
    results["pmap/losses"] = np.asarray(losses)


def same_sharding(a, b) -> bool:
    """The same shard of the same array on every device (``P('x')`` and ``P('x', None)`` are the same)."""
    return a.sharding.is_equivalent_to(b.sharding, a.ndim) and a.sharding.mesh == b.sharding.mesh


def fsdp_spec(a) -> P:
    """First axis over the devices (``P("fsdp", None, ...)``) where it divides; replicated otherwise."""
    if np.ndim(a) and np.shape(a)[0] % N == 0:
        return P("fsdp", *([None] * (np.ndim(a) - 1)))
    return P()


def run_fsdp(results, checks, axis_type):
    """Params, gradients and optimizer state sharded along their first axis over 8 devices; batch too."""
    name = f"fsdp_{axis_type.name.lower()}"
    mesh = jax.make_mesh((N,), ("fsdp",), axis_types=(axis_type,))
    tx = toy.make_tx()
    xs, ys = toy.batches()
    params0 = toy.init_params()
    param_sh = jax.tree.map(lambda a: NamedSharding(mesh, fsdp_spec(a)), params0)
    data_sh = NamedSharding(mesh, P("fsdp", None))

    if axis_type == AxisType.Explicit:
        # Explicit sharding: the model gathers its weights itself (jax.sharding.reshard); gradients come back
        # sharded like the params by the transpose of that reshard.
        def loss(params, x, y):
            return toy.loss_fn(jax.tree.map(lambda a: jax.sharding.reshard(a, P()), params), x, y)
    else:
        loss = toy.loss_fn

    def step(params, state, x, y):
        value, grads = jax.value_and_grad(loss)(params, x, y)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, value

    with jax.set_mesh(mesh):
        params = jax.device_put(params0, param_sh)
        if axis_type == AxisType.Explicit:
            state = jax.jit(tx.init)(params)  # shardings travel with the types
        else:
            # Auto (GSPMD): zeros_like inside jit does not inherit a sharding; give the state's explicitly.
            abstract = jax.eval_shape(tx.init, params0)
            state_sh = optax.tree_map_params(tx, lambda _, s: s, abstract, param_sh,
                                             transform_non_params=lambda _: NamedSharding(mesh, P()))
            state = jax.jit(tx.init, out_shardings=state_sh)(params)
        in_leaves = jax.tree.leaves((params, state))
        in_spec = [str(a.sharding.spec) for a in in_leaves]

        # The optimizer update alone, on sharded grads/state/params: no communication at all.
        grads_like = jax.tree.map(lambda a: a * 0.5, params)
        hlo = jax.jit(tx.update).lower(grads_like, state, params).compile().as_text()
        checks[f"{name}_update_collectives"] = sorted(set(COLLECTIVES.findall(hlo)))
        upd, st1 = jax.jit(tx.update)(grads_like, state, params)
        checks[f"{name}_update_keeps_sharding"] = [
            same_sharding(a, b) for a, b in zip(jax.tree.leaves((upd, st1)), jax.tree.leaves((params, state)))]

        jstep = jax.jit(step)
        losses = []
        for x, y in zip(xs, ys):
            x, y = jax.device_put(x, data_sh), jax.device_put(y, data_sh)
            params, state, value = jstep(params, state, x, y)
            losses.append(float(value))
        out_sh = [a.sharding for a in jax.tree.leaves((params, state))]
        checks[f"{name}_in_specs"] = in_spec
        checks[f"{name}_out_specs"] = [str(s.spec) for s in out_sh]
        checks[f"{name}_step_keeps_sharding"] = [
            same_sharding(a, b) for a, b in zip(jax.tree.leaves((params, state)), in_leaves)]
        checks[f"{name}_sharded_leaves"] = sum(len(set(s.device_set)) == N and not s.is_fully_replicated
                                               for s in out_sh)
    for k, v in flat(params).items():
        results[f"{name}{k}"] = v
    results[f"{name}/losses"] = np.asarray(losses)


def main(out_dir: str) -> None:
    assert jax.device_count() == N, jax.devices()
    results, checks = {}, {"device_count": jax.device_count()}
    run_pmap(results, checks)
    run_fsdp(results, checks, AxisType.Auto)
    run_fsdp(results, checks, AxisType.Explicit)
    np.savez(os.path.join(out_dir, "results.npz"), **results)
    with open(os.path.join(out_dir, "checks.json"), "w") as f:
        json.dump(checks, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
