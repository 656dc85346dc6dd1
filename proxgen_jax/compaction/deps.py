"""Which entries of each intermediate value depend on the model input (elementwise, conservatively).

``dep[v]`` is a boolean array of ``v``'s shape: ``False`` proves that entry is the same for every input (it is a
function of the parameters alone), ``True`` means it may vary. State leaves and constants are input-independent;
the model inputs are dependent everywhere. An entry is *known zero* when it is input-independent and its value
(read from one concrete forward pass) is exactly 0 — then it is 0 for every input.

The rules need no per-primitive index bookkeeping for the structural primitives: an output entry of
``reshape``, ``transpose``, ``concatenate``, ``pad``, pooling, ``reduce_sum``, ... depends on the input iff one of
the entries it is computed from does, and applying the primitive itself to the 0/1 dependence arrays (as float32)
gives exactly that. A contraction ``Σ_k l_k r_k`` (``dot_general``, ``conv_general_dilated``) has a dependent
term iff one factor is dependent and the other is not known zero: ``prim(dep_l, ¬zero_r) + prim(¬zero_l, dep_r)``.
A product with a known-zero factor is known zero. Anything else is dependent as soon as one operand is.

Example:
  >>> import numpy as np, jax.numpy as jnp
  >>> from flax import nnx
  >>> from proxgen_jax.compaction.graph import trace_module, evaluate, split_eval
  >>> lin = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
  >>> lin.kernel.value = lin.kernel.value.at[:, 1].set(0.0)
  >>> x = (jnp.ones((1, 2)),)
  >>> g = trace_module(lin, x); vals = evaluate(g, split_eval(lin)[3], x)
  >>> dependence(g, vals)[g.output_ids[0]].tolist()   # column 1 is the bias alone
  [[True, False]]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from proxgen_jax.compaction.graph import Eqn, Graph

ELEMENTWISE = {
    "add", "sub", "mul", "div", "max", "min", "neg", "exp", "exp2", "log", "log1p", "expm1", "tanh", "logistic",
    "erf", "erfc", "erf_inv", "sqrt", "rsqrt", "cbrt", "integer_pow", "pow", "abs", "sign", "floor", "ceil",
    "round", "select_n", "convert_element_type", "copy", "copy_p", "square", "sin", "cos", "tan", "atan2",
    "asin", "acos", "atan", "sinh", "cosh", "asinh", "acosh", "atanh", "rem", "and", "or", "not", "xor", "eq",
    "ne", "lt", "le", "gt", "ge", "is_finite", "nextafter", "clamp", "reduce_precision", "stop_gradient",
    "add_any", "optimization_barrier", "reciprocal",
}
STRUCTURAL = {
    "reshape", "transpose", "broadcast_in_dim", "squeeze", "expand_dims", "concatenate", "pad", "slice", "rev",
    "reduce_sum", "reduce_max", "reduce_window_sum", "reduce_window_max", "cumsum", "cummax",
}
# Structural primitives evaluated on the dependence arrays through a monotone stand-in.
SUBSTITUTE = {"reduce_min": "reduce_max", "reduce_prod": "reduce_max", "reduce_and": "reduce_max",
              "reduce_or": "reduce_max", "argmax": "reduce_max", "argmin": "reduce_max",
              "reduce_window_min": "reduce_window_max", "cummin": "cummax", "cumprod": "cummax",
              "cumlogsumexp": "cummax"}
CONTRACTIONS = {"dot_general", "conv_general_dilated"}


def _f32(a):
    return jnp.asarray(a, jnp.float32)


def known_zero(dep, value):
    """Entries that are 0 for every input: input-independent and exactly 0 in the reference pass."""
    if value is None or not _numeric(value):
        return jnp.zeros(jnp.shape(dep), bool) if isinstance(dep, jax.Array) else np.zeros(np.shape(dep), bool)
    xp = jnp if isinstance(dep, jax.Array) or isinstance(value, jax.Array) else np
    return xp.logical_and(xp.logical_not(dep), value == 0)


def _numeric(v) -> bool:
    dt = getattr(v, "dtype", None)
    return dt is None or not jax.dtypes.issubdtype(dt, jax.dtypes.prng_key)


def _bind_structural(e: Eqn, name: str, operands: list):
    params = dict(e.params)
    if name in ("argmax", "argmin"):
        return jnp.any(operands[0], axis=tuple(params["axes"]))
    prim = getattr(jax.lax, SUBSTITUTE[name] + "_p") if name in SUBSTITUTE else e.prim
    return prim.bind(*[_f32(o) for o in operands], **params) > 0


def _contraction(e: Eqn, dl, dr, zl, zr):
    params = dict(e.params)
    params["preferred_element_type"] = np.float32
    a = e.prim.bind(_f32(dl), _f32(~zr), **params)
    b = e.prim.bind(_f32(~zl), _f32(dr), **params)
    return (a + b) > 0


def _rules(g: Graph, live: dict[int, bool], vals: dict) -> dict:
    """The dependence arrays as JAX values (traced once under ``jit``); ``live``: may the var depend at all."""
    dep: dict = {}

    def get(i):
        if i not in dep:
            dep[i] = jnp.full(g.shapes[i], bool(live[i]))
        return dep[i]

    for e in g.eqns:
        name = e.prim.name
        if not any(live[i] for i in e.ins):
            continue
        ins = [get(i) for i in e.ins]
        if name in ELEMENTWISE and len(e.outs) == 1:
            shape = g.shapes[e.outs[0]]
            if name == "mul":
                z = [jnp.broadcast_to(known_zero(d, vals.get(i)), shape) for d, i in zip(ins, e.ins)]
                d = [jnp.broadcast_to(x, shape) for x in ins]
                out = (d[0] & ~z[1]) | (d[1] & ~z[0])
            else:
                out = jnp.zeros(shape, bool)
                for d in ins:
                    out = out | jnp.broadcast_to(d, shape)
            dep[e.outs[0]] = out
        elif (name in STRUCTURAL or name in SUBSTITUTE) and len(e.outs) == 1:
            dep[e.outs[0]] = _bind_structural(e, name, ins)
        elif name in CONTRACTIONS:
            zl, zr = (known_zero(d, vals.get(i)) for d, i in zip(ins, e.ins))
            dep[e.outs[0]] = _contraction(e, ins[0], ins[1], zl, zr)
    return {i: d for i, d in dep.items() if live[i]}


def dependence(g: Graph, vals: dict) -> dict[int, np.ndarray]:
    """``var → bool array``: entries that may depend on the model input (see the module docstring)."""
    live = {i: False for i in g.shapes}
    for i in g.input_ids:
        live[i] = True
    for e in g.eqns:
        flag = any(live[i] for i in e.ins)
        for o in e.outs:
            live[o] = flag
    needed = {i for e in g.eqns if e.prim.name in CONTRACTIONS or e.prim.name == "mul" for i in e.ins
              if i in vals and _numeric(vals[i])}
    run = jax.jit(lambda v: _rules(g, live, v))
    out = {i: np.asarray(d) for i, d in run({i: vals[i] for i in needed}).items()}
    for i in g.shapes:
        if i not in out:
            out[i] = np.full(g.shapes[i], live[i])
    return out
