"""The final link of a ProxGen chain: the preconditioned proximal step (Algorithm 1, line 8)."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Union

import chex
import jax
import jax.numpy as jnp
import optax

from proxgen_jax._validation import check_nonnegative, check_positive
from proxgen_jax.preconditioners.direction import numerator_of, split_updates
from proxgen_jax.regularizers.base import Regularizer
from proxgen_jax.transforms.masks import MaskOrFn, check_params_like, resolve_mask


class ProximalStepState(NamedTuple):
    """Step counter for schedules of ``α_t`` and ``λ_t`` (absent when both are constants)."""

    count: chex.Array


def value_at(value: optax.ScalarOrSchedule, count):
    """A hyperparameter at step ``count``: the schedule's value, or the constant itself."""
    return value(count) if callable(value) else value


def _compute_dtype(dtype):
    """Prox arithmetic runs in float32 at least (bf16/f16 params are promoted, then cast back)."""
    return jnp.promote_types(dtype, jnp.float32)


RegularizerOrFn = Union[Regularizer, Callable[[Any, Any], Optional[Regularizer]], None]


def check_regularizer(regularizer: RegularizerOrFn) -> None:
    """``ValueError`` unless ``regularizer`` is a :class:`Regularizer`, a per-leaf callable or ``None``."""
    if regularizer is not None and not isinstance(regularizer, Regularizer) and not callable(regularizer):
        raise ValueError(f"`regularizer` must be a proxgen_jax Regularizer, a callable or None, got {regularizer!r}.")


def resolve_regularizers(regularizer: RegularizerOrFn, params: Any, mask: MaskOrFn) -> list:
    """One ``Regularizer | None`` per leaf of ``params``: ``None`` where masked out or not regularised."""
    flags = resolve_mask(mask, params)
    paths_leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    if regularizer is None or isinstance(regularizer, Regularizer):
        return [regularizer if on else None for on in flags]
    out = []
    for (path, leaf), on in zip(paths_leaves, flags):
        reg = regularizer(path, leaf) if on else None
        if reg is not None and not isinstance(reg, Regularizer):
            raise ValueError(f"`regularizer` returned {reg!r} for {jax.tree_util.keystr(path)}; "
                             "expected a Regularizer or None.")
        out.append(reg)
    return out


def proximal_step(
    regularizer: RegularizerOrFn,
    lam: optax.ScalarOrSchedule = 1e-4,
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    *,
    mask: MaskOrFn = None,
) -> optax.GradientTransformation:
    r"""The exact preconditioned proximal step ``θ_{t+1} = prox^{C_t+δI}_{α_t λ R}(θ_t − α_t(C_t+δI)^{-1} m_t)``.

    Place it last, directly after a ProxGen preconditioner (``scale_by_adam_precond`` & co.), whose output
    carries the direction ``(C_t+δI)^{-1} m_t`` and the diagonal metric ``C_t+δI``. For a diagonal metric the
    prox separates into 1-D problems with per-coordinate step ``a_i = α_t/(C_{t,i}+δ)``:

    .. math::  θ_{t+1,i} = \operatorname{argmin}_x\; λ r(x) + \frac{(x - z_i)^2}{2 a_i},\qquad
               z = θ_t − α_t (C_t+δI)^{-1} m_t .

    After an ordinary optax transformation (e.g. ``optax.scale_by_adam()``) the updates carry no metric and
    the prox is Euclidean (``a_i = α_t``): ``prox_{α_t λ R}(θ_t − α_t u_t)`` — the *original* ProxQuant update
    (Table 2, top), kept on purpose as a baseline. The returned updates are ``θ_{t+1} − θ_t`` in the
    parameters' dtype (optax's convention: apply with ``optax.apply_updates``); coordinates the prox sets to
    zero become exactly zero. Leaves outside ``mask`` take the plain step ``−α_t (C_t+δI)^{-1} m_t``.

    Args:
      regularizer: a :class:`~proxgen_jax.regularizers.Regularizer`; ``None`` for no regularizer; or a
        callable ``(path, leaf) -> Regularizer | None`` choosing one per parameter (e.g. group axes by layer).
      lam: ``λ ≥ 0``, a float or an optax schedule of the step count.
      learning_rate: ``α_t > 0``, a float or an optax schedule.
      mask: which leaves to regularise: ``None`` (all), a pytree of bools like the params, or a callable on
        the params returning one (e.g. :func:`~proxgen_jax.kernels_only`).

    Returns:
      An ``optax.GradientTransformation`` whose ``update`` requires ``params``.
    """
    check_nonnegative("lam", lam)
    check_positive("learning_rate", learning_rate)
    check_regularizer(regularizer)
    scheduled = callable(lam) or callable(learning_rate)

    def init_fn(params):
        resolve_regularizers(regularizer, params, mask)  # fail early, naming the path
        if scheduled:
            return ProximalStepState(jnp.zeros([], jnp.int32))
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        direction, metric = split_updates(updates)
        check_params_like("proximal_step", params, direction)
        regs = resolve_regularizers(regularizer, params, mask)
        count = state.count if scheduled else None
        alpha = value_at(learning_rate, count)
        lam_t = value_at(lam, count)

        flat_p, treedef = jax.tree.flatten(params)
        flat_d, flat_c, flat_n = (flatten_optional(t, treedef) for t in (direction, metric, numerator_of(updates)))
        out = []
        for p, d, c, n, reg in zip(flat_p, flat_d, flat_c, flat_n, regs):
            out.append(leaf_step(reg, p, d, c, alpha, lam_t, numerator=n))
        new_state = ProximalStepState(optax.safe_increment(state.count)) if scheduled else state
        return jax.tree.unflatten(treedef, out), new_state

    return optax.GradientTransformation(init_fn, update_fn)


def flatten_optional(tree: Any, treedef) -> list:
    """The leaves of ``tree`` in the order of ``treedef`` (``tree`` may hold arrays or metric objects as leaves),
    or one ``None`` per leaf when ``tree`` is ``None``."""
    return [None] * treedef.num_leaves if tree is None else treedef.flatten_up_to(tree)


def leaf_step(regularizer: Regularizer | None, p, d, c, alpha, lam, *, numerator=None) -> jax.Array:
    """``θ_{t+1} − θ_t = prox^{c}_{αλR}(θ − α d) − θ`` for one leaf, in the dtype of ``θ``.

    ``d`` is the direction, ``c`` the diagonal metric (``None``: Euclidean). Computed in float32 or wider. When
    the direction is the quotient ``numerator / c`` and the regularizer folds the division
    (:meth:`~proxgen_jax.regularizers.Regularizer.prox_metric_scaled`), the prox gets ``c·z = c·θ − α·numerator``
    and ``d`` is not used (under ``jit`` it is then never computed).
    """
    p = jnp.asarray(p)
    dt = _compute_dtype(p.dtype)
    alpha = jnp.asarray(alpha, dt)
    d = jnp.asarray(d).astype(dt)
    if regularizer is None:
        return (-alpha * d).astype(p.dtype)
    theta = p.astype(dt)
    lam = jnp.asarray(lam, dt)
    if c is None:  # Euclidean: step α_t
        x = regularizer.prox(theta - alpha * d, alpha, lam)
    elif numerator is not None and regularizer.folds_metric_division():  # c·z, then one division in the prox
        c = jnp.asarray(c).astype(dt)
        x = regularizer.prox_metric_scaled(c * theta - alpha * jnp.asarray(numerator).astype(dt), alpha, c, lam)
    else:  # the metric C_t + δ: step α_t/(C_t + δ) per coordinate
        x = regularizer.prox_metric(theta - alpha * d, alpha, jnp.asarray(c).astype(dt), lam)
    return (x - theta).astype(p.dtype)
