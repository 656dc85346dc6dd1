"""The final link of a ProxGen chain: the preconditioned proximal step (Algorithm 1, line 8)."""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax.numpy as jnp
import optax

from proxgen_jax._tree import MaskOrFn, resolve_mask, value_at
from proxgen_jax._validation import check_nonnegative, check_positive
from proxgen_jax.regularizers.base import RegularizerOrFn, check_regularizer, resolve_regularizers
from proxgen_jax.transforms.engine import closed_form, prepare_step


class ProximalStepState(NamedTuple):
    """Step counter for schedules of ``α_t``, ``λ_t`` and the weight decay (absent when all are constants)."""

    count: chex.Array


class StepHyperparams(NamedTuple):
    """``α_t``, ``λ_t`` and ``wd_t`` at one step, read from floats or schedules."""

    learning_rate: Any
    lam: Any
    weight_decay: Any


def check_step_args(lam, learning_rate, weight_decay) -> None:
    """The ``ValueError`` checks every prox link shares: ``λ ≥ 0``, ``α > 0``, ``wd ≥ 0``."""
    check_nonnegative("lam", lam)
    check_positive("learning_rate", learning_rate)
    check_nonnegative("weight_decay", weight_decay)


def hyperparams_at(count, learning_rate, lam, weight_decay) -> StepHyperparams:
    """The step's hyperparameters (``weight_decay`` ``None`` when it is the constant 0: decay off)."""
    off = not callable(weight_decay) and isinstance(weight_decay, (int, float)) and weight_decay == 0
    return StepHyperparams(value_at(learning_rate, count), value_at(lam, count),
                           None if off else value_at(weight_decay, count))


def decay_flags(weight_decay_mask: MaskOrFn, params) -> list[bool]:
    """Which leaves the decoupled weight decay applies to (``None``: all)."""
    return resolve_mask(weight_decay_mask, params, what="weight_decay_mask")


def proximal_step(
    regularizer: RegularizerOrFn,
    lam: optax.ScalarOrSchedule = 1e-4,
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    *,
    mask: MaskOrFn = None,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    weight_decay_mask: MaskOrFn = None,
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
      weight_decay: decoupled weight decay ``wd ≥ 0`` (float or schedule; ``0``: off), applied as the reference
        ProxGen optimizers and AdamW do: ``θ ← θ(1 − α_t·wd)`` first, then the prox from that point.
      weight_decay_mask: which leaves decay (``None``: all; same forms as ``mask``).

    Returns:
      An ``optax.GradientTransformation`` whose ``update`` requires ``params``.
    """
    check_step_args(lam, learning_rate, weight_decay)
    check_regularizer(regularizer)
    scheduled = callable(lam) or callable(learning_rate) or callable(weight_decay)

    def init_fn(params):
        resolve_regularizers(regularizer, params, mask)  # fail early, naming the path
        decay_flags(weight_decay_mask, params)
        if scheduled:
            return ProximalStepState(jnp.zeros([], jnp.int32))
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        hp = hyperparams_at(state.count if scheduled else None, learning_rate, lam, weight_decay)
        step = prepare_step("proximal_step", updates, params, resolve_regularizers(regularizer, params, mask),
                            hp.learning_rate, weight_decay=hp.weight_decay,
                            decay_flags=decay_flags(weight_decay_mask, params))
        new_state = ProximalStepState(optax.safe_increment(state.count)) if scheduled else state
        return step.updates(step.solve(closed_form, hp.lam)), new_state

    return optax.GradientTransformation(init_fn, update_fn)
