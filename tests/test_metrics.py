from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import proxgen_jax as pg


def test_sparsity_counts_exact_zeros_per_leaf_and_total():
    params = {"a": {"kernel": jnp.array([[0.0, 1.0], [0.0, 0.0]]), "bias": jnp.array([0.0, 1e-30])}}
    s = pg.sparsity(params)
    assert float(s["['a']['kernel']"]) == 0.75 and float(s["['a']['bias']"]) == 0.5
    assert float(s["total"]) == pytest.approx(4 / 6)
    assert float(pg.sparsity(params, pg.kernels_only)["total"]) == 0.75


def test_regularized_objective_and_quantize():
    params = {"w": jnp.array([0.5, -2.0, 0.0])}
    val = pg.regularization_value(params, pg.L1(), 0.1)
    assert float(val) == pytest.approx(0.25)
    f = pg.regularized_objective(lambda p, c: jnp.sum(p["w"] ** 2) * c, params, pg.Lq(0.5), 0.1, 2.0)
    assert float(f) == pytest.approx(2 * 4.25 + 0.1 * (np.sqrt(0.5) + np.sqrt(2.0)))
    q = pg.quantize(params)
    np.testing.assert_array_equal(q["w"], [1.0, -1.0, 1.0])  # dist(0, {±1}) ties go to +1
    t = pg.quantize({"w": jnp.array([0.4, 0.6, -0.7])}, levels=(-1, 0, 1))
    np.testing.assert_array_equal(t["w"], [0.0, 1.0, -1.0])
