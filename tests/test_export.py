"""Export of sparse, N:M and quantised kernels: bit-exact round trips (also through Orbax), bit counts, the 2:4
metadata against an independent NumPy construction, and refusals of what a format cannot hold.

Kernels come from the library's own producers where one exists (``pg.prox_nm`` steps, ``pg.quantize`` with fitted
scales) and from hand-built patterns with the awkward bits (``-0.0``, NaN, under-full N:M blocks).
"""

from __future__ import annotations

import numpy as np
import optax
import pytest

import proxgen_jax as pg
from proxgen_jax.compaction import ExportError, NMKernel, PackedKernel, SparseKernel, storage_report
from proxgen_jax.compaction.bits import bits_equal, pack_bits, unpack_bits


def rng(seed=0):
    return np.random.default_rng(seed)


# ------------------------------------------------------------------------------------------------- bit streams
@pytest.mark.parametrize("bits", [1, 2, 3, 5, 8, 13])
def test_pack_bits_matches_a_bit_by_bit_reference(bits):
    codes = rng(bits).integers(0, 2 ** bits, size=37)
    packed = pack_bits(codes, bits)
    assert packed.dtype == np.uint8 and packed.size == -(-37 * bits // 8)
    ref = np.zeros(packed.size * 8, np.uint8)                   # bit i of the stream = bit i%8 of byte i//8
    for j, c in enumerate(codes):
        for i in range(bits):
            ref[j * bits + i] = (int(c) >> i) & 1
    want = [sum(int(ref[8 * b + i]) << i for i in range(8)) for b in range(packed.size)]
    assert packed.tolist() == want
    np.testing.assert_array_equal(unpack_bits(packed, bits, 37), codes)
    with pytest.raises(ValueError, match="does not fit"):
        pack_bits([2 ** bits], bits)


# ------------------------------------------------------------------------------------------ unstructured sparse
def awkward_sparse(shape=(6, 5, 4), density=0.3, seed=0):
    r = rng(seed)
    a = np.where(r.random(shape) < density, r.normal(size=shape), 0.0).astype(np.float32)
    a.flat[1], a.flat[2] = -0.0, np.nan
    return a


def test_export_sparse_round_trip_bits_and_bytes():
    a = awkward_sparse()
    e = pg.export_sparse(a)
    stored = int(np.sum(a.view(np.uint32) != 0))                 # -0.0 and NaN are stored
    assert e.nnz == stored and e.nbytes == stored * (4 + 4) and e.dense_nbytes == a.size * 4
    assert bits_equal(pg.unpack(e), a)
    assert np.all(a.reshape(-1)[e.indices.astype(int)].view(np.uint32) == e.values.view(np.uint32))


def test_bcoo_holds_the_nonzeros_and_refuses_signed_zeros():
    a = awkward_sparse()
    with pytest.raises(ExportError, match="-0.0"):
        pg.to_bcoo(a)
    b = pg.to_bcoo(a, signed_zeros="drop")
    assert b.nse == int(np.sum(a.view(np.uint32) != 0)) - 1
    d = np.asarray(b.todense())
    np.testing.assert_array_equal(d.view(np.uint32)[a == a], np.where(a == 0, 0.0, a).astype(np.float32)
                                  .view(np.uint32)[a == a])
    c = a.copy()
    c.flat[1] = 0.0
    assert bits_equal(np.asarray(pg.to_bcoo(c).todense()), c)


# ------------------------------------------------------------------------------------------------------ N:M 2:4
def reference_24_metadata(rows_k: np.ndarray) -> np.ndarray:
    """Per row, uint16 words: block g's nibble (i0 | i1 << 2, i0 < i1 the kept positions; blocks with fewer nonzeros
    padded with their lowest zero positions) at bits 4·(g mod 4) of word g // 4 — built with Python loops."""
    rows, k = rows_k.shape
    words = np.zeros((rows, -(-k // 16)), np.uint16)
    for r in range(rows):
        for g in range(k // 4):
            block = rows_k[r, 4 * g:4 * g + 4]
            nz = [i for i in range(4) if block[i].view(np.uint32) != 0]
            pad = [i for i in range(4) if i not in nz]
            i0, i1 = sorted((nz + pad)[:2])
            words[r, g // 4] |= (i0 | (i1 << 2)) << (4 * (g % 4))
    return words


def random_24(shape, axis, seed=0, full=False):
    """A kernel with at most 2 nonzeros per block of 4 along ``axis`` (some blocks with 0 or 1)."""
    r = rng(seed)
    a = np.moveaxis(r.normal(size=shape).astype(np.float32), axis, -1)
    blocks = a.reshape(-1, 4)
    for b in blocks:
        keep = r.choice(4, size=2 if full else r.integers(0, 3), replace=False)
        b[[i for i in range(4) if i not in keep]] = 0.0
    return np.moveaxis(blocks.reshape(a.shape), -1, axis)


@pytest.mark.parametrize("shape,axis", [((32, 6), None), ((3, 3, 16, 5), None), ((8, 12), 1)])
def test_export_24_against_reference_layout(shape, axis):
    a = random_24(shape, 0 if axis is None and len(shape) == 2 else (-2 if axis is None else axis))
    e = pg.export_nm(a, 2, 4, axis=axis)
    ax = e.axis
    rows_k = np.moveaxis(a, ax, -1)
    if ax != a.ndim - 1:        # a row = one output unit (then the other axes), K = the blocking axis
        rows_k = np.moveaxis(rows_k, a.ndim - 2, 0)
    rows_k = rows_k.reshape(-1, a.shape[ax])
    k = rows_k.shape[1]
    assert e.values.shape == (rows_k.shape[0], k // 2)
    ref = reference_24_metadata(rows_k)
    np.testing.assert_array_equal(e.metadata.view("<u2") if k % 16 == 0 else e.metadata,
                                  ref if k % 16 == 0 else ref.view(np.uint8)[:, :e.metadata.shape[1]])
    assert bits_equal(pg.unpack(e), a)
    assert e.nbytes == e.values.nbytes + rows_k.shape[0] * -(-k // 8)   # 2 bits × k/2 kept per row, whole bytes


def test_nm_kernel_from_prox_nm_round_trips_and_sizes():
    """A kernel after ProxGen 2:4 steps (``pg.prox_nm``): exported, half the values plus 1/16 of the dense bytes."""
    w = {"kernel": rng(3).normal(size=(64, 16)).astype(np.float32)}
    tx = optax.chain(pg.scale_by_adam_precond(), pg.prox_nm(2, 4, 1e-2))
    state = tx.init(w)
    for t in range(3):
        g = {"kernel": rng(10 + t).normal(size=(64, 16)).astype(np.float32)}
        u, state = tx.update(g, state, w)
        w = optax.apply_updates(w, u)
    k = np.asarray(w["kernel"])
    e = pg.export_nm(k, 2, 4)
    assert bits_equal(pg.unpack(e), k)
    assert e.dense_nbytes == 64 * 16 * 4 and e.nbytes == 64 * 16 * 4 // 2 + 64 * 16 // 8


def test_nm_refusals():
    a = random_24((16, 3), 0)
    a[4:7, 1] = 1.0                                            # 3 nonzeros in block 1 of output unit 1
    with pytest.raises(ExportError, match=r"block 1 .* row 1 holds 3 nonzeros"):
        pg.export_nm(a, 2, 4)
    with pytest.raises(ExportError, match="multiple of m=4"):
        pg.export_nm(np.zeros((6, 2), np.float32), 2, 4)
    b = random_24((16, 3), 0)
    b[0, 0], b[1, 0] = -0.0, np.nan                            # stored: a 2:4 block may hold them, exactly
    b[2:4, 0] = 0.0
    assert bits_equal(pg.unpack(pg.export_nm(b, 2, 4)), b)


@pytest.mark.parametrize("n,m", [(1, 4), (2, 8), (3, 8)])
def test_general_nm_round_trip(n, m):
    r = rng(n * m)
    a = r.normal(size=(5, 4 * m)).astype(np.float32)
    for row in a.reshape(-1, m):
        row[r.choice(m, size=m - n, replace=False)] = 0.0
    e = pg.export_nm(a, n, m, axis=1)
    assert e.code_bits == int(np.ceil(np.log2(m))) and e.values.shape == (5, 4 * n)
    assert bits_equal(pg.unpack(e), a)


# ------------------------------------------------------------------------------------------------- quantised
@pytest.mark.parametrize("levels,bits,grid", [("binary", 1, pg.BINARY_LEVELS), ("ternary", 2, pg.TERNARY_LEVELS),
                                              (2, 2, pg.uniform_levels(2)), (4, 4, pg.uniform_levels(4))])
def test_quantize_output_packs_bit_exactly(levels, bits, grid):
    """``pg.quantize`` with per-channel fitted scales → packed at ``bits`` per weight → the same bits back."""
    w = {"kernel": rng(bits).normal(size=(128, 8)).astype(np.float32)}
    q = np.asarray(pg.quantize(w, grid, scale="channel")["kernel"])
    p = pg.pack_quantized(q, levels)
    assert p.bits == bits and p.codes.nbytes == 128 * 8 * bits // 8 and p.scales.shape == (8,)
    assert bits_equal(pg.unpack(p), q)
    assert (p.dense_nbytes, p.nbytes) == (128 * 8 * 4, 128 * 8 * bits // 8 + 8 * 4)   # codes + one float32 scale/ch


def test_binary_storage_is_about_32x_smaller():
    s = np.abs(rng(1).normal(size=64)).astype(np.float32) + 0.1
    k = (np.sign(rng(2).normal(size=(1024, 64))) * s).astype(np.float32)
    p = pg.pack_quantized(k, "binary")
    assert p.nbytes == 1024 * 64 // 8 + 64 * 4
    assert 31.0 < p.dense_nbytes / p.nbytes < 32.0
    assert "binary (1 bit)" in storage_report({"w": p}) and "31.0×" in storage_report({"w": p})


def test_ternary_keeps_negative_zero_and_tensor_scale():
    z = rng(4).choice([-1.0, 0.0, 1.0], size=(40, 3)) * rng(5).choice([-1.0, 1.0], size=(40, 3))
    k = (np.float32(0.7) * z).astype(np.float32)               # −1·0 = −0.0, as a prox emits for negative z
    assert np.any(np.signbit(k) & (k == 0))
    p = pg.pack_quantized(k, "ternary", per_channel=False)
    assert p.scales.shape == (1,) and p.neg_zero_code == 3 and bits_equal(pg.unpack(p), k)


def test_quantized_refusals():
    k = np.array([[0.5, -0.5], [-0.5, 0.0]], np.float32)
    with pytest.raises(ExportError, match="channel 1 is not on a binary grid"):
        pg.pack_quantized(k, "binary")                          # a third value in a binary kernel
    with pytest.raises(ExportError, match="-0.0"):
        pg.pack_quantized(np.array([0.5, -0.0], np.float32), "binary", per_channel=False)
    with pytest.raises(ExportError, match="4 distinct values"):
        pg.pack_quantized(np.array([-1.0, 0.0, 1.0, 2.0], np.float32), "ternary", per_channel=False)
    with pytest.raises(ExportError, match="not on a 2-bit grid"):      # uneven spacing: no scale fits
        pg.pack_quantized(np.array([-1.5, -0.5, 0.5, 1.25], np.float32), 2, per_channel=False)


# ------------------------------------------------------------------------------------------------------ Orbax
def test_orbax_round_trip_is_bit_exact(tmp_path):
    import ml_dtypes
    q = np.asarray(pg.quantize({"k": rng(5).normal(size=(32, 4)).astype(np.float32)}, pg.uniform_levels(3),
                               scale="channel")["k"])
    export = {"sparse": pg.export_sparse(awkward_sparse()),
              "nm": pg.export_nm(random_24((3, 3, 8, 4), -2, full=True), 2, 4),
              "binary": pg.pack_quantized((np.sign(rng(6).normal(size=(16, 4))) * 0.25).astype(np.float32), "binary"),
              "ternary": pg.pack_quantized((0.5 * rng(7).choice([-1.0, 0.0, 1.0], size=(16, 4))).astype(np.float32),
                                           "ternary"),
              "3bit": pg.pack_quantized(q, 3),
              "dense_bf16": rng(8).normal(size=(4, 4)).astype(ml_dtypes.bfloat16)}
    pg.save_export(str(tmp_path / "ckpt"), export)
    back = pg.restore_export(str(tmp_path / "ckpt"))
    assert set(back) == set(export)
    for name, e in export.items():
        assert type(back[name]) is type(e)
        assert bits_equal(pg.unpack(back[name]), pg.unpack(e)), name
        if isinstance(e, (SparseKernel, NMKernel, PackedKernel)):
            assert back[name].nbytes == e.nbytes and back[name].shape == e.shape
    assert back["3bit"].bits == 3 and back["nm"].n == 2 and back["nm"].m == 4
