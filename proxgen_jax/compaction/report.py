"""``compaction_report(model, example_input)``: per layer units kept/removed, parameters and FLOPs before/after.

FLOPs count the multiply-adds of ``dot_general`` and ``conv_general_dilated`` (2 per multiply-add) of one
forward pass, divided by the leading (batch) size of the first input: FLOPs per example. Each contraction is
attributed to the layer whose state leaf it reads (through reshapes and dtype casts); contractions between
activations (attention's ``q·k`` and ``p·v``) are listed under ``"(activations)"``.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from flax import nnx
  >>> lin = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  >>> rep = compaction_report(lin, jnp.ones((1, 3)))
  >>> rep.totals["params_before"], rep.totals["flops_before"]
  (8, 12)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from flax import nnx

from proxgen_jax.compaction.compact import apply_plan, as_args, compact_args, verify
from proxgen_jax.compaction.graph import Graph, layer_of, trace_module
from proxgen_jax.compaction.plan import make_plan

ACTIVATIONS = "(activations)"


def _module(path: tuple) -> str:
    return "/".join(map(str, path[:-1])) or "(root)"


def layer_flops(g: Graph, batch: int = 1) -> dict[str, int]:
    """FLOPs per example of every contraction, summed per layer (see the module docstring)."""
    prod = g.producer()

    def source(v: int) -> str | None:
        return layer_of(g, v, prod)

    out: dict[str, int] = {}
    for e in g.eqns:
        name = e.prim.name
        if name == "dot_general":
            (lc, _), _ = e.params["dimension_numbers"]
            inner = int(np.prod([g.shapes[e.ins[0]][a] for a in lc]))
        elif name == "conv_general_dilated":
            rs = e.params["dimension_numbers"].rhs_spec
            inner = int(np.prod([g.shapes[e.ins[1]][a] for a in rs[1:]]))
        else:
            continue
        flops = 2 * int(np.prod(g.shapes[e.outs[0]])) * inner // max(int(batch), 1)
        who = source(e.ins[1]) or source(e.ins[0]) or ACTIVATIONS
        out[who] = out.get(who, 0) + flops
    return out


def _units(module: Any) -> int | None:
    kernel = getattr(module, "kernel", None)
    if isinstance(module, nnx.LinearGeneral) and kernel is not None:
        nb, na = len(module.batch_axis), len(module.axis)
        return int(np.prod(kernel.shape[nb + na:]))
    if kernel is not None and len(kernel.shape) >= 2:
        return int(kernel.shape[-1])
    if isinstance(module, (nnx.BatchNorm, nnx.LayerNorm, nnx.RMSNorm)):
        return int(getattr(module, "num_features", 0)) or None
    if isinstance(module, nnx.MultiHeadAttention):
        return int(module.num_heads)
    return None


def _params(model: nnx.Module) -> dict[str, tuple[int, int]]:
    """``layer → (parameter count, bytes)`` of the nnx.Param leaves directly in each layer."""
    out: dict[str, tuple[int, int]] = {}
    for path, leaf in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        arr = leaf.get_value() if hasattr(leaf, "get_value") else leaf.value
        key = _module(tuple(p for p in path if p != "value"))
        n, b = out.get(key, (0, 0))
        out[key] = (n + int(np.size(arr)), b + int(np.size(arr)) * np.dtype(arr.dtype).itemsize)
    return out


@dataclasses.dataclass
class CompactionReport:
    """What :func:`compaction_report` returns.

    Attributes:
      layers: one dict per layer: ``layer``, ``class``, ``units_before/after``, ``params_before/after``,
        ``flops_before/after`` (per example), ``dead_kept`` (units with all-zero weights that stay, by reason).
      totals: the sums, plus ``bytes_before/after`` of the parameters and the relative output error.
      folded: the biases that absorbed constants of removed units.
      input_keep: per input, the kept features of its last axis (``None``: all).
      model: the compacted model (what :func:`~proxgen_jax.compaction.compact` returns).
    """

    layers: list[dict]
    totals: dict
    folded: list[dict]
    input_keep: list
    model: Any = dataclasses.field(repr=False, default=None)

    def to_dict(self) -> dict:
        """JSON-serialisable content (without the model)."""
        keep = [None if k is None else [int(i) for i in k] for k in self.input_keep]
        return {"layers": self.layers, "totals": self.totals, "folded": self.folded, "input_keep": keep}

    def to_markdown(self) -> str:
        """The per-layer table in Markdown."""
        rows = ["| layer | class | units | params | FLOPs/example | dead units kept |", "|---|---|---|---|---|---|"]
        for r in self.layers:
            units = "" if r["units_before"] is None else f"{r['units_before']} → {r['units_after']}"
            kept = "; ".join(f"{n}: {why}" for why, n in r["dead_kept"].items())
            rows.append(f"| {r['layer']} | {r['class']} | {units} | {r['params_before']} → {r['params_after']} | "
                        f"{r['flops_before']} → {r['flops_after']} | {kept} |")
        t = self.totals
        rows.append(f"| **total** | | | {t['params_before']} → {t['params_after']} | "
                    f"{t['flops_before']} → {t['flops_after']} | |")
        return "\n".join(rows)

    def __str__(self) -> str:
        return self.to_markdown()


def compaction_report(model: nnx.Module, example_input: Any, *, prune_inputs: bool = False,
                      unknown: str = "raise", rtol: float = 1e-5, multiple_of: int = 1) -> CompactionReport:
    """Compacts ``model`` (as :func:`~proxgen_jax.compaction.compact` does) and reports per layer.

    Args:
      model: a Flax nnx module; left unchanged.
      example_input: one input array or a tuple of positional arguments.
      prune_inputs: as in :func:`~proxgen_jax.compaction.compact`.
      unknown: as in :func:`~proxgen_jax.compaction.compact`.
      rtol: as in :func:`~proxgen_jax.compaction.compact`.
      multiple_of: as in :func:`~proxgen_jax.compaction.compact`.

    Returns:
      A :class:`CompactionReport`; ``str(report)`` is a Markdown table.
    """
    args = as_args(example_input)
    plan = make_plan(model, args, prune_inputs=prune_inputs, unknown=unknown, multiple_of=multiple_of)
    small = apply_plan(model, plan)
    err = verify(model, small, plan, args, rtol)
    batch = int(np.shape(args[0])[0]) if np.ndim(args[0]) else 1
    f0 = layer_flops(plan.graph, batch)
    f1 = layer_flops(trace_module(small, compact_args(plan, args)), batch)
    p0, p1 = _params(model), _params(small)
    mods0 = {"/".join(map(str, p)) or "(root)": m for p, m in nnx.iter_modules(model)}
    mods1 = {"/".join(map(str, p)) or "(root)": m for p, m in nnx.iter_modules(small)}
    dead = {}
    for (i, _), counts in plan.dead_kept.items():
        dead.setdefault(_module(plan.graph.leaf_paths[i]), {}).update(counts)
    layers = []
    for name in sorted(set(p0) | set(f0), key=lambda n: (n == ACTIVATIONS, n)):
        m0, m1 = mods0.get(name), mods1.get(name)
        layers.append({"layer": name, "class": type(m0).__name__ if m0 is not None else "",
                       "units_before": _units(m0) if m0 is not None else None,
                       "units_after": _units(m1) if m1 is not None else None,
                       "params_before": p0.get(name, (0, 0))[0], "params_after": p1.get(name, (0, 0))[0],
                       "flops_before": f0.get(name, 0), "flops_after": f1.get(name, 0),
                       "dead_kept": dead.get(name, {})})
    totals = {"params_before": sum(n for n, _ in p0.values()), "params_after": sum(n for n, _ in p1.values()),
              "bytes_before": sum(b for _, b in p0.values()), "bytes_after": sum(b for _, b in p1.values()),
              "flops_before": sum(f0.values()), "flops_after": sum(f1.values()), "output_rel_error": err}
    return CompactionReport(layers, totals, plan.folded, plan.input_keep, small)
