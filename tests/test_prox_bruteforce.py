"""Every scalar prox equals the brute-force global minimiser of ``λ r(x) + (x − z)²/(2a)``.

10⁴ random ``(z, a, λ)`` per regularizer, ``a`` log-uniform over 1e-12…1e12, with ``z`` placed exactly on and
around every threshold of the 1-D problem (the thresholds only choose where to sample; the expected answer is
always the brute-force minimiser of ``tests/oracles.py``). Objective values are compared, since ties at thresholds
are real. In float32 the reference is the best objective a float32 answer can reach (the two float32 neighbours
of the float64 minimiser): with ``a = 1e-12`` one ulp of ``x`` costs ``ulp²/(2a)``. Within a few dozen ulps of a
quantisation level either neighbour is accepted (see the test).
"""

from __future__ import annotations

import functools
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import proxgen_jax as pg
from proxgen_jax.regularizers._metric_forms import prox_metric, prox_metric_scaled

from oracles import brute_force_prox, relative_gap, representable_reference

N = 10_000
# The private fused forms get 2,000 problems each in the default run (CI ≤ 10 min on 2 cores: the oracle is the
# cost) and the full 10⁴ with `-m slow`; the public `prox` always gets 10⁴.
SIZES = [pytest.param(2_000, id="n2000"), pytest.param(N, id="n10000", marks=pytest.mark.slow)]
TOL = {np.float32: 1e-5, np.float64: 1e-10}


def _lq_thresholds(q):
    def th(a, lam):
        mu = a * lam
        if q == 0:
            return [np.sqrt(2 * mu)]
        if q == 1:
            return [mu]
        beta = (2 * mu * (1 - q)) ** (1 / (2 - q))
        return [(2 - q) / (2 - 2 * q) * beta, beta]
    return th


def _mcp_thresholds(g):
    return lambda a, lam: [a * lam, g * lam, lam * np.sqrt(a * g)]


def _scad_thresholds(g):
    return lambda a, lam: [a * lam, lam * (1 + a), g * lam, lam * (g + 1 + a) / 2, lam * np.sqrt(a * (g + 1))]


def _shifted(th, shift):
    return lambda a, lam: [shift + t for t in th(a, lam)]


CASES = [
    ("l0", pg.L0(), "lq", dict(q=0), _lq_thresholds(0)),
    ("l1", pg.L1(), "lq", dict(q=1), _lq_thresholds(1)),
    ("l1/2", pg.Lq(0.5), "lq", dict(q=0.5), _lq_thresholds(0.5)),
    ("l2/3", pg.Lq(2 / 3), "lq", dict(q=2 / 3), _lq_thresholds(2 / 3)),
    ("lq0.3", pg.Lq(0.3), "lq", dict(q=0.3), _lq_thresholds(0.3)),
    ("lq0.9", pg.Lq(0.9), "lq", dict(q=0.9), _lq_thresholds(0.9)),
    ("mcp", pg.MCP(3.0), "mcp", dict(gamma=3.0), _mcp_thresholds(3.0)),
    ("mcp-small-gamma", pg.MCP(0.5), "mcp", dict(gamma=0.5), _mcp_thresholds(0.5)),
    ("scad", pg.SCAD(3.7), "scad", dict(gamma=3.7), _scad_thresholds(3.7)),
    ("scad-small-gamma", pg.SCAD(1.2), "scad", dict(gamma=1.2), _scad_thresholds(1.2)),
    ("binary-q0", pg.regularizers.binary(0.0), "quant", dict(q=0), _shifted(_lq_thresholds(0), 1.0)),
    ("binary-q1/2", pg.regularizers.binary(0.5), "quant", dict(q=0.5), _shifted(_lq_thresholds(0.5), 1.0)),
    ("binary-q2/3", pg.regularizers.binary(2 / 3), "quant", dict(q=2 / 3), _shifted(_lq_thresholds(2 / 3), 1.0)),
    ("binary-q1", pg.regularizers.binary(1.0), "quant", dict(q=1), _shifted(_lq_thresholds(1), 1.0)),
    ("ternary-q1/2", pg.regularizers.ternary(0.5), "quant", dict(q=0.5, levels=(-1.0, 0.0, 1.0)),
     _shifted(_lq_thresholds(0.5), 0.0)),
]


def _samples(thresholds, seed, n=N):
    rng = np.random.default_rng(seed)
    a = 10 ** rng.uniform(-12, 12, n)
    lam = 10 ** rng.uniform(-3, 1, n)
    ths = np.stack([np.broadcast_to(t, (n,)) for t in thresholds(a, lam)])
    th = ths[rng.integers(0, len(ths), n), np.arange(n)]
    rel = rng.choice([0.0, 1e-7, -1e-7, 1e-4, -1e-4, 1e-2, -1e-2, 0.3, -0.3], n)
    z = th * (1 + rel) * rng.choice([-1, 1], n)
    generic = rng.uniform(size=n) < 0.3
    z = np.where(generic, rng.normal(size=n) * 10 ** rng.uniform(-3, 3, n), z)
    z[:4] = [0.0, -0.0, 1.0, -1.0]
    return z, a, lam


def _gap(kind, kw, x, z, a, lam, dtype, *, ulps=None):
    """Relative objective gap of ``x`` (float64 copy of the library's answer) to the brute-force optimum for
    (z, a, λ); with ``ulps``, 0 where ``x`` is within that many ulps of the brute-force minimiser (which the
    oracle pins down to ~1e-8)."""
    x_bf, f_bf = brute_force_prox(kind, z, a, lam, **kw)
    f_ref = representable_reference(kind, x_bf, z, a, lam, dtype, **kw) if dtype == np.float32 else f_bf
    gap = relative_gap(kind, x, z, a, lam, f_ref, **kw)
    if kind == "quant" and dtype == np.float32:
        # Within a few dozen float32 ulps of a level, |x − ℓ| is itself a few ulps and the penalty's curvature
        # there is huge: rounding the exact minimiser to either float32 neighbour is all float32 can do, and the
        # worse neighbour can cost 1e-4 relative. There we require no more than that (F ≤ F(worse neighbour)).
        near_level = np.min(np.abs(z[:, None] - np.asarray(kw.get("levels", (-1.0, 1.0)))), axis=1) <= 64 * 1.2e-7
        f_either = representable_reference(kind, x_bf, z, a, lam, dtype, worse=True, **kw)
        gap = np.where(near_level, relative_gap(kind, x, z, a, lam, f_either, **kw), gap)
    if ulps is not None:
        gap = np.where(np.abs(x - x_bf) <= ulps * np.finfo(dtype).eps * np.abs(x_bf), 0.0, gap)
    return gap, x_bf


def _assert_gap(name, gap, x, x_bf, z, a, lam, dtype):
    assert np.all(np.isfinite(x))
    worst = int(np.argmax(gap))
    assert gap[worst] <= TOL[dtype], (
        f"{name}: relative gap {gap[worst]:.3e} at z={z[worst]!r} a={a[worst]!r} lam={lam[worst]!r}: "
        f"x={x[worst]!r}, brute force {x_bf[worst]!r}")


def _assert_brute_force_optimal(name, kind, kw, x, z, a, lam, dtype):
    """``x`` (float64 copy of the library's answer) is within TOL of the brute-force optimum for (z, a, λ)."""
    gap, x_bf = _gap(kind, kw, x, z, a, lam, dtype)
    _assert_gap(name, gap, x, x_bf, z, a, lam, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name,reg,kind,kw,thresholds", CASES, ids=[c[0] for c in CASES])
def test_prox_matches_brute_force(name, reg, kind, kw, thresholds, dtype):
    z, a, lam = _samples(thresholds, seed=zlib.crc32(name.encode()))
    # The library and the oracle see the same (dtype-rounded) problem data.
    z, a, lam = (np.asarray(v, dtype).astype(np.float64) for v in (z, a, lam))
    with jax.enable_x64(dtype == np.float64):
        x = jax.jit(reg.prox)(jnp.asarray(z, dtype), jnp.asarray(a, dtype), jnp.asarray(lam, dtype))
        assert x.dtype == dtype
    _assert_brute_force_optimal(name, kind, kw, np.asarray(x, np.float64), z, a, lam, dtype)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name,reg,kind,kw,thresholds", CASES, ids=[c[0] for c in CASES])
def test_prox_metric_matches_brute_force(name, reg, kind, kw, thresholds, dtype, n):
    """The same problems posed as ProxGen's step sees them: ``α`` and the metric ``c = C_t + δ`` apart
    (``a = α/c``), with ``c`` log-uniform over 1e-8…1e8. The oracle gets ``a = α/c`` of the rounded data."""
    z, a, lam = _samples(thresholds, seed=zlib.crc32(name.encode()) + 1, n=n)
    c = 10 ** np.random.default_rng(zlib.crc32(name.encode()) + 2).uniform(-8, 8, n)
    z, alpha, c, lam = (np.asarray(v, dtype).astype(np.float64) for v in (z, a * c, c, lam))
    with jax.enable_x64(dtype == np.float64):
        x = jax.jit(functools.partial(prox_metric, reg))(*(jnp.asarray(v, dtype) for v in (z, alpha, c, lam)))
        assert x.dtype == dtype
    _assert_brute_force_optimal(name, kind, kw, np.asarray(x, np.float64), z, alpha / c, lam, dtype)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name,reg,kind,kw,thresholds", CASES, ids=[c[0] for c in CASES])
def test_prox_metric_scaled_matches_brute_force(name, reg, kind, kw, thresholds, dtype, n):
    """Given ``c·z`` instead of ``z`` (what Adam's step forms without a division): the prox of ``z = (c·z)/c``,
    with ``c`` log-uniform over 1e-8…1e8; the oracle gets ``z = (c·z)/c`` and ``a = α/c`` of the rounded data.

    ``z`` itself is then not a float, and one division for the whole step (ℓ1, MCP, SCAD) rounds a few times.
    In float32 ``x`` must be, for ``z`` or a ``z'`` within 2 ulps of it, within 4 ulps of the minimiser or (at
    ties, where either candidate minimises) within TOL in objective. No answer computed from ``c·z`` can do
    better: with ``a = 1e-12`` one ulp of ``x`` costs ``ulp²/(2a)``, near a threshold one ulp of ``z`` flips the
    minimiser, and the step's own ``z = θ − α·m/c`` is no closer than that either. In float64 the objective
    gate alone holds, for ``z`` itself."""
    z, a, lam = _samples(thresholds, seed=zlib.crc32(name.encode()) + 3, n=n)
    c = 10 ** np.random.default_rng(zlib.crc32(name.encode()) + 4).uniform(-8, 8, n)
    cz, alpha, c, lam = (np.asarray(v, dtype).astype(np.float64) for v in (z * c, a * c, c, lam))
    with jax.enable_x64(dtype == np.float64):
        x = jax.jit(functools.partial(prox_metric_scaled, reg))(*(jnp.asarray(v, dtype) for v in (cz, alpha, c, lam)))
        assert x.dtype == dtype
    x, z, a = np.asarray(x, np.float64), cz / c, alpha / c
    if dtype == np.float64:
        _assert_brute_force_optimal(name, kind, kw, x, z, a, lam, dtype)
        return
    gaps = [_gap(kind, kw, x, z * (1 + k * np.finfo(dtype).eps), a, lam, dtype, ulps=4) for k in (0, -2, 2)]
    gap = np.min([g for g, _ in gaps], axis=0)
    _assert_gap(name, gap, x, gaps[0][1], z, a, lam, dtype)


@pytest.mark.parametrize("name,reg,kind,kw,thresholds", CASES, ids=[c[0] for c in CASES])
def test_prox_nan_in_nan_out(name, reg, kind, kw, thresholds):
    z = jnp.array([jnp.nan, jnp.nan, jnp.nan, 0.5, -0.5], jnp.float32)
    a = jnp.array([1e-12, 1.0, 1e12, jnp.nan, jnp.nan], jnp.float32)
    x = reg.prox(z, a, 0.1)
    assert bool(jnp.all(jnp.isnan(x[:3]))), x
    # A NaN step never silently produces an exact zero either.
    assert not bool(jnp.any(x[3:] == 0)), x
    # Nor a NaN metric or learning rate in the metric form.
    alpha, c = jnp.array([1.0, 1.0, 1.0, 1.0, jnp.nan]), jnp.array([1e12, 1.0, 1e-12, jnp.nan, 1.0])
    for xm in (prox_metric(reg, z, alpha, c, 0.1), prox_metric_scaled(reg, z, alpha, c, 0.1)):
        assert bool(jnp.all(jnp.isnan(xm[:3]))), xm
        assert not bool(jnp.any(xm[3:] == 0)), xm


@pytest.mark.parametrize("name,reg,kind,kw,thresholds", CASES, ids=[c[0] for c in CASES])
def test_penalty_matches_definition(name, reg, kind, kw, thresholds):
    from oracles import penalty  # noqa: PLC0415

    x = np.concatenate([np.linspace(-3, 3, 601), [0.0, 1.0, -1.0, 1e-30]])
    lam = 0.7
    ours = np.asarray(reg.penalty(jnp.asarray(x, jnp.float64 if False else jnp.float32), lam), np.float64)
    ref = penalty(kind, x.astype(np.float32).astype(np.float64), lam, **kw)
    np.testing.assert_allclose(ours, ref, rtol=2e-6, atol=1e-7)
    assert float(reg.value(jnp.asarray(x, jnp.float32), lam)) == pytest.approx(ref.sum(), rel=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name,reg,kind,kw,thresholds", CASES, ids=[c[0] for c in CASES])
def test_prox_edge_values(name, reg, kind, kw, thresholds, dtype):
    """λ = 0 is the identity (also at z = 0 and the smallest normal z); huge steps and tiny z stay finite.

    (XLA:CPU flushes subnormals to zero, so they are not tested.)
    """
    tiny = np.finfo(dtype).tiny
    z = np.array([0.0, -0.0, 1.0, -2.5, tiny, -tiny, 1e-30, 3.0], dtype)
    with jax.enable_x64(dtype == np.float64):
        x0 = np.asarray(reg.prox(jnp.asarray(z), jnp.asarray(1.0, dtype), jnp.asarray(0.0, dtype)))
        np.testing.assert_array_equal(x0, z)
        for c in (1e-30, 1.0, 1e30):  # λ = 0 in the metric form too, whatever the metric
            xm = prox_metric(reg, jnp.asarray(z), jnp.asarray(1e-3, dtype), jnp.asarray(c, dtype),
                             jnp.asarray(0.0, dtype))
            np.testing.assert_array_equal(np.asarray(xm), z)
        xs = np.asarray(reg.prox(jnp.asarray(z), jnp.asarray(1e12, dtype), jnp.asarray(0.5, dtype)))
        xsm = np.asarray(prox_metric(reg, jnp.asarray(z), jnp.asarray(1e4, dtype), jnp.asarray(1e-8, dtype),
                                         jnp.asarray(0.5, dtype)))
    assert np.all(np.isfinite(xs))
    x_bf, f_bf = brute_force_prox(kind, z.astype(np.float64), 1e12, 0.5, **kw)
    for x in (xs, xsm):
        assert np.all(np.isfinite(x))
        gap = relative_gap(kind, x, z.astype(np.float64), 1e12, 0.5, f_bf, **kw)
        assert np.all(gap <= TOL[dtype] + 1e-300), (x, x_bf)
