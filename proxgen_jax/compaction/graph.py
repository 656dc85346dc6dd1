"""The forward computation of a Flax nnx module as a flat dataflow graph (the jaxpr, inlined).

:func:`trace_module` traces ``model(*example_input)`` with :func:`jax.make_jaxpr` over the module's whole
``nnx.State`` (parameters, BatchNorm statistics, ...), so every state leaf is one input variable of the jaxpr.
Nested calls (``jit``, ``custom_jvp_call`` of ``relu``/``gelu``, ``custom_vjp_call``, ``remat``, ``closed_call``)
are inlined, leaving a flat list of primitive equations over integer variable ids. :func:`evaluate` runs it on
concrete values, equation by equation (the reference values the compaction analysis reads).

Example:
  >>> import jax.numpy as jnp
  >>> from flax import nnx
  >>> g = trace_module(nnx.Linear(3, 2, rngs=nnx.Rngs(0)), (jnp.ones((1, 3)),))
  >>> [e.prim.name for e in g.eqns]
  ['dot_general', 'reshape', 'add']
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.extend.core as jcore
import numpy as np
from flax import nnx

INLINED = {"pjit", "jit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call",
           "custom_vjp_call_jaxpr", "remat", "remat2", "checkpoint", "custom_lin"}
_SUBJAXPR_KEYS = ("jaxpr", "call_jaxpr", "fun_jaxpr")


class CompactionError(ValueError):
    """Raised when the forward computation uses an operation the compaction cannot follow exactly."""


@dataclasses.dataclass
class Eqn:
    """One primitive application: ``outs = prim.bind(*ins, **params)`` (variable ids)."""

    prim: Any
    params: dict
    ins: list[int]
    outs: list[int]
    where: str = ""

    def describe(self) -> str:
        """``'prim' (at file:line)`` for error messages."""
        return f"`{self.prim.name}`" + (f" (at {self.where})" if self.where else "")


@dataclasses.dataclass
class Graph:
    """A flat forward graph. ``consts`` holds the values of literals and closed-over constants."""

    eqns: list[Eqn]
    shapes: dict[int, tuple[int, ...]]
    dtypes: dict[int, Any]
    leaf_ids: list[int]
    input_ids: list[int]
    output_ids: list[int]
    consts: dict[int, Any]
    leaf_paths: list[tuple] = dataclasses.field(default_factory=list)

    def consumers(self) -> dict[int, list[tuple[int, int]]]:
        """``var → [(equation index, operand position), ...]``."""
        out: dict[int, list[tuple[int, int]]] = {}
        for k, e in enumerate(self.eqns):
            for p, v in enumerate(e.ins):
                out.setdefault(v, []).append((k, p))
        return out

    def producer(self) -> dict[int, int]:
        """``var → index of the equation that computes it``."""
        return {v: k for k, e in enumerate(self.eqns) for v in e.outs}


PASS_THROUGH = {"reshape", "convert_element_type", "broadcast_in_dim", "squeeze", "transpose"}


def layer_of(g: Graph, v: int, prod: dict[int, int]) -> str | None:
    """The layer (module path) whose state leaf ``v`` is, through reshapes, casts and broadcasts; else ``None``."""
    owner = {i: "/".join(map(str, p[:-1])) or "(root)" for i, p in zip(g.leaf_ids, g.leaf_paths)}
    while v not in owner and v in prod and g.eqns[prod[v]].prim.name in PASS_THROUGH:
        v = g.eqns[prod[v]].ins[0]
    return owner.get(v)


def _where(eqn) -> str:
    try:
        from jax._src import source_info_util
        return source_info_util.summarize(eqn.source_info)
    except Exception:  # noqa: BLE001 - source positions are a convenience only
        return ""


class _Builder:
    def __init__(self):
        self.eqns: list[Eqn] = []
        self.shapes: dict[int, tuple[int, ...]] = {}
        self.dtypes: dict[int, Any] = {}
        self.consts: dict[int, Any] = {}
        self.count = 0

    def new(self, aval) -> int:
        i = self.count
        self.count += 1
        self.shapes[i] = tuple(int(s) for s in getattr(aval, "shape", ()))
        self.dtypes[i] = getattr(aval, "dtype", None)
        return i

    def const(self, value) -> int:
        i = self.new(jax.core.get_aval(value) if not hasattr(value, "aval") else value.aval)
        self.consts[i] = value
        return i

    def inline(self, jaxpr, consts, in_ids: list[int]) -> list[int]:
        env: dict[Any, int] = {}
        for v, c in zip(jaxpr.constvars, consts):
            env[v] = self.const(c)
        for v, i in zip(jaxpr.invars, in_ids):
            env[v] = i

        def read(v) -> int:
            if isinstance(v, jcore.Literal):
                return self.const(v.val)
            return env[v]

        for eqn in jaxpr.eqns:
            ins = [read(v) for v in eqn.invars]
            sub = _subjaxpr(eqn)
            if sub is not None:
                inner, inner_consts = sub
                outs = self.inline(inner, inner_consts, ins)
                for v, o in zip(eqn.outvars, outs):
                    if not isinstance(v, jcore.DropVar):
                        env[v] = o
                continue
            outs = [self.new(v.aval) for v in eqn.outvars]
            for v, o in zip(eqn.outvars, outs):
                if not isinstance(v, jcore.DropVar):
                    env[v] = o
            self.eqns.append(Eqn(eqn.primitive, dict(eqn.params), ins, outs, _where(eqn)))
        return [read(v) for v in jaxpr.outvars]


def _subjaxpr(eqn):
    if eqn.primitive.name not in INLINED:
        return None
    for key in _SUBJAXPR_KEYS:
        j = eqn.params.get(key)
        if isinstance(j, jcore.ClosedJaxpr):
            return j.jaxpr, j.consts
        if isinstance(j, jcore.Jaxpr):
            return j, ()
    return None


def trace_function(fn, leaves: list, args: tuple) -> Graph:
    """The inlined graph of ``fn(leaves, *args)``; its first ``len(leaves)`` inputs are the leaves."""
    closed = jax.make_jaxpr(fn)(leaves, *args)
    b = _Builder()
    in_ids = [b.new(v.aval) for v in closed.jaxpr.invars]
    out_ids = b.inline(closed.jaxpr, closed.consts, in_ids)
    n = len(leaves)
    return Graph(b.eqns, b.shapes, b.dtypes, in_ids[:n], in_ids[n:], out_ids, b.consts)


def split_eval(model: nnx.Module):
    """``(graphdef, state, paths, leaves, treedef)`` of an evaluation-mode copy of ``model`` (``model`` untouched)."""
    clone = nnx.clone(model)
    clone.eval()
    graphdef, state = nnx.split(clone)
    flat, treedef = jax.tree_util.tree_flatten_with_path(state)
    paths = [tuple(_key(k) for k in p) for p, _ in flat]
    return graphdef, state, paths, [leaf for _, leaf in flat], treedef


def _key(k) -> Any:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return getattr(k, attr)
    return str(k)


def trace_module(model: nnx.Module, args: tuple) -> Graph:
    """The inlined forward graph of ``model(*args)`` in evaluation mode, one input variable per state leaf."""
    graphdef, _, paths, leaves, treedef = split_eval(model)

    def fn(leaves, *a):
        return nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))(*a)

    g = trace_function(fn, leaves, tuple(args))
    g.leaf_paths = [tuple(x for x in p if x != "value") for p in paths]
    return g


def evaluate(g: Graph, leaves: list, args: tuple) -> dict[int, Any]:
    """Every variable's value for the given leaves and inputs (NumPy arrays), in one jitted pass."""

    def run(leaves, flat_args):
        vals: dict[int, Any] = dict(g.consts)
        vals.update(zip(g.leaf_ids, leaves))
        vals.update(zip(g.input_ids, flat_args))
        for e in g.eqns:
            out = e.prim.bind(*[vals[i] for i in e.ins], **e.params)
            vals.update(zip(e.outs, out if e.prim.multiple_results else [out]))
        return {k: v for k, v in vals.items() if k not in g.consts}

    vals = jax.jit(run)(list(leaves), jax.tree.leaves(args))
    vals.update(g.consts)
    return {k: np.asarray(v) if _is_numeric(v) else v for k, v in vals.items()}


def _is_numeric(v) -> bool:
    dt = getattr(v, "dtype", None)
    if dt is None:
        return isinstance(v, (int, float, bool, np.number))
    return not jax.dtypes.issubdtype(dt, jax.dtypes.prng_key)
