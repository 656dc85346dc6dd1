"""One of several processes training the toy model together through ``jax.distributed`` (CPU collectives).

Run by ``tests/test_multiprocess.py``: ``python multiprocess_worker.py PROCESS_ID NUM_PROCESSES PORT OUT_DIR``.
Every process has 2 host CPU devices; the mesh spans all processes' devices. Parameters and optimizer state
are sharded FSDP-style over that global mesh, each process feeds only its own rows of every batch, and
``jax.jit`` averages the gradients across processes (the loss is the mean over the global batch). Process
``i`` writes ``OUT_DIR/process{i}.npz`` with the final params gathered to the host, and the losses.
"""

from __future__ import annotations

import os

LOCAL_DEVICES = 2
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + f" --xla_force_host_platform_device_count={LOCAL_DEVICES}")

import sys  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import toy  # noqa: E402


def main(process_id: int, num_processes: int, port: int, out_dir: str) -> None:
    jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=num_processes,
                               process_id=process_id, initialization_timeout=60, shutdown_timeout_seconds=30)
    n = jax.device_count()
    assert jax.process_count() == num_processes and n == num_processes * LOCAL_DEVICES, jax.devices()
    mesh = jax.make_mesh((n,), ("data",), axis_types=(AxisType.Auto,))
    spec = lambda a: P("data") if a.shape and a.shape[0] % n == 0 else P()
    tx = toy.make_tx()
    params0 = toy.init_params()
    xs, ys = toy.batches()
    param_sh = jax.tree.map(lambda a: NamedSharding(mesh, spec(a)), params0)
    data_sh = NamedSharding(mesh, P("data"))

    def to_global(a, sharding):
        # Only this process's shards are materialised (the callback is asked for addressable indices only).
        return jax.make_array_from_callback(a.shape, sharding, lambda index: a[index])

    with jax.set_mesh(mesh):
        params = jax.tree.map(to_global, params0, param_sh)
        abstract = jax.eval_shape(tx.init, params0)
        state_sh = optax.tree_map_params(tx, lambda _, s: s, abstract, param_sh,
                                         transform_non_params=lambda _: NamedSharding(mesh, P()))
        state = jax.jit(tx.init, out_shardings=state_sh)(params)
        step = jax.jit(lambda p, s, x, y: toy.train_step(tx, p, s, x, y),
                       out_shardings=(param_sh, state_sh, NamedSharding(mesh, P())))
        rows = sorted({idx[0].start or 0 for idx in data_sh.addressable_devices_indices_map(xs[0].shape).values()})
        losses = []
        for x, y in zip(xs, ys):
            params, state, loss = step(params, state, to_global(x, data_sh), to_global(y, data_sh))
            losses.append(float(np.asarray(loss.addressable_data(0))))
        local_param_elems = sum(sum(s.data.size for s in a.addressable_shards) for a in jax.tree.leaves(params))
        gathered = multihost_utils.process_allgather(params, tiled=True)
    flat = {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(gathered)[0]}
    np.savez(os.path.join(out_dir, f"process{process_id}.npz"), losses=np.asarray(losses),
             local_batch_rows=np.asarray(rows), local_param_elems=local_param_elems,
             total_param_elems=sum(a.size for a in jax.tree.leaves(params0)), **flat)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
