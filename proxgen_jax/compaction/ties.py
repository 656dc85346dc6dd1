"""Which axes of the forward graph carry the same channels: two-level union-find over axes and channels.

Every axis of size > 1 of every variable gets a *slot*. Primitives that keep an index where it is (elementwise
ops, BatchNorm's broadcasts, residual additions, pooling over other axes, the batch and free dimensions of a
``dot_general``) tie their operands' and output's slots into one; a contraction ties the two contracted axes and
is recorded (:class:`Contraction`). A slot's channels are integer *nodes* of a second union-find, laid out as a
matrix ``(size, k)``: row ``i`` of an axis is removed iff one of its ``k`` nodes is. A plain axis has ``k = 1``;
a flatten ``(N, H, W, C) → (N, H·W·C)`` gives the output axis ``k = 3`` (row ``(h, w, c)`` holds the nodes of
``h``, ``w`` and ``c``), so removing channel ``c`` of the conv removes the rows ``{(h, w, c)}`` of the Dense
kernel that follows. Slots receive their matrix lazily, so a kernel axis adopts the structure of whatever it
is contracted with.

Nodes are *pinned* (never removed) where an index cannot be removed without changing the result: model inputs
and outputs, reduced axes (a mean over channels divides by their number), padded/strided/sliced axes, conv
spatial axes, grouped convolutions, and axes contracted between two input-dependent operands (attention's
``q·k``, whose scale ``1/√d`` is computed from the shape). Axes touched by a primitive this module does not know
are *blocked* with its name: removing a blocked channel raises :class:`~proxgen_jax.compaction.graph.CompactionError`.

Example:
  >>> import numpy as np
  >>> t = Ties()
  >>> a, b = t.new_slot(3), t.new_slot(3)
  >>> t.tie(a, b); t.find_slot(a) == t.find_slot(b)
  True
"""

from __future__ import annotations

import dataclasses

import numpy as np

from proxgen_jax.compaction.deps import ELEMENTWISE
from proxgen_jax.compaction.graph import Eqn, Graph

REDUCTIONS = {"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and", "reduce_or", "argmax",
              "argmin"}
CUMULATIVE = {"cumsum", "cummax", "cummin", "cumprod", "cumlogsumexp"}
WINDOWED = {"reduce_window_sum", "reduce_window_max", "reduce_window_min"}


@dataclasses.dataclass
class Contraction:
    """A ``dot_general``/``conv_general_dilated`` equation and its contracted axis pairs ``(lhs axis, rhs axis)``."""

    eqn: int
    lhs: int
    rhs: int
    out: int
    pairs: list[tuple[int, int]]


class Ties:
    """Slots (axes tied together) and nodes (channels), with pins and blocks on nodes."""

    def __init__(self):
        self.slot_parent: list[int] = []
        self.slot_size: list[int] = []
        self.matrix: dict[int, np.ndarray] = {}
        self.node_parent: list[int] = []
        self.pins: dict[int, str] = {}
        self.blocks: dict[int, str] = {}
        self.axes: dict[int, list[int | None]] = {}
        self.contractions: list[Contraction] = []

    # -- union-find ------------------------------------------------------------------------------------------
    def new_slot(self, size: int) -> int:
        self.slot_parent.append(len(self.slot_parent))
        self.slot_size.append(int(size))
        return len(self.slot_parent) - 1

    def find_slot(self, s: int) -> int:
        while self.slot_parent[s] != s:
            self.slot_parent[s] = self.slot_parent[self.slot_parent[s]]
            s = self.slot_parent[s]
        return s

    def find_node(self, n: int) -> int:
        p = self.node_parent
        while p[n] != n:
            p[n] = p[p[n]]
            n = p[n]
        return n

    def fresh_nodes(self, n: int) -> np.ndarray:
        start = len(self.node_parent)
        self.node_parent.extend(range(start, start + n))
        return np.arange(start, start + n).reshape(n, 1)

    def union_nodes(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in zip(a.ravel(), b.ravel()):
            rx, ry = self.find_node(int(x)), self.find_node(int(y))
            if rx != ry:
                self.node_parent[ry] = rx

    def get_matrix(self, s: int) -> np.ndarray:
        """The slot's channel matrix ``(size, k)``, created (``k = 1``, fresh nodes) on first use."""
        r = self.find_slot(s)
        if r not in self.matrix:
            self.matrix[r] = self.fresh_nodes(self.slot_size[r])
        return self.matrix[r]

    def tie(self, a: int | None, b: int | None) -> None:
        if a is None or b is None:
            return
        ra, rb = self.find_slot(a), self.find_slot(b)
        if ra == rb:
            return
        if self.slot_size[ra] != self.slot_size[rb]:
            raise AssertionError("tied axes of different sizes")
        self.slot_parent[rb] = ra
        ma, mb = self.matrix.get(ra), self.matrix.pop(rb, None)
        if ma is None:
            if mb is not None:
                self.matrix[ra] = mb
        elif mb is not None:
            if ma.shape == mb.shape:
                self.union_nodes(ma, mb)
            else:  # one axis is a flatten of several, the other not: keep both whole
                for n in np.concatenate([ma.ravel(), mb.ravel()]):
                    self.pins.setdefault(int(n), "axes tied with different index structures")

    def pin(self, s: int | None, reason: str) -> None:
        if s is not None:
            for n in self.get_matrix(s).ravel():
                self.pins.setdefault(int(n), reason)

    def block(self, s: int | None, what: str) -> None:
        if s is not None:
            for n in self.get_matrix(s).ravel():
                self.blocks.setdefault(int(n), what)

    # -- variables -------------------------------------------------------------------------------------------
    def add_var(self, v: int, shape: tuple[int, ...]) -> None:
        self.axes[v] = [self.new_slot(s) if s > 1 else None for s in shape]

    def pin_var(self, v: int, reason: str, skip_last: bool = False) -> None:
        axes = self.axes[v][:-1] if skip_last else self.axes[v]
        for s in axes:
            self.pin(s, reason)


def _merge_matrices(ts: Ties, slots: list[int]) -> np.ndarray:
    """Row-major product of the slots' matrices: the channel matrix of their flatten into one axis."""
    mats = [ts.get_matrix(s) for s in slots]
    grids = np.meshgrid(*[np.arange(m.shape[0]) for m in mats], indexing="ij")
    cols = [m[g.ravel()] for m, g in zip(mats, grids)]
    return np.concatenate(cols, axis=1)


def _reshape(ts: Ties, e: Eqn, g: Graph) -> None:
    x, o = e.ins[0], e.outs[0]
    if e.params.get("dimensions") is not None:
        _pin_all(ts, e, "reshape with a transposition")
        return
    ins = [(a, n) for a, n in enumerate(g.shapes[x]) if n > 1]
    outs = [(a, n) for a, n in enumerate(g.shapes[o]) if n > 1]
    i = j = 0
    while i < len(ins) and j < len(outs):
        gi, gj = [ins[i]], [outs[j]]
        pi, pj = ins[i][1], outs[j][1]
        i, j = i + 1, j + 1
        while pi != pj:
            if pi < pj:
                gi.append(ins[i]); pi *= ins[i][1]; i += 1  # noqa: E702
            else:
                gj.append(outs[j]); pj *= outs[j][1]; j += 1  # noqa: E702
        in_slots = [ts.axes[x][a] for a, _ in gi]
        out_slots = [ts.axes[o][a] for a, _ in gj]
        if len(gi) == 1 and len(gj) == 1:
            ts.tie(in_slots[0], out_slots[0])
        elif len(gj) == 1:
            ts.matrix[ts.find_slot(out_slots[0])] = _merge_matrices(ts, in_slots)
        else:
            for s in in_slots + out_slots:
                ts.pin(s, "reshape splitting an axis")


def _pin_all(ts: Ties, e: Eqn, reason: str) -> None:
    for v in e.ins + e.outs:
        ts.pin_var(v, reason)


def _tie_ordered(ts: Ties, x: int, o: int, dropped: set[int], reason: str) -> None:
    """Ties x's axes outside ``dropped`` to o's axes in order; pins the dropped ones."""
    kept = [a for a in range(len(ts.axes[x])) if a not in dropped]
    for a in dropped:
        ts.pin(ts.axes[x][a], reason)
    for a, b in zip(kept, range(len(ts.axes[o]))):
        ts.tie(ts.axes[x][a], ts.axes[o][b])


def _identity_axes_or_pin(ts: Ties, x: int, o: int, identity: list[bool], reason: str) -> None:
    for a, same in enumerate(identity):
        if same:
            ts.tie(ts.axes[x][a], ts.axes[o][a])
        else:
            ts.pin(ts.axes[x][a], reason)
            ts.pin(ts.axes[o][a], reason)


def _dot_general(ts: Ties, e: Eqn, k: int, dep: dict) -> None:
    lhs, rhs = e.ins
    o = e.outs[0]
    (lc, rc), (lb, rb) = e.params["dimension_numbers"]
    la, ra, oa = ts.axes[lhs], ts.axes[rhs], ts.axes[o]
    pos = 0
    for a, b in zip(lb, rb):
        ts.tie(la[a], ra[b]); ts.tie(la[a], oa[pos]); pos += 1  # noqa: E702
    for a in range(len(la)):
        if a not in lc and a not in lb:
            ts.tie(la[a], oa[pos]); pos += 1  # noqa: E702
    for b in range(len(ra)):
        if b not in rc and b not in rb:
            ts.tie(ra[b], oa[pos]); pos += 1  # noqa: E702
    both_live = dep[lhs].any() and dep[rhs].any()
    for a, b in zip(lc, rc):
        ts.tie(la[a], ra[b])
        if both_live:
            ts.pin(la[a], "contracted between two input-dependent operands (e.g. attention q·k)")
    ts.contractions.append(Contraction(k, lhs, rhs, o, list(zip(lc, rc))))


def _conv(ts: Ties, e: Eqn, k: int, dep: dict) -> None:
    lhs, rhs = e.ins
    o = e.outs[0]
    dn = e.params["dimension_numbers"]
    ls, rs, os_ = dn.lhs_spec, dn.rhs_spec, dn.out_spec
    la, ra, oa = ts.axes[lhs], ts.axes[rhs], ts.axes[o]
    ts.tie(la[ls[0]], oa[os_[0]])
    ts.tie(ra[rs[0]], oa[os_[1]])
    for a in ls[2:]:
        ts.pin(la[a], "convolution spatial axis")
    for a in rs[2:]:
        ts.pin(ra[a], "convolution spatial axis")
    for a in os_[2:]:
        ts.pin(oa[a], "convolution spatial axis")
    if e.params.get("feature_group_count", 1) != 1 or e.params.get("batch_group_count", 1) != 1:
        for s in (la[ls[1]], ra[rs[1]], ra[rs[0]], oa[os_[1]]):
            ts.pin(s, "grouped convolution")
        return
    ts.tie(la[ls[1]], ra[rs[1]])
    if dep[lhs].any() and dep[rhs].any():
        ts.pin(la[ls[1]], "convolution of two input-dependent operands")
    ts.contractions.append(Contraction(k, lhs, rhs, o, [(ls[1], rs[1])]))


def build_ties(g: Graph, dep: dict, *, prune_inputs: bool = False) -> Ties:
    """The slots, nodes, pins, blocks and contractions of the graph (see the module docstring)."""
    ts = Ties()
    for v, s in g.shapes.items():
        ts.add_var(v, s)
    for v in g.input_ids:
        ts.pin_var(v, "model input", skip_last=prune_inputs)
    for v in g.consts:
        for s in ts.axes[v]:
            ts.block(s, "a constant array captured by the forward pass")
    for k, e in enumerate(g.eqns):
        name = e.prim.name
        p = e.params
        if name in ELEMENTWISE and len(e.outs) == 1:
            o = e.outs[0]
            for x in e.ins:
                if len(g.shapes[x]) == len(g.shapes[o]):
                    for a, (n, m) in enumerate(zip(g.shapes[x], g.shapes[o])):
                        if n == m:
                            ts.tie(ts.axes[x][a], ts.axes[o][a])
        elif name == "broadcast_in_dim":
            x, o = e.ins[0], e.outs[0]
            for j, d in enumerate(p["broadcast_dimensions"]):
                if g.shapes[x][j] == g.shapes[o][d]:
                    ts.tie(ts.axes[x][j], ts.axes[o][d])
        elif name == "reshape":
            _reshape(ts, e, g)
        elif name == "squeeze":
            _tie_ordered(ts, e.ins[0], e.outs[0], set(p["dimensions"]), "squeezed")
        elif name == "transpose":
            for i, a in enumerate(p["permutation"]):
                ts.tie(ts.axes[e.ins[0]][a], ts.axes[e.outs[0]][i])
        elif name in REDUCTIONS:
            _tie_ordered(ts, e.ins[0], e.outs[0], set(p["axes"]), f"reduced by `{name}`")
        elif name in CUMULATIVE:
            x, o = e.ins[0], e.outs[0]
            _identity_axes_or_pin(ts, x, o, [a != p["axis"] for a in range(len(g.shapes[x]))],
                                  f"accumulated by `{name}`")
        elif name in WINDOWED:
            x, o = e.ins[0], e.outs[0]
            same = [w == 1 and s == 1 and tuple(pd) == (0, 0) and bd == 1 and wd == 1
                    for w, s, pd, bd, wd in zip(p["window_dimensions"], p["window_strides"], p["padding"],
                                                p["base_dilation"], p["window_dilation"])]
            _identity_axes_or_pin(ts, x, o, same, f"pooled by `{name}`")
        elif name == "pad":
            x, o = e.ins[0], e.outs[0]
            _identity_axes_or_pin(ts, x, o, [tuple(c) == (0, 0, 0) for c in p["padding_config"]], "padded")
        elif name == "slice":
            x, o = e.ins[0], e.outs[0]
            strides = p["strides"] or (1,) * len(g.shapes[x])
            same = [s == 0 and lim == n and st == 1
                    for s, lim, st, n in zip(p["start_indices"], p["limit_indices"], strides, g.shapes[x])]
            _identity_axes_or_pin(ts, x, o, same, "sliced")
        elif name == "rev":
            x, o = e.ins[0], e.outs[0]
            _identity_axes_or_pin(ts, x, o, [a not in p["dimensions"] for a in range(len(g.shapes[x]))],
                                  "reversed")
        elif name == "concatenate":
            _concatenate(ts, e, g)
        elif name == "dot_general":
            _dot_general(ts, e, k, dep)
        elif name == "conv_general_dilated":
            _conv(ts, e, k, dep)
        else:
            for v in e.ins + e.outs:
                for s in ts.axes[v]:
                    ts.block(s, e.describe())
    for v in g.output_ids:
        ts.pin_var(v, "model output")
    return ts


def _concatenate(ts: Ties, e: Eqn, g: Graph) -> None:
    d = e.params["dimension"]
    o = e.outs[0]
    for x in e.ins:
        for a in range(len(g.shapes[x])):
            if a != d:
                ts.tie(ts.axes[x][a], ts.axes[o][a])
    parts = []
    for x in e.ins:
        s = ts.axes[x][d]
        parts.append(ts.get_matrix(s) if s is not None else ts.fresh_nodes(g.shapes[x][d]))
        if s is None:
            for n in parts[-1].ravel():
                ts.pins.setdefault(int(n), "size-1 part of a concatenation")
    if len({m.shape[1] for m in parts}) != 1 or ts.axes[o][d] is None:
        for m in parts:
            for n in m.ravel():
                ts.pins.setdefault(int(n), "concatenation of differently structured axes")
        ts.pin(ts.axes[o][d], "concatenation of differently structured axes")
        return
    ts.matrix[ts.find_slot(ts.axes[o][d])] = np.concatenate(parts, axis=0)
