"""Budgets under ``jax.sharding``: the global top-k over a tree of sharded parameters equals the single-device result.

Runs in a subprocess with 8 host CPU devices (``XLA_FLAGS`` must be set before JAX is imported). The global budget
ranks the gains of every kernel at once, so its selection crosses all shards of all leaves; per-leaf budgets and
a global filter budget too. The gains are elementwise and the selection counts integers, so the sharded run must
select the same weights at every step; the values differ only by the gradients' summation order across shards.
Marked slow (four compilations on 8 host devices, ~30 s of CPU): ``pytest -m slow tests/test_budget_sharding.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(r'''
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import json, math
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import proxgen_jax as pg

    assert jax.device_count() == 8, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("x",))
    rng = np.random.default_rng(0)
    params = {"dense": {"kernel": (rng.standard_normal((64, 24)) * np.linspace(0.05, 1, 24)).astype(np.float32),
                        "bias": np.zeros(24, np.float32)},
              "conv": {"kernel": (rng.standard_normal((3, 3, 16, 8)) * 0.3).astype(np.float32)},
              "head": {"kernel": (rng.standard_normal((24, 16)) * 0.5).astype(np.float32)}}
    # Sharded along the axis the budgets read across: the dense input axis (the 2:4 blocking axis too), the conv's
    # input channels, the head's output axis.
    specs = {"dense": {"kernel": P("x", None), "bias": P()}, "conv": {"kernel": P(None, None, "x", None)},
             "head": {"kernel": P(None, "x")}}

    def loss(p, t):
        h = jnp.tanh(jnp.ones((4, 64)) @ p["dense"]["kernel"] * (1.0 + 0.1 * t) + p["dense"]["bias"])
        return (jnp.sum((h @ p["head"]["kernel"]) ** 2) * 0.1
                + jnp.sum(jnp.sin(p["conv"]["kernel"] * (t + 1.0))) + jnp.sum(p["dense"]["kernel"] ** 3) * 0.01)

    def run(tx, p):
        @jax.jit
        def step(p, s, t):
            u, s = tx.update(jax.grad(loss)(p, t), s, p)
            return optax.apply_updates(p, u), s
        s = tx.init(p)
        for t in range(6):
            p, s = step(p, s, jnp.float32(t))
        return p

    shardings = jax.tree.map(lambda spec: NamedSharding(mesh, spec), specs, is_leaf=lambda x: isinstance(x, P))
    sched = pg.sparsity_schedule(0.8, begin_step=0, end_step=5)  # a traced budget that moves, then holds
    cases = {"global": pg.prox_sparsity(sched, 0.05, scope="global", mask=pg.kernels_only),
             "filters_global": pg.prox_sparsity(0.5, 0.05, scope="global", group_axes=pg.output_unit_groups,
                                                mask=pg.kernels_only)}
    out = {}
    for name, link in cases.items():
        tx = optax.chain(pg.scale_by_adam_precond(), link)
        single = run(tx, jax.device_put(params, jax.devices()[0]))
        sharded = run(tx, jax.device_put(params, shardings))
        a = {k: np.asarray(single[k]["kernel"]) for k in params}
        b = {k: np.asarray(sharded[k]["kernel"]) for k in params}
        out[name] = dict(
            max_rel_diff=max(float(np.max(np.abs(a[k] - b[k])) / np.max(np.abs(a[k]))) for k in a),
            zeros_equal=all(np.array_equal(a[k] == 0, b[k] == 0) for k in a),
            nonzeros={k: int(np.sum(b[k] != 0)) for k in b}, sizes={k: int(b[k].size) for k in b},
            nonzero_filters={k: int(np.sum(np.any(b[k].reshape(-1, b[k].shape[-1]) != 0, axis=0))) for k in b},
            specs={k: str(sharded[k]["kernel"].sharding.spec) for k in b})
    print("RESULT" + json.dumps(out))
''')


@pytest.mark.slow  # ~30 s of CPU: four compilations of the step on 8 host devices
def test_sharded_budgets_equal_single_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=600,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][-1][len("RESULT"):])
    for name, r in res.items():
        assert r["zeros_equal"], (name, r)  # the same weights selected, every step
        assert r["max_rel_diff"] <= 1e-5, (name, r)  # only the gradients' summation order differs across shards
        assert all("x" in spec for spec in r["specs"].values()), (name, r)  # still sharded after the updates
    sizes = res["global"]["sizes"]
    n = sum(sizes.values())
    # One budget over the three kernels: exactly ⌊(1 − 0.8)·n⌋ free weights in total, spread unevenly.
    assert sum(res["global"]["nonzeros"].values()) == int(0.2 * n + 1e-9)
    assert len({res["global"]["nonzeros"][k] / sizes[k] for k in sizes}) > 1
    # Filters: one budget over the 24 + 8 + 16 output units; ⌊0.5·48⌋ = 24 stay.
    assert sum(res["filters_global"]["nonzero_filters"].values()) == 24
