"""Budget projections against enumeration: the step's objective equals the best over all feasible supports.

Every problem is driven through the public transforms: ``scale_by_adam_precond(b1=0, b2=0, eps=0)`` makes the
first step's metric ``|g|`` and its direction ``sign g``, so ``θ = z + α·s`` and ``g = c·s`` place any ``(z, c)``
before the prox. The reference enumerates supports in float64 NumPy with the per-coordinate values of the
independent brute-force prox (``tests/oracles.py``); it shares no code with the library.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import proxgen_jax as pg

from oracles import brute_force_prox, group_objective, group_prox_bisection, objective

N_PROBLEMS = 200
ALPHA = 0.1
TOL = {np.float32: 1e-5, np.float64: 1e-10}
REGS = {None: (None, None, {}), "l1": (pg.L1(), "lq", dict(q=1.0)), "l1/2": (pg.Lq(0.5), "lq", dict(q=0.5))}


def _problems(shape, seed, dtype):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(N_PROBLEMS,) + shape)
    c = 10 ** rng.uniform(-1, 1, size=(N_PROBLEMS,) + shape)
    s = rng.choice([-1.0, 1.0], size=(N_PROBLEMS,) + shape)
    theta = (z + ALPHA * s).astype(dtype)
    grads = (c * s).astype(dtype)
    z_seen = (theta - dtype(ALPHA) * s.astype(dtype)).astype(np.float64)  # what the library computes
    return theta, grads, z_seen, np.abs(grads).astype(np.float64)


def _step(tx_fn, thetas, grads, dtype):
    """θ_{t+1} for every problem (a dict of leaves), one ProxGen step each, vmapped."""
    with jax.enable_x64(dtype == np.float64):
        tx = optax.chain(pg.scale_by_adam_precond(b1=0.0, b2=0.0, eps=0.0), tx_fn())

        def one(p, g):
            u, _ = tx.update(g, tx.init(p), p)
            return optax.apply_updates(p, u)

        out = jax.jit(jax.vmap(one))(jax.tree.map(jnp.asarray, thetas), jax.tree.map(jnp.asarray, grads))
        return jax.tree.map(lambda x: np.asarray(x).astype(np.float64), out)


def _costs(reg_name, z, c, lam):
    """Per coordinate: ``f`` (free: value at the brute-force prox) and ``g`` (zeroed), both in float64."""
    _, kind, kw = REGS[reg_name]
    a = ALPHA / c
    if kind is None:
        return np.zeros_like(z), z * z / (2 * a)
    x, _ = brute_force_prox(kind, z.reshape(-1), a.reshape(-1), lam, **kw)
    f = objective(kind, x, z.reshape(-1), a.reshape(-1), lam, **kw).reshape(z.shape)
    g = objective(kind, np.zeros(z.size), z.reshape(-1), a.reshape(-1), lam, **kw).reshape(z.shape)
    return f, g


def _objective(reg_name, x, z, c, lam):
    _, kind, kw = REGS[reg_name]
    a = ALPHA / c
    if kind is None:
        return (x - z) ** 2 / (2 * a)
    return objective(kind, x.reshape(-1), z.reshape(-1), a.reshape(-1), lam, **kw).reshape(x.shape)


def _best_over_supports(f_units, g_units, k):
    """min over unit subsets S with |S| = k of Σ_S f + Σ_{not S} g (free units never cost more than zeroing)."""
    n = f_units.shape[1]
    subsets = np.array([[i in s for i in range(n)] for s in itertools.combinations(range(n), k)], np.float64)
    return np.min(f_units @ subsets.T + g_units @ (1 - subsets).T, axis=1)


def _check(ours_obj, best, dtype):
    gap = (ours_obj - best) / np.maximum(np.abs(best), 1e-30)
    assert np.max(gap) <= TOL[dtype], np.max(gap)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("reg_name", [None, "l1", "l1/2"], ids=["plain", "l1", "l1/2"])
def test_leaf_top_k_is_the_best_support(reg_name, dtype):
    n, lam = 8, 0.3
    for s in (0.5, 0.75):
        k = int((1 - s) * n)
        theta, grads, z, c = _problems((n,), seed=int(s * 100), dtype=dtype)
        reg = REGS[reg_name][0]
        x = _step(lambda s=s, reg=reg: pg.prox_sparsity(s, ALPHA, regularizer=reg, lam=lam if reg else 0.0),
                  {"w": theta}, {"w": grads}, dtype)["w"]
        assert np.all(np.sum(x != 0, axis=1) <= k)
        f, g = _costs(reg_name, z, c, lam)
        _check(_objective(reg_name, x, z, c, lam).sum(1), _best_over_supports(f, g, k), dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_global_budget_over_several_leaves(dtype):
    shapes, s, lam = {"a": (3,), "b": (2, 2), "c": (5,)}, 0.6, 0.2
    n = sum(int(np.prod(v)) for v in shapes.values())
    k = int((1 - s) * n + 1e-9)
    parts = {name: _problems(shape, seed=i, dtype=dtype) for i, (name, shape) in enumerate(shapes.items())}
    x = _step(lambda: pg.prox_sparsity(s, ALPHA, scope="global", regularizer=pg.L1(), lam=lam),
              {k_: v[0] for k_, v in parts.items()}, {k_: v[1] for k_, v in parts.items()}, dtype)
    flat = lambda t: np.concatenate([t[name].reshape(N_PROBLEMS, -1) for name in shapes], axis=1)  # noqa: E731
    xs, zs, cs = flat(x), flat({k_: v[2] for k_, v in parts.items()}), flat({k_: v[3] for k_, v in parts.items()})
    assert np.all(np.sum(xs != 0, axis=1) <= k)
    f, g = _costs("l1", zs, cs, lam)
    _check(_objective("l1", xs, zs, cs, lam).sum(1), _best_over_supports(f, g, k), dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_group_budget_keeps_the_best_groups(dtype):
    # A (4, 5) kernel, one group per output column (group axes (0,)): keep 2 of 5 columns.
    s, lam = 0.6, 0.1
    theta, grads, z, c = _problems((4, 5), seed=7, dtype=dtype)
    x = _step(lambda: pg.prox_sparsity(s, ALPHA, group_axes=(0,), regularizer=pg.L1(), lam=lam),
              {"w": theta}, {"w": grads}, dtype)["w"]
    assert np.all(np.sum(np.any(x != 0, axis=1), axis=1) <= 2)
    f, g = _costs("l1", z, c, lam)
    _check(_objective("l1", x, z, c, lam).sum((1, 2)), _best_over_supports(f.sum(1), g.sum(1), 2), dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_group_budget_with_a_group_penalty(dtype):
    # A (3, 6) kernel, one group per output column (group axes (0,)), group lasso λ Σ_g √3·‖x_g‖: keep 2 of 6. The
    # reference: every group's free cost from the float64 bisection group prox of tests/oracles.py.
    s, lam = 0.6, 0.15
    theta, grads, z, c = _problems((3, 6), seed=13, dtype=dtype)
    reg = pg.GroupL12(group_axes=(1,), weighting="sqrt")  # its own axes are overridden by the budget's
    x = _step(lambda: pg.prox_sparsity(s, ALPHA, group_axes=(0,), regularizer=reg, lam=lam),
              {"w": theta}, {"w": grads}, dtype)["w"]
    assert np.all(np.sum(np.any(x != 0, axis=1), axis=1) <= 2)
    cols = lambda t: np.swapaxes(t, 1, 2).reshape(-1, 3)  # noqa: E731  (problem·column, entry)
    a, mu = ALPHA / cols(c), lam * np.sqrt(3.0)
    f = group_objective(group_prox_bisection(cols(z), a, mu), cols(z), a, mu).reshape(N_PROBLEMS, 6)
    g = group_objective(np.zeros_like(cols(z)), cols(z), a, mu).reshape(N_PROBLEMS, 6)
    ours = group_objective(cols(x), cols(z), a, mu).reshape(N_PROBLEMS, 6).sum(1)
    _check(ours, _best_over_supports(f, g, 2), dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("reg_name", [None, "l1"], ids=["plain", "l1"])
def test_nm_is_the_best_pattern(reg_name, dtype):
    # A Dense kernel (8, 3): 2:4 along the input axis, i.e. two blocks of 4 rows in every column.
    lam = 0.3
    theta, grads, z, c = _problems((8, 3), seed=11, dtype=dtype)
    reg = REGS[reg_name][0]
    x = _step(lambda: pg.prox_nm(2, 4, ALPHA, regularizer=reg, lam=lam if reg else 0.0),
              {"w": theta}, {"w": grads}, dtype)["w"]
    blocks = lambda t: np.moveaxis(t.reshape(N_PROBLEMS, 2, 4, 3), 2, -1).reshape(-1, 4)  # noqa: E731
    assert np.all(np.sum(blocks(x) != 0, axis=1) <= 2)
    f, g = _costs(reg_name, z, c, lam)
    best = _best_over_supports(blocks(f), blocks(g), 2).reshape(N_PROBLEMS, -1).sum(1)
    _check(_objective(reg_name, x, z, c, lam).sum((1, 2)), best, dtype)


def test_euclidean_case_is_magnitude_pruning():
    """After plain optax.scale_by_adam() (no metric) the budget keeps the k largest |z| — PAT's/jaxpruner's rule."""
    rng = np.random.default_rng(3)
    p = {"w": jnp.asarray(rng.normal(size=(6, 5)), jnp.float32)}
    g = {"w": jnp.asarray(rng.normal(size=(6, 5)), jnp.float32)}
    tx = optax.chain(optax.scale_by_adam(), pg.prox_sparsity(0.8, 0.05))
    u, _ = tx.update(g, tx.init(p), p)
    x = np.asarray(optax.apply_updates(p, u)["w"])
    z = np.asarray(p["w"]) - 0.05 * np.asarray(optax.scale_by_adam().update(g, optax.scale_by_adam().init(p))[0]["w"])
    kept = np.flatnonzero(x.reshape(-1))
    expected = np.sort(np.argsort(-np.abs(z.reshape(-1)), kind="stable")[:6])
    np.testing.assert_array_equal(kept, expected)
    np.testing.assert_allclose(x.reshape(-1)[kept], z.reshape(-1)[kept], rtol=1e-6)


def test_exactly_k_free_under_ties_and_schedule_and_freeze():
    p = {"w": jnp.ones((10,), jnp.float32)}
    g = {"w": jnp.zeros((10,), jnp.float32)}  # every score ties
    tx = optax.chain(optax.sgd(1.0), pg.prox_sparsity(pg.sparsity_schedule(0.9, begin_step=0, end_step=2), 1.0,
                                                      freeze_after=3))
    st = tx.init(p)
    nnz = []
    for _ in range(6):
        u, st = tx.update(g, st, p)
        p = optax.apply_updates(p, u)
        nnz.append(int(np.sum(np.asarray(p["w"]) != 0)))
    # s_0 = 0, s_1 = 0.9·(1 − 0.5³) = 0.7875, s_2.. = 0.9: ⌊(1 − s)·10⌋ free, the lowest indices on ties.
    assert nnz == [10, 2, 1, 1, 1, 1]
    np.testing.assert_array_equal(np.flatnonzero(np.asarray(p["w"])), [0])


def test_freeze_keeps_the_zero_pattern_while_the_rest_trains():
    rng = np.random.default_rng(5)
    p = {"w": jnp.asarray(rng.normal(size=(20,)), jnp.float32)}
    tx = optax.chain(pg.scale_by_adam_precond(), pg.prox_sparsity(0.5, 0.1, freeze_after=1))
    st = tx.init(p)
    u, st = tx.update({"w": jnp.asarray(rng.normal(size=20), jnp.float32)}, st, p)
    p = optax.apply_updates(p, u)
    zeros = np.asarray(p["w"]) == 0
    for _ in range(3):
        before = np.asarray(p["w"])
        u, st = tx.update({"w": jnp.asarray(rng.normal(size=20), jnp.float32)}, st, p)
        p = optax.apply_updates(p, u)
        np.testing.assert_array_equal(np.asarray(p["w"]) == 0, zeros)
        assert np.all(np.asarray(p["w"])[~zeros] != before[~zeros])


def test_nan_gradient_is_not_silently_zero():
    p = {"w": jnp.ones((8,), jnp.float32)}
    for link in (pg.prox_sparsity(0.5, 0.1), pg.prox_nm(2, 4, 0.1, mask=None)):
        tx = optax.chain(pg.scale_by_adam_precond(), link)
        u, _ = tx.update({"w": jnp.full((8,), jnp.nan)}, tx.init(p), p)
        assert np.any(np.isnan(np.asarray(optax.apply_updates(p, u)["w"])))


def test_erk_matches_the_total_budget_and_uniform():
    params = {"conv": {"kernel": jnp.ones((3, 3, 8, 16))}, "dense": {"kernel": jnp.ones((64, 10)),
                                                                    "bias": jnp.ones(10)}}
    erk = pg.erk_sparsities(params, 0.9, mask=pg.kernels_only)
    assert erk["dense"]["bias"] is None
    sizes = {"conv": 3 * 3 * 8 * 16, "dense": 640}
    zeros = erk["conv"]["kernel"] * sizes["conv"] + erk["dense"]["kernel"] * sizes["dense"]
    assert abs(zeros - 0.9 * sum(sizes.values())) < 1e-6
    assert erk["conv"]["kernel"] > erk["dense"]["kernel"]  # density ∝ Σdims/Πdims: the big conv is sparser
    assert pg.uniform_sparsities(params, 0.5, mask=pg.kernels_only)["conv"]["kernel"] == 0.5


def test_budget_errors_name_the_argument_or_leaf():
    with pytest.raises(ValueError, match="sparsity"):
        pg.prox_sparsity(1.5)
    with pytest.raises(ValueError, match="scope"):
        pg.prox_sparsity(0.5, scope="everywhere")
    with pytest.raises(ValueError, match="`n` must be at most"):
        pg.prox_nm(5, 4)
    with pytest.raises(ValueError, match="regularizer"):
        pg.prox_nm(2, 4, regularizer=pg.GroupL12())
    with pytest.raises(ValueError, match=r"\['dense'\]\['kernel'\].*not divisible by m=4"):
        pg.prox_nm(2, 4).init({"dense": {"kernel": jnp.ones((6, 3))}})


@pytest.mark.parametrize("n,m,axis", [(2, 4, 0), (3, 8, 1), (1, 2, 2), (5, 16, 1)])
def test_nm_pattern_keeps_the_n_largest_of_every_block_ties_to_the_lower_index(n, m, axis):
    """The packed pattern, unpacked, against a stable sort of every block (integer gains: many ties)."""
    from proxgen_jax.solvers.budgets import nm_keep_bits, nm_mask, nm_unpack
    rng = np.random.default_rng(n * 100 + m)
    shape = [3, 5, 7]
    shape[axis] = 2 * m
    gain = rng.integers(0, 4, size=shape).astype(np.float32)
    mask = np.asarray(nm_mask(jnp.asarray(gain), n, m, axis))
    np.testing.assert_array_equal(mask, np.asarray(nm_unpack(nm_keep_bits(jnp.asarray(gain), n, m, axis), m, axis)))
    blocks = np.moveaxis(gain, axis, -1).reshape(-1, 2, m).reshape(-1, m)
    expected = np.zeros_like(blocks, bool)
    for row, b in zip(expected, blocks):
        row[np.argsort(-b, kind="stable")[:n]] = True
    got = np.moveaxis(mask, axis, -1).reshape(-1, m)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("make", [lambda: pg.scale_by_adam_precond(), lambda: pg.scale_by_adam_precond(amsgrad=True),
                                  lambda: pg.scale_by_adam_precond(bias_correction=False, eps_root=1e-9),
                                  lambda: pg.scale_by_rmsprop_precond(momentum=0.9),
                                  lambda: pg.scale_by_adagrad_precond()],
                         ids=["adam", "amsgrad", "adam-paper", "rmsprop", "adagrad"])
def test_recomputed_leaf_problem_equals_the_step_inputs(make):
    """What a budget recomputes in its own region (from θ_t and the preconditioner's new state) is the step's own
    θ (after weight decay), direction, metric and m_t — to an ulp or two (separately compiled evaluations)."""
    from proxgen_jax.transforms.engine import prepare_step
    rng = np.random.default_rng(7)
    p = {"a": jnp.asarray(rng.normal(size=(4, 8)), jnp.float32), "b": jnp.asarray(rng.normal(size=(3,)), jnp.float32)}
    tx = make()
    state = tx.init(p)
    for _ in range(3):
        g = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), p)
        out, state = tx.update(g, state, p)
    step = prepare_step("test", out, p, [object()] * 2, 0.1, weight_decay=0.01)
    for leaf in step.leaves:
        assert leaf.rebuild is not None
        again = leaf.recomputed()
        for name in ("theta", "direction", "metric", "momentum"):
            np.testing.assert_allclose(np.asarray(getattr(again, name)), np.asarray(getattr(leaf, name)), rtol=5e-7)


@pytest.mark.parametrize("scope", ["leaf", "global"])
def test_budget_over_leaves_of_mixed_dtypes_keeps_exactly_k(scope):
    """float32, float64 and bfloat16 leaves of one size: per leaf (grouped by size and dtype) or one global
    budget (keys widened to one type), exactly ⌊(1 − s)·n⌋ units stay free, and they are the largest scores."""
    rng = np.random.default_rng(2)
    with jax.enable_x64(True):
        dtypes = (jnp.float32, jnp.float64, jnp.bfloat16)
        p = {k: jnp.asarray(rng.normal(size=(4, 6)), d) for k, d in zip("abc", dtypes)}
        g = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype), p)
        tx = optax.chain(optax.identity(), pg.prox_sparsity(0.75, 0.1, scope=scope))  # Euclidean: z = θ − 0.1 g
        u, _ = tx.update(g, tx.init(p), p)
        x = optax.apply_updates(p, u)
        z = {k: np.asarray(p[k], np.float64) - 0.1 * np.asarray(g[k], np.float64) for k in p}
        nnz = {k: int(np.sum(np.asarray(x[k], np.float64) != 0)) for k in x}
        if scope == "leaf":
            assert nnz == {"a": 6, "b": 6, "c": 6}
        else:
            assert sum(nnz.values()) == 18
            kept = np.concatenate([np.abs(np.asarray(x[k], np.float64)).ravel() != 0 for k in "abc"])
            score = np.concatenate([np.abs(z[k]).ravel() for k in "abc"])
            assert score[kept].min() >= score[~kept].max() * (1 - 1e-2)  # bf16 rounding of the kept values aside
