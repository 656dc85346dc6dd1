"""Compaction is exact on models the package does not ship, removes exactly the provably removable units, and
refuses what it cannot follow.

Every expected width is counted here independently of the compaction code: from which kernel slices are zero
and, for dead units, from their constant output computed in NumPy (``act(b)`` or, after BatchNorm in eval
mode, ``act(β − γμ/√(σ²+ε))``) together with what consumes it (a Dense, 1×1 or VALID conv folds any constant;
a zero-padded 3×3 conv only a zero one). Outputs are compared on fresh random inputs, not only on the example.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from proxgen_jax.compaction import CompactionError, compact, compaction_plan, compaction_report

warnings.filterwarnings("ignore", category=DeprecationWarning)
RTOL = 1e-5


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), 1e-30))


def setv(var, value):
    """Sets an nnx Variable from NumPy (no jitted op, so no compilation in the test set-up)."""
    var[...] = jnp.asarray(np.asarray(value, np.float32))


def kill_out(layer, units):
    k = np.array(layer.kernel[...])
    k[..., list(units)] = 0.0
    setv(layer.kernel, k)


def randomize_bn(bn, seed, shift):
    rng = np.random.default_rng(seed)
    n = bn.mean.shape[0]
    setv(bn.mean, rng.normal(size=n))
    setv(bn.var, rng.uniform(0.5, 2.0, n))
    setv(bn.scale, rng.uniform(0.5, 1.5, n))
    setv(bn.bias, shift)


def bn_constant(bn, pre):
    """Eval-mode BatchNorm of a constant pre-activation ``pre`` (per channel), in float64 NumPy."""
    mu, var = np.asarray(bn.mean[...], np.float64), np.asarray(bn.var[...], np.float64)
    g, b = np.asarray(bn.scale[...], np.float64), np.asarray(bn.bias[...], np.float64)
    return (pre - mu) / np.sqrt(var + bn.epsilon) * g + b


def zero_cols(kernel) -> np.ndarray:
    k = np.asarray(kernel)
    return np.all(k.reshape(-1, k.shape[-1]) == 0, axis=0)


def params_snapshot(model):
    return jax.tree.map(np.array, nnx.to_pure_dict(nnx.state(model)))


def run_eval(model, x):
    """The eval-mode output of ``model`` (jitted; ``model`` itself untouched)."""
    clone = nnx.clone(model)
    clone.eval()
    graphdef, state = nnx.split(clone)
    return jax.jit(lambda st, a: nnx.merge(graphdef, st)(a))(state, x)


def check_equal_outputs(model, small, shape, seed=1, transform=lambda x: x):
    x = jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)
    assert rel_err(run_eval(model, x), run_eval(small, transform(x))) <= RTOL


# --------------------------------------------------------------------------------------------------------- MLP
class MLP(nnx.Module):
    def __init__(self):
        r = nnx.Rngs(0)
        self.l1, self.l2, self.l3 = nnx.Linear(6, 12, rngs=r), nnx.Linear(12, 10, rngs=r), nnx.Linear(10, 3, rngs=r)

    def __call__(self, x):
        return self.l3(jax.nn.relu(self.l2(jnp.tanh(self.l1(x)))))


def test_mlp_dead_units_with_nonzero_biases_are_folded():
    m = MLP()
    kill_out(m.l1, [0, 3, 4, 7])                                    # tanh(b) ≠ 0: folded into l2's bias
    setv(m.l1.bias, np.linspace(-1.0, 1.0, 12))
    k2 = np.array(m.l2.kernel[...])
    k2[5] = 0.0                                                     # l1 unit 5 has no outgoing weights
    setv(m.l2.kernel, k2)
    kill_out(m.l2, [1, 2, 6])
    setv(m.l2.bias, [0.5, -0.3, 0.7, 0, 0, 0, -2.0, 0, 0, 0])
    before = params_snapshot(m)
    dead1 = zero_cols(m.l1.kernel[...]) | np.all(np.asarray(m.l2.kernel[...]) == 0, axis=1)
    dead2 = zero_cols(m.l2.kernel[...])                            # relu consts → l3 (Dense): all foldable
    x = jnp.ones((2, 6))
    small = compact(m, x)
    assert small.l1.kernel.shape == (6, 12 - dead1.sum()) and small.l1.out_features == 12 - dead1.sum()
    assert small.l2.kernel.shape == (12 - dead1.sum(), 10 - dead2.sum())
    assert small.l3.kernel.shape == (10 - dead2.sum(), 3)
    assert type(small) is MLP and type(small.l1) is nnx.Linear
    check_equal_outputs(m, small, (32, 6))
    jax.tree.map(np.testing.assert_array_equal, params_snapshot(m), before)   # input model unchanged


def test_mlp_report_counts_params_and_flops():
    m = MLP()
    kill_out(m.l1, range(5))
    rep = compaction_report(m, jnp.ones((4, 6)))
    h = 12 - 5
    assert rep.totals["params_before"] == 6 * 12 + 12 + 12 * 10 + 10 + 10 * 3 + 3
    assert rep.totals["params_after"] == 6 * h + h + h * 10 + 10 + 10 * 3 + 3
    assert rep.totals["flops_before"] == 2 * (6 * 12 + 12 * 10 + 10 * 3)
    assert rep.totals["flops_after"] == 2 * (6 * h + h * 10 + 10 * 3)
    row = next(r for r in rep.layers if r["layer"] == "l1")
    assert (row["units_before"], row["units_after"]) == (12, h)
    assert rep.totals["bytes_after"] == 4 * rep.totals["params_after"]
    assert "| l1 | Linear | 12 → 7 |" in str(rep)


# --------------------------------------------------------------------------------------------- conv + BatchNorm
class ConvBN(nnx.Module):
    """3×3 SAME → BN → relu → 1×1 → BN → relu → 3×3 VALID (bias) → relu → flatten → Dense, or all 3×3 SAME."""

    def __init__(self, padded: bool):
        r = nnx.Rngs(1)
        k2, pad3 = ((3, 3), "SAME") if padded else ((1, 1), "VALID")
        self.c1 = nnx.Conv(2, 8, (3, 3), padding="SAME", use_bias=False, rngs=r)
        self.b1 = nnx.BatchNorm(8, rngs=r)
        self.c2 = nnx.Conv(8, 8, k2, padding="SAME", use_bias=False, rngs=r)
        self.b2 = nnx.BatchNorm(8, rngs=r)
        self.c3 = nnx.Conv(8, 6, (3, 3), padding=pad3, rngs=r)
        side = 6 if padded else 4
        self.head = nnx.Linear(side * side * 6, 5, rngs=r)

    def __call__(self, x):
        h = jax.nn.relu(self.b1(self.c1(x)))
        h = jax.nn.relu(self.b2(self.c2(h)))
        h = jax.nn.relu(self.c3(h))
        return self.head(h.reshape(h.shape[0], -1))


@pytest.mark.parametrize("padded", [False, pytest.param(True, marks=pytest.mark.slow)])  # 9 s each
def test_conv_batchnorm_flatten(padded):
    m = ConvBN(padded)
    kill_out(m.c1, [0, 1, 2])
    kill_out(m.c2, [3, 4])
    kill_out(m.c3, [0, 5])
    randomize_bn(m.b1, 2, [-3.0, 2.0, -2.0, 0, 0, 0, 0, 0])
    randomize_bn(m.b2, 3, [0, 0, 0, 3.0, -3.0, 0, 0, 0])
    setv(m.c3.bias, [0.4, 0, 0, 0, 0, -0.2])
    m.eval()
    const1 = np.maximum(bn_constant(m.b1, 0.0), 0.0)
    const2 = np.maximum(bn_constant(m.b2, 0.0), 0.0)
    dead1, dead2, dead3 = zero_cols(m.c1.kernel[...]), zero_cols(m.c2.kernel[...]), zero_cols(m.c3.kernel[...])
    if padded:   # consumers c2, c3 are zero-padded 3×3: only zero constants may go
        go1, go2 = dead1 & (const1 == 0), dead2 & (const2 == 0)
    else:        # 1×1 conv (into BN's mean) and VALID conv (into c3's bias) fold any constant
        go1, go2 = dead1, dead2
    assert 0 < go1.sum() < dead1.sum() or not padded
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 6, 6, 2)), jnp.float32)
    m.train()                                      # compaction evaluates in eval mode whatever the mode
    small = compact(m, x)
    assert small.c1.kernel.shape[-1] == 8 - go1.sum()
    assert small.b1.mean.shape == (8 - go1.sum(),) and small.b1.num_features == 8 - go1.sum()
    assert small.c2.kernel.shape[-2:] == (8 - go1.sum(), 8 - go2.sum())
    assert small.c3.kernel.shape[-2:] == (8 - go2.sum(), 6 - dead3.sum())   # flatten → Dense folds all
    side = 6 if padded else 4
    assert small.head.kernel.shape == (side * side * (6 - dead3.sum()), 5)
    assert not small.b1.use_running_average       # mode of the input model kept
    check_equal_outputs(m, small, (8, 6, 6, 2))


# ---------------------------------------------------------------------------------------------- residual block
class Residual(nnx.Module):
    def __init__(self):
        r = nnx.Rngs(2)
        self.stem = nnx.Conv(1, 8, (3, 3), padding="SAME", use_bias=False, rngs=r)
        self.bs = nnx.BatchNorm(8, rngs=r)
        self.ca = nnx.Conv(8, 8, (3, 3), padding="SAME", use_bias=False, rngs=r)
        self.ba = nnx.BatchNorm(8, rngs=r)
        self.cb = nnx.Conv(8, 8, (3, 3), padding="SAME", use_bias=False, rngs=r)
        self.bb = nnx.BatchNorm(8, rngs=r)
        self.head = nnx.Linear(8, 4, rngs=r)

    def __call__(self, x):
        x = jax.nn.relu(self.bs(self.stem(x)))
        h = jax.nn.relu(self.ba(self.ca(x)))
        h = self.bb(self.cb(h))
        return self.head(jnp.mean(jax.nn.relu(h + x), axis=(1, 2)))


def test_residual_channel_goes_only_if_every_branch_lets_it_go():
    m = Residual()
    kill_out(m.stem, [0, 1, 2, 3])
    kill_out(m.cb, [0, 1, 2, 5])
    kill_out(m.ca, [0, 1])
    randomize_bn(m.bs, 4, [-4.0, 3.0, -4.0, -4.0, 0, 0, 0, 0])
    randomize_bn(m.ba, 5, [-4.0, 3.0, 0, 0, 0, 0, 0, 0])
    randomize_bn(m.bb, 6, [0.5, -0.5, 1.0, 0, 0, 0, 0, 0])
    m.eval()
    x_const = np.maximum(bn_constant(m.bs, 0.0), 0.0)
    a_const = np.maximum(bn_constant(m.ba, 0.0), 0.0)
    stem_dead, b_dead, a_dead = (zero_cols(c.kernel[...]) for c in (m.stem, m.cb, m.ca))
    # the block input x feeds the padded conv ca, so its constant must be 0; the sum then feeds GAP → Dense
    go_res = stem_dead & b_dead & (x_const == 0)
    go_a = a_dead & (a_const == 0)                  # ca's output feeds the padded conv cb
    assert go_res.tolist() == [True, False, True, False, False, False, False, False]
    rep = compaction_report(m, jnp.ones((2, 6, 6, 1)))
    small = rep.model
    n = 8 - go_res.sum()
    assert small.stem.kernel.shape[-1] == n and small.cb.kernel.shape[-1] == n and small.bb.mean.shape == (n,)
    assert small.ca.kernel.shape[-2:] == (n, 8 - go_a.sum())
    assert small.head.kernel.shape == (n, 4)
    check_equal_outputs(m, small, (5, 6, 6, 1))
    kept = next(r for r in rep.layers if r["layer"] == "stem")["dead_kept"]
    assert sum(kept.values()) == stem_dead.sum() - go_res.sum()


# ------------------------------------------------------------------------------------------------- attention
class Attention(nnx.Module):
    def __init__(self):
        self.att = nnx.MultiHeadAttention(num_heads=4, in_features=8, qkv_features=16, decode=False,
                                          rngs=nnx.Rngs(3))
        self.head = nnx.Linear(8, 3, rngs=nnx.Rngs(4))

    def __call__(self, x):
        return self.head(self.att(x).mean(axis=1))


def test_attention_dead_heads_removed():
    m = Attention()
    dead_heads = [1, 3]
    rng = np.random.default_rng(7)
    for p in (m.att.query, m.att.key, m.att.value):
        k = np.array(p.kernel[...])
        k[:, dead_heads] = 0.0
        k[:, 2] = 0.0 if p is m.att.value else k[:, 2]             # head 2: q, k live, v dead: kept
        setv(p.kernel, k)
        setv(p.bias, rng.normal(size=p.bias.shape))               # value bias folds into out's bias
    q, k, v = (np.asarray(p.kernel[...]) for p in (m.att.query, m.att.key, m.att.value))
    gone = [h for h in range(4) if not (q[:, h].any() or k[:, h].any() or v[:, h].any())]
    small = compact(m, jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 8)), jnp.float32))
    assert small.att.num_heads == 4 - len(gone) and small.att.qkv_features == 4 * (4 - len(gone))
    assert small.att.query.kernel.shape == (8, 4 - len(gone), 4)
    assert small.att.out.kernel.shape == (4 - len(gone), 4, 8)
    check_equal_outputs(m, small, (3, 7, 8))


# ------------------------------------------------------------------------------------- Granger input features
class GrangerMLP(nnx.Module):
    """One output series: inputs (N, p·lags) → hidden relu → 1, the first layer group-sparse by input feature."""

    def __init__(self):
        r = nnx.Rngs(5)
        self.inp, self.out = nnx.Linear(12, 16, rngs=r), nnx.Linear(16, 1, rngs=r)

    def __call__(self, x):
        return self.out(jax.nn.relu(self.inp(x)))


def test_granger_dead_input_features():
    m = GrangerMLP()
    k = np.array(m.inp.kernel[...])
    k[[0, 1, 2, 6, 7, 8]] = 0.0
    setv(m.inp.kernel, k)
    used = np.flatnonzero(np.any(np.asarray(m.inp.kernel[...]) != 0, axis=1))
    x = jnp.ones((2, 12))
    assert compact(m, x).inp.kernel.shape == (12, 16)              # the input interface is kept by default
    plan = compaction_plan(m, x, prune_inputs=True)
    np.testing.assert_array_equal(plan.input_keep[0], used)
    small = compact(m, x, prune_inputs=True)
    assert small.inp.kernel.shape == (used.size, 16) and small.inp.in_features == used.size
    check_equal_outputs(m, small, (9, 12), transform=lambda z: z[:, used])


# ---------------------------------------------------------------------------------------------------- refusals
class WithOp(nnx.Module):
    def __init__(self, op):
        r = nnx.Rngs(6)
        self.a, self.b, self.op = nnx.Linear(5, 8, rngs=r), nnx.Linear(8, 2, rngs=r), op

    def __call__(self, x):
        return self.b(self.op(jax.nn.relu(self.a(x))))


def dead_withop(op):
    m = WithOp(op)
    kill_out(m.a, [0, 1, 2])
    setv(m.a.bias, np.ones(8))
    return m


def test_unknown_primitive_on_removable_channels_is_refused():
    m = dead_withop(lambda h: jnp.sort(h, axis=-1))
    with pytest.raises(CompactionError, match="sort"):
        compact(m, jnp.ones((2, 5)))
    small = compact(m, jnp.ones((2, 5)), unknown="keep")
    assert small.a.kernel.shape == (5, 8)
    check_equal_outputs(m, small, (4, 5))


def test_constant_computed_from_a_shape_is_refused():
    with pytest.raises(CompactionError, match="shape"):
        compact(dead_withop(lambda h: h / h.shape[-1]), jnp.ones((2, 5)))


def test_mean_over_channels_pins_them():
    m = dead_withop(lambda h: h - h.mean(axis=-1, keepdims=True))   # removing a unit would change the mean
    small = compact(m, jnp.ones((2, 5)))
    assert small.a.kernel.shape == (5, 8)
    check_equal_outputs(m, small, (4, 5))


# ------------------------------------------------------------------------------------- concatenation + pooling
class ConcatPool(nnx.Module):
    """Two branches concatenated on channels → max-pool → average-pool → flatten → Dense."""

    def __init__(self):
        r = nnx.Rngs(8)
        self.a = nnx.Conv(2, 6, (3, 3), padding="SAME", rngs=r)
        self.b = nnx.Conv(2, 4, (1, 1), rngs=r)
        self.head = nnx.Linear(2 * 2 * 10, 3, rngs=r)

    def __call__(self, x):                                         # (N, 8, 8, 2)
        h = jnp.concatenate([jax.nn.relu(self.a(x)), jnp.tanh(self.b(x))], axis=-1)
        h = nnx.max_pool(h, (2, 2), strides=(2, 2))                 # (N, 4, 4, 10)
        h = nnx.avg_pool(h, (2, 2), strides=(2, 2))                 # (N, 2, 2, 10)
        return self.head(h.reshape(h.shape[0], -1))


def test_concatenation_and_pooling_keep_channels_in_order():
    m = ConcatPool()
    kill_out(m.a, [1, 4, 5])
    kill_out(m.b, [0, 2])
    setv(m.a.bias, [0.1, -0.5, 0.2, 0.3, 0.7, 0.0])               # relu(0.7) ≠ 0: folded through pools → Dense
    setv(m.b.bias, [0.4, 0.1, -0.3, 0.2])                          # tanh(0.4), tanh(−0.3) ≠ 0: folded too
    dead = np.concatenate([zero_cols(m.a.kernel[...]), zero_cols(m.b.kernel[...])])
    small = compact(m, jnp.ones((2, 8, 8, 2)))
    assert small.a.kernel.shape[-1] == 6 - 3 and small.b.kernel.shape[-1] == 4 - 2
    keep = np.flatnonzero(~dead)                                   # the head's rows: (h, w, channel), channel fastest
    k_head = np.asarray(m.head.kernel[...]).reshape(2, 2, 10, 3)[:, :, keep].reshape(-1, 3)
    np.testing.assert_array_equal(np.asarray(small.head.kernel[...]), k_head)
    assert not np.array_equal(np.asarray(small.head.bias[...]), np.asarray(m.head.bias[...]))   # constants folded
    check_equal_outputs(m, small, (6, 8, 8, 2))


def test_multiple_of_keeps_removable_units_up_to_a_multiple():
    m = MLP()
    kill_out(m.l1, [0, 3, 4, 7, 9])                                 # 12 − 5 = 7 → 8 with multiple_of=4
    kill_out(m.l2, [1, 2, 6, 8])                                    # 10 − 4 = 6 → 8
    setv(m.l1.bias, np.linspace(-1.0, 1.0, 12))
    small = compact(m, jnp.ones((2, 6)), multiple_of=4)
    assert small.l1.kernel.shape == (6, 8) and small.l2.kernel.shape == (8, 8) and small.l3.kernel.shape == (8, 3)
    live1 = ~zero_cols(m.l1.kernel[...])                            # every live unit is among the kept ones
    k1 = np.asarray(small.l1.kernel[...])
    assert sum(np.any(np.all(k1 == np.asarray(m.l1.kernel[...])[:, [j]], axis=0)) for j in np.flatnonzero(live1)) \
        == live1.sum()
    check_equal_outputs(m, small, (16, 6))
    assert compact(m, jnp.ones((2, 6)), multiple_of=1).l1.kernel.shape == (6, 7)
    with pytest.raises(ValueError, match="multiple_of"):
        compact(m, jnp.ones((2, 6)), multiple_of=0)
