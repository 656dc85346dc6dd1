"""ProxQuant (Bai, Wang & Liberty, ICLR 2019): Adam, then the *Euclidean* prox of the W-shaped regularizer.

Compare with :func:`proxgen_jax.revised_proxquant`, ProxGen's revision that takes the same prox in Adam's
metric ``C_t + δI`` (ProxGen Table 2).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from proxgen_jax._tree import MaskOrFn, resolve_mask
from proxgen_jax._validation import check_beta, check_nonnegative, check_positive
from proxgen_jax.baselines.binary_connect import clip_latent
from proxgen_jax.metrics import quantize
from proxgen_jax.regularizers.quantization import Quantization
from proxgen_jax.transforms.proximal_step import proximal_step


def linear_ramp(lam_max: float, ramp_steps: int, ramp_every: int = 1) -> Callable[[jax.Array], jax.Array]:
    r"""ProxQuant's homotopy schedule ``λ_t = lam_max · min(s_t, ramp_steps)/ramp_steps``.

    ``s_t = ramp_every·⌊t/ramp_every⌋`` and ``t`` is the 0-based step count, so ``λ_0 = 0``: the first steps are
    plain Adam. ``ramp_every = 1`` is a per-step linear ramp; ``ramp_every =`` steps per epoch reproduces the
    authors' ``λ = reg_rate · epoch`` (epochs counted from 0) with
    ``reg_rate = lam_max · ramp_every / ramp_steps``, up to ``lam_max``.
    """
    check_nonnegative("lam_max", lam_max)
    if int(ramp_steps) != ramp_steps or ramp_steps < 1:
        raise ValueError(f"`ramp_steps` must be a positive integer, got {ramp_steps!r}.")
    if int(ramp_every) != ramp_every or ramp_every < 1:
        raise ValueError(f"`ramp_every` must be a positive integer, got {ramp_every!r}.")
    ramp_steps, ramp_every = int(ramp_steps), int(ramp_every)

    def schedule(count):
        s = (jnp.asarray(count, jnp.int32) // ramp_every) * ramp_every
        return lam_max * jnp.minimum(s, ramp_steps).astype(jnp.float32) / ramp_steps

    return schedule


def proxquant(
    learning_rate: optax.ScalarOrSchedule = 1e-2,
    lam_max: float = 2e-2,
    *,
    ramp_steps: int = 10_000,
    ramp_every: int = 1,
    q: float = 1.0,
    levels=(-1.0, 1.0),
    clip: bool = True,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    mask: MaskOrFn = None,
) -> optax.GradientTransformation:
    r"""ProxQuant: ``θ_{t+1} = clip(prox_{α_t λ_t R}(θ_t − α_t m̂_t/(√v̂_t + δ)))`` with the Euclidean prox.

    ``R(θ) = Σ_i dist(θ_i, L)^q`` is the W-shaped regularizer (``L = {−1, +1}``, ``q = 1``: ProxQuant's
    ``R_bin``); the prox is taken with the plain step ``α_t`` for every coordinate — ProxGen Table 2 (top),
    which ignores the preconditioner. It is built from ``optax.scale_by_adam`` followed by the core
    :func:`~proxgen_jax.proximal_step` (Euclidean by design after a plain optax transformation), so for ``q = 1``
    each selected coordinate is soft-thresholded towards its nearest level by ``α_t λ_t`` — the authors'
    ``prox_operator(lr·λ, 'binary')``. ``λ_t`` ramps linearly from 0 (:func:`linear_ramp`). With ``clip``
    the selected weights are then clipped to ``[min L, max L]`` (the authors' ``bin_op.clip()``). Finish
    with :func:`binarize_and_freeze` (their ``--freeze_epoch``) or :func:`~proxgen_jax.quantize`.

    One deliberate difference: at ``θ = 0`` exactly (the midpoint of ``{−1, 1}``) the core prox moves
    towards ``+1``, where the authors' ``sign(θ)``-based formula leaves 0 in place; both are minimisers.

    Args:
      learning_rate: ``α_t > 0`` (float or schedule; the authors use Adam with 1e-2).
      lam_max: the final ``λ``, ``≥ 0``.
      ramp_steps: steps over which ``λ_t`` grows from 0 to ``lam_max`` (then constant).
      ramp_every: ``λ_t`` increases every ``ramp_every`` steps (steps per epoch reproduces the authors).
      q: the exponent of the generalised ``dist(θ, L)^q``, in ``[0, 1]``.
      levels: the quantisation levels ``L``.
      clip: clip the selected weights to ``[min L, max L]`` after the prox.
      b1, b2, eps: Adam's constants (``δ = eps``).
      mask: the leaves to quantise (the authors: all but BatchNorm, downsample and the final bias), e.g.
        :func:`~proxgen_jax.kernels_only`.

    Example:
      >>> from proxgen_jax import kernels_only
      >>> tx = proxquant(1e-2, lam_max=2e-2, ramp_steps=20_000, mask=kernels_only)

    References:
      Bai, Wang & Liberty, "ProxQuant: Quantized Neural Networks via Proximal Operators", ICLR 2019.
      Yun, Lozano & Yang, NeurIPS 2021, Table 2.
    """
    check_positive("learning_rate", learning_rate)
    check_beta("b1", b1)
    check_beta("b2", b2)
    check_positive("eps", eps)
    reg = Quantization(tuple(levels), q)
    lam = linear_ramp(lam_max, ramp_steps, ramp_every)
    parts = [optax.scale_by_adam(b1=b1, b2=b2, eps=eps), proximal_step(reg, lam, learning_rate, mask=mask)]
    if clip:
        lo, hi = reg.levels[0], reg.levels[-1]
        if lo != -hi:
            raise ValueError(f"`clip=True` needs symmetric levels (min L = −max L), got {levels!r}; "
                             "pass clip=False.")
        parts.append(clip_latent(hi, mask=mask))
    return optax.chain(*parts)


def hard_binarize(params: Any, mask: MaskOrFn = None) -> Any:
    """The final hard sign of ProxQuant: selected entries become ``+1`` (``θ ≥ 0``) or ``−1``; dtype kept."""
    return quantize(params, (-1.0, 1.0), mask)


def binarize_and_freeze(params: Any, mask: MaskOrFn = None) -> tuple[Any, Any]:
    """Hard-binarises the selected leaves and returns ``(binary_params, frozen)`` for the rest of training.

    ``frozen`` is a bool pytree marking the binarised leaves. Continue training the other leaves with any
    optimizer whose updates are zeroed on the frozen ones, e.g.
    ``optax.chain(optax.adam(1e-3), optax.masked(optax.set_to_zero(), frozen))`` — the authors'
    ``quantize('binary_freeze')`` (sign, then ``requires_grad = False``) at ``--freeze_epoch``.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> params = {"kernel": jnp.array([0.2, -0.9]), "bias": jnp.array([0.3])}
      >>> bp, frozen = binarize_and_freeze(params, {"kernel": True, "bias": False})
      >>> bp["kernel"].tolist(), frozen
      ([1.0, -1.0], {'bias': False, 'kernel': True})
      >>> tx = optax.chain(optax.adam(1e-3), optax.masked(optax.set_to_zero(), frozen))
    """
    flags = resolve_mask(mask, params)
    treedef = jax.tree.structure(params)
    return hard_binarize(params, mask), jax.tree.unflatten(treedef, flags)
