"""Sparse kernels as compressed values + indices: unstructured (flat indices, or BCOO) and N:M (tensor-core layout).

A coordinate counts as zero only when its bit pattern is ``+0.0``; every other entry (``-0.0`` and NaN included)
is stored, so :meth:`unpack` gives back the kernel bit for bit.

**N:M** (:func:`export_nm`): the kernel is seen as a matrix ``A`` of shape ``(rows, K)`` whose row is one output
unit and whose ``K`` axis is the blocking (reduction) axis — for a Dense kernel ``(in, out)``, ``A = kernelᵀ``; for a
conv kernel ``(h, w, in, out)`` blocked along ``in``, a row is one ``(out, h, w)`` and ``K = in``. Each block of
``m`` consecutive entries of a row keeps exactly ``n`` of them: ``values`` is ``(rows, K·n/m)`` (block ``g``'s kept
entries at ``n·g … n·g+n−1``, in increasing position), and the position of each kept entry inside its block is a
``⌈log₂ m⌉``-bit code (:mod:`~proxgen_jax.compaction.bits` order, per row). For 2:4 this is the metadata of
NVIDIA's sparse tensor cores (PTX ``mma.sp``, 16-bit types): per block a 4-bit nibble ``i₀ | i₁ << 2`` with
``i₀ < i₁``, nibble ``g`` at bits ``4g mod 16`` of the row's 16-bit word ``g // 4`` (little-endian). Blocks with
fewer than ``n`` stored entries are padded with their lowest unused positions (which hold ``+0.0``). The per-tile
interleaving that CUTLASS applies to this metadata before an ``mma.sp`` is a fixed permutation of the words and is
not done here.

Example:
  >>> import numpy as np
  >>> k = np.array([[1.0, 0.0], [0.0, 0.0], [2.0, 3.0], [0.0, 4.0]], np.float32)   # (in=4, out=2)
  >>> e = export_nm(k, 2, 4)
  >>> e.values.tolist(), e.metadata.tolist()     # row 0: positions (0, 2); row 1: (2, 3)
  ([[1.0, 2.0], [3.0, 4.0]], [[8], [14]])
  >>> bool((e.unpack() == k).all()), export_sparse(k).nnz
  (True, 4)
"""

from __future__ import annotations

import dataclasses

import numpy as np
from jax.experimental import sparse as jsparse

from proxgen_jax.compaction.bits import bit_view, pack_bits, unpack_bits


class ExportError(ValueError):
    """A kernel cannot be represented exactly in the requested export format."""


def _stored(a: np.ndarray) -> np.ndarray:
    """Entries that must be stored: every bit pattern other than ``+0.0``."""
    return bit_view(a) != 0


@dataclasses.dataclass
class SparseKernel:
    """An unstructured sparse kernel: ``values[j]`` sits at flat (C-order) index ``indices[j]`` of ``shape``."""

    values: np.ndarray
    indices: np.ndarray
    shape: tuple

    @property
    def nnz(self) -> int:
        return int(self.values.size)

    @property
    def nbytes(self) -> int:
        """Bytes of the stored arrays (values and indices)."""
        return int(self.values.nbytes + self.indices.nbytes)

    @property
    def dense_nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.values.dtype.itemsize

    def unpack(self) -> np.ndarray:
        out = np.zeros(int(np.prod(self.shape, dtype=np.int64)), self.values.dtype)
        out[self.indices.astype(np.int64)] = self.values
        return out.reshape(self.shape)


def export_sparse(kernel) -> SparseKernel:
    """The stored entries of ``kernel`` as values + flat indices (uint32, or uint64 beyond 2³² entries).

    Args:
      kernel: any float array (e.g. trained with ``prox_l0`` / ``prox_lq`` / ``prox_sparsity``).

    Returns:
      A :class:`SparseKernel`; ``.unpack()`` (or :func:`~proxgen_jax.compaction.unpack`) rebuilds it bit for bit.

    Example:
      >>> import numpy as np
      >>> e = export_sparse(np.array([[0.0, 2.5], [0.0, 0.0]], np.float32))
      >>> e.values.tolist(), e.indices.tolist(), e.nbytes, e.dense_nbytes
      ([2.5], [1], 8, 16)
    """
    a = np.asarray(kernel)
    flat = a.reshape(-1)
    idx = np.flatnonzero(_stored(flat))
    itype = np.uint32 if flat.size <= np.iinfo(np.uint32).max else np.uint64
    return SparseKernel(flat[idx].copy(), idx.astype(itype), tuple(a.shape))


def to_bcoo(kernel, *, signed_zeros: str = "refuse") -> jsparse.BCOO:
    """``kernel`` as a ``jax.experimental.sparse.BCOO`` holding exactly its stored entries (``.todense()`` exact).

    ``BCOO.todense`` scatters into ``+0.0``, so a stored ``-0.0`` would come back as ``+0.0``: with
    ``signed_zeros="refuse"`` (default) such a kernel raises :class:`ExportError`; ``"drop"`` leaves ``-0.0`` out
    (equal as a number, not as a bit pattern). :func:`export_sparse` keeps them.

    Example:
      >>> import numpy as np
      >>> b = to_bcoo(np.array([[0.0, 2.5], [-1.0, 0.0]], np.float32))
      >>> b.nse, b.indices.tolist()
      (2, [[0, 1], [1, 0]])
    """
    a = np.asarray(kernel)
    if signed_zeros not in ("refuse", "drop"):
        raise ExportError(f"`signed_zeros` must be 'refuse' or 'drop', got {signed_zeros!r}.")
    negz = bit_view(a) == bit_view(np.asarray(-0.0, a.dtype))
    if negz.any() and signed_zeros == "refuse":
        raise ExportError(f"the kernel holds {int(negz.sum())} entries equal to -0.0, which BCOO.todense() returns "
                          "as +0.0; pass signed_zeros='drop' to accept that, or use export_sparse (bit-exact).")
    coords = np.argwhere(_stored(a) & ~negz).astype(np.int32)
    values = a[tuple(coords.T)] if a.ndim else a.reshape(-1)
    return jsparse.BCOO((values, coords), shape=a.shape, indices_sorted=True, unique_indices=True)


def _rows_k(a: np.ndarray, axis: int) -> tuple[np.ndarray, tuple]:
    """``a`` as the matrix ``(rows, K)`` of the module docstring, and the permuted shape to undo it."""
    order = [d for d in range(a.ndim) if d not in (axis, a.ndim - 1)]
    perm = ([a.ndim - 1] if axis != a.ndim - 1 else []) + order + [axis]
    t = np.transpose(a, perm)
    return t.reshape(-1, a.shape[axis]), (perm, t.shape)


@dataclasses.dataclass
class NMKernel:
    """An ``n:m`` kernel: kept ``values`` ``(rows, K·n/m)`` and per-row packed position codes ``metadata``."""

    values: np.ndarray
    metadata: np.ndarray
    n: int
    m: int
    axis: int
    shape: tuple

    @property
    def code_bits(self) -> int:
        return max(int(np.ceil(np.log2(self.m))), 1)

    @property
    def nbytes(self) -> int:
        return int(self.values.nbytes + self.metadata.nbytes)

    @property
    def dense_nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.values.dtype.itemsize

    def positions(self) -> np.ndarray:
        """Position inside its block of every kept entry, ``(rows, K·n/m)``."""
        rows, kept = self.values.shape
        return np.stack([unpack_bits(r, self.code_bits, kept) for r in self.metadata]) if rows else \
            np.zeros((0, kept), np.uint32)

    def unpack(self) -> np.ndarray:
        rows, kept = self.values.shape
        k = kept * self.m // self.n
        mat = np.zeros((rows, k), self.values.dtype)
        cols = (np.arange(kept) // self.n) * self.m + self.positions().astype(np.int64)
        np.put_along_axis(mat, cols, self.values, axis=1)
        a = np.zeros(self.shape, self.values.dtype)
        _, (perm, tshape) = _rows_k(a, self.axis)
        return np.transpose(mat.reshape(tshape), np.argsort(perm))


def export_nm(kernel, n: int = 2, m: int = 4, *, axis: int | None = None) -> NMKernel:
    """``kernel`` in the ``n:m`` compressed layout of the module docstring (2:4: sparse tensor cores').

    Args:
      kernel: a float array with at most ``n`` stored entries in every block of ``m`` along ``axis`` (e.g. trained
        with :func:`~proxgen_jax.prox_nm`).
      n, m: the pattern, ``0 < n ≤ m``.
      axis: the blocking axis; ``None``: the reduction axis (0 for a Dense kernel, −2 for a conv kernel), as in
        :func:`~proxgen_jax.prox_nm`.

    Returns:
      An :class:`NMKernel` (``.unpack()`` rebuilds ``kernel`` bit for bit).

    Raises:
      ExportError: the axis length is not a multiple of ``m``, or a block holds more than ``n`` stored entries
        (named by its position).

    Example:
      >>> import numpy as np
      >>> k = np.zeros((8, 3), np.float32); k[[1, 2, 4, 7], :] = 1.0       # (in=8, out=3): 2:4 along ``in``
      >>> e = export_nm(k, 2, 4)
      >>> e.values.shape, e.metadata[0].tolist()       # blocks (1, 2), (0, 3): nibbles 0b1001, 0b1100
      ((3, 4), [201])
      >>> e.dense_nbytes, e.nbytes                             # 96 → 48 (values) + 3 (metadata)
      (96, 51)
    """
    a = np.asarray(kernel)
    n, m = int(n), int(m)
    if not 0 < n <= m:
        raise ExportError(f"need 0 < n <= m, got n={n}, m={m}.")
    if a.ndim < 2:
        raise ExportError(f"N:M export needs a kernel with ≥ 2 axes, got shape {a.shape}.")
    ax = (0 if a.ndim == 2 else a.ndim - 2) if axis is None else int(axis) % a.ndim
    if a.shape[ax] % m:
        raise ExportError(f"axis {ax} has length {a.shape[ax]}, not a multiple of m={m}.")
    mat, _ = _rows_k(a, ax)
    blocks = mat.reshape(mat.shape[0], -1, m)
    stored = _stored(blocks)
    counts = stored.sum(-1)
    if counts.size and counts.max() > n:
        r, g = np.argwhere(counts > n)[0]
        raise ExportError(f"block {g} (entries {g * m}…{g * m + m - 1} along axis {ax}) of row {r} holds "
                          f"{counts[r, g]} nonzeros; {n}:{m} allows {n}. The kernel is not {n}:{m} sparse.")
    # stored positions first, then the lowest unused ones; each block's n picks sorted by position
    rank = np.where(stored, 0, 1) * m + np.arange(m)
    pos = np.sort(np.argsort(rank, axis=-1, kind="stable")[..., :n], axis=-1)
    values = np.take_along_axis(blocks, pos, axis=-1).reshape(mat.shape[0], -1)
    bits = max(int(np.ceil(np.log2(m))), 1)
    meta = np.stack([pack_bits(p, bits) for p in pos.reshape(mat.shape[0], -1)]) if mat.shape[0] else \
        np.zeros((0, 0), np.uint8)
    return NMKernel(values, meta, n, m, ax, tuple(a.shape))
