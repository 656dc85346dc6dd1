"""Two processes on localhost (``jax.distributed``, CPU collectives via Gloo) train like one process.

Each process runs ``tests/scripts/multiprocess_worker.py`` with 2 host CPU devices: a 4-device global mesh,
params and optimizer state sharded across both processes, each process feeding half of every batch. The
reference is the same loop run here on one device with the whole batch.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

SCRIPTS = os.path.join(os.path.dirname(__file__), "scripts")
sys.path.insert(0, SCRIPTS)

import toy  # noqa: E402

# Under pytest-xdist (--dist loadgroup) the module-scoped fixture runs once, on one worker.
# Two processes on localhost (~16 s): CI's 10-minute budget runs the 8-device tests (test_data_parallel.py);
# `-m slow` runs these.
pytestmark = [pytest.mark.xdist_group("multiprocess"), pytest.mark.slow]

NUM_PROCESSES = 2
TIMEOUT_S = 150
# What an older jaxlib without CPU collectives says; only then is skipping honest.
NO_CPU_COLLECTIVES = ("Multiprocess computations aren't implemented on the CPU backend",
                      "collectives are not supported", "Unimplemented: Cross-process")
PORT_TAKEN = ("Address already in use", "address already in use", "Failed to bind")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _launch(out_dir) -> tuple[list[int], list[str]]:
    """Start all workers on a fresh port; wait for all of them, killing every one past the deadline."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    logs = [open(os.path.join(out_dir, f"log{i}.txt"), "w+") for i in range(NUM_PROCESSES)]
    procs = [subprocess.Popen([sys.executable, os.path.join(SCRIPTS, "multiprocess_worker.py"), str(i),
                               str(NUM_PROCESSES), str(port), str(out_dir)],
                              env=env, stdout=logs[i], stderr=subprocess.STDOUT)
             for i in range(NUM_PROCESSES)]
    deadline = time.monotonic() + TIMEOUT_S
    try:
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    outputs = []
    for f in logs:
        f.seek(0)
        outputs.append(f.read())
        f.close()
    return [p.returncode for p in procs], outputs


@pytest.fixture(scope="module")
def workers(tmp_path_factory):
    for attempt in range(3):
        out = tmp_path_factory.mktemp(f"multiprocess{attempt}")
        codes, outputs = _launch(out)
        text = "\n".join(outputs)
        if all(c == 0 for c in codes):
            return [dict(np.load(out / f"process{i}.npz")) for i in range(NUM_PROCESSES)]
        if any(m in text for m in NO_CPU_COLLECTIVES):
            pytest.skip("this jaxlib has no cross-process CPU collectives")
        if not any(m in text for m in PORT_TAKEN):
            break
    pytest.fail(f"workers exited with {codes} (negative: killed after {TIMEOUT_S} s):\n" +
                "\n".join(f"--- process {i} ---\n{o[-4000:]}" for i, o in enumerate(outputs)))


def test_each_process_held_half(workers):
    rows = [set(w["local_batch_rows"].tolist()) for w in workers]
    assert rows[0].isdisjoint(rows[1]) and len(rows[0] | rows[1]) == 4  # 4 row-blocks of 16, two each
    for w in workers:  # params and state were sharded: each process held half of the parameters
        assert int(w["local_param_elems"]) * NUM_PROCESSES == int(w["total_param_elems"])


def test_processes_agree_exactly(workers):
    a, b = workers
    shared = [k for k in a if k.startswith("[")] + ["losses"]  # params (gathered) and losses; not the row lists
    assert len(shared) == 5 and a.keys() == b.keys()
    for key in shared:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_matches_one_process(workers):
    params, losses = toy.train_single_device()
    np.testing.assert_allclose(workers[0]["losses"], losses, rtol=1e-5, atol=1e-6)
    for path, ref in jax.tree_util.tree_flatten_with_path(params)[0]:
        key = jax.tree_util.keystr(path)
        got = workers[0][key]
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6, err_msg=key)
        np.testing.assert_array_equal(got == 0, ref == 0, err_msg=key)
    assert sum(np.sum(workers[0][jax.tree_util.keystr(p)] == 0)
               for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]) > 0  # the prox did sparsify
