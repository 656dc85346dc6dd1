r"""The one per-leaf engine behind every prox link: Algorithm 1, line 8, leaf by leaf.

Every prox transformation (:func:`~proxgen_jax.proximal_step`, :func:`~proxgen_jax.proximal_step_metric`,
:func:`~proxgen_jax.target_sparsity`, the budget projections) does the same walk: read the preconditioner's
output (``m_t``, ``C_t+δI`` and the direction ``(C_t+δI)^{-1} m_t``), check it against the params, cast to the
compute dtype, apply the decoupled weight decay, hand each regularised leaf to a *solver*, and return
``θ_{t+1} − θ_t`` in the params' dtype. That walk is written once, here:

* :func:`prepare_step` turns ``(updates, params)`` into a :class:`StepProblem` — one :class:`LeafProblem` per
  leaf, with the per-leaf ``spec`` (a regularizer, a budget, ``None``) the transformation resolved.
* A solver maps a :class:`LeafProblem` (and ``λ``) to ``θ_{t+1}`` for that leaf; :func:`closed_form` is the
  diagonal-metric closed form. Whole-tree solvers (a global budget, the λ controller) read all of
  ``StepProblem.leaves`` at once and produce one ``x`` per leaf the same way.
* :meth:`StepProblem.updates` turns the solutions back into optax updates. Leaves without a spec (masked out,
  unregularised) take the plain step ``−α_t (C_t+δI)^{-1} m_t`` — bit for bit ``optax.adam``'s.

Decoupled weight decay follows the reference ProxGen optimizers (AdamW order): ``θ ← θ(1 − α_t·wd)`` first,
then the preconditioned prox from that point.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from proxgen_jax._tree import check_params_like, compute_dtype
from proxgen_jax.preconditioners.preconditioned_updates import rebuild_of, split_updates
from proxgen_jax.regularizers._metric_forms import metric_step
from proxgen_jax.solvers.metric_operators import NOT_DIAGONAL, MetricOperator


class LeafProblem(NamedTuple):
    """One leaf's step ``argmin_x ⟨m_t, x⟩ + λR(x) + (1/2α_t)‖x − θ‖²_{C_t+δI}``, in the compute dtype.

    Attributes:
      theta: ``θ_t`` after the decoupled weight decay (the point the step starts from).
      direction: ``(C_t+δI)^{-1} m_t``.
      metric: ``C_t+δI``: ``None`` (Euclidean), an array (its diagonal) or a ``MetricOperator``.
      momentum: ``m_t`` when ``direction = m_t/metric`` (diagonal preconditioners), else ``None``.
      alpha: ``α_t`` (a scalar).
      spec: what the transformation resolved for this leaf (a regularizer, a budget, ...); never ``None`` for a
        leaf handed to a solver.
      path: the leaf's key path, for error messages.
      rebuild: ``None``, or a zero-argument function returning this problem computed afresh from the params and
        the preconditioner's new state (see :meth:`recomputed`).
    """

    theta: jax.Array
    direction: jax.Array
    metric: Any
    momentum: Any
    alpha: jax.Array
    spec: Any
    path: tuple
    rebuild: Any = None

    def centre(self) -> jax.Array:
        """``z = θ − α_t (C_t+δI)^{-1} m_t``, the point the prox is taken at."""
        return self.theta - self.alpha * self.direction

    def recomputed(self) -> LeafProblem:
        """The same problem computed afresh from buffers the step writes anyway — ``θ_t`` and the
        preconditioner's new state — where the preconditioner offers it
        (:attr:`~proxgen_jax.PreconditionedUpdates.rebuild`), else ``self``. Meant for use inside
        :func:`isolated`: equal to ``self`` up to the rounding of a differently fused evaluation."""
        return self if self.rebuild is None else self.rebuild()


def isolated(fn, count):
    """``fn()`` (a pytree of arrays) computed in a region of its own and written to memory once.

    A budget reads a costly function of the step twice: its gains, to select the free units, and the step itself,
    to write them. XLA does not duplicate an expensive elementwise producer (a square root, a division) into two
    consumers: it writes ``C_t+δ`` and ``z`` to memory as parameter-sized temporaries instead — and on XLA:CPU
    every such temporary is a fresh allocation whose pages fault in again at every step (measured: ~2 µs per
    4 KiB page, ~1 ns per float32, more per parameter than Adam's whole step). A ``lax.cond`` branch is a
    computation of its own, which XLA neither merges with the rest of the step nor inlines, so ``fn`` — calling
    :meth:`LeafProblem.recomputed` — recomputes the metric there from the buffers the step writes anyway, and
    only its own result is written. The predicate ``count ≥ 0`` holds for every step count (``optax`` counts
    saturate), which XLA cannot know. Off the CPU ``fn()`` is called as it is: a GPU conditional reads its
    predicate on the host (a synchronisation every step), and a device allocator reuses its memory.
    """
    def on_cpu():
        shapes = jax.eval_shape(fn)
        return jax.lax.cond(count >= 0, fn, lambda: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes))

    return jax.lax.platform_dependent(cpu=on_cpu, default=fn)


class StepProblem(NamedTuple):
    """All leaves of one step (trace-time only: built and consumed inside ``update``)."""

    leaves: tuple  # LeafProblem per leaf (``spec`` None: plain step)
    params: tuple  # θ_t as given, per leaf
    decay: tuple   # α_t·wd per leaf (compute dtype) or None
    treedef: Any

    def solve(self, solver, lam) -> list:
        """``[solver(leaf, λ) or None]`` — ``None`` for leaves without a spec."""
        return [None if leaf.spec is None else solver(leaf, lam) for leaf in self.leaves]

    def updates(self, solutions: Sequence[Any]) -> Any:
        """Optax updates ``θ_{t+1} − θ_t`` in each param's dtype; ``None`` solutions take the plain step."""
        out = []
        for leaf, p, decay, x in zip(self.leaves, self.params, self.decay, solutions):
            if x is not None:
                out.append((x - p.astype(leaf.theta.dtype)).astype(p.dtype))
            elif decay is None:
                out.append((-leaf.alpha * leaf.direction).astype(p.dtype))
            else:
                out.append((-decay * p.astype(leaf.theta.dtype) - leaf.alpha * leaf.direction).astype(p.dtype))
        return jax.tree.unflatten(self.treedef, out)

    def landing_updates(self, solutions: Sequence[Any]) -> Any:
        """:meth:`updates` with each solved leaf's update nudged (≤ 2 ulps) so that ``θ_t + u``, as
        ``optax.apply_updates`` rounds it, equals ``x`` cast to the params' dtype — a weight the prox put on a
        level ``s·ℓ`` stays exactly there (``fl(θ + fl(x − θ))`` can miss ``x`` by an ulp). Where no such ``u``
        exists (``|x| ≪ |θ_t|``) the nearest one is kept. Costs four compare-and-steps per coordinate: for links
        whose solutions must land exactly (learned quantisation levels)."""
        ups = self.treedef.flatten_up_to(self.updates(solutions))
        out = []
        for p, u, x in zip(self.params, ups, solutions):
            if x is not None:
                target = x.astype(p.dtype)
                down, up = jnp.asarray(-jnp.inf, p.dtype), jnp.asarray(jnp.inf, p.dtype)
                for _ in range(2):
                    u = jnp.where(p + u > target, jnp.nextafter(u, down), u)
                    u = jnp.where(p + u < target, jnp.nextafter(u, up), u)
            out.append(u)
        return jax.tree.unflatten(self.treedef, out)

    def new_params(self, solutions: Sequence[Any]) -> list:
        """What ``optax.apply_updates`` will produce from :meth:`updates` (per leaf, in the params' dtype)."""
        ups = self.treedef.flatten_up_to(self.updates(solutions))
        return [(p + u).astype(p.dtype) for p, u in zip(self.params, ups)]


def prepare_step(name: str, updates: Any, params: Any, specs: Sequence[Any], learning_rate, *,
                 weight_decay=None, decay_flags: Sequence[bool] | None = None) -> StepProblem:
    """The :class:`StepProblem` of one prox link.

    Args:
      name: the transformation's name, for error messages.
      updates: the preconditioner's output (or plain optax updates: the Euclidean metric).
      params: ``θ_t`` (required; the tree the updates must match, checked naming the path).
      specs: one spec per leaf of ``params`` (``None``: plain step).
      learning_rate: ``α_t`` at this step.
      weight_decay: ``wd`` at this step (``None`` or 0: off).
      decay_flags: which leaves decay (default: all).
    """
    direction, metric, momentum = split_updates(updates)
    rebuild = rebuild_of(updates)
    check_params_like(name, params, direction)
    flat_p, treedef = jax.tree.flatten(params)
    n = treedef.num_leaves
    flat_d = treedef.flatten_up_to(direction)
    flat_c = [None] * n if metric is None else treedef.flatten_up_to(metric)
    flat_m = [None] * n if momentum is None else treedef.flatten_up_to(momentum)
    flat_r = [None] * n if rebuild is None else treedef.flatten_up_to(rebuild)
    paths = [path for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    decays = [weight_decay is not None and (decay_flags is None or decay_flags[i]) for i in range(n)]
    leaves, decay = [], []
    for p, d, c, m, r, spec, path, decays_here in zip(flat_p, flat_d, flat_c, flat_m, flat_r, specs, paths, decays):
        p = jnp.asarray(p)
        wd = weight_decay if decays_here else None
        leaf = _leaf_problem(p, d, c, m, spec, path, learning_rate, wd)
        if r is not None:
            leaf = leaf._replace(rebuild=functools.partial(_rebuilt, r, p, spec, path, learning_rate, wd))
        leaves.append(leaf)
        decay.append(None if wd is None else leaf.alpha * jnp.asarray(wd, leaf.theta.dtype))
    return StepProblem(tuple(leaves), tuple(jnp.asarray(p) for p in flat_p), tuple(decay), treedef)


def _leaf_problem(p, d, c, m, spec, path, learning_rate, weight_decay) -> LeafProblem:
    """One leaf's problem in the compute dtype, ``θ`` after the decoupled weight decay ``θ(1 − α_t·wd)``."""
    dt = compute_dtype(p.dtype)
    alpha = jnp.asarray(learning_rate, dt)
    theta = p.astype(dt)
    if weight_decay is not None:
        theta = theta * (1 - alpha * jnp.asarray(weight_decay, dt))
    if c is not None and not isinstance(c, MetricOperator):
        c = jnp.asarray(c).astype(dt)
    m = None if m is None else jnp.asarray(m).astype(dt)
    return LeafProblem(theta, jnp.asarray(d).astype(dt), c, m, alpha, spec, path)


def _rebuilt(rebuild, p, spec, path, learning_rate, weight_decay) -> LeafProblem:
    return _leaf_problem(p, *rebuild(), spec, path, learning_rate, weight_decay)


def closed_form(leaf: LeafProblem, lam) -> jax.Array:
    """The regularizer's exact prox in a diagonal (or Euclidean) metric, fused with the step.

    ``prox^{C_t+δ}_{α_t λ R}(θ − α_t d)``: per coordinate with step ``a_i = α_t/(C_{t,i}+δ)``, through the
    regularizer's private fused form (one division fewer where it has one). A ``MetricOperator`` raises the
    ``TypeError`` that names :func:`~proxgen_jax.proximal_step_metric`.
    """
    reg = leaf.spec
    lam = jnp.asarray(lam, leaf.theta.dtype)
    if leaf.metric is None:
        return reg.prox(leaf.centre(), leaf.alpha, lam)
    if isinstance(leaf.metric, MetricOperator):
        raise TypeError(NOT_DIAGONAL.format(name=type(leaf.metric).__name__))
    return metric_step(reg, leaf.theta, leaf.direction, leaf.momentum, leaf.metric, leaf.alpha, lam)
