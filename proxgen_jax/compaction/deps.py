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


def _f32(a) -> np.ndarray:
    return np.asarray(a, np.float32)


def known_zero(dep: np.ndarray, value) -> np.ndarray:
    """Entries that are 0 for every input: input-independent and exactly 0 in the reference pass."""
    try:
        v = np.asarray(value)
        return np.logical_and(~dep, v == 0)
    except (TypeError, ValueError):
        return np.zeros(dep.shape, bool)


def _bind_structural(e: Eqn, name: str, operands: list[np.ndarray]) -> np.ndarray:
    params = dict(e.params)
    if name in ("argmax", "argmin"):
        return np.any(operands[0], axis=tuple(params["axes"]))
    prim = e.prim
    if name in SUBSTITUTE:
        prim = getattr(jax.lax, SUBSTITUTE[name] + "_p")
    out = prim.bind(*[_f32(o) for o in operands], **params)
    return np.asarray(out) > 0


def _contraction(e: Eqn, dl, dr, zl, zr) -> np.ndarray:
    params = dict(e.params)
    params["preferred_element_type"] = np.float32
    a = e.prim.bind(_f32(dl), _f32(~zr), **params)
    b = e.prim.bind(_f32(~zl), _f32(dr), **params)
    return (np.asarray(a) + np.asarray(b)) > 0


def dependence(g: Graph, vals: dict) -> dict[int, np.ndarray]:
    """``var → bool array``: entries that may depend on the model input (see the module docstring)."""
    dep: dict[int, np.ndarray] = {}
    for i in list(g.consts) + list(g.leaf_ids):
        dep[i] = np.zeros(g.shapes[i], bool)
    for i in g.input_ids:
        dep[i] = np.ones(g.shapes[i], bool)
    for e in g.eqns:
        ins = [dep[i] for i in e.ins]
        name = e.prim.name
        if not any(d.any() for d in ins):
            for o in e.outs:
                dep[o] = np.zeros(g.shapes[o], bool)
            continue
        if name in ELEMENTWISE and len(e.outs) == 1:
            shape = g.shapes[e.outs[0]]
            if name == "mul":
                z = [np.broadcast_to(known_zero(d, vals.get(i)), shape) for d, i in zip(ins, e.ins)]
                d = [np.broadcast_to(x, shape) for x in ins]
                out = (d[0] & ~z[1]) | (d[1] & ~z[0])
            else:
                out = np.zeros(shape, bool)
                for d in ins:
                    out = out | np.broadcast_to(d, shape)
            dep[e.outs[0]] = np.array(out)
        elif (name in STRUCTURAL or name in SUBSTITUTE) and len(e.outs) == 1:
            dep[e.outs[0]] = _bind_structural(e, name, ins)
        elif name in CONTRACTIONS:
            zl, zr = (known_zero(d, vals.get(i)) for d, i in zip(ins, e.ins))
            dep[e.outs[0]] = _contraction(e, ins[0], ins[1], zl, zr)
        else:  # unknown: dependent everywhere as soon as one operand is
            for o in e.outs:
                dep[o] = np.ones(g.shapes[o], bool)
    return dep
