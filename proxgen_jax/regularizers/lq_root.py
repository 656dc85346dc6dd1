"""The nonzero branch of the scalar ℓq prox, 0 < q < 1, computed fast and to working precision.

For ``t = |z| > 0`` and ``μ = step·λ``, write ``x = t·w`` and ``r = μ·t^{q−2}`` (dimensionless). Then
``argmin_x μ|x|^q + (x − t)²/2`` is ``t`` times the minimiser of ``r·w^q + (w − 1)²/2`` over ``w ≥ 0``, whose
nonzero candidate is the larger root of ``h(w) = w − 1 + r·q·w^{q−1}``. It beats ``w = 0`` exactly when
``r < r*(q) = (2(1−q))^{−1} ((2−2q)/(2−q))^{2−q}`` (equivalently ``t > τ = (2−q)/(2−2q)·(2μ(1−q))^{1/(2−q)}``);
at ``r = r*`` both are minimisers and the root is ``w = (2−2q)/(2−q)``.

The larger root, as a function of ``r``, ends in a square-root fold at ``r_f = w_f^{2−q}/(q(1−q))``,
``w_f = (1−q)/(2−q)``, just beyond ``r*``. It is expanded in one of two variables, always as ``1 − r·(…)`` so
that relative accuracy holds as ``r → 0``:

* **``r`` itself** (float32 and the half types) when a polynomial of degree ≤ 9 is accurate enough: ``w = 1 −
  r·ψ(r)``. ``ψ`` is analytic on ``[0, r*]`` and the fold lies at ``r_f/r* ≈ 1.4`` (q = ½) or further for smaller
  ``q``, so the Chebyshev fit converges geometrically — degree 9 for ℓ½, 6 for ℓ0.3 (the centred variable
  ``2r/r* − 1``, whose monomial coefficients stay small, is tried too). The training step then costs one Horner
  loop of fused multiply-adds and no square root. On XLA:CPU the ℓ½ step is divider-bound (its ratio ``μ/(t√t)``
  needs a square root and a division beside Adam's two), and there a square root costs about as much as a dozen
  multiply-adds: measured, the prox's share of the step fell by a fifth to a third. The ℓ⅔ step is bound by its
  multiply-adds instead (the inverse cube root): its direct form (degree 13) measured slower than the ``s`` form,
  hence the cap on the degree.
* **``s = √(1 − r/r_f)``** otherwise (``q`` above ~0.55, where the fold comes close to ``r*``, and float64): the
  fold disappears and the root is analytic in ``s`` on the whole interval, so a polynomial of degree 4–7
  (Chebyshev degree 24 in float64) reaches the target, evaluated as two short Horner loops (even and odd parts
  in ``s²``). In float32 ``w = 1 − r·φ(s)`` is fitted itself (ℓ⅔: degree 6); where that falls short, and in
  float64, ``v = w^{1/d}`` is (``q = n/d``, ``d ≤ 3``, else ``v = w``), ``v = 1 − r·φ(s)``, raised to the power
  ``d``.

The variable, the degree (and, where the ``s`` expansion of ``v`` alone falls short, a number of Newton polishing
steps on the convex polynomial ``P(v) = v^{2d−n} − v^{d−n} + r·q``, started above the root) are chosen per
``(q, dtype)`` on the host, once, by measuring the error of the very evaluation used here against a float64
bisection: ``v`` within the dtype's target, or ``w`` fitted itself within ``max(1, 0.6·d)`` times it (``w = v^d``
has ``d`` times ``v``'s relative error). No ``cbrt``, ``arccos`` or ``pow`` is evaluated in the training step.
"""

from __future__ import annotations

import dataclasses
import fractions
import functools

import jax
import jax.numpy as jnp
import numpy as np
from numpy.polynomial import chebyshev, polynomial

from proxgen_jax.regularizers.horner import horner

_MAX_DENOMINATOR = 3
# Target max relative error of v, per dtype (a few ulps), and the largest Horner degree tried.
_TARGET = {"float16": 2e-3, "bfloat16": 2e-2, "float32": 2.5e-7, "float64": 1e-14}
_HORNER_MAX_DEGREE = 12
_DIRECT_MAX_DEGREE = 9   # w as a polynomial in r (no square root) up to this degree is preferred
_W_MARGIN = 0.6          # w = v^d fitted itself must be within max(1, 0.6·d) × target (v's error times d is d × target)
_CLENSHAW_DEGREE = 24  # float64: stable Chebyshev evaluation of a higher degree


def threshold_ratio(q: float) -> float:
    """``r*(q)``: the prox is zero iff ``μ·|z|^{q−2} > r*`` (a tie at equality)."""
    return (1.0 / (2.0 * (1.0 - q))) * ((2.0 - 2.0 * q) / (2.0 - q)) ** (2.0 - q)


def fold_ratio(q: float) -> float:
    """``r_f(q)``: where the nonzero stationary point disappears (``r* < r_f``)."""
    w_f = (1.0 - q) / (2.0 - q)
    return w_f ** (2.0 - q) / (q * (1.0 - q))


@dataclasses.dataclass(frozen=True)
class _RootTable:
    r_star: float
    r_fold: float
    d: int                      # v = w^{1/d}
    n: int                      # q = n/d when d > 1
    clenshaw: bool              # Chebyshev (centred s) instead of monomial Horner in s
    coeffs: tuple[float, ...]
    direct: bool                # (1 − w)/r is a polynomial in x = r·x_scale + x_shift (then d = 1), else φ(s)
    x_scale: float
    x_shift: float
    s_lo: float
    start_bias: float           # relative amount added to v0 before polishing (Newton then decreases)
    polish: int
    max_error: float            # measured max relative error of v


def _exact_root_v(q: float, d: int, r: np.ndarray) -> np.ndarray:
    """float64 reference: bisection on ``h(w)`` over ``[w_fold, 1]``, Newton polish, then ``v = w^{1/d}``."""
    r = np.asarray(r, np.float64)
    lo = (r * q * (1.0 - q)) ** (1.0 / (2.0 - q))  # minimum of h; the larger root lies above it
    hi = np.ones_like(r)
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        above = mid - 1.0 + r * q * mid ** (q - 1.0) > 0
        hi = np.where(above, mid, hi)
        lo = np.where(above, lo, mid)
    w = 0.5 * (lo + hi)
    for _ in range(2):
        hw = w - 1.0 + r * q * w ** (q - 1.0)
        dhw = 1.0 - (1.0 - q) * r * q * w ** (q - 2.0)
        w = w - hw / dhw
    return w ** (1.0 / d)


def _newton(v, r, q, d, n, xp):
    """One Newton step on ``P(v)`` (``d > 1``) or on ``h(w)`` (``d = 1``); works for NumPy and jax.numpy."""
    if d > 1:
        p = v ** (2 * d - n) - v ** (d - n) + r * q
        dp = (2 * d - n) * v ** (2 * d - n - 1) - (d - n) * v ** (d - n - 1)
        return v - p / dp
    g = r * q * xp.exp((q - 1.0) * xp.log(v))
    return v - (v - 1 + g) / (1 - (1.0 - q) * g / v)


def _r_times_expansion(tab: _RootTable, r, xp):
    """``r·ψ(r)`` (direct form: ``1 − w``) or ``r·φ(s)`` (``1 − v`` before any polishing), in the dtype of ``r``."""
    if tab.direct:
        x = r if tab.x_shift == 0.0 else r * tab.x_scale + tab.x_shift
        return r * horner(tab.coeffs, x)
    u = 1 - r * (1.0 / tab.r_fold)  # u = s²
    if tab.clenshaw:
        x = (xp.sqrt(u) - tab.s_lo) * (2.0 / (1.0 - tab.s_lo)) - 1
        b1, b2 = 0 * x, 0 * x
        for c in tab.coeffs[:0:-1]:
            b1, b2 = 2 * x * b1 - b2 + c, b1
        phi = x * b1 - b2 + tab.coeffs[0]
    else:
        # φ(s) = E(s²) + s·O(s²): the square root is taken once and used once, which keeps XLA's loop fusion
        # of the whole optimizer step intact (an expensive op with many users gets materialised instead).
        phi = horner(tab.coeffs[0::2], u) + xp.sqrt(u) * horner(tab.coeffs[1::2], u)
    return r * phi


def _evaluate(tab: _RootTable, r, q, xp):
    """``v(r)`` for ``r ∈ [0, r*]`` in the dtype of ``r`` — the one evaluation used on host and device."""
    v = 1 - _r_times_expansion(tab, r, xp)
    if tab.polish:
        v = xp.minimum(v * (1 + tab.start_bias), 1)
        for _ in range(tab.polish):
            v = _newton(v, r, q, tab.d, tab.n, xp)
    return v


@functools.cache
def root_table(q: float, dtype_name: str) -> _RootTable:
    """Fits and verifies the expansion for ``(q, dtype)``; cached."""
    frac = fractions.Fraction(q).limit_denominator(1000)
    if abs(float(frac) - q) < 1e-15 and frac.denominator <= _MAX_DENOMINATOR:
        n, d = frac.numerator, frac.denominator
    else:
        n, d = 0, 1
    r_star, r_fold = threshold_ratio(q), fold_ratio(q)
    s_lo = float(np.sqrt(1.0 - r_star / r_fold))
    np_dtype = np.float64 if dtype_name == "float64" else np.float32  # half types evaluate like float32 here
    target = _TARGET.get(dtype_name, 1e-14)
    grid = np.linspace(0.0, r_star, 20001)
    truth = _exact_root_v(q, d, grid[1:])

    def fit(degree, clenshaw, d=d):
        k = np.arange(degree + 1)
        s_nodes = s_lo + (1.0 - s_lo) * 0.5 * (1.0 + np.cos(np.pi * (k + 0.5) / (degree + 1)))
        r_nodes = r_fold * (1.0 - s_nodes**2)
        phi = (1.0 - _exact_root_v(q, d, r_nodes)) / r_nodes
        if clenshaw:
            return tuple(chebyshev.chebfit(2.0 * (s_nodes - s_lo) / (1.0 - s_lo) - 1.0, phi, degree))
        return tuple(polynomial.polyfit(s_nodes, phi, degree))

    def fit_direct(degree, centred):
        """Monomial coefficients of the Chebyshev fit of ``(1 − w)/r`` on [0, r*], in ``2r/r* − 1`` or in ``r``."""
        k = np.arange(degree + 1)
        r_nodes = r_star * 0.5 * (1.0 + np.cos(np.pi * (k + 0.5) / (degree + 1)))
        psi = (1.0 - _exact_root_v(q, 1, r_nodes)) / r_nodes
        in_x = polynomial.Polynomial(chebyshev.cheb2poly(chebyshev.chebfit(2.0 * r_nodes / r_star - 1.0, psi, degree)))
        coeffs = in_x.coef if centred else in_x(polynomial.Polynomial([-1.0, 2.0 / r_star])).coef
        return tuple(float(c) for c in coeffs) + (0.0,) * (degree + 1 - len(coeffs))

    def measure(tab, exact):
        v = _evaluate(tab, grid[1:].astype(np_dtype), q, np)
        return float(np.max(np.abs(v.astype(np.float64) - exact) / exact))

    clenshaw = np_dtype == np.float64
    if not clenshaw:  # float32 and half types: w itself, first as a polynomial in r, then in s
        truth_w = truth ** d
        w_tol = max(1.0, _W_MARGIN * d) * target  # w = v^d has d times v's relative error; never above target
        for degree in range(3, _DIRECT_MAX_DEGREE + 1):
            for centred in (False, True):
                scale, shift = (2.0 / r_star, -1.0) if centred else (1.0, 0.0)
                tab = _RootTable(r_star, r_fold, 1, 0, False, fit_direct(degree, centred), True, scale, shift,
                                 s_lo, 0.0, 0, 0.0)
                err = measure(tab, truth_w)
                if err <= w_tol:
                    return dataclasses.replace(tab, max_error=err)
        for degree in range(3, _HORNER_MAX_DEGREE + 1) if d > 1 else ():  # (for d = 1 that is the loop below)
            tab = _RootTable(r_star, r_fold, 1, 0, False, fit(degree, False, 1), False, 1.0, 0.0, s_lo, 0.0, 0, 0.0)
            err = measure(tab, truth_w)
            if err <= w_tol:
                return dataclasses.replace(tab, max_error=err)
    degrees = [_CLENSHAW_DEGREE] if clenshaw else list(range(3, _HORNER_MAX_DEGREE + 1))
    for degree in degrees:
        tab = _RootTable(r_star, r_fold, d, n, clenshaw, fit(degree, clenshaw), False, 1.0, 0.0, s_lo, 0.0, 0, 0.0)
        err = measure(tab, truth)
        if err <= target:
            return dataclasses.replace(tab, max_error=err)
    # Polish: start above the root (by the measured error) so Newton on the convex function decreases to it.
    # Take the fewest steps that reach the target, or that come within 25% of the best reachable error.
    cands = [dataclasses.replace(tab, max_error=err)]
    for polish in range(1, 5):
        cand = dataclasses.replace(tab, start_bias=2.0 * err, polish=polish)
        cands.append(dataclasses.replace(cand, max_error=measure(cand, truth)))
    best = min(c.max_error for c in cands)
    return next(c for c in cands if c.max_error <= max(target, 1.25 * best))


def nonzero_root(r: jax.Array, q: float) -> jax.Array:
    """``w(r)`` on ``[0, r*]``: the nonzero stationary point of the normalised ℓq prox, in r's dtype."""
    tab = root_table(q, jnp.dtype(r.dtype).name)
    v = _evaluate(tab, r, q, jnp)
    return jax.lax.integer_pow(v, tab.d) if tab.d > 1 else v


def nonzero_shrinkage(r: jax.Array, q: float) -> jax.Array:
    """``1 − w(r)``: the fraction of ``z`` that the nonzero root removes. In the direct form this is the
    expansion ``r·ψ(r)`` itself, one subtraction fewer than ``1 − w`` and accurate relative to itself as
    ``r → 0``; otherwise ``1 − w``."""
    tab = root_table(q, jnp.dtype(r.dtype).name)
    if tab.direct:
        return _r_times_expansion(tab, r, jnp)
    return 1 - nonzero_root(r, q)
