"""Published recipes for budgets: the gradual-pruning ramp, per-layer targets (ERK, uniform), attention heads."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from proxgen_jax._tree import MaskOrFn, key_name, resolve_mask
from proxgen_jax._validation import check_in_range


def sparsity_schedule(final: float, *, begin_step: int, end_step: int, initial: float = 0.0,
                      power: float = 3) -> Callable:
    r"""Zhu & Gupta's gradual-pruning ramp as an optax schedule.

    .. math:: s_t = s_f + (s_i - s_f)\bigl(1 - \operatorname{clip}(\tfrac{t - t_0}{t_1 - t_0}, 0, 1)\bigr)^{p}

    ``initial`` before ``begin_step``, ``final`` from ``end_step`` on (fast at first, flat at the end).

    Example:
      >>> import proxgen_jax as pg
      >>> s = pg.sparsity_schedule(0.9, begin_step=100, end_step=1100)
      >>> float(s(0)), float(s(1100))
      (0.0, 0.9)
    """
    check_in_range("final", final, 0.0, 1.0)
    check_in_range("initial", initial, 0.0, 1.0)
    if not end_step > begin_step >= 0:
        raise ValueError(f"`end_step` must exceed `begin_step` ≥ 0, got begin_step={begin_step}, end_step={end_step}.")
    if not power > 0:
        raise ValueError(f"`power` must be positive, got {power!r}.")

    def schedule(count):
        u = jnp.clip((jnp.asarray(count, jnp.float32) - begin_step) / (end_step - begin_step), 0.0, 1.0)
        return final + (initial - final) * (1.0 - u) ** power

    return schedule


def uniform_sparsities(params: Any, sparsity: float, *, mask: MaskOrFn = None) -> Any:
    """The same sparsity for every masked leaf (``None`` elsewhere), as a tree for ``prox_sparsity(scope=...)``."""
    check_in_range("sparsity", sparsity, 0.0, 1.0)
    flags = iter(resolve_mask(mask, params))
    return jax.tree.map(lambda _: float(sparsity) if next(flags) else None, params)


def erk_sparsities(params: Any, sparsity: float, *, mask: MaskOrFn = None) -> Any:
    r"""Erdős–Rényi-kernel per-leaf sparsities (Evci et al., RigL, 2020) with the same total number of zeros.

    The density of a leaf is ``ε · (Σ dims)/(Π dims)`` (conv: ``(h+w+in+out)/(h·w·in·out)``), ``ε`` chosen so that
    the masked leaves' total density is ``1 − sparsity``; leaves that would exceed density 1 are kept dense and
    ``ε`` is refit on the others. Returns a tree like ``params`` (``None`` where masked out).
    """
    check_in_range("sparsity", sparsity, 0.0, 1.0)
    flags = resolve_mask(mask, params)
    leaves, treedef = jax.tree.flatten(params)
    shapes = [tuple(jnp.shape(x)) for x in leaves]
    sizes = [math.prod(s) for s in shapes]
    raw = [sum(s) / math.prod(s) if s else 1.0 for s in shapes]
    chosen = [i for i, on in enumerate(flags) if on]
    budget = (1.0 - float(sparsity)) * sum(sizes[i] for i in chosen)  # nonzeros to place
    dense: set[int] = set()
    while True:
        rest = [i for i in chosen if i not in dense]
        left = budget - sum(sizes[i] for i in dense)
        eps = left / sum(raw[i] * sizes[i] for i in rest) if rest else 0.0
        over = {i for i in rest if eps * raw[i] > 1.0}
        if not over:
            break
        dense |= over
    out = [None] * len(leaves)
    for i in chosen:
        out[i] = 0.0 if i in dense else max(0.0, 1.0 - eps * raw[i])
    return jax.tree.unflatten(treedef, out)


def attention_head_groups(path, leaf) -> tuple[int, ...] | None:
    """``group_axes`` giving one group per attention head of ``nnx.MultiHeadAttention``.

    Its ``query``/``key``/``value`` kernels are ``(in, heads, head_dim)`` (group axes ``(0, 2)``) and its ``out``
    kernel ``(heads, head_dim, out)`` (axes ``(1, 2)``); biases ``(heads, head_dim)`` group over ``(1,)``.
    Other leaves return ``None`` (not grouped).
    """
    if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == "value":
        path = path[:-1]  # an nnx.Variable viewed as a pytree
    names = [key_name(k) for k in path]
    nd = jnp.ndim(leaf)
    if "kernel" in names:
        if any(n in ("query", "key", "value") for n in names) and nd == 3:
            return (0, 2)
        if "out" in names and nd == 3:
            return (1, 2)
    if "bias" in names and any(n in ("query", "key", "value") for n in names) and nd == 2:
        return (1,)
    return None
