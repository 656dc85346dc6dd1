"""The group prox under ``jax.sharding``: parameters sharded over the grouped axis give the single-device result.

Runs in a subprocess with 8 host CPU devices (``XLA_FLAGS`` must be set before JAX is imported). Groups span the
sharded axis, so every group norm and Newton reduction crosses devices.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np

SCRIPT = textwrap.dedent(r'''
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import json
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import proxgen_jax as pg
    from proxgen_jax.regularizers.group_l12 import GroupL12
    from proxgen_jax.transforms.prox_group import prox_group_l12

    assert jax.device_count() == 8, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("x",))
    out = {}
    rng = np.random.default_rng(0)

    def compare(name, single, sharded):
        single, sharded = np.asarray(single), np.asarray(sharded)
        scale = np.max(np.abs(single)) + 1e-30
        out[name] = dict(max_rel_diff=float(np.max(np.abs(single - sharded)) / scale),
                         zeros_equal=bool(np.array_equal(single == 0, sharded == 0)),
                         zero_fraction=float(np.mean(single == 0)))

    # 1. The prox alone. Dense (16, 64), one group per row, rows sharded along the grouped axis 1.
    z = rng.standard_normal((16, 64)).astype(np.float32) * np.linspace(0.01, 1, 16)[:, None].astype(np.float32)
    a = (10 ** rng.uniform(-4, 4, (16, 64))).astype(np.float32)
    lam = float(np.median(np.linalg.norm(z / a, axis=1)))
    prox = jax.jit(lambda z, a: GroupL12(group_axes=(1,)).prox(z, a, lam))
    single = prox(jax.device_put(z, jax.devices()[0]), jax.device_put(a, jax.devices()[0]))
    sh = NamedSharding(mesh, P(None, "x"))
    sharded = prox(jax.device_put(z, sh), jax.device_put(a, sh))
    assert len(sharded.sharding.device_set) == 8
    compare("dense_rows_sharded_on_group_axis", single, sharded)
    out["dense_output_spec"] = str(sharded.sharding.spec)
    # Conv (3, 3, 16, 8), one group per output filter, sharded along the grouped input-channel axis 2.
    zc = rng.standard_normal((3, 3, 16, 8)).astype(np.float32) * np.linspace(0.01, 1, 8).astype(np.float32)
    ac = (10 ** rng.uniform(-4, 4, zc.shape)).astype(np.float32)
    lam_c = float(np.median(np.linalg.norm((zc / ac).reshape(-1, 8), axis=0)))
    proxc = jax.jit(lambda z, a: GroupL12(group_axes=(0, 1, 2)).prox(z, a, lam_c))
    single = proxc(jax.device_put(zc, jax.devices()[0]), jax.device_put(ac, jax.devices()[0]))
    sh = NamedSharding(mesh, P(None, None, "x", None))
    compare("conv_filters_sharded_on_group_axis", single, proxc(jax.device_put(zc, sh), jax.device_put(ac, sh)))

    # 2. Ten jitted steps of Adam + group prox on a sharded parameter tree vs one device.
    params = {"dense": {"kernel": rng.standard_normal((16, 64)).astype(np.float32)
                                  * np.linspace(0.01, 1, 16)[:, None].astype(np.float32),
                        "bias": np.zeros(64, np.float32)},
              "conv": {"kernel": rng.standard_normal((3, 3, 16, 8)).astype(np.float32) * 0.3}}
    specs = {"dense": {"kernel": P(None, "x"), "bias": P("x")}, "conv": {"kernel": P(None, None, "x", None)}}
    axes = lambda path, leaf: (1,) if leaf.ndim == 2 else (0, 1, 2)
    tx = optax.chain(pg.scale_by_adam_precond(),
                     prox_group_l12(0.03, 0.05, group_axes=axes, weighting="sqrt", mask=pg.kernels_only))

    def loss(p, t):
        h = jnp.tanh(p["dense"]["kernel"] * (1.0 + 0.1 * t) + p["dense"]["bias"])
        return jnp.sum(h ** 2) * 0.1 + jnp.sum(jnp.sin(p["conv"]["kernel"] * (t + 1.0)))

    @jax.jit
    def step(p, s, t):
        u, s = tx.update(jax.grad(loss)(p, t), s, p)
        return optax.apply_updates(p, u), s

    def run(p):
        s = tx.init(p)
        for t in range(10):
            p, s = step(p, s, jnp.float32(t))
        return p

    single = run(jax.device_put(params, jax.devices()[0]))
    shardings = jax.tree.map(lambda spec: NamedSharding(mesh, spec), specs, is_leaf=lambda x: isinstance(x, P))
    sharded = run(jax.device_put(params, shardings))
    for name in ("dense", "conv"):
        compare(f"adam_chain_{name}", single[name]["kernel"], sharded[name]["kernel"])
        out[f"adam_chain_{name}_spec"] = str(sharded[name]["kernel"].sharding.spec)
    print("RESULT" + json.dumps(out))
''')


def test_sharded_group_prox_equals_single_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=600,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][-1]
    res = json.loads(line[len("RESULT"):])
    for name in ("dense_rows_sharded_on_group_axis", "conv_filters_sharded_on_group_axis",
                 "adam_chain_dense", "adam_chain_conv"):
        r = res[name]
        assert r["zeros_equal"], (name, r)
        assert r["max_rel_diff"] <= 1e-5, (name, r)  # only the summation order may differ across shards
    # Some, not all, groups are zero, so the test exercises both branches.
    for name in ("dense_rows_sharded_on_group_axis", "conv_filters_sharded_on_group_axis", "adam_chain_dense"):
        assert 0 < res[name]["zero_fraction"] < 1, (name, res[name])
    # The parameters keep their sharding through the update.
    assert "x" in res["dense_output_spec"] and "x" in res["adam_chain_dense_spec"], res
    np.testing.assert_(res["adam_chain_conv_spec"].count("x") == 1, res)
