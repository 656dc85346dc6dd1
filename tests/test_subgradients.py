"""Subgradients equal the derivative of the penalty wherever it is differentiable, and the documented value at kinks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import proxgen_jax as pg

from oracles import penalty

CASES = [
    (pg.L1(), "l1", {}), (pg.Lq(0.5), "lq", dict(q=0.5)), (pg.Lq(2 / 3), "lq", dict(q=2 / 3)),
    (pg.MCP(3.0), "mcp", dict(gamma=3.0)), (pg.SCAD(3.7), "scad", dict(gamma=3.7)),
    (pg.regularizers.binary(0.5), "quant", dict(q=0.5)), (pg.regularizers.binary(1.0), "quant", dict(q=1.0)),
    (pg.L0(), "l0", {}),
]


@pytest.mark.parametrize("reg,kind,kw", CASES, ids=lambda c: c.__class__.__name__)
def test_subgradient_is_the_derivative_off_kinks(reg, kind, kw):
    lam = 0.4
    with jax.enable_x64(True):
        x = np.linspace(-2.3, 2.3, 461) + 1e-3  # avoids 0, ±1 and the MCP/SCAD breakpoints exactly
        h = 1e-6
        fd = (penalty(kind, x + h, lam, **kw) - penalty(kind, x - h, lam, **kw)) / (2 * h)
        ours = np.asarray(reg.subgradient(jnp.asarray(x), lam))
    np.testing.assert_allclose(ours, fd, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reg", [pg.L1(), pg.Lq(0.5), pg.MCP(3.0), pg.SCAD(3.7), pg.L0()], ids=str)
def test_subgradient_at_zero_is_zero_and_nan_propagates(reg):
    out = reg.subgradient(jnp.array([0.0, jnp.nan]), 0.3)
    assert float(out[0]) == 0.0 and bool(jnp.isnan(out[1]))
