"""Polynomial evaluation by Horner's rule, shared by the fitted kernels (``lq_root.py``, ``fast_pow.py``)."""

from __future__ import annotations


def horner(coeffs, u):
    """``Σ_k coeffs[k]·u^k`` by Horner's rule (at least one multiplication, so the result has u's shape); works for
    NumPy and jax.numpy arrays, and XLA:CPU contracts each step into one fused multiply-add."""
    acc = coeffs[-1] * u + coeffs[-2] if len(coeffs) > 1 else coeffs[0] + 0 * u
    for c in coeffs[-3::-1]:
        acc = acc * u + c
    return acc
