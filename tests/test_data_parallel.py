"""Data-parallel ProxGen on 8 host CPU devices (``jax.pmap`` and sharded ``jax.jit``) equals one device.

The 8-device run happens in a subprocess (``tests/scripts/data_parallel.py``): the device count is fixed when
jax is first imported, and this pytest process already has jax with one device. The reference is the same
training loop run here, on that one device, with the whole batch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

SCRIPTS = os.path.join(os.path.dirname(__file__), "scripts")
sys.path.insert(0, SCRIPTS)

import toy  # noqa: E402

# Under pytest-xdist (--dist loadgroup) the module-scoped fixture runs once, on one worker.
pytestmark = pytest.mark.xdist_group("data_parallel")

METHODS = ("pmap", "fsdp_auto", "fsdp_explicit")


@pytest.fixture(scope="module")
def distributed(tmp_path_factory):
    out = tmp_path_factory.mktemp("data_parallel")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run([sys.executable, os.path.join(SCRIPTS, "data_parallel.py"), str(out)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    results = dict(np.load(out / "results.npz"))
    with open(out / "checks.json") as f:
        checks = json.load(f)
    return results, checks


@pytest.fixture(scope="module")
def reference():
    params, losses = toy.train_single_device()
    flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    return flat, np.asarray(losses)


def test_ran_on_eight_devices(distributed):
    _, checks = distributed
    assert checks["device_count"] == 8


@pytest.mark.parametrize("method", METHODS)
def test_matches_single_device(distributed, reference, method):
    results, _ = distributed
    ref_params, ref_losses = reference
    np.testing.assert_allclose(results[f"{method}/losses"], ref_losses, rtol=1e-5, atol=1e-6)
    assert ref_losses[-1] < 0.7 * ref_losses[0]  # it trains
    for key, ref in ref_params.items():
        got = results[f"{method}{key}"]
        assert got.dtype == ref.dtype and got.shape == ref.shape, key
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6, err_msg=f"{method}{key}")
        # The prox's exact zeros land on the same coordinates (kernels sparse, biases untouched).
        np.testing.assert_array_equal(got == 0, ref == 0, err_msg=f"{method}{key}")
        if "kernel" in key:
            assert 0.1 < np.mean(ref == 0) < 0.9, key
        else:
            assert not np.any(ref == 0), key


def test_pmap_replicas_stay_identical(distributed):
    _, checks = distributed
    assert checks["pmap_replica_spread"] == 0.0
    assert checks["pmap_state_replica_spread"] == 0.0


@pytest.mark.parametrize("method", ("fsdp_auto", "fsdp_explicit"))
def test_sharded_jit_keeps_shardings(distributed, method):
    _, checks = distributed
    # A train step returns params and optimizer state with the shardings they came in with ...
    assert all(checks[f"{method}_step_keeps_sharding"]), (checks[f"{method}_in_specs"],
                                                          checks[f"{method}_out_specs"])
    # ... 12 of 14 leaves (params, mu, nu) really sharded over the 8 devices, the two step counters replicated ...
    assert checks[f"{method}_sharded_leaves"] == 12
    # ... and `tx.update` alone returns updates sharded like the params and the state as it was, with no
    # collective in the compiled program: the preconditioner and the prox are elementwise per shard.
    assert all(checks[f"{method}_update_keeps_sharding"])
    assert checks[f"{method}_update_collectives"] == []
