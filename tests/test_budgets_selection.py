"""The exact k-largest selection against NumPy's stable argsort: exactly k kept, ties to the lower flat index."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from proxgen_jax.solvers.selection import top_k_mask


def _expected(scores: np.ndarray, k: int) -> np.ndarray:
    """The k largest, ties to the lower index: a stable sort of −score (NaN first, as the largest)."""
    flat = scores.reshape(-1).astype(np.float64)
    key = np.where(np.isnan(flat), -np.inf, -flat)
    keep = np.zeros(flat.size, bool)
    keep[np.argsort(key, kind="stable")[:max(0, min(k, flat.size))]] = True
    return keep.reshape(scores.shape)


def _batch(rng, n, dtype, count=24):
    """``count`` problems of ``n`` scores (continuous, few distinct values, many decades with denormals and zeros,
    all equal, a bulk and a far tail) and their ``k`` (0, 1, n − 1, n, n + 3 or random)."""
    xs, ks = [], []
    for i in range(count):
        kind = i % 5
        if kind == 0:
            x = rng.standard_normal(n) ** 2
        elif kind == 1:
            x = rng.integers(0, 4, n).astype(np.float64) * 0.5
        elif kind == 2:
            x = 10.0 ** rng.uniform(-44, 30, n) * (rng.random(n) < 0.9)
        elif kind == 3:
            x = np.full(n, 0.25)
        else:
            x = np.where(rng.random(n) < 0.1, 1e6, 1.0) * rng.random(n)
        xs.append(x)
        ks.append(int(rng.choice([0, 1, n - 1, n, n + 3, int(rng.integers(0, n + 1))])))
    return np.stack(xs).astype(dtype), np.asarray(ks)


@pytest.mark.parametrize(("method", "dtype"), [("search", np.float32),
                                               pytest.param("search", np.float64, marks=pytest.mark.slow),
                                               ("bisect", np.float32)], ids=["search-f32", "search-f64", "bisect-f32"])
def test_top_k_mask_matches_stable_argsort(method, dtype):
    rng = np.random.default_rng(0)
    with jax.enable_x64(dtype == np.float64):
        select = jax.jit(jax.vmap(lambda s, k: top_k_mask(s, k, method=method)))
        xs, ks = _batch(rng, 2999, dtype)
        got = np.asarray(select(jnp.asarray(xs), jnp.asarray(ks)))
        for x, k, g in zip(xs, ks, got):
            np.testing.assert_array_equal(g, _expected(x, int(k)), err_msg=f"k={k}")


@pytest.mark.slow
def test_top_k_mask_on_large_smooth_scores_and_nan():
    rng = np.random.default_rng(2)
    x = (rng.standard_normal(300_001) ** 2).astype(np.float32)
    x[[5, 17]] = np.nan
    select = jax.jit(lambda s, k: top_k_mask(s, k, method="search"))
    for k in (1, 3, 30_000, 299_999):
        got = np.asarray(select(jnp.asarray(x), k))
        np.testing.assert_array_equal(got, _expected(x, k))
        assert got[5] and (got[17] or k == 1) and got.sum() == k


def test_top_k_mask_bf16_and_bad_method():
    x = jnp.asarray([0.5, 2.0, 2.0, 1.0], jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(top_k_mask(x, 2)), [False, True, True, False])
    with pytest.raises(ValueError, match="method"):
        top_k_mask(x, 1, method="sort")
