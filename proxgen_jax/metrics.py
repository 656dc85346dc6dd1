"""Training-time measurements: exact-zero sparsity, the regularised objective, and final hard quantisation."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from proxgen_jax.regularizers import Quantization
from proxgen_jax._tree import MaskOrFn, resolve_mask
from proxgen_jax.regularizers.base import RegularizerOrFn, resolve_regularizers


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


def quantize(params: Any, levels=(-1.0, 1.0), mask: MaskOrFn = None, *, scales=None) -> Any:
    """Hard quantisation at the end of training: each selected entry snaps to its nearest level (ties up).

    With ``scales`` (one per leaf, e.g. ``pg.learned_scales(opt_state)`` after ``prox_quantize(scale=...)``;
    ``None`` entries are left as they are) the levels are ``s·levels``: ``x ↦ s·ℓ(x/s)``.
    """
    q = Quantization(tuple(levels))
    flags = resolve_mask(mask, params)
    leaves, treedef = jax.tree.flatten(params)
    learned = scales is not None
    out = []
    for x, on, s in zip(leaves, flags, scales if learned else [None] * len(leaves)):
        if not on or (learned and s is None):
            out.append(x)
            continue
        x = jnp.asarray(x)
        snapped = q.nearest_level(x) if s is None else s * q.nearest_level(x / jnp.where(s > 0, s, 1))
        out.append(snapped.astype(x.dtype))
    return jax.tree.unflatten(treedef, out)
