"""The whole Adam + prox step equals a plain NumPy float64 implementation of ProxGen's Algorithm 1.

The reference keeps Adam's moments itself and solves line 8 (the preconditioned prox) coordinate by coordinate by
brute force (``tests/oracles.py``); it shares no code with the library.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import proxgen_jax as pg

from oracles import numpy_algorithm1

CASES = [
    ("l0", pg.L0(), "l0", {}),
    ("l1", pg.L1(), "l1", {}),
    ("l1/2", pg.Lq(0.5), "lq", dict(q=0.5)),
    ("l2/3", pg.Lq(2 / 3), "lq", dict(q=2 / 3)),
    ("lq0.3", pg.Lq(0.3), "lq", dict(q=0.3)),
    ("mcp", pg.MCP(2.0), "mcp", dict(gamma=2.0)),
    ("scad", pg.SCAD(3.7), "scad", dict(gamma=3.7)),
    ("binary-q1", pg.regularizers.binary(1.0), "quant", dict(q=1.0)),
    ("binary-q1/2", pg.regularizers.binary(0.5), "quant", dict(q=0.5)),
]


def _run(reg, kind, kw, *, steps, weight_decay=0.0, alias=False):
    """(ours, reference) trajectories for ``steps`` Adam + prox steps on a noisy quadratic."""
    rng = np.random.default_rng(0)
    d, lr, lam = 24, 0.05, 0.05
    theta0 = rng.normal(size=d)
    # Gradient noise plus a pull towards a target, so coordinates cross thresholds during the run.
    target = rng.normal(size=d) * rng.choice([0.0, 1.0], d)
    grads = []
    with jax.enable_x64(True):
        if alias:
            tx = pg.proxgen_adam(lr, reg, lam, weight_decay=weight_decay)
        else:
            tx = optax.chain(pg.scale_by_adam_precond(), pg.proximal_step(reg, lam, lr, weight_decay=weight_decay))
        params = jnp.asarray(theta0)
        state = tx.init(params)
        step = jax.jit(lambda p, s, g: tx.update(g, s, p))
        ours = []
        for _ in range(steps):
            g = (np.asarray(params) - target) + 0.3 * rng.normal(size=d)
            grads.append(g)
            updates, state = step(params, state, jnp.asarray(g))
            params = optax.apply_updates(params, updates)
            ours.append(np.asarray(params))
    ref_kind = {"l0": "lq", "l1": "lq"}.get(kind, kind)
    ref_kw = dict(kw, q={"l0": 0, "l1": 1}[kind]) if kind in ("l0", "l1") else kw
    ref = numpy_algorithm1(theta0, grads, ref_kind, ref_kw, lr=lr, lam=lam, weight_decay=weight_decay)
    return np.stack(ours), ref


@pytest.mark.parametrize("name,reg,kind,kw", CASES, ids=[c[0] for c in CASES])
def test_adam_prox_matches_numpy_algorithm1(name, reg, kind, kw):
    ours, ref = _run(reg, kind, kw, steps=50)
    # The brute-force oracle pins x down to ~1e-8 (a flat minimum in float64); allow for that over 50 steps.
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)
    if kind in ("l0", "l1", "lq", "mcp", "scad"):
        # Where the reference minimiser is zero (to the oracle's 1e-12 resolution) ours is *exactly* zero.
        ref_zero = np.abs(ref) < 1e-12
        assert ref_zero[-1].any()
        np.testing.assert_array_equal(ours[ref_zero], 0.0)
        assert np.all(ours[np.abs(ref) > 1e-6] != 0)


@pytest.mark.parametrize("name,reg,kind,kw", CASES, ids=[c[0] for c in CASES])
def test_decoupled_weight_decay_matches_reference_order(name, reg, kind, kw):
    """``weight_decay ≠ 0``: the library (through the alias, so it passes the option on) follows the reference
    order θ ← θ(1 − α·wd), then the preconditioned prox; a decay applied after the prox or folded into the
    gradient would differ from this reference by more than the tolerance."""
    ours, ref = _run(reg, kind, kw, steps=30, weight_decay=2.0, alias=True)
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)
    plain, _ = _run(reg, kind, kw, steps=30)
    assert np.max(np.abs(plain - ours)) > 1e-3  # the decay is really applied
