"""Quantised kernels packed: 1 bit per weight (binary), 2 (ternary), ``k`` (a ``2^k``-level grid), plus scales.

A kernel trained onto the levels ``s·L`` (base grid ``L``: ``pg.BINARY_LEVELS`` ``(−1, 1)``, ``pg.TERNARY_LEVELS``
``(−1, 0, 1)``, ``pg.uniform_levels(k)``; one scale ``s > 0`` per tensor or per output channel, as
:func:`~proxgen_jax.prox_quantize` and :func:`~proxgen_jax.quantize` produce) is stored as the index of each
weight's level, packed at ``⌈log₂|L|⌉`` bits (:mod:`~proxgen_jax.compaction.bits`), and the scales in the kernel's
dtype. Unpacking computes ``s · L[code]`` in that dtype, which must give back every trained weight *bit for bit*:
the scale of each channel is found as ``|w|_max / |ℓ|`` for the level ``ℓ`` that reproduces all of the channel's
values (the few neighbouring floats are tried too, since the trained ``s·ℓ`` was rounded). ``-0.0`` (which a
prox can emit for a negative zero) is kept as its own code when a grid with 0 has a spare code (ternary: code 3).

A kernel that is not on such a grid — a "binary" kernel with a third value, more distinct values per channel than
levels, values no single scale reproduces — raises :class:`~proxgen_jax.compaction.sparse_export.ExportError`
naming the channel.

Example:
  >>> import numpy as np
  >>> k = np.array([[0.5, -0.25], [-0.5, 0.25], [0.5, 0.25]], np.float32)
  >>> p = pack_quantized(k, "binary", per_channel=True)
  >>> p.bits, p.scales.tolist(), p.codes.tolist()        # codes 1,0,0,1,1,1 → bits 0b111001
  (1, [0.5, 0.25], [57])
  >>> bool((p.unpack() == k).all()), p.dense_nbytes // p.nbytes
  (True, 2)
"""

from __future__ import annotations

import dataclasses

import numpy as np

from proxgen_jax.compaction.bits import bit_view, bits_equal, pack_bits, unpack_bits
from proxgen_jax.compaction.sparse_export import ExportError

NAMED_LEVELS = {"binary": (-1.0, 1.0), "ternary": (-1.0, 0.0, 1.0)}


def _grid(levels) -> tuple[str, np.ndarray]:
    if isinstance(levels, str):
        if levels not in NAMED_LEVELS:
            raise ExportError(f"`levels` must be 'binary', 'ternary', a bit width or a grid, got {levels!r}.")
        return levels, np.asarray(NAMED_LEVELS[levels], np.float64)
    if isinstance(levels, (int, np.integer)):
        k = int(levels)
        if not 1 <= k <= 16:
            raise ExportError(f"a bit width must be in [1, 16], got {k}.")
        return f"{k}-bit", np.arange(-(2 ** k - 1), 2 ** k, 2, dtype=np.float64) / 2.0   # pg.uniform_levels(k)
    grid = np.asarray(levels, np.float64).reshape(-1)
    if grid.size < 2 or np.any(np.diff(grid) <= 0):
        raise ExportError("a grid of levels must hold at least 2 strictly increasing values.")
    return "custom", grid


@dataclasses.dataclass
class PackedKernel:
    """Packed codes (uint8 stream), scales ``(channels,)`` or ``(1,)``, the base grid, and the kernel's shape/dtype."""

    codes: np.ndarray
    scales: np.ndarray
    levels: np.ndarray
    bits: int
    shape: tuple
    kind: str
    neg_zero_code: int = -1

    @property
    def nbytes(self) -> int:
        """Bytes of the packed codes and the scales (the base grid is a constant of the format)."""
        return int(self.codes.nbytes + self.scales.nbytes)

    @property
    def dense_nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.scales.dtype.itemsize

    def unpack(self) -> np.ndarray:
        count = int(np.prod(self.shape, dtype=np.int64))
        codes = unpack_bits(self.codes, self.bits, count).reshape(-1, self.scales.size).astype(np.int64)
        grid = self.levels.astype(self.scales.dtype)
        vals = self.scales[None, :] * grid[np.minimum(codes, grid.size - 1)]
        vals = np.where(codes == self.neg_zero_code, np.array(-0.0, self.scales.dtype), vals)
        return vals.astype(self.scales.dtype).reshape(self.shape)


def _next(s: np.ndarray, direction: int, dtype) -> np.ndarray:
    """The neighbouring float of ``s ≥ 0`` in ``dtype`` (by bit pattern: works for bfloat16 too)."""
    b = bit_view(np.asarray(s, dtype))
    return np.asarray(b + b.dtype.type(1) if direction > 0 else max(int(b), 1) - 1, b.dtype).view(dtype)


def _channel_scale(v: np.ndarray, grid: np.ndarray, dtype) -> tuple[np.ndarray, np.ndarray] | None:
    """``(scale, codes)`` with ``scale·grid[codes]`` equal to ``v`` bit for bit, or ``None``."""
    g = grid.astype(dtype)
    big = float(np.max(np.abs(v.astype(np.float64)))) if v.size else 0.0
    cands = [np.asarray(0.0, dtype)] if big == 0.0 else []
    for ell in grid[grid != 0]:
        s0 = np.asarray(big / abs(ell), dtype)
        cands += [s0] + [_next(s0, d, dtype) for d in (-1, 1)]
    vb = bit_view(v)
    for s in cands:
        if not np.isfinite(s) or s < 0:
            continue
        table = bit_view((s * g).astype(dtype))
        hit = vb[:, None] == table[None, :]
        if np.all(hit.any(axis=1)):
            return s, np.argmax(hit, axis=1)
    return None


def pack_quantized(kernel, levels="binary", *, per_channel: bool = True) -> PackedKernel:
    """Packs a kernel whose weights lie on ``s·L`` (see the module docstring).

    Args:
      kernel: float array (the last axis = output channels when ``per_channel``).
      levels: ``"binary"`` (1 bit), ``"ternary"`` (2 bits), an int ``k`` (``pg.uniform_levels(k)``, ``k`` bits), or
        an increasing grid of base levels (``⌈log₂|L|⌉`` bits).
      per_channel: one scale per output channel (last axis); ``False``: one for the tensor.

    Returns:
      A :class:`PackedKernel` whose ``.unpack()`` is ``kernel`` bit for bit.

    Raises:
      ExportError: the kernel is not on the grid (the channel and the offending value are named).

    Example:
      >>> import numpy as np
      >>> k = np.array([0.0, -0.3, 0.3, 0.3], np.float32)
      >>> t = pack_quantized(k, "ternary", per_channel=False)
      >>> t.bits, t.codes.tolist(), bool((t.unpack() == k).all())     # codes 1, 0, 2, 2 (levels −1, 0, 1)
      (2, [161], True)
    """
    a = np.asarray(kernel)
    if not np.issubdtype(a.dtype, np.floating) and a.dtype.kind != "V":
        raise ExportError(f"pack_quantized needs a float kernel, got {a.dtype}.")
    kind, grid = _grid(levels)
    bits = max(int(np.ceil(np.log2(grid.size))), 1)
    neg_zero = grid.size if (0.0 in grid and grid.size < 2 ** bits) else -1
    cols = a.reshape(-1, a.shape[-1]) if (per_channel and a.ndim) else a.reshape(-1, 1)
    scales, codes = np.zeros(cols.shape[1], a.dtype), np.zeros(cols.shape, np.int64)
    negz = bit_view(np.asarray(-0.0, a.dtype))
    for c in range(cols.shape[1]):
        v = cols[:, c]
        is_nz = bit_view(v) == negz
        if neg_zero < 0 and is_nz.any():
            raise ExportError(f"channel {c} holds -0.0, which the {kind} grid {tuple(grid)} cannot store.")
        found = _channel_scale(v[~is_nz], grid, a.dtype)
        if found is None:
            vals = np.unique(v[~is_nz])
            raise ExportError(f"channel {c} is not on a {kind} grid s·{tuple(float(x) for x in grid)} for any "
                              f"scale s: it holds {vals.size} distinct values (e.g. {vals[:5].tolist()}); the grid "
                              f"has {grid.size} levels.")
        scales[c] = found[0]
        codes[~is_nz, c], codes[is_nz, c] = found[1], neg_zero
    out = PackedKernel(pack_bits(codes, bits), scales, grid, bits, tuple(a.shape), kind, neg_zero)
    if not bits_equal(out.unpack(), a):   # the format's own guarantee, checked on every export
        raise ExportError("internal: the packed kernel does not unpack bit for bit")
    return out
