"""Ready-made ProxGen optimizers, in the spirit of ``optax.adamw``: a preconditioner chained with a prox."""

from __future__ import annotations

import optax

from proxgen_jax._tree import MaskOrFn
from proxgen_jax.preconditioners import (
    scale_by_adagrad_precond,
    scale_by_adam_precond,
    scale_by_kfac_precond,
    scale_by_rmsprop_precond,
    scale_by_sgd_precond,
)
from proxgen_jax.regularizers import Quantization, Regularizer
from proxgen_jax.transforms.prox_quantize import prox_quantize
from proxgen_jax.transforms.proximal_step import proximal_step
from proxgen_jax.transforms.proximal_step_metric import proximal_step_metric


def proxgen_adam(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    regularizer: Regularizer | None = None,
    lam: optax.ScalarOrSchedule = 1e-4,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    *,
    bias_correction: bool = True,
    amsgrad: bool = False,
    mu_dtype=None,
    mask: MaskOrFn = None,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    weight_decay_mask: MaskOrFn = None,
) -> optax.GradientTransformation:
    """Proximal Adam (ProxGen with ``C_t = √v̂_t``, ``δ = eps``): the paper's main instance.

    Example:
      >>> import proxgen_jax as pg
      >>> tx = pg.proxgen_adam(1e-3, pg.regularizers.Lq(0.5), lam=1e-4, mask=pg.kernels_only)

    ``weight_decay`` is decoupled (AdamW order, as the reference ``AdamL1``/``AdamL0``/… optimizers):
    ``θ ← θ(1 − α_t·wd)``, then the prox. See :func:`scale_by_adam_precond` and :func:`proximal_step` for the
    arguments.
    """
    return optax.chain(
        scale_by_adam_precond(b1, b2, eps, bias_correction=bias_correction, amsgrad=amsgrad, mu_dtype=mu_dtype),
        proximal_step(regularizer, lam, learning_rate, mask=mask, weight_decay=weight_decay,
                      weight_decay_mask=weight_decay_mask),
    )


def proxgen_rmsprop(learning_rate: optax.ScalarOrSchedule = 1e-3, regularizer: Regularizer | None = None,
                    lam: optax.ScalarOrSchedule = 1e-4, decay: float = 0.9, eps: float = 1e-8, *,
                    momentum: float = 0.0, mask: MaskOrFn = None, weight_decay: optax.ScalarOrSchedule = 0.0,
                    weight_decay_mask: MaskOrFn = None) -> optax.GradientTransformation:
    """Proximal RMSprop (``C_t = √v_t``)."""
    return optax.chain(scale_by_rmsprop_precond(decay, eps, momentum=momentum),
                       proximal_step(regularizer, lam, learning_rate, mask=mask, weight_decay=weight_decay,
                                     weight_decay_mask=weight_decay_mask))


def proxgen_adagrad(learning_rate: optax.ScalarOrSchedule = 1e-2, regularizer: Regularizer | None = None,
                    lam: optax.ScalarOrSchedule = 1e-4, initial_accumulator_value: float = 0.1,
                    eps: float = 1e-7, *, momentum: float = 0.0,
                    mask: MaskOrFn = None, weight_decay: optax.ScalarOrSchedule = 0.0,
                    weight_decay_mask: MaskOrFn = None) -> optax.GradientTransformation:
    """Proximal AdaGrad (``C_t = (Σ g²)^{1/2}``; with ℓ1, Duchi et al.'s composite AdaGrad)."""
    return optax.chain(scale_by_adagrad_precond(initial_accumulator_value, eps, momentum=momentum),
                       proximal_step(regularizer, lam, learning_rate, mask=mask, weight_decay=weight_decay,
                                     weight_decay_mask=weight_decay_mask))


def proxgen_sgd(learning_rate: optax.ScalarOrSchedule = 1e-2, regularizer: Regularizer | None = None,
                lam: optax.ScalarOrSchedule = 1e-4, momentum: float = 0.9, *,
                mask: MaskOrFn = None, weight_decay: optax.ScalarOrSchedule = 0.0,
                weight_decay_mask: MaskOrFn = None) -> optax.GradientTransformation:
    """Proximal SGD with the paper's EMA momentum (``C_t = 0``, ``δ = 1``)."""
    return optax.chain(scale_by_sgd_precond(momentum),
                       proximal_step(regularizer, lam, learning_rate, mask=mask, weight_decay=weight_decay,
                                     weight_decay_mask=weight_decay_mask))


def proxgen_kfac(learning_rate: optax.ScalarOrSchedule = 1e-2, regularizer: Regularizer | None = None,
                 lam: optax.ScalarOrSchedule = 1e-4, momentum: float = 0.9, decay: float = 0.95,
                 damping: float = 1e-3, *, update_every: int = 10, inner_steps: int = 20, fallback=None,
                 mask: MaskOrFn = None, weight_decay: optax.ScalarOrSchedule = 0.0,
                 weight_decay_mask: MaskOrFn = None) -> optax.GradientTransformation:
    """Proximal KFAC (Sec. 2): ``C_{t,[l]} = E[δδᵀ] ⊗ E[aaᵀ]`` per Dense layer, prox by an inner accelerated
    proximal-gradient solve in that metric. Pass ``kfac_stats=`` to ``update`` (see
    :func:`~proxgen_jax.preconditioners.kfac_value_and_grad`); ``fallback`` preconditions the other leaves.
    """
    return optax.chain(
        scale_by_kfac_precond(momentum, decay, damping, update_every=update_every, fallback=fallback),
        proximal_step_metric(regularizer, lam, learning_rate, inner_steps=inner_steps, mask=mask,
                             weight_decay=weight_decay, weight_decay_mask=weight_decay_mask))


def revised_proxquant(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    q: float = 1.0,
    lam: optax.ScalarOrSchedule = 1e-4,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    *,
    levels=(-1.0, 1.0),
    scale: str | None = None,
    mask: MaskOrFn = None,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    weight_decay_mask: MaskOrFn = None,
) -> optax.GradientTransformation:
    """Revised ProxQuant (Table 2, bottom): Adam with the W-shaped prox taken in the metric ``C_t+δI``.

    ``λ·dist(θ, levels)^q`` with ``q ∈ [0, 1]`` (the paper uses ℓ1, ℓ⅔, ℓ½ and binary levels). ``lam`` may
    be a schedule (ProxQuant ramps it linearly). ``scale="tensor"``/``"channel"`` learns the levels' scale in the
    metric (:func:`~proxgen_jax.prox_quantize`). Finish training with :func:`~proxgen_jax.quantize` (pass
    ``scales=pg.learned_scales(opt_state)`` with learned scales).
    """
    if scale is None:
        return proxgen_adam(learning_rate, Quantization(tuple(levels), q), lam, b1, b2, eps, mask=mask,
                            weight_decay=weight_decay, weight_decay_mask=weight_decay_mask)
    return optax.chain(scale_by_adam_precond(b1, b2, eps),
                       prox_quantize(levels, q, lam, learning_rate, scale=scale, mask=mask, weight_decay=weight_decay,
                                     weight_decay_mask=weight_decay_mask))
