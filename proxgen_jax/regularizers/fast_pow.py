"""``t^p`` for float32 arrays from the float's exponent bits and two short polynomials (no ``exp``/``log``).

XLA:CPU's float32 ``exp`` and ``log`` expand to about a hundred vector instructions together (counted in its
LLVM IR), which made the general-q ℓq prox (``r = μ·t^{q−2}``) the slowest elementwise step: 1.6× ``optax.adam``.
Here ``t = 2^k·m`` with ``m ∈ [√½, √2)`` is split with integer operations, ``log2 t = k + x·P(x)``
(``x = m − 1``, degree 7), and ``2^y = 2^n·Q(y − n)`` (``n = round(y)``, degree 6), the ``2^n`` added to the
exponent bits: about 40 elementwise operations, and the step is ~1.4×. The coefficients are fitted once, on the
host, by least squares at Chebyshev nodes; ``tests/test_fast_pow.py`` checks the very float32 evaluation used
here against NumPy: ``log2`` within 1.5e-7 plus half an ulp of the result, ``exp2`` within 1.1e-7 relative, and
``t^p`` within what rounding ``y = p·log2 t`` to float32 implies — the same limit as XLA's ``exp(p·log t)`` (up
to ~1e-5 relative where ``|y|`` nears 127).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from proxgen_jax.regularizers.horner import horner

_SQRT_HALF_BITS = int(np.array(np.sqrt(0.5), np.float32).view(np.int32))  # 0x3F3504F3
_LOG2_DEGREE = 7
_EXP2_DEGREE = 6


@functools.cache
def _coefficients(kind: str) -> tuple[float, ...]:
    """Least-squares fit at Chebyshev nodes: ``log2(1+x)/x`` on ``[√½−1, √2−1]`` or ``2^f`` on ``[−½, ½]``."""
    lo, hi, deg = (np.sqrt(0.5) - 1, np.sqrt(2.0) - 1, _LOG2_DEGREE) if kind == "log2" else (-0.5, 0.5, _EXP2_DEGREE)
    k = np.arange(4000)
    x = (lo + hi) / 2 + (hi - lo) / 2 * np.cos(np.pi * (k + 0.5) / len(k))
    y = np.log2(1 + x) / x if kind == "log2" else 2.0**x
    return tuple(float(c) for c in np.polynomial.polynomial.polyfit(x, y, deg))


def log2_f32(t: jax.Array) -> jax.Array:
    """``log2 t`` for normal float32 ``t > 0`` (error ≤ 1.5e-7 plus half an ulp of the result). Subnormals and 0
    are not handled (floor ``t`` at the smallest normal number first), nor NaN (its bits decode as a number)."""
    bits = jax.lax.bitcast_convert_type(t, jnp.int32)
    k = jax.lax.shift_right_arithmetic(bits - _SQRT_HALF_BITS, 23)  # t = 2^k·m, m ∈ [√½, √2)
    m = jax.lax.bitcast_convert_type(bits - jax.lax.shift_left(k, 23), jnp.float32)
    x = m - 1
    return k.astype(jnp.float32) + x * horner(_coefficients("log2"), x)


def exp2_f32(y: jax.Array) -> jax.Array:
    """``2^y`` for float32 ``y`` in ``[−126, 127]`` (relative error ≤ 1.1e-7); the caller clamps ``y``."""
    n = jnp.round(y)
    q = horner(_coefficients("exp2"), y - n)  # 2^f, f ∈ [−½, ½]
    bits = jax.lax.bitcast_convert_type(q, jnp.int32) + jax.lax.shift_left(n.astype(jnp.int32), 23)
    return jax.lax.bitcast_convert_type(bits, jnp.float32)


def pow_f32(t: jax.Array, p: float) -> jax.Array:
    """``t^p`` for float32 ``t ≥ 0`` (inf included) and a constant ``p``: ``t`` floored at the smallest normal
    number and ``p·log2 t`` clamped to ``[−126, 127]`` (the result saturates at ``2^−126`` and ``2^127``, never
    0 or inf); NaN gives NaN."""
    tiny = float(jnp.finfo(jnp.float32).tiny)
    y = p * log2_f32(jnp.maximum(t, tiny))
    return jnp.where(jnp.isnan(t), t, exp2_f32(jnp.clip(y, -126.0, 127.0)))  # NaN bits decode as a number
