"""Bit streams for exported weights: ``k``-bit codes packed little-endian into bytes, and exact bit views.

Code ``j`` of a stream of ``b``-bit codes occupies bits ``j·b … j·b + b − 1`` of the stream, bit ``i`` of the
stream being bit ``i mod 8`` of byte ``i // 8`` (little-endian bit order, the order PTX's sparse-MMA metadata and
common packed-weight formats use). A 2-bit stream therefore holds 4 codes per byte, the first in the lowest bits.

Example:
  >>> import numpy as np
  >>> pack_bits(np.array([1, 2, 3, 0]), 2)
  array([57], dtype=uint8)
  >>> unpack_bits(np.array([57], np.uint8), 2, 4)
  array([1, 2, 3, 0], dtype=uint32)
"""

from __future__ import annotations

import numpy as np


def pack_bits(codes: np.ndarray, bits: int) -> np.ndarray:
    """Packs non-negative integer ``codes`` (< 2**bits, any shape, flattened in C order) into a uint8 stream."""
    bits = int(bits)
    if not 1 <= bits <= 32:
        raise ValueError(f"`bits` must be in [1, 32], got {bits!r}.")
    c = np.asarray(codes).reshape(-1).astype(np.uint64)
    if c.size and int(c.max()) >= (1 << bits):
        raise ValueError(f"a code ({int(c.max())}) does not fit in {bits} bits.")
    shifts = np.arange(bits, dtype=np.uint64)
    stream = ((c[:, None] >> shifts) & np.uint64(1)).astype(np.uint8).reshape(-1)   # bit j·b + i of the stream
    return np.packbits(stream, bitorder="little")


def unpack_bits(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """The first ``count`` ``bits``-bit codes of the uint8 stream ``packed`` (inverse of :func:`pack_bits`)."""
    bits, count = int(bits), int(count)
    stream = np.unpackbits(np.asarray(packed, np.uint8).reshape(-1), bitorder="little")[:bits * count]
    if stream.size != bits * count:
        raise ValueError(f"the stream holds {stream.size} bits, {bits * count} needed.")
    weights = (np.uint64(1) << np.arange(bits, dtype=np.uint64))
    return (stream.reshape(count, bits).astype(np.uint64) * weights).sum(axis=1).astype(np.uint32)


def bit_view(a: np.ndarray) -> np.ndarray:
    """The bit patterns of a float array as unsigned integers of the same width (``-0.0`` ≠ ``0.0``, NaNs kept)."""
    a = np.asarray(a)
    return a.view({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


def bits_equal(a, b) -> bool:
    """Whether two arrays have the same dtype, shape and bit patterns."""
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and bool(np.array_equal(bit_view(a), bit_view(b)))
