"""Base level sets ``L`` for quantisation: binary, ternary and symmetric uniform k-bit grids.

With a learned scale (``prox_quantize(..., scale="channel")``) the levels are ``s·L``, so only the *shape* of
``L`` matters; the conventions below follow torchao's PARQ so that ``s`` means the same thing there and here:

* :func:`uniform_levels` ``(bits)`` — PARQ's ``UnifQuantizer`` (``int_shift = ½``): all ``2^b`` codes, no zero,
  half-integers ``{−(2^{b−1} − ½), …, −½, ½, …, 2^{b−1} − ½}``; the spacing is 1, so ``s`` is the quantisation
  step. 1 bit: ``(−½, ½)`` (binary), 2 bits: ``(−3/2, −½, ½, 3/2)``.
* :func:`uniform_levels` ``(bits, zero=True)`` — PARQ's ``MaxUnifQuantizer`` (``int_shift = 1``): ``2^b − 1``
  integers ``{−(2^{b−1} − 1), …, 0, …, 2^{b−1} − 1}`` with an exact zero (2 bits: ternary).
* :data:`BINARY_LEVELS` ``(−1, 1)`` and :data:`TERNARY_LEVELS` ``(−1, 0, 1)`` — the presets of ProxQuant / LSBQ.
"""

from __future__ import annotations

BINARY_LEVELS: tuple[float, ...] = (-1.0, 1.0)
TERNARY_LEVELS: tuple[float, ...] = (-1.0, 0.0, 1.0)
MAX_BITS = 16


def uniform_levels(bits: int, *, zero: bool = False) -> tuple[float, ...]:
    """The symmetric uniform ``bits``-bit grid with spacing 1 (PARQ's conventions, see the module docstring).

    Args:
      bits: an int in ``[1, 16]`` (``zero=True``: in ``[2, 16]``).
      zero: ``False`` — ``2^b`` half-integer levels, no zero (PARQ ``UnifQuantizer``); ``True`` — ``2^b − 1``
        integer levels including 0 (PARQ ``MaxUnifQuantizer``).

    Example:
      >>> uniform_levels(2)
      (-1.5, -0.5, 0.5, 1.5)
      >>> uniform_levels(2, zero=True)
      (-1.0, 0.0, 1.0)
    """
    low = 2 if zero else 1
    if not isinstance(bits, int) or isinstance(bits, bool) or not low <= bits <= MAX_BITS:
        raise ValueError(f"`bits` must be an int in [{low}, {MAX_BITS}], got {bits!r}.")
    half = 2 ** (bits - 1)
    if zero:
        return tuple(float(i) for i in range(-(half - 1), half))
    return tuple(i + 0.5 for i in range(-half, half))
