"""Adam's diagonal preconditioner ``C_t = √v̂_t`` (the paper's proximal Adam)."""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax
from optax import tree_utils as otu

from proxgen_jax._validation import check_beta, check_nonnegative
from proxgen_jax.preconditioners.preconditioned_updates import sqrt_metric_updates


class ScaleByAdamPrecondState(NamedTuple):
    """State of :func:`scale_by_adam_precond` (the same leaves as ``optax.ScaleByAdamState``)."""

    count: chex.Array
    mu: optax.Updates
    nu: optax.Updates


class ScaleByAmsgradPrecondState(NamedTuple):
    count: chex.Array
    mu: optax.Updates
    nu: optax.Updates
    nu_max: optax.Updates


def scale_by_adam_precond(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    *,
    eps_root: float = 0.0,
    bias_correction: bool = True,
    amsgrad: bool = False,
    mu_dtype=None,
) -> optax.GradientTransformation:
    r"""Adam's moments as a ProxGen preconditioner (Algorithm 1, lines 6–7).

    .. math::
        m_t = b_1 m_{t-1} + (1-b_1) g_t, \quad v_t = b_2 v_{t-1} + (1-b_2) g_t^2,\quad
        C_t = \sqrt{\hat v_t + \epsilon_{root}},\quad \delta = \epsilon

    with ``m̂_t = m_t/(1−b1^t)`` and ``v̂_t = v_t/(1−b2^t)`` when ``bias_correction`` (optax's Adam), or the
    paper's exact recursion ``C_t = √(β C_{t−1}² + (1−β) g_t²)`` without it. With ``amsgrad`` ``C_t`` uses the
    running maximum of ``v̂``. The output is a :class:`PreconditionedUpdates` holding the direction
    ``(C_t+δ)^{-1} m̂_t`` and the metric ``C_t+δ``; follow it by a prox transformation, which applies
    ``θ_{t+1} = prox^{C_t+δI}_{α_t λ R}(θ_t − α_t (C_t+δI)^{-1} m_t)``. Without a regularizer the step is exactly
    ``optax.adam``'s. The state holds the same leaves as ``optax.scale_by_adam`` (count, mu, nu).

    Example:
      >>> import optax, proxgen_jax as pg
      >>> tx = optax.chain(pg.scale_by_adam_precond(), pg.prox_lq(q=0.5, lam=1e-4, learning_rate=1e-3))

    Args:
      b1: first-moment decay ``ρ`` in ``[0, 1)``.
      b2: second-moment decay ``β`` in ``[0, 1)``.
      eps: ``δ ≥ 0``, added to ``C_t``.
      eps_root: ``≥ 0``, added to ``v̂`` inside the square root.
      bias_correction: divide the moments by ``1 − b^t`` (optax/PyTorch Adam); ``False`` is the paper's recursion.
      amsgrad: use ``max_{s≤t} v̂_s`` (AMSGrad).
      mu_dtype: optional dtype of the first moment (e.g. ``jnp.bfloat16``).

    References:
      Yun, Lozano & Yang, *Adaptive Proximal Gradient Methods for Structured Neural Networks*, NeurIPS 2021.
      Kingma & Ba, *Adam: A Method for Stochastic Optimization*, ICLR 2015.
    """
    check_beta("b1", b1)
    check_beta("b2", b2)
    check_nonnegative("eps", eps)
    check_nonnegative("eps_root", eps_root)
    mu_dtype = None if mu_dtype is None else jnp.dtype(mu_dtype)

    def init_fn(params):
        mu = otu.tree_zeros_like(params, dtype=mu_dtype)
        nu = otu.tree_zeros_like(params)
        count = jnp.zeros([], jnp.int32)
        if amsgrad:
            return ScaleByAmsgradPrecondState(count, mu, nu, otu.tree_zeros_like(params))
        return ScaleByAdamPrecondState(count, mu, nu)

    def update_fn(updates, state, params=None):
        del params
        mu = otu.tree_update_moment(updates, state.mu, b1, 1)
        nu = otu.tree_update_moment_per_elem_norm(updates, state.nu, b2, 2)
        count = optax.safe_increment(state.count)
        mu_hat = otu.tree_bias_correction(mu, b1, count) if bias_correction else mu
        nu_hat = otu.tree_bias_correction(nu, b2, count) if bias_correction else nu
        if amsgrad:
            nu_max = jax.tree.map(jnp.maximum, state.nu_max, nu_hat)
            nu_hat = nu_max
        def unbias(m, v):  # one leaf of mu_hat, nu_hat from the state's (the prox may recompute from the state)
            if bias_correction:
                m = otu.tree_bias_correction(m, b1, count)
                v = v if amsgrad else otu.tree_bias_correction(v, b2, count)
            return m, v

        out = sqrt_metric_updates(mu_hat, nu_hat, eps, eps_root, stored=(mu, nu_max if amsgrad else nu, unbias))
        # Keep the state's dtypes (bf16 moments stay bf16 even when hyperparameters are float32 arrays).
        mu = otu.tree_cast_like(mu, state.mu)
        nu = otu.tree_cast_like(nu, state.nu)
        if amsgrad:
            new_state = ScaleByAmsgradPrecondState(count, mu, nu, nu_max)
        else:
            new_state = ScaleByAdamPrecondState(count, mu, nu)
        return out, new_state

    return optax.GradientTransformation(init_fn, update_fn)
