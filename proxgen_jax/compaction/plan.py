"""Decide which channels go, and fold the constants of the removed ones into the consumers' biases.

A channel (a node of :mod:`~proxgen_jax.compaction.ties`) can be removed iff it is not pinned and, at every
contraction ``out = Σ_i l_i r_i`` that consumes it, each row ``i`` holding it contributes

* exactly nothing: ``l_i`` or ``r_i`` is known zero for every input (a dead unit whose constant is 0, e.g.
  ``relu`` of a negative bias, or a unit whose outgoing weights are all zero), or
* a constant that folds exactly: ``l_i`` and ``r_i`` are both input-independent, ``out`` feeds only an
  ``add``/``sub`` with a bias (a state leaf reached through reshapes/broadcasts that nothing else uses), and the
  term ``Σ l_i r_i`` is uniform over every position sharing one bias entry. Through a dense layer, a 1×1 or a
  VALID conv it is; through a zero-padded k×k conv it is not at the borders, so such a unit stays.

Residual additions tie the branches' channels to one node, so a channel goes only if every consumer of the sum
lets it go. The removed rows' terms are then added to the bias (subtracted for ``x − b``, e.g. a BatchNorm's
running mean): ``b' = b ± Σ_{i removed} l_i r_i``, exact up to float rounding.

Example:
  >>> import jax.numpy as jnp
  >>> from flax import nnx
  >>> from proxgen_jax.compaction.plan import make_plan
  >>> class Two(nnx.Module):
  ...     def __init__(self):
  ...         self.a, self.b = nnx.Linear(2, 3, rngs=nnx.Rngs(0)), nnx.Linear(3, 1, rngs=nnx.Rngs(1))
  ...     def __call__(self, x):
  ...         return self.b(jnp.tanh(self.a(x)))
  >>> m = Two(); m.a.kernel.value = m.a.kernel.value.at[:, 0].set(0.0); m.a.bias.value = jnp.ones(3)
  >>> [v.shape for v in make_plan(m, (jnp.ones((1, 2)),)).new_values]
  [(2,), (2, 2), (1,), (2, 1)]
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from proxgen_jax.compaction.deps import dependence, known_zero
from proxgen_jax.compaction.graph import CompactionError, Graph, evaluate, layer_of, split_eval, trace_module
from proxgen_jax.compaction.ties import Contraction, Ties, build_ties

_CHAIN = {"reshape", "broadcast_in_dim", "convert_element_type", "squeeze"}
FOLD_RTOL = 1e-6


@dataclasses.dataclass
class FoldTarget:
    """Where a contraction's constant terms go: state leaf ``leaf`` through ``chain``, with sign ``±1``."""

    leaf: int
    chain: list[int]
    sign: float
    ids: np.ndarray  # out-shaped: which leaf entry is added at each position


@dataclasses.dataclass
class Plan:
    """The compaction of one model.

    Attributes:
      graph: the traced forward graph.
      keep: per state leaf, per axis, the kept indices (``None``: all).
      new_values: the state leaves after folding and slicing, in ``nnx.State`` leaf order.
      input_keep: per model input array, the kept indices of its last axis (``None``: all).
      folded: one entry per bias that absorbed constants (``{"leaf": path, "units": count}``).
      dead_kept: ``(leaf index, axis) → {reason: count}`` for units with zero incoming weights that stay.
      outputs: the model's outputs on the example input (eval mode).
    """

    graph: Graph
    keep: list[list[np.ndarray | None]]
    new_values: list[np.ndarray]
    input_keep: list[np.ndarray | None]
    folded: list[dict]
    dead_kept: dict
    outputs: list = dataclasses.field(default_factory=list)


def _others(ndim: int, a: int) -> tuple[int, ...]:
    return tuple(b for b in range(ndim) if b != a)


def _fold_target(g: Graph, c: Contraction, cons: dict, prod: dict, leaf_index: dict) -> FoldTarget | None:
    uses = cons.get(c.out, [])
    if len(uses) != 1:
        return None
    k, pos = uses[0]
    e = g.eqns[k]
    if e.prim.name not in ("add", "sub") or g.shapes[e.outs[0]] != g.shapes[c.out]:
        return None
    v, chain = e.ins[1 - pos], []
    while v not in leaf_index:
        if len(cons.get(v, [])) != 1 or v not in prod or g.eqns[prod[v]].prim.name not in _CHAIN:
            return None
        chain.append(prod[v])
        v = g.eqns[prod[v]].ins[0]
    if len(cons.get(v, [])) != 1:
        return None
    ids = np.arange(int(np.prod(g.shapes[v])), dtype=np.int32).reshape(g.shapes[v])
    for k2 in reversed(chain):
        e2 = g.eqns[k2]
        if e2.prim.name != "convert_element_type":
            ids = np.asarray(e2.prim.bind(ids, **e2.params))
    ids = np.broadcast_to(ids, g.shapes[c.out])
    return FoldTarget(leaf_index[v], chain, 1.0 if e.prim.name == "add" else -1.0, ids)


def _per_id(ids: np.ndarray, delta: np.ndarray, size: int) -> tuple[np.ndarray, bool]:
    """Mean of ``delta`` per bias entry, and whether ``delta`` is uniform on each entry's positions."""
    flat_ids, flat = ids.ravel(), np.asarray(delta, np.float64).ravel()
    lo, hi = np.full(size, np.inf), np.full(size, -np.inf)
    np.minimum.at(lo, flat_ids, flat)
    np.maximum.at(hi, flat_ids, flat)
    total, count = np.zeros(size), np.zeros(size)
    np.add.at(total, flat_ids, flat)
    np.add.at(count, flat_ids, 1.0)
    scale = float(np.max(np.abs(flat))) if flat.size else 0.0
    return total / np.maximum(count, 1.0), bool(np.all(hi - lo <= FOLD_RTOL * scale + 1e-30))


def _terms(g: Graph, requests: list[tuple[Contraction, np.ndarray]], vals: dict) -> list[np.ndarray]:
    """``prim(l · mask_j, r)`` for every contraction and each of its lhs masks ``mask_j``, in one jitted call."""

    def run(masks):
        out = []
        for (c, _), m in zip(requests, masks):
            e = g.eqns[c.eqn]
            lhs, rhs = vals[c.lhs], vals[c.rhs]
            out.append(jax.vmap(lambda mm, e=e, lhs=lhs, rhs=rhs: e.prim.bind(lhs * mm.astype(lhs.dtype), rhs,
                                                                                **e.params))(m))
        return out

    return [np.asarray(t) for t in jax.jit(run)([m for _, m in requests])] if requests else []


def _row_mask(shape: tuple[int, ...], axis: int, rows: np.ndarray) -> np.ndarray:
    m = np.zeros(shape[axis], bool)
    m[rows] = True
    return m.reshape([shape[axis] if a == axis else 1 for a in range(len(shape))])


def _judge(g: Graph, ts: Ties, vals: dict, dep: dict, targets: dict) -> dict[int, str]:
    """``node → reason`` for every channel that some contraction needs (see the module docstring)."""
    rows_info, requests = [], []
    for c in ts.contractions:
        dl, dr = dep[c.lhs], dep[c.rhs]
        zl, zr = known_zero(dl, vals[c.lhs]), known_zero(dr, vals[c.rhs])
        for la, ra in c.pairs:
            slot = ts.axes[c.lhs][la]
            if slot is None:
                continue
            ol, orr = _others(dl.ndim, la), _others(dr.ndim, ra)
            zero = np.all(zl, axis=ol) | np.all(zr, axis=orr)
            const = ~np.any(dl, axis=ol) & ~np.any(dr, axis=orr) & ~zero
            rows = np.flatnonzero(const) if c.eqn in targets else np.zeros(0, int)
            rows_info.append((c, slot, zero, const, rows, len(requests) if rows.size else None))
            if rows.size:
                shape = g.shapes[c.lhs]
                requests.append((c, np.stack([np.broadcast_to(_row_mask(shape, la, np.array([i])), shape)
                                              for i in rows])))
    terms = _terms(g, requests, vals)
    bad: dict[int, str] = {}
    prod = g.producer()
    for c, slot, zero, const, rows, k in rows_info:
        target = targets.get(c.eqn)
        foldable = set()
        if k is not None:
            size = int(np.prod(g.shapes[g.leaf_ids[target.leaf]]))
            foldable = {int(i) for i, t in zip(rows, terms[k]) if _per_id(target.ids, t, size)[1]}
        layer = layer_of(g, c.rhs, prod) or layer_of(g, c.lhs, prod)
        e = g.eqns[c.eqn]
        where = f"`{e.prim.name}`" + (f" of layer {layer}" if layer else f" {e.describe()}")
        mat = ts.get_matrix(slot)
        for i in np.flatnonzero(~zero):
            if int(i) in foldable:
                continue
            reason = ("live" if not const[i] else f"nonzero constant not foldable through {where}"
                      + (" (no bias after it)" if target is None else " (padding)"))
            for n in mat[i]:
                bad.setdefault(ts.find_node(int(n)), reason)
    return bad


def make_plan(model, example_input: tuple, *, prune_inputs: bool = False, unknown: str = "raise",
              multiple_of: int = 1) -> Plan:
    """Traces ``model(*example_input)`` and decides the compaction (see the module docstring).

    Args:
      model: a Flax nnx module (left unchanged).
      example_input: the positional arguments of one forward call.
      prune_inputs: also remove unused features of the inputs' last axis (the caller then feeds
        ``x[..., plan.input_keep[i]]``).
      unknown: ``"raise"``: a channel that could go but meets a primitive this module does not know raises
        :class:`CompactionError` naming it; ``"keep"``: such channels stay.
      multiple_of: keep some removable channels so that every channel axis keeps a multiple of this many
        (where enough removable ones exist): XLA's CPU/GPU kernels are much faster on widths that are multiples
        of 8 than on odd ones. Keeping a removable channel is always exact; ``1`` removes all of them.

    Returns:
      A :class:`Plan`.
    """
    if unknown not in ("raise", "keep"):
        raise ValueError(f"`unknown` must be 'raise' or 'keep', got {unknown!r}.")
    if not isinstance(multiple_of, int) or multiple_of < 1:
        raise ValueError(f"`multiple_of` must be a positive int, got {multiple_of!r}.")
    raw = split_eval(model)[3]
    g = trace_module(model, example_input)
    vals = evaluate(g, raw, example_input)
    leaves = [vals[v] for v in g.leaf_ids]
    dep = dependence(g, vals)
    ts = build_ties(g, dep, prune_inputs=prune_inputs)
    cons, prod = g.consumers(), g.producer()
    leaf_index = {v: i for i, v in enumerate(g.leaf_ids)}
    targets = {c.eqn: t for c in ts.contractions
               if (t := _fold_target(g, c, cons, prod, leaf_index)) is not None}
    bad = _judge(g, ts, vals, dep, targets)
    pinned = {ts.find_node(n): r for n, r in ts.pins.items()}
    blocked = {ts.find_node(n): r for n, r in ts.blocks.items()}

    def removed(r: int) -> bool:
        return r not in pinned and r not in bad and r not in blocked

    for r, what in blocked.items():
        if r not in pinned and r not in bad and unknown == "raise":
            raise CompactionError(
                f"cannot follow {what}: it uses channels that would otherwise be removed. Pass unknown='keep' "
                "to keep every channel it touches.")
    keep_rows = _keep_rows(ts, removed, multiple_of)
    new_values = [v.astype(np.float64) if _is_float(v) else v for v in leaves]
    folded = _fold(g, ts, vals, targets, keep_rows, new_values)
    keep, out_values = [], []
    for i, v in enumerate(g.leaf_ids):
        ks = [None if s is None else keep_rows[ts.find_slot(s)] for s in ts.axes[v]]
        ks = [None if k is not None and k.size == n else k for k, n in zip(ks, g.shapes[v])]
        keep.append(ks)
        out_values.append(_slice(new_values[i], ks).astype(leaves[i].dtype) if _is_float(leaves[i])
                          else _slice(new_values[i], ks))
    input_keep = []
    for v in g.input_ids:
        s = ts.axes[v][-1] if ts.axes[v] else None
        k = None if s is None else keep_rows[ts.find_slot(s)]
        input_keep.append(None if k is None or k.size == g.shapes[v][-1] else k)
    reasons = {**{r: f"pinned: {why}" for r, why in pinned.items()}, **bad}
    return Plan(g, keep, out_values, input_keep, folded, _dead_kept(g, ts, leaves, keep, reasons),
                [vals[o] for o in g.output_ids])


def _keep_rows(ts: Ties, removed, multiple_of: int = 1) -> dict[int, np.ndarray]:
    """``slot root → kept row indices``; a slot never loses all its rows (the first stays), and with
    ``multiple_of > 1`` plain channel axes keep their lowest removable rows until their width is a multiple."""
    gone: dict[int, bool] = {}
    for mat in ts.matrix.values():
        roots = [[ts.find_node(int(n)) for n in row] for row in mat]
        flags = [[gone.setdefault(r, removed(r)) for r in row] for row in roots]
        if mat.shape[1] == 1 and all(f[0] for f in flags):
            gone[roots[0][0]] = False
    for mat in ts.matrix.values() if multiple_of > 1 else ():
        if mat.shape[1] != 1:
            continue
        rows = list(dict.fromkeys(ts.find_node(int(n)) for n in mat[:, 0]))
        extra = -sum(not gone[r] for r in rows) % multiple_of
        for r in (r for r in rows if gone[r]):
            if extra == 0:
                break
            gone[r], extra = False, extra - 1
    out = {}
    for r, mat in ts.matrix.items():
        flags = np.array([[gone[ts.find_node(int(n))] for n in row] for row in mat], bool).reshape(mat.shape)
        out[r] = np.flatnonzero(~flags.any(axis=1))
    for s in range(len(ts.slot_parent)):
        r = ts.find_slot(s)
        out.setdefault(r, np.arange(ts.slot_size[r]))
    return out


def _fold(g: Graph, ts: Ties, vals: dict, targets: dict, keep_rows: dict, new_values: list) -> list[dict]:
    requests = []
    for c in ts.contractions:
        mask = np.zeros(g.shapes[c.lhs], bool)
        for la, _ in c.pairs:
            s = ts.axes[c.lhs][la]
            if s is not None:
                gone = np.setdiff1d(np.arange(g.shapes[c.lhs][la]), keep_rows[ts.find_slot(s)])
                mask = mask | _row_mask(g.shapes[c.lhs], la, gone)
        if mask.any() and c.eqn in targets:
            requests.append((c, mask[None]))
    folded = []
    for (c, _), delta in zip(requests, _terms(g, requests, vals)):
        if not np.any(delta[0]):
            continue
        t = targets[c.eqn]
        per, uniform = _per_id(t.ids, delta[0], new_values[t.leaf].size)
        if not uniform:
            raise CompactionError(f"internal: the folded constant of {g.eqns[c.eqn].describe()} is not uniform")
        new_values[t.leaf] = new_values[t.leaf] + t.sign * per.reshape(new_values[t.leaf].shape)
        folded.append({"leaf": "/".join(map(str, g.leaf_paths[t.leaf])), "eqn": g.eqns[c.eqn].describe()})
    return folded


def _is_float(v) -> bool:
    return isinstance(v, np.ndarray) and v.dtype.kind == "f"


def _slice(v: np.ndarray, ks: list) -> np.ndarray:
    for a, k in enumerate(ks):
        if k is not None:
            v = np.take(v, k, axis=a)
    return v


def _dead_kept(g: Graph, ts: Ties, leaves: list, keep: list, reasons: dict) -> dict:
    """For kernels (ndim ≥ 2): units of the last axis with all-zero weights that stay, counted by reason."""
    out = {}
    for i, v in enumerate(g.leaf_ids):
        leaf = leaves[i]
        s = ts.axes[v][-1] if leaf.ndim >= 2 else None
        if s is None or g.leaf_paths[i][-1] != "kernel":
            continue
        dead = np.flatnonzero(np.all(leaf.reshape(-1, leaf.shape[-1]) == 0, axis=0))
        kept = set(range(leaf.shape[-1])) if keep[i][-1] is None else set(keep[i][-1].tolist())
        counts: dict[str, int] = {}
        mat = ts.get_matrix(s)
        for u in dead:
            if int(u) in kept:
                why = next((reasons[ts.find_node(int(n))] for n in mat[u] if ts.find_node(int(n)) in reasons),
                           "kept so the layer keeps one unit")
                counts[why] = counts.get(why, 0) + 1
        if counts:
            out[(i, leaf.ndim - 1)] = counts
    return out
