"""The subgradient baseline: add ``∂(λR)(θ_t)`` to the gradient and run an ordinary optimizer.

This is what ``loss + λ·R(θ)`` with autograd does in PyTorch/JAX (the "popular machine learning libraries" of
the ProxGen abstract), except at points where autograd of the penalty is undefined (see
:func:`add_subgradient`).
"""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from proxgen_jax._tree import MaskOrFn, check_params_like
from proxgen_jax._validation import check_beta, check_nonnegative, check_positive
from proxgen_jax.regularizers.base import RegularizerOrFn, check_regularizer, resolve_regularizers


class AddSubgradientState(NamedTuple):
    """Step counter, for a scheduled ``λ_t`` (absent when ``lam`` is a constant)."""

    count: chex.Array


def add_subgradient(
    regularizer: RegularizerOrFn,
    lam: optax.ScalarOrSchedule = 1e-4,
    *,
    mask: MaskOrFn = None,
) -> optax.GradientTransformation:
    r"""Adds a subgradient of ``λ_t R`` at the current parameters to the gradient: ``g_t ← g_t + ∂(λ_t R)(θ_t)``.

    Place it first, before the optimizer it feeds, e.g.
    ``optax.chain(add_subgradient(Lq(0.5), 1e-4), optax.scale_by_adam(), optax.scale_by_learning_rate(α))``
    (this is :func:`subgradient_adam`). The optimizer then treats ``f + λR`` as if it were smooth: its moments
    ``m_t`` and ``C_t`` see the penalty's subgradient, and parameters are never set to exactly zero — the
    baseline that ProxGen's exact proximal step is compared against (Sec. 4).

    The subgradient is ``regularizer.subgradient(θ, λ_t)``, computed in the parameter's dtype (float32 at least)
    and added to the updates in their dtype. At non-differentiable points it is the element documented by
    each regularizer: ``0`` for ℓ1 at ``θ = 0`` (the minimal-norm element of ``[−λ, λ]``); for ℓq,
    ``0 < q < 1``, ``λ q |θ|^{q−1} sign θ``, which is faithful and huge for tiny ``|θ|`` (the paper's explanation
    of the slow convergence of subgradient training with ℓ½ and ℓ⅔, Sec. 4) and ``0`` at exactly ``θ = 0`` —
    there autograd of ``|θ|**q`` gives ``inf·0 = NaN`` (PyTorch) and training would diverge.

    Args:
      regularizer: a :class:`~proxgen_jax.regularizers.Regularizer`, ``None`` (identity), or a callable
        ``(path, leaf) -> Regularizer | None``, as for :func:`~proxgen_jax.proximal_step`.
      lam: ``λ ≥ 0``, a float or an optax schedule of the step count.
      mask: which leaves are regularised: ``None`` (all), a pytree of bools, or a callable on the params
        (e.g. :func:`~proxgen_jax.kernels_only`).

    Returns:
      An ``optax.GradientTransformation`` whose ``update`` requires ``params``.

    Example:
      >>> import optax, jax.numpy as jnp
      >>> from proxgen_jax.regularizers import L1
      >>> tx = optax.chain(add_subgradient(L1(), 0.1), optax.sgd(1.0))
      >>> params = {"w": jnp.array([2.0, -3.0, 0.0])}
      >>> g = {"w": jnp.zeros(3)}
      >>> upd, _ = tx.update(g, tx.init(params), params)
      >>> upd["w"].tolist()  # −(0 + 0.1·sign θ)
      [-0.1..., 0.1..., -0.0]

    References:
      Yun, Lozano & Yang, "Adaptive Proximal Gradient Methods for Structured Neural Networks", NeurIPS 2021,
      Sec. 4 (the subgradient baselines).
    """
    check_nonnegative("lam", lam)
    check_regularizer(regularizer)
    scheduled = callable(lam)

    def init_fn(params):
        resolve_regularizers(regularizer, params, mask)  # fail early, naming the path
        if scheduled:
            return AddSubgradientState(jnp.zeros([], jnp.int32))
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        check_params_like("add_subgradient", params, updates)
        regs = resolve_regularizers(regularizer, params, mask)
        lam_t = lam(state.count) if scheduled else lam
        flat_p, treedef = jax.tree.flatten(params)
        flat_u = treedef.flatten_up_to(updates)
        out = []
        for p, u, reg in zip(flat_p, flat_u, regs):
            if reg is None:
                out.append(u)
                continue
            p = jnp.asarray(p)
            dt = jnp.promote_types(p.dtype, jnp.float32)
            sub = reg.subgradient(p.astype(dt), jnp.asarray(lam_t, dt))
            u = jnp.asarray(u)
            out.append((u.astype(dt) + sub).astype(u.dtype))
        new_state = AddSubgradientState(optax.safe_increment(state.count)) if scheduled else state
        return jax.tree.unflatten(treedef, out), new_state

    return optax.GradientTransformation(init_fn, update_fn)


def subgradient_adam(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    regularizer: RegularizerOrFn = None,
    lam: optax.ScalarOrSchedule = 1e-4,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    *,
    mask: MaskOrFn = None,
) -> optax.GradientTransformation:
    r"""Adam on ``f + λR`` through the subgradient: ``g_t = ∇f(θ_t) + ∂(λR)(θ_t)``, then the Adam step.

    ``θ_{t+1} = θ_t − α_t m̂_t / (√v̂_t + δ)`` with ``m_t, v_t`` the moments of ``g_t`` (``δ = eps``) — the
    "Adam (subgradient)" curves of the paper's Fig. 2, to compare with :func:`~proxgen_jax.proxgen_adam`.

    Args:
      learning_rate: ``α_t > 0`` (float or schedule).
      regularizer: see :func:`add_subgradient`; ``None`` gives plain Adam.
      lam: ``λ ≥ 0`` (float or schedule).
      b1, b2: Adam's moment decays, in ``[0, 1)``.
      eps: ``δ > 0``, added to ``√v̂_t``.
      mask: leaves to regularise (see :func:`add_subgradient`).

    Example:
      >>> from proxgen_jax.regularizers import Lq
      >>> from proxgen_jax import kernels_only
      >>> tx = subgradient_adam(1e-3, Lq(0.5), lam=1e-4, mask=kernels_only)

    References:
      Kingma & Ba, "Adam", ICLR 2015; Yun et al., NeurIPS 2021, Sec. 4.
    """
    check_positive("learning_rate", learning_rate)
    check_beta("b1", b1)
    check_beta("b2", b2)
    check_positive("eps", eps)
    return optax.chain(
        add_subgradient(regularizer, lam, mask=mask),
        optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
        optax.scale_by_learning_rate(learning_rate),
    )
