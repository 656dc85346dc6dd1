"""``compact(model, example_input)``: the physically smaller Flax nnx module, same classes, same outputs.

The plan (:mod:`~proxgen_jax.compaction.plan`) slices every state leaf (kernels, biases, BatchNorm scales and
running statistics, attention projections) and folds removed constants into biases; the result is merged into
the module's own graph definition, so every submodule keeps its class. The size attributes of the Flax layers
(``in_features``, ``out_features``, ``num_features``, ``num_heads``, ...) are updated to the new shapes.

The compacted model is then checked against the original on ``example_input``: the same primitives in the same
order with the same scalar constants (a forward pass that computes a constant from an array shape, e.g.
``x / x.shape[-1]``, is caught here and named), and outputs equal to ``rtol`` (default 1e-5, relative to the
largest output). Anything else raises :class:`~proxgen_jax.compaction.graph.CompactionError`.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from flax import nnx
  >>> class MLP(nnx.Module):
  ...     def __init__(self):
  ...         self.a, self.b = nnx.Linear(4, 8, rngs=nnx.Rngs(0)), nnx.Linear(8, 2, rngs=nnx.Rngs(1))
  ...     def __call__(self, x):
  ...         return self.b(jax.nn.relu(self.a(x)))
  >>> m = MLP(); m.a.kernel.value = m.a.kernel.value.at[:, :5].set(0.0)
  >>> small = compact(m, jnp.ones((1, 4)))
  >>> small.a.kernel.shape, small.a.out_features, m.a.kernel.shape
  ((4, 3), 3, (4, 8))
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from proxgen_jax.compaction.graph import CompactionError, evaluate, split_eval, trace_module
from proxgen_jax.compaction.plan import Plan, make_plan


def as_args(example_input: Any) -> tuple:
    """A tuple of positional arguments: a single array becomes ``(array,)``."""
    return tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)


def _fix_sizes(model: nnx.Module) -> None:
    """Updates the size attributes of Flax layers to their (new) parameter shapes."""
    for _, m in nnx.iter_modules(model):
        if isinstance(m, nnx.Linear):
            m.in_features, m.out_features = m.kernel.shape
        elif isinstance(m, nnx.LinearGeneral):
            nb, na = len(m.batch_axis), len(m.axis)
            shape = tuple(m.kernel.shape)
            m.in_features, m.out_features = shape[nb:nb + na], shape[nb + na:]
        elif isinstance(m, (nnx.Conv, nnx.ConvTranspose)):
            m.kernel_shape = tuple(m.kernel.shape)
            m.in_features = m.kernel.shape[-2] * getattr(m, "feature_group_count", 1)
            m.out_features = m.kernel.shape[-1]
        elif isinstance(m, (nnx.BatchNorm, nnx.LayerNorm, nnx.RMSNorm)):
            leaf = next((getattr(m, n) for n in ("mean", "scale", "bias")
                         if getattr(m, n, None) is not None), None)
            if leaf is not None:
                m.num_features = leaf.shape[-1]
        elif isinstance(m, nnx.Embed):
            m.num_embeddings, m.features = m.embedding.shape
        elif isinstance(m, nnx.MultiHeadAttention):
            m.num_heads, m.head_dim = m.query.kernel.shape[-2:]
            m.num_kv_heads = m.key.kernel.shape[-2]
            m.qkv_features = m.num_heads * m.head_dim
            m.in_features, m.in_kv_features = m.query.kernel.shape[0], m.key.kernel.shape[0]
            m.out_features = m.out.kernel.shape[-1]


def apply_plan(model: nnx.Module, plan: Plan) -> nnx.Module:
    """A new module of ``model``'s classes holding ``plan.new_values`` (``model`` untouched)."""
    graphdef, state = nnx.split(model)
    flat, treedef = jax.tree_util.tree_flatten(state)
    if len(flat) != len(plan.new_values):
        raise CompactionError("the model's state changed between planning and compaction")
    new = [jnp.asarray(v, dtype=old.dtype) if isinstance(v, np.ndarray) else v
           for v, old in zip(plan.new_values, flat)]
    out = nnx.merge(graphdef, jax.tree_util.tree_unflatten(treedef, new))
    _fix_sizes(out)
    return out


def compact_args(plan: Plan, args: tuple) -> tuple:
    """The inputs of the compacted model: ``args`` with removed input features dropped (``prune_inputs``)."""
    flat, tree = jax.tree_util.tree_flatten(args)
    flat = [x if k is None else jnp.take(jnp.asarray(x), jnp.asarray(k), axis=-1)
            for x, k in zip(flat, plan.input_keep)]
    return jax.tree_util.tree_unflatten(tree, flat)


def verify(model: nnx.Module, small: nnx.Module, plan: Plan, args: tuple, rtol: float = 1e-5) -> float:
    """Checks ``small`` against ``model`` on ``args`` (see the module docstring); returns the relative error."""
    g0 = plan.graph
    g1 = trace_module(small, compact_args(plan, args))
    if [e.prim.name for e in g0.eqns] != [e.prim.name for e in g1.eqns]:
        raise CompactionError("the compacted model runs a different sequence of primitives; its forward pass "
                              "depends on sizes the compaction changed")
    for e0, e1 in zip(g0.eqns, g1.eqns):
        for i0, i1 in zip(e0.ins, e1.ins):
            c0, c1 = g0.consts.get(i0), g1.consts.get(i1)
            if c0 is not None and c1 is not None and np.shape(c0) == () and not np.array_equal(c0, c1):
                raise CompactionError(
                    f"the forward pass computes a constant from an array shape: {e0.describe()} uses "
                    f"{np.asarray(c0)!r}, the compacted model {np.asarray(c1)!r}. Such channels cannot be "
                    "removed; compute the constant from a fixed attribute instead.")
    vals = evaluate(g1, split_eval(small)[3], compact_args(plan, args))
    vals0 = [np.asarray(v, np.float64) for v in plan.outputs]
    vals1 = [np.asarray(vals[o], np.float64) for o in g1.output_ids]
    err = 0.0
    for a, b in zip(vals0, vals1):
        scale = max(float(np.max(np.abs(a))) if a.size else 0.0, 1e-30)
        err = max(err, float(np.max(np.abs(a - b))) / scale if a.size else 0.0)
    if err > rtol:
        raise CompactionError(f"the compacted model's outputs differ by {err:.3g} (relative) from the original")
    return err


def compact(model: nnx.Module, example_input: Any, *, prune_inputs: bool = False, unknown: str = "raise",
            rtol: float = 1e-5, multiple_of: int = 1) -> nnx.Module:
    """The physically smaller model: dead neurons, filters, heads (and unused input features) removed.

    A unit (output neuron, filter, attention head) goes when its output cannot change the model's eval-mode
    output: its constant is exactly 0 where it is consumed, or it folds exactly into the consumer's bias (Dense,
    1×1 or VALID conv), or its outgoing weights are all zero; residual additions, BatchNorm, pooling, flatten,
    concatenation and attention tie units together, read from the jaxpr of ``model(*example_input)``. Units
    whose nonzero constant meets a zero-padded k×k conv stay (folding would be inexact at the borders).

    Args:
      model: a Flax nnx module; left unchanged.
      example_input: one input array, or a tuple of positional arguments, for one forward call.
      prune_inputs: also drop input features (last axis of each input) that no unit reads; the compacted
        model then takes ``x[..., kept]`` (see :func:`compaction_plan` for ``kept``).
      unknown: ``"raise"`` (default) or ``"keep"``: what to do when a removable unit meets a primitive the
        compaction does not know (see :func:`~proxgen_jax.compaction.plan.make_plan`).
      rtol: accepted relative difference of the outputs on ``example_input`` (relative to the largest output).
      multiple_of: keep removable units so that each width stays a multiple of this (e.g. 8: faster XLA kernels
        than odd widths; see :func:`~proxgen_jax.compaction.plan.make_plan`); ``1`` removes every removable unit.

    Returns:
      A new module of the same classes, with smaller parameters, in the same train/eval mode as ``model``.

    Raises:
      CompactionError: the forward pass uses an operation that cannot be followed exactly (named).

    References:
      Chen et al., "Only Train Once" (OTO), NeurIPS 2021 / ICLR 2023 (``construct_subnet``);
      Fang et al., "DepGraph: Towards Any Structural Pruning", CVPR 2023 (dependency groups).
    """
    args = as_args(example_input)
    plan = make_plan(model, args, prune_inputs=prune_inputs, unknown=unknown, multiple_of=multiple_of)
    small = apply_plan(model, plan)
    verify(model, small, plan, args, rtol)
    return small


def compaction_plan(model: nnx.Module, example_input: Any, *, prune_inputs: bool = False,
                    unknown: str = "raise", multiple_of: int = 1) -> Plan:
    """The :class:`~proxgen_jax.compaction.plan.Plan` :func:`compact` applies (kept indices per leaf and input)."""
    return make_plan(model, as_args(example_input), prune_inputs=prune_inputs, unknown=unknown,
                     multiple_of=multiple_of)
