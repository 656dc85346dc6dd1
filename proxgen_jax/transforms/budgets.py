r"""Budgets as prox links: exact sparsity targets and N:M patterns, projected in the preconditioner's metric.

``optax.chain(scale_by_adam_precond(), prox_sparsity(0.9))`` keeps, at every step, exactly the 10 % of units
whose removal would cost the most in the step's own objective ``Σ_i (C_t+δ)_i (x_i − z_i)²/2α_t + λR(x)``
(:mod:`proxgen_jax.solvers.budgets`): the exact projection in the metric, not a magnitude heuristic. After a
plain ``optax.scale_by_adam()`` the metric is Euclidean and the same links are magnitude pruning — the rule of
torchao's PAT and jaxpruner, as a baseline.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from proxgen_jax._tree import MaskOrFn, path_str, resolve_mask, value_at
from proxgen_jax._validation import check_in_range, check_nonnegative, check_positive
from proxgen_jax.regularizers.base import ElementwiseRegularizer, Regularizer
from proxgen_jax.regularizers.group_l12 import GroupL12, normalize_axes
from proxgen_jax.regularizers.group_mcp import GroupMCP
from proxgen_jax.solvers.budgets import (
    budget_count,
    group_gains,
    group_scores,
    nm_keep_bits,
    nm_unpack,
    unit_gains,
)
from proxgen_jax.solvers.selection import score_bits, top_k_of_bits, top_k_rows
from proxgen_jax.transforms.engine import LeafProblem, isolated, prepare_step
from proxgen_jax.transforms.proximal_step import decay_flags, hyperparams_at

_SCOPES = ("leaf", "global")


class BudgetState(NamedTuple):
    """The step count (for the sparsity schedule, ``λ`` and ``α_t`` schedules and the support freeze)."""

    count: chex.Array


#: Group penalties whose groups can be the budget's units (the gain of a group comes from the group prox).
GROUP_REGULARIZERS = (GroupL12, GroupMCP)


class _LeafBudget(NamedTuple):
    """What one leaf needs: its group axes (``()``: coordinates), its own sparsity (``None``: the common one)
    and its penalty (a group penalty re-targeted to these groups, or the separable one, or ``None``)."""

    group_axes: tuple
    sparsity: Any
    regularizer: Any


def _check_regularizer(regularizer, *, groups: bool = False) -> None:
    if regularizer is None or isinstance(regularizer, ElementwiseRegularizer):
        return
    if groups and isinstance(regularizer, GROUP_REGULARIZERS):
        return
    what = "a separable (elementwise) proxgen_jax regularizer" + (", GroupL12, GroupMCP" if groups else "")
    raise ValueError(f"`regularizer` must be {what} or None, got {regularizer!r}: with a budget the exact step "
                     "needs the prox of every unit on its own.")


def _free_values(leaf: LeafProblem, regularizer, lam):
    """``(x, Δ)`` of every coordinate of one leaf (prox value if free, gain of keeping it free)."""
    z = leaf.centre()
    return unit_gains(regularizer, z, leaf.metric, leaf.alpha, jnp.asarray(lam, z.dtype))


def _pruned(leaf: LeafProblem, x, free):
    """``x`` where ``free``, else 0 — or NaN where the centre ``z`` is not finite: a NaN gradient never turns a
    weight into a silent zero."""
    return jnp.where(free, x, leaf.centre() * 0)


def _alike_groups(kinds: list) -> list[list[int]]:
    """Indices of the leaves grouped by kind (e.g. size and dtype; ``None``: no budget), in order of first
    appearance."""
    groups: dict = {}
    for i, kind in enumerate(kinds):
        if kind is not None:
            groups.setdefault(kind, []).append(i)
    return list(groups.values())


def _laid_out(keys: list, *, rows: bool) -> jax.Array:
    """Flat arrays written in place into one buffer: as the rows of a 2-D array (equal sizes) or one after the
    other. (XLA does not fuse a concatenate of many leaves with their producers: it would write every leaf's
    keys, then the concatenation.)"""
    if len(keys) == 1:
        return keys[0][None] if rows else keys[0]
    shape = (len(keys), keys[0].size) if rows else (sum(k.size for k in keys),)
    out = jnp.zeros(shape, keys[0].dtype)
    offset = 0
    for k in keys:
        out = jax.lax.dynamic_update_slice(out, k[None] if rows else k, (offset, 0) if rows else (offset,))
        offset += 1 if rows else k.size
    return out


def _budget_link(name: str, specs_of: Callable, solve: Callable, learning_rate, lam, weight_decay,
                 weight_decay_mask) -> optax.GradientTransformation:
    """The transformation around a budget: ``specs_of(params)`` resolves (and validates) one spec per leaf,
    ``solve(step, λ_t, count)`` returns the solutions of the :class:`~proxgen_jax.transforms.engine.StepProblem`."""

    def init_fn(params):
        specs_of(params)
        decay_flags(weight_decay_mask, params)
        return BudgetState(jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params=None):
        hp = hyperparams_at(state.count, learning_rate, lam, weight_decay)
        step = prepare_step(name, updates, params, specs_of(params) if params is not None else [],
                            hp.learning_rate, weight_decay=hp.weight_decay,
                            decay_flags=decay_flags(weight_decay_mask, params))
        return step.updates(solve(step, hp.lam, state.count)), BudgetState(optax.safe_increment(state.count))

    return optax.GradientTransformation(init_fn, update_fn)


def _unit_values(leaf: LeafProblem, lam):
    """``(x, Δ_unit)``: the prox value of every coordinate and the gain of every budget unit of one leaf."""
    spec = leaf.spec
    if isinstance(spec.regularizer, GROUP_REGULARIZERS):
        z = leaf.centre()
        return group_gains(spec.regularizer, z, leaf.metric, leaf.alpha, jnp.asarray(lam, z.dtype), spec.group_axes)
    v = _free_values(leaf, spec.regularizer, lam)
    return v._replace(gain=group_scores(v.gain, spec.group_axes))


def prox_sparsity(
    sparsity: float | Callable | Any,
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    *,
    group_axes: Any = None,
    scope: str | Any = "leaf",
    regularizer: Regularizer | None = None,
    lam: optax.ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
    freeze_after: int | None = None,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    weight_decay_mask: MaskOrFn = None,
) -> optax.GradientTransformation:
    r"""The ProxGen step projected exactly onto "at most ``k`` free units" in the metric ``C_t+δI``.

    .. math:: θ_{t+1} = \operatorname{argmin}_{x:\,‖x‖_{0,\text{units}} ≤ k}\;
              \sum_i \frac{(C_t+δ)_i}{2α_t}(x_i - z_i)^2 + λ\sum_i r(x_i),\qquad
              z = θ_t - α_t (C_t+δI)^{-1} m_t,\quad k = ⌊(1 − s)\,n⌋,

    solved exactly by keeping the ``k`` units with the largest gain (:mod:`proxgen_jax.solvers.budgets`); the
    free units take the ordinary prox of ``λr`` (which may be 0). Exactly ``k`` units are free, ties to the lower
    flat index.

    Example:
      >>> import optax, proxgen_jax as pg
      >>> tx = optax.chain(pg.scale_by_adam_precond(),
      ...                  pg.prox_sparsity(pg.sparsity_schedule(0.9, begin_step=0, end_step=1000), 1e-3,
      ...                                   mask=pg.kernels_only))

    Args:
      sparsity: ``s ∈ [0, 1]``: a float, an optax schedule of the step, or (with ``scope`` a tree) ignored.
      learning_rate: ``α_t > 0``, float or schedule.
      group_axes: ``None`` (units are coordinates), the axes spanning one group (as in
        :func:`~proxgen_jax.prox_group_l12`), or a per-leaf callable ``(path, leaf) -> axes | None``.
      scope: ``"leaf"`` (every leaf its own budget), ``"global"`` (one budget over all masked leaves' units:
        exact, the gains being in the same units), or a pytree / callable ``(path, leaf) -> s`` of per-leaf
        sparsities.
      regularizer: an optional penalty added to the budget: separable (ℓ1, ℓq, MCP, SCAD, quantisation...; the
        free units take its prox), or — with groups as units — a group penalty (:class:`~proxgen_jax.GroupL12`,
        :class:`~proxgen_jax.regularizers.group_mcp.GroupMCP`) whose groups are set to the budget's
        (``group_axes=None`` then takes the penalty's own): the gain of a group comes from the group prox.
      lam: ``λ ≥ 0`` of ``regularizer``.
      mask: which leaves get a budget (``None``: all); the others take the plain step.
      freeze_after: from this step on the zero pattern is frozen (zeros stay zero, the rest trains freely and
        the budget is no longer re-selected) — PAT's healing phase. ``None``: never.
      weight_decay, weight_decay_mask: decoupled weight decay, as in :func:`~proxgen_jax.proximal_step`.

    Returns:
      An ``optax.GradientTransformation`` whose ``update`` requires ``params``.

    References:
      Yun, Lozano & Yang, NeurIPS 2021 (the step); Zhu & Gupta 2017 (the ramp, :func:`sparsity_schedule`).
    """
    if not callable(sparsity):
        check_in_range("sparsity", sparsity, 0.0, 1.0)
    check_positive("learning_rate", learning_rate)
    check_nonnegative("lam", lam)
    check_nonnegative("weight_decay", weight_decay)
    _check_regularizer(regularizer, groups=True)
    group_penalty = isinstance(regularizer, GROUP_REGULARIZERS)
    if isinstance(scope, str) and scope not in _SCOPES:
        raise ValueError(f"`scope` must be 'leaf', 'global', a pytree or a callable, got {scope!r}.")
    if freeze_after is not None and (not isinstance(freeze_after, int) or freeze_after < 0):
        raise ValueError(f"`freeze_after` must be a non-negative int or None, got {freeze_after!r}.")

    def budgets(params) -> list:
        flags = resolve_mask(mask, params)
        flat = jax.tree_util.tree_flatten_with_path(params)[0]
        if isinstance(scope, str):
            per_leaf = [None] * len(flat)
        elif callable(scope):
            per_leaf = [scope(path, leaf) for path, leaf in flat]
        else:
            per_leaf = jax.tree.structure(params).flatten_up_to(scope)
        out = []
        for (path, leaf), on, s in zip(flat, flags, per_leaf):
            axes = group_axes(path, leaf) if callable(group_axes) else group_axes
            if not on or (callable(group_axes) and axes is None) or (not isinstance(scope, str) and s is None):
                out.append(None)
                continue
            reg = regularizer
            try:
                if group_penalty:
                    norm = reg.axes_for(leaf) if axes is None else normalize_axes(axes, jnp.ndim(leaf))
                    reg = dataclasses.replace(reg, group_axes=norm)
                else:
                    norm = () if axes is None else normalize_axes(axes, jnp.ndim(leaf))
            except ValueError as err:
                raise ValueError(f"`group_axes` do not fit the leaf at {path_str(path)}: {err}") from err
            if s is not None:
                check_in_range(f"sparsity of {path_str(path)}", s, 0.0, 1.0)
            out.append(_LeafBudget(norm, s, reg))
        return out

    def solve(step, lam_t, count):
        s_t = value_at(sparsity, count)
        # The scores are read by every pass of the selection: written once, as the selection's integer keys, computed
        # in a region of their own from the buffers the step writes anyway (engine.isolated). The free values x are
        # recomputed by the final select alone.
        solved = [None if leaf.spec is None else _unit_values(leaf, lam_t) for leaf in step.leaves]

        def unit_scores():  # the selection's flat integer keys: one row per leaf of each size and dtype, or all in
            # one row
            gains = [None if leaf.spec is None else _unit_values(leaf.recomputed(), lam_t).gain for leaf in step.leaves]
            if scope == "global":  # one key type for all leaves (float64 leaves widen the others)
                dtype = jnp.result_type(*[g for g in gains if g is not None])
                return _laid_out([score_bits(g.astype(dtype)) for g in gains if g is not None], rows=False)
            keys = [None if g is None else score_bits(g) for g in gains]
            return [_laid_out([keys[i] for i in members], rows=True) for members in by_size]

        by_size = _alike_groups([None if v is None else (v.gain.size, jnp.dtype(v.gain.dtype)) for v in solved])
        scores = isolated(unit_scores, count)
        keeps = [None] * len(solved)
        if scope == "global":
            keep_all = top_k_of_bits(scores, budget_count(s_t, scores.size))
            offset = 0
            for i, v in enumerate(solved):
                if v is not None:
                    keeps[i] = keep_all[offset:offset + v.gain.size].reshape(v.gain.shape)
                    offset += v.gain.size
        else:  # one batched selection per size: one loop for all leaves of that size
            for members, keys in zip(by_size, scores):
                ks = jnp.stack([budget_count(s_t if step.leaves[i].spec.sparsity is None
                                             else step.leaves[i].spec.sparsity, keys.shape[1]) for i in members])
                for i, row in zip(members, top_k_rows(keys, ks)):
                    keeps[i] = row.reshape(solved[i].gain.shape)
        xs = []
        for leaf, v, keep in zip(step.leaves, solved, keeps):
            if v is None:
                xs.append(None)
                continue
            free = jnp.broadcast_to(keep, v.x.shape)
            if freeze_after is not None:
                free = jnp.where(count >= freeze_after, leaf.theta != 0, free)
            xs.append(_pruned(leaf, v.x, free))
        return xs

    return _budget_link("prox_sparsity", budgets, solve, learning_rate, lam, weight_decay, weight_decay_mask)


def default_nm_axis(leaf) -> int | None:
    """The reduction (input) axis of a kernel: 0 of a Dense ``(in, out)``, −2 of a conv ``(…, in, out)``."""
    nd = jnp.ndim(leaf)
    return None if nd < 2 else (0 if nd == 2 else nd - 2)


def prox_nm(
    n: int = 2,
    m: int = 4,
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    *,
    axis: int | None = None,
    regularizer: Regularizer | None = None,
    lam: optax.ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    weight_decay_mask: MaskOrFn = None,
) -> optax.GradientTransformation:
    r"""The ProxGen step projected exactly onto N:M sparsity in the metric ``C_t+δI``.

    At most ``n`` nonzeros in every block of ``m`` consecutive entries along ``axis`` (the pattern sparse tensor
    cores run: 2:4 along the reduction axis). The constraint separates by block, so keeping in each block the
    ``n`` entries of largest gain ``Δ_i`` (:mod:`proxgen_jax.solvers.budgets`) is the exact step; with a separable
    ``regularizer`` the free entries take its prox.

    Example:
      >>> import optax, proxgen_jax as pg
      >>> tx = optax.chain(pg.scale_by_adam_precond(), pg.prox_nm(2, 4, 1e-3, mask=pg.kernels_only))

    Args:
      n, m: at most ``n`` of every ``m`` (``1 ≤ n ≤ m``).
      learning_rate: ``α_t > 0``, float or schedule.
      axis: the blocking axis; ``None``: the kernel's reduction axis (0 for ``(in, out)``, −2 for conv
        ``(…, in, out)``). Its length must be divisible by ``m`` (``ValueError`` naming the leaf at ``init``).
      regularizer, lam: an optional separable penalty and its ``λ``.
      mask: which leaves; ``None``: every leaf with ``ndim ≥ 2`` (biases and scales take the plain step).
      weight_decay, weight_decay_mask: decoupled weight decay, as in :func:`~proxgen_jax.proximal_step`.
    """
    for name, v in (("n", n), ("m", m)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"`{name}` must be a positive int, got {v!r}.")
    if n > m:
        raise ValueError(f"`n` must be at most `m`, got n={n}, m={m}.")
    check_positive("learning_rate", learning_rate)
    check_nonnegative("lam", lam)
    check_nonnegative("weight_decay", weight_decay)
    _check_regularizer(regularizer)

    def axes(params) -> list:
        flags = resolve_mask(mask, params) if mask is not None else [jnp.ndim(x) >= 2 for x in jax.tree.leaves(params)]
        out = []
        for (path, leaf), on in zip(jax.tree_util.tree_flatten_with_path(params)[0], flags):
            ax = (default_nm_axis(leaf) if axis is None else axis) if on else None
            if ax is None:
                out.append(None)
                continue
            nd = jnp.ndim(leaf)
            if not -nd <= ax < nd:
                raise ValueError(f"`axis`={ax} does not fit the leaf at {path_str(path)} of shape {jnp.shape(leaf)}.")
            ax %= nd
            if jnp.shape(leaf)[ax] % m:
                raise ValueError(f"prox_nm: the leaf at {path_str(path)} has length {jnp.shape(leaf)[ax]} along axis "
                                 f"{ax}, not divisible by m={m}.")
            out.append(ax)
        return out

    def solve(step, lam_t, count):
        # The pattern (one small integer per block) is computed in a region of its own from the buffers the step
        # writes anyway (engine.isolated) and written once; the final select recomputes the free values.
        def patterns():
            return [None if leaf.spec is None or n >= m else
                    nm_keep_bits(_free_values(leaf.recomputed(), regularizer, lam_t).gain, n, m, leaf.spec)
                    for leaf in step.leaves]

        bits = isolated(patterns, count)
        xs = []
        for leaf, b in zip(step.leaves, bits):
            x = None if leaf.spec is None else _free_values(leaf, regularizer, lam_t).x
            xs.append(x if x is None or b is None else _pruned(leaf, x, nm_unpack(b, m, leaf.spec)))
        return xs

    return _budget_link("prox_nm", axes, solve, learning_rate, lam, weight_decay, weight_decay_mask)
