"""The nonzero branch of the scalar ℓq prox, 0 < q < 1, computed fast and to working precision.

For ``t = |z| > 0`` and ``μ = step·λ``, write ``x = t·w`` and ``r = μ·t^{q−2}`` (dimensionless). Then
``argmin_x μ|x|^q + (x − t)²/2`` is ``t`` times the minimiser of ``r·w^q + (w − 1)²/2`` over ``w ≥ 0``, whose
nonzero candidate is the larger root of ``h(w) = w − 1 + r·q·w^{q−1}``. It beats ``w = 0`` exactly when
``r < r*(q) = (2(1−q))^{−1} ((2−2q)/(2−q))^{2−q}`` (equivalently ``t > τ = (2−q)/(2−2q)·(2μ(1−q))^{1/(2−q)}``);
at ``r = r*`` both are minimisers and the root is ``w = (2−2q)/(2−q)``.

No transcendental function is needed per Newton step: for rational ``q = n/d`` with small ``d`` we solve for
``v = w^{1/d}``, the root of the polynomial ``P(v) = v^{2d−n} − v^{d−n} + r·q``. The root as a function of
``r ∈ [0, r*]`` is analytic (its fold lies beyond ``r*``), so a Chebyshev expansion of
``φ(r) = (1 − v(r))/r``, fitted once per ``q`` on the host in float64, gives an accurate start in a few fused
multiply-adds; ``v = 1 − r·φ(r)`` keeps relative accuracy as ``r → 0``. Newton polishing steps are added only
where the expansion alone falls short of the dtype's precision (chosen at construction by measuring the
fitted error in float64). Started from above the root (the fit's error bound is added), Newton on the convex
``P`` decreases monotonically to the root.
"""

from __future__ import annotations

import dataclasses
import fractions
import functools

import jax
import jax.numpy as jnp
import numpy as np
from numpy.polynomial import chebyshev

_MAX_DENOMINATOR = 3  # q = n/d with d ≤ 3 uses polynomial Newton steps; otherwise w-Newton with exp/log.
_TARGET = {"float16": 1e-4, "bfloat16": 1e-4, "float32": 2e-8, "float64": 1e-13}
_DEGREE = {"float16": 10, "bfloat16": 10, "float32": 16, "float64": 24}


def threshold_ratio(q: float) -> float:
    """``r*(q)``: the prox is zero iff ``μ·|z|^{q−2} > r*`` (a tie at equality)."""
    return (1.0 / (2.0 * (1.0 - q))) * ((2.0 - 2.0 * q) / (2.0 - q)) ** (2.0 - q)


@dataclasses.dataclass(frozen=True)
class _RootTable:
    r_star: float
    d: int                      # v = w^{1/d}
    n: int                      # q = n/d when d > 1
    coeffs: tuple[float, ...]   # Chebyshev coefficients of φ on [0, r*]
    start_bias: float           # added to v0 before polishing, so Newton starts above the root
    polish: int                 # Newton steps after the expansion


def _exact_root_v(q: float, d: int, r: np.ndarray) -> np.ndarray:
    """float64 reference: bisection on ``h(w)`` over ``[w_fold, 1]`` then ``v = w^{1/d}``."""
    lo = (r * q * (1.0 - q)) ** (1.0 / (2.0 - q))  # fold of h (its minimum); the larger root lies above it
    hi = np.ones_like(r)
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        above = mid - 1.0 + r * q * mid ** (q - 1.0) > 0
        hi = np.where(above, mid, hi)
        lo = np.where(above, lo, mid)
    w = 0.5 * (lo + hi)
    for _ in range(2):  # Newton polish (quadratic, from a bracket of width 2^-80)
        hw = w - 1.0 + r * q * w ** (q - 1.0)
        dhw = 1.0 - (1.0 - q) * r * q * w ** (q - 2.0)
        w = w - hw / dhw
    return w ** (1.0 / d)


def _newton_np(q, d, n, r, v):
    if d > 1:
        p = v ** (2 * d - n) - v ** (d - n) + r * q
        dp = (2 * d - n) * v ** (2 * d - n - 1) - (d - n) * v ** (d - n - 1)
        return v - p / dp
    g = r * q * v ** (q - 1.0)
    return v - (v - 1.0 + g) / (1.0 - (1.0 - q) * g / v)


@functools.lru_cache(maxsize=None)
def root_table(q: float, dtype_name: str) -> _RootTable:
    """Fits the expansion for ``q`` and picks the number of polishing steps for ``dtype_name``."""
    frac = fractions.Fraction(q).limit_denominator(1000)
    if abs(float(frac) - q) < 1e-15 and frac.denominator <= _MAX_DENOMINATOR:
        n, d = frac.numerator, frac.denominator
    else:
        n, d = 0, 1
    r_star = threshold_ratio(q)
    degree = _DEGREE.get(dtype_name, 24)
    k = np.arange(degree + 1)
    nodes = 0.5 * r_star * (1.0 + np.cos(np.pi * (k + 0.5) / (degree + 1)))
    phi = (1.0 - _exact_root_v(q, d, nodes)) / nodes
    coeffs = chebyshev.chebfit(2.0 * nodes / r_star - 1.0, phi, degree)
    grid = np.linspace(0.0, r_star, 20001)[1:]
    truth = _exact_root_v(q, d, grid)
    v0 = 1.0 - grid * chebyshev.chebval(2.0 * grid / r_star - 1.0, coeffs)
    err = float(np.max(np.abs(v0 - truth) / truth))
    target = _TARGET.get(dtype_name, 1e-13)
    polish, bias, v = 0, 0.0, v0
    if err > target:
        bias = 2.0 * err
        v = np.minimum(v0 * (1.0 + bias), 1.0)
        while polish < 12 and np.max(np.abs(v - truth) / truth) > target:
            v = _newton_np(q, d, n, grid, v)
            polish += 1
    return _RootTable(r_star, d, n, tuple(float(c) for c in coeffs), bias, polish)


def _clenshaw(x, coeffs):
    b1 = jnp.zeros_like(x)
    b2 = jnp.zeros_like(x)
    two_x = 2 * x
    for c in coeffs[:0:-1]:
        b1, b2 = two_x * b1 - b2 + c, b1
    return x * b1 - b2 + coeffs[0]


def nonzero_root(r: jax.Array, q: float) -> jax.Array:
    """``w(r)`` on ``[0, r*]``: the nonzero stationary point of the normalised ℓq prox, in r's dtype."""
    tab = root_table(q, jnp.dtype(r.dtype).name)
    x = r * (2.0 / tab.r_star) - 1.0
    v = 1 - r * _clenshaw(x, tab.coeffs)
    if tab.polish:
        v = jnp.minimum(v * (1 + tab.start_bias), 1)
    for _ in range(tab.polish):
        if tab.d > 1:
            d, n = tab.d, tab.n
            p = jax.lax.integer_pow(v, 2 * d - n) - jax.lax.integer_pow(v, d - n) + r * q
            dp = (2 * d - n) * jax.lax.integer_pow(v, 2 * d - n - 1) - (d - n) * jax.lax.integer_pow(v, d - n - 1)
            v = v - p / dp
        else:
            g = r * q * jnp.exp((q - 1.0) * jnp.log(v))
            v = v - (v - 1 + g) / (1 - (1.0 - q) * g / v)
    return jax.lax.integer_pow(v, tab.d) if tab.d > 1 else v
