"""Training-time measurements: exact-zero sparsity, the regularised objective, and final hard quantisation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from proxgen_jax._tree import MaskOrFn, resolve_mask
from proxgen_jax.regularizers import Quantization
from proxgen_jax.regularizers.base import RegularizerOrFn, resolve_regularizers
from proxgen_jax.solvers.scale_fit import init_scale, scale_axes


def sparsity(params: Any, mask: MaskOrFn = None) -> dict[str, jax.Array]:
    """Fraction of exactly-zero entries per leaf (keyed by path) and over all selected leaves (``"total"``).

    Only leaves selected by ``mask`` count (default: all). Values are JAX scalars; works under ``jit``.
    """
    flags = resolve_mask(mask, params)
    out, zeros, total = {}, jnp.zeros([], jnp.float32), 0
    for (path, leaf), on in zip(jax.tree_util.tree_flatten_with_path(params)[0], flags):
        if not on:
            continue
        nz = jnp.sum(jnp.asarray(leaf) == 0, dtype=jnp.float32)
        out[jax.tree_util.keystr(path)] = nz / max(jnp.size(leaf), 1)
        zeros = zeros + nz
        total += jnp.size(leaf)
    out["total"] = zeros / max(total, 1)
    return out


def regularization_value(params: Any, regularizer: RegularizerOrFn, lam, mask: MaskOrFn = None) -> jax.Array:
    """``λ·R(θ)`` summed over the leaves selected by ``mask`` (``regularizer`` may be chosen per leaf, as in
    :func:`~proxgen_jax.proximal_step`)."""
    regs = resolve_regularizers(regularizer, params, mask)
    vals = [reg.value(leaf, lam).astype(jnp.float32) for leaf, reg in zip(jax.tree.leaves(params), regs)
            if reg is not None]
    return sum(vals, jnp.zeros([], jnp.float32))


def regularized_objective(loss_fn: Callable[..., jax.Array], params: Any, regularizer: RegularizerOrFn, lam,
                          *args, mask: MaskOrFn = None, **kwargs) -> jax.Array:
    """``F(θ) = f(θ) + λR(θ)`` with ``f = loss_fn(params, *args, **kwargs)``."""
    return loss_fn(params, *args, **kwargs) + regularization_value(params, regularizer, lam, mask)


def quantize(params: Any, levels=(-1.0, 1.0), mask: MaskOrFn = None, *, scales=None, scale: str | None = None,
             channel_axis: int = -1) -> Any:
    """Hard quantisation at the end of training: each selected entry snaps to its nearest level (ties up).

    Args:
      params: the trained parameters.
      levels: the (base) levels, or a per-leaf callable ``(path, leaf) -> levels | None`` as in
        :func:`~proxgen_jax.prox_quantize` (``None``: leaf left as it is).
      mask: which leaves to quantise.
      scales: learned scales, one entry per leaf of ``params`` in flattening order — what
        ``pg.learned_scales(opt_state)`` returns after ``prox_quantize(scale=...)`` (``None`` entries: leaf left
        as it is). The levels are then ``s·levels``: ``x ↦ s·ℓ(x/s)``, the grid the prox pulled the weights to.
      scale: without ``scales``, ``"tensor"`` or ``"channel"`` fits the scales to ``params`` themselves
        (Euclidean: ordinary least squares, exact for binary/ternary grids, Lloyd otherwise — PARQ's final
        rule) before snapping; ``None``: the levels as given.
      channel_axis: the channel axis for ``scale="channel"``.

    Example:
      >>> import jax.numpy as jnp, proxgen_jax as pg
      >>> pg.quantize({"w": jnp.array([[0.2, -3.0], [0.4, 1.0]])}, scale="channel")["w"].tolist()
      [[0.30000001192092896, -2.0], [0.30000001192092896, 2.0]]
    """
    if scales is not None and scale is not None:
        raise ValueError("pass either `scales` (learned) or `scale` (fit to the params), not both.")
    if scale not in (None, "tensor", "channel"):
        raise ValueError(f"`scale` must be None, 'tensor' or 'channel', got {scale!r}.")
    flags = resolve_mask(mask, params)
    with_path, treedef = jax.tree_util.tree_flatten_with_path(params)
    if scales is not None and len(scales) != len(with_path):
        raise ValueError(f"`scales` has {len(scales)} entries; params have {len(with_path)} leaves.")
    out = []
    for i, ((path, x), on) in enumerate(zip(with_path, flags)):
        lv = levels(path, x) if callable(levels) else levels
        s = None if scales is None else scales[i]
        if not on or lv is None or (scales is not None and s is None):
            out.append(x)
            continue
        q = Quantization(tuple(lv))
        x = jnp.asarray(x)
        if scale is not None:
            axes = scale_axes(x.ndim, scale, channel_axis)
            s = init_scale(x.astype(jnp.promote_types(x.dtype, jnp.float32)), q.levels, axes)
        snapped = q.nearest_level(x) if s is None else s * q.nearest_level(x / jnp.where(s > 0, s, 1))
        out.append(snapped.astype(x.dtype))
    return jax.tree.unflatten(treedef, out)
