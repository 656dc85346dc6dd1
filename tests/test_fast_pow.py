"""float32 ``log2``/``exp2``/``t^p`` from exponent bits and polynomials, against NumPy float64."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from proxgen_jax.regularizers.fast_pow import exp2_f32, log2_f32, pow_f32

HALF_ULP = 2.0**-24  # relative


def _normal_floats(rng, n):
    t = (10.0 ** rng.uniform(-37.9, 38.5, n)).astype(np.float32)
    powers = np.float32(2.0) ** np.arange(-126, 128, dtype=np.float32)
    edges = [powers, np.nextafter(powers, np.float32(0)), np.nextafter(powers, np.float32(np.inf))]
    sqrt_half = np.float32(np.sqrt(0.5))  # where the mantissa range [√½, √2) wraps
    edges.append(np.array([sqrt_half, np.nextafter(sqrt_half, np.float32(0)), np.float32(np.finfo(np.float32).max)]))
    t = np.concatenate([t, *edges]).astype(np.float32)
    return t[np.isfinite(t) & (t >= np.finfo(np.float32).tiny)]


def test_log2_matches_numpy_over_all_normal_floats():
    t = _normal_floats(np.random.default_rng(0), 1_000_000)
    ours = np.asarray(jax.jit(log2_f32)(jnp.asarray(t)), np.float64)
    exact = np.log2(t.astype(np.float64))
    assert np.all(np.abs(ours - exact) <= 1.5e-7 + HALF_ULP * np.abs(exact)), np.max(np.abs(ours - exact))


def test_exp2_matches_numpy_over_the_normal_range():
    rng = np.random.default_rng(1)
    y = np.concatenate([rng.uniform(-126, 127, 1_000_000), np.arange(-126, 128), np.arange(-126, 127) + 0.5])
    y = y.astype(np.float32)
    ours = np.asarray(jax.jit(exp2_f32)(jnp.asarray(y)), np.float64)
    rel = np.abs(ours / 2.0 ** y.astype(np.float64) - 1)
    assert rel.max() <= 1.1e-7, rel.max()


@pytest.mark.parametrize("p", [-1.99, -1.7, -4.0 / 3.0, -1.0, -0.01, 0.3, 1.0])
def test_pow_is_as_accurate_as_exp_of_log(p):
    """Within the error that rounding ``y = p·log2 t`` to float32 implies, as for ``exp(p·log t)``."""
    t = _normal_floats(np.random.default_rng(2), 500_000)
    exact = t.astype(np.float64) ** p
    inside = (exact >= 2.0**-126) & (exact <= 2.0**127)
    ours = np.asarray(jax.jit(lambda t: pow_f32(t, p))(jnp.asarray(t)), np.float64)
    # y = p·log2 t is rounded to float32 three times (p itself, log2, the product), plus our log2's 1.5e-7;
    # 2^y then carries ln2 times that absolute error, and exp2 adds its 1.1e-7.
    log2t = np.log2(t.astype(np.float64))
    y = p * log2t
    err_y = (abs(p) * (np.spacing(np.abs(log2t).astype(np.float32)) / 2 + 1.5e-7)
             + np.abs(log2t) * abs(float(np.float32(p)) - p) + np.spacing(np.abs(y).astype(np.float32)) / 2)
    bound = np.log(2) * err_y + 1.2e-7
    rel = np.abs(ours[inside] / exact[inside] - 1)
    assert np.all(rel <= bound[inside]), rel.max()
    # Outside the normal range the result saturates instead of overflowing or flushing to zero.
    assert np.all(np.isfinite(ours)) and np.all(ours > 0)


def test_pow_edge_inputs():
    t = jnp.array([0.0, 1e-45, np.inf, np.nan, 1.0], jnp.float32)
    out = np.asarray(pow_f32(t, -1.7))
    assert out[0] == out[1] == np.float32(2.0**127)  # 0 and subnormals are floored, the result saturates
    assert out[2] == np.float32(2.0**-126)
    assert np.isnan(out[3])
    assert out[4] == 1.0
