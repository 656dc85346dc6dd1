"""The nonzero root of the normalised ℓq prox (``lq_root.nonzero_root``) against a float64 bisection.

For ``r ∈ [0, r*]`` the root is the larger solution ``w`` of ``w − 1 + r·q·w^{q−1} = 0``; the prox is ``z·w``.
Whichever variable the fitted expansion uses (``r`` itself, or ``s = √(1 − r/r_f)``), float32 must give ``w`` to
a few ulps on the whole interval, ties at ``r*`` included.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from proxgen_jax.regularizers import lq_root


def _bisection_root(q, r):
    """The larger root of ``w − 1 + r q w^{q−1}`` by 200 bisection steps above the minimum of the left side."""
    r = np.asarray(r, np.float64)
    lo = (r * q * (1.0 - q)) ** (1.0 / (2.0 - q))
    hi = np.ones_like(r)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        pos = mid - 1.0 + r * q * mid ** (q - 1.0) > 0
        hi, lo = np.where(pos, mid, hi), np.where(pos, lo, mid)
    return 0.5 * (lo + hi)


@pytest.mark.parametrize("q", [0.1, 0.3, 0.5, 0.6, 2 / 3, 0.75])
def test_float32_root_is_accurate_to_a_few_ulps(q):
    r_star = lq_root.threshold_ratio(q)
    rng = np.random.default_rng(int(q * 1000))
    r = np.concatenate([np.linspace(0.0, r_star, 4001), rng.uniform(0.0, r_star, 20000), [r_star]])
    r32 = r.astype(np.float32)
    w = np.asarray(jax.jit(lambda x: lq_root.nonzero_root(x, q))(jnp.asarray(r32)), np.float64)
    exact = _bisection_root(q, r32.astype(np.float64))
    err = np.abs(w - exact) / exact
    # w = v^d with v accurate to the fit's target (2.5e-7) and up to d = 3 roundings: 8 float32 ulps at most.
    assert np.max(err) <= 8 * np.finfo(np.float32).eps, (float(np.max(err)), float(r[np.argmax(err)]))
    # At the tie r = r* the root is w* = (2 − 2q)/(2 − q).
    assert abs(w[-1] - (2 - 2 * q) / (2 - q)) <= 8 * np.finfo(np.float32).eps


def test_half_root_needs_no_square_root():
    """ℓ½ (and smaller q) in float32 use the expansion in r itself, ℓ⅔ keeps the square-root variable: the
    choice the module docstring explains (and ``benchmarks/step_overhead.py`` measures)."""
    assert lq_root.root_table(0.5, "float32").direct
    assert lq_root.root_table(0.3, "float32").direct
    assert not lq_root.root_table(2 / 3, "float32").direct
