"""ℓq quasi-norms, ``r(x) = |x|^q`` for 0 ≤ q ≤ 1 (ℓ0, ℓ½, ℓ⅔ and every q in between)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from proxgen_jax._validation import check_in_range
from proxgen_jax.regularizers import _metric_forms
from proxgen_jax.regularizers.base import (
    ElementwiseRegularizer,
    metric_prox_args,
    penalty_args,
    prox_args,
)
from proxgen_jax.regularizers.fast_pow import pow_f32
from proxgen_jax.regularizers.l0 import L0
from proxgen_jax.regularizers.l1 import L1
from proxgen_jax.regularizers.lq_root import nonzero_root, threshold_ratio


def _inv_cbrt_f32(t):
    """``t^{−1/3}`` for normal float32 ``t > 0`` as a fraction ``(numerator, denominator)``: a bit-level first
    guess (≈4 %), one division-free Newton step on ``y^{−3} = t`` (≈2e-3), then one Halley step
    ``y(u + 2)/(2u + 1)``, ``u = t·y³`` (cubic: relative error ≤ 2e-7 for ``t`` in 1e-30…1e30, as three Newton
    steps give, with five fewer vector instructions). The caller divides once, last: an expensive op with one
    user keeps XLA's loop fusion whole. Cheaper on XLA:CPU than ``exp(−log(t)/3)``."""
    bits = jax.lax.bitcast_convert_type(t, jnp.int32).astype(jnp.float32)
    y = jax.lax.bitcast_convert_type((1419967116.0 - bits * (1.0 / 3.0)).astype(jnp.int32), jnp.float32)
    y = y * (4.0 - t * (y * y * y)) * (1.0 / 3.0)
    u = t * (y * y * y)
    return y * (u + 2.0), 2.0 * u + 1.0


def _ratio(mu, t, q):
    """``r = μ·t^{q−2}`` for ``t ≥ 0`` without ``pow``, ``μ`` multiplied or divided first so that ``μ = 0`` gives 0.

    ``t`` is floored at :func:`_ratio_floor` (``r`` is then far above ``r*`` for any normal ``μ > 0``: the prox
    is 0, as it is for the true ``t``). q = ½: ``μ/(t√t)`` — a square root and a division, which run beside the
    other arithmetic on the CPU's divider, ~10 vector instructions cheaper than ``rsqrt`` with its Newton
    refinement. q = ⅔ in float32: ``μ·(t^{−1/3})⁴`` from a bit-level inverse cube root refined to a fraction,
    divided once. Other q in float32: :func:`~proxgen_jax.regularizers.fast_pow.pow_f32` (exponent bits and two
    short polynomials; with XLA's ``exp``/``log`` the ℓq(0.3) step was 1.6× ``optax.adam``, with these ~1.4×).
    Else ``μ·exp((q−2)·log t)``, the exponent capped below the dtype's overflow.
    """
    if t.dtype == jnp.float32 and q != 0.5 and not _two_thirds_f32(q, t.dtype):
        return mu * pow_f32(t, q - 2.0)  # floors t itself; saturates at 2^127 (r is then far above r*)
    t = jnp.maximum(t, _ratio_floor(q, t.dtype))
    if q == 0.5:
        return mu / (t * jnp.sqrt(t))
    if _two_thirds_f32(q, t.dtype):
        return _two_thirds_ratio(mu, t, 1.0)
    cap = 0.9 * float(np.log(np.finfo(t.dtype).max))
    return mu * jnp.exp(jnp.minimum((q - 2.0) * jnp.log(t), cap))


def _two_thirds_f32(q, dtype) -> bool:
    return abs(q - 2.0 / 3.0) < 1e-15 and dtype == jnp.float32


def _two_thirds_ratio(mu, t, c):
    """``μ·t^{−4/3}/c`` for float32 ``t ≥ tiny``: ``(t^{−1/3})⁴`` as a fraction, ``μ`` multiplied in first (so that
    ``μ = 0`` gives 0 where ``t^{−4/3}`` alone overflows) and one division, which ``c = C_t + δ`` joins."""
    num, den = _inv_cbrt_f32(t)  # t^{−1/3} = num/den
    den2 = den * den
    return (((mu * num) * num) * (num * num)) / (c * (den2 * den2))


def _ratio_floor(q, dtype) -> float:
    """The smallest ``t`` used in :func:`_ratio`: ``t^{2−q}`` stays a normal number (q = ½), else ``tiny``."""
    tiny = float(jnp.finfo(dtype).tiny)
    return tiny ** (1.0 / 1.5) * 2.0 if q == 0.5 else tiny


@dataclasses.dataclass(frozen=True)
class Lq(ElementwiseRegularizer):
    """The ℓq penalty ``λ Σ_i |θ_i|^q``, ``0 ≤ q ≤ 1`` (``q = 0``: ℓ0, ``q = 1``: ℓ1).

    The prox (global minimiser of ``λ|x|^q + (x − z)²/(2·step)``) is zero when
    ``|z| ≤ τ = (2−q)/(2−2q)·(2μ(1−q))^{1/(2−q)}`` with ``μ = step·λ`` — for ℓ½ ``τ = (3/2)μ^{2/3}`` (Xu et al.
    2012), for ℓ⅔ ``τ = 2(2μ/3)^{3/4}`` (Cao, Sun & Xu 2013) — and otherwise the larger root of
    ``x + μ q x^{q−1} = |z|`` with the sign of ``z``. The threshold is tested on the dimensionless ratio
    ``μ|z|^{q−2}`` and the root comes from :mod:`proxgen_jax.regularizers.lq_root` (a fitted expansion plus
    Newton polishing where needed), so no ``cbrt``/``arccos`` is evaluated in the training step. At the
    threshold both ``0`` and the root are minimisers; we return ``0``.

    The subgradient ``λ q |x|^{q−1} sign(x)`` is what subgradient training uses; it blows up as ``x → 0``
    (the paper's explanation of slow subgradient convergence). At exactly ``x = 0`` we return ``0`` (the
    limiting subdifferential there is all of ℝ), where autograd of ``|x|**q`` would give NaN.

    Args:
      q: the exponent, in ``[0, 1]``.
    """

    q: float = 0.5

    def __post_init__(self):
        check_in_range("q", self.q, 0.0, 1.0)
        object.__setattr__(self, "q", float(self.q))

    def penalty(self, x, lam):
        x, lam = penalty_args(x, lam)
        if self.q == 0.0:
            return L0().penalty(x, lam)
        t = jnp.abs(x)
        return lam * jnp.where(t > 0, jnp.power(jnp.where(t > 0, t, 1), self.q), jnp.zeros_like(t))

    def prox(self, z, step, lam):
        if self.q == 0.0:
            return L0().prox(z, step, lam)
        if self.q == 1.0:
            return L1().prox(z, step, lam)
        z, step, lam = prox_args(z, step, lam)
        return self._prox_from_ratio(z, self.step_ratio(z, step, lam))

    def step_ratio(self, z, step, lam):
        """``r = step·λ·|z|^{q−2}`` for ``0 < q < 1`` (arguments already in one dtype): the prox is ``0`` iff
        ``r ≥ r*``. ``|z|`` is floored (see :func:`_ratio`): ``r`` is huge at ``z = 0`` when ``step·λ > 0``
        (prox 0), 0 when ``step·λ = 0`` (identity), NaN when ``z`` or ``step·λ`` is NaN."""
        return _ratio(step * lam, jnp.abs(z), self.q)

    def metric_ratio(self, z, alpha, c, lam):
        """``r = αλ/(c·|z|^{2−q})``, the ratio for the step ``α/c`` with fewer divisions where ``q`` allows."""
        if self.q == 0.5:
            # One division instead of two. The denominator is floored at the smallest normal number
            # (c·t^{3/2} may underflow, t = 0 included: r is then huge, prox 0, or 0 when λ = 0); overflow
            # gives r = 0.
            t = jnp.abs(z)
            return (alpha * lam) / jnp.maximum(c * (t * jnp.sqrt(t)), jnp.finfo(z.dtype).tiny)
        if _two_thirds_f32(self.q, z.dtype):  # a = α/c joins the inverse cube root's division
            t = jnp.maximum(jnp.abs(z), jnp.finfo(z.dtype).tiny)
            return _two_thirds_ratio(alpha * lam, t, c)
        return self.step_ratio(z, alpha / c, lam)

    def _prox_from_ratio(self, z, r):
        """``0`` where ``r ≥ r*``, else ``z·w(r)`` (module :mod:`~proxgen_jax.regularizers.lq_root`)."""
        r, zero = self.clip_ratio(r)
        return jnp.where(zero, jnp.zeros_like(z), z * nonzero_root(r, self.q))

    def clip_ratio(self, r):
        """``(min(r, r*), r ≥ r*)``: the ratio where the nonzero root is evaluated, and where the prox is 0
        instead (at the tie ``r = r*`` both minimise; we take 0). The ``min`` makes it the division's one user,
        which keeps XLA's loop fusion whole; NaN stays NaN and is not ``≥ r*``."""
        r_star = threshold_ratio(self.q)
        r = jnp.minimum(r, r_star)
        return r, r >= r_star

    def subgradient(self, x, lam):
        if self.q == 0.0:
            return L0().subgradient(x, lam)
        if self.q == 1.0:
            return L1().subgradient(x, lam)
        x, lam = penalty_args(x, lam)
        t = jnp.abs(x)
        t_safe = jnp.where(t > 0, t, jnp.ones_like(t))
        d = lam * self.q * jnp.power(t_safe, self.q - 1.0) * jnp.sign(x)
        return jnp.where(t > 0, d, jnp.where(jnp.isnan(x), x, jnp.zeros_like(d)))


def lq(q: float) -> ElementwiseRegularizer:
    """``L0()`` for ``q = 0``, ``L1()`` for ``q = 1``, else ``Lq(q)``."""
    check_in_range("q", q, 0.0, 1.0)
    if q == 0:
        return L0()
    if q == 1:
        return L1()
    return Lq(q)


@_metric_forms.prox_metric.register(Lq)
def _prox_metric(regularizer, z, learning_rate, metric, lam):
    if regularizer.q == 0.0:
        return _metric_forms.prox_metric(L0(), z, learning_rate, metric, lam)
    if regularizer.q == 1.0:
        return _metric_forms.prox_metric(L1(), z, learning_rate, metric, lam)
    z, alpha, c, lam = metric_prox_args(z, learning_rate, metric, lam)
    return regularizer._prox_from_ratio(z, regularizer.metric_ratio(z, alpha, c, lam))
