"""The ground floor: tree plumbing shared by every transformation.

Which leaves a transformation acts on (masks, ready-made masks, per-leaf choices), checks that trees match
(naming the path), hyperparameters at a step (``value_at``) and the compute dtype. Nothing here knows about
regularizers, metrics or optax states.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

MaskOrFn = Any | Callable[[Any], Any] | None


def path_str(path) -> str:
    """A key path as text (``<root>`` for the empty path)."""
    return jax.tree_util.keystr(path) if path else "<root>"


def key_name(key) -> str:
    """The plain name of one pytree key (dict key, attribute name, or sequence index)."""
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def kernels_only(params: Any) -> Any:
    """A mask selecting weight matrices and conv filters: leaves named ``kernel`` (Flax linen and nnx).

    Biases, BatchNorm/LayerNorm scales and embeddings are left unregularised. Parameters of other libraries
    (no ``kernel`` in the path) fall back to "arrays with ``ndim ≥ 2``".
    """
    def is_kernel(path, leaf):
        names = [key_name(k) for k in path]
        if any(n == "kernel" for n in names):
            return True
        if any(n in ("bias", "scale", "embedding") for n in names):
            return False
        return jnp.ndim(leaf) >= 2
    return jax.tree_util.tree_map_with_path(is_kernel, params)


def first_mismatch(reference: Any, other: Any) -> str | None:
    """The key path where ``other``'s structure first differs from ``reference``'s, or ``None``."""
    ref_paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(reference)[0]]
    oth_paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(other)[0]]
    for rp, op in zip(ref_paths, oth_paths):
        if rp != op:
            return f"{path_str(rp)} (got {path_str(op)})"
    if len(ref_paths) != len(oth_paths):
        longer, name = (ref_paths, "missing in the mask") if len(ref_paths) > len(oth_paths) else (
            oth_paths, "not in params")
        return f"{path_str(longer[min(len(ref_paths), len(oth_paths))])} ({name})"
    if jax.tree.structure(reference) != jax.tree.structure(other):
        return "<root> (container types differ)"
    return None


def require_params(name: str, params: Any) -> None:
    """``ValueError`` when a transform that reads ``θ_t`` was called without ``params``."""
    if params is None:
        raise ValueError(f"{name} needs the current parameters: call `update(updates, state, params)`.")


def check_params_like(name: str, params: Any, updates: Any) -> None:
    """``ValueError`` unless ``params`` is given and ``updates`` has its tree structure (naming the path)."""
    require_params(name, params)
    where = first_mismatch(params, updates)
    if where is not None:
        raise ValueError(f"updates do not match the parameter tree at {where}.")


def resolve_mask(mask: MaskOrFn, params: Any, *, what: str = "mask") -> list[bool]:
    """Flat list of Python bools, one per leaf of ``params``; ``ValueError`` naming the path on mismatch.

    ``mask`` is ``None`` (every leaf), a pytree of bools with the structure of ``params``, or a callable
    returning one. Mask leaves must be static (Python bools or concrete arrays).
    """
    n = len(jax.tree.leaves(params))
    if mask is None:
        return [True] * n
    tree = mask(params) if callable(mask) else mask
    where = first_mismatch(params, tree)
    if where is not None:
        hint = ""
        if isinstance(tree, jax.Array) and jnp.ndim(tree) == 0:
            hint = (" (a scalar array: under optax.inject_hyperparams a callable mask is taken for a schedule; "
                    "pass static_args=('mask',))")
        raise ValueError(f"`{what}` does not match the parameter tree at {where}{hint}.")
    flat = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        try:
            flat.append(bool(leaf))
        except (TypeError, jax.errors.ConcretizationTypeError) as err:
            raise ValueError(f"`{what}` leaf at {path_str(path)} must be a static bool, got {leaf!r}.") from err
    return flat


def resolve_per_leaf(choice: Any, params: Any, mask: MaskOrFn, *, kind: type, what: str) -> list:
    """One ``kind | None`` per leaf of ``params``: ``None`` where masked out.

    ``choice`` is ``None``, one instance of ``kind`` for every leaf, or a callable ``(path, leaf) -> kind | None``
    (e.g. a regularizer chosen by layer); anything else it returns raises ``ValueError`` naming the path.
    """
    flags = resolve_mask(mask, params)
    if choice is None or isinstance(choice, kind):
        return [choice if on else None for on in flags]
    out = []
    for (path, leaf), on in zip(jax.tree_util.tree_flatten_with_path(params)[0], flags):
        got = choice(path, leaf) if on else None
        if got is not None and not isinstance(got, kind):
            raise ValueError(f"`{what}` returned {got!r} for {path_str(path)}; expected a {kind.__name__} or None.")
        out.append(got)
    return out


def check_choice(choice: Any, *, kind: type, what: str) -> None:
    """``ValueError`` unless ``choice`` is an instance of ``kind``, a per-leaf callable or ``None``."""
    if choice is not None and not isinstance(choice, kind) and not callable(choice):
        raise ValueError(f"`{what}` must be a proxgen_jax {kind.__name__}, a callable or None, got {choice!r}.")


def value_at(value: optax.ScalarOrSchedule, count):
    """A hyperparameter at step ``count``: the schedule's value, or the constant itself."""
    return value(count) if callable(value) else value


def compute_dtype(dtype):
    """Step arithmetic runs in float32 at least (bf16/f16 params are promoted, then cast back)."""
    return jnp.promote_types(dtype, jnp.float32)
