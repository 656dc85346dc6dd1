"""Prox-SGD (Yang et al., ICLR 2020): a two-stage, *inexact* proximal method — the baseline of ProxGen Sec. 5."""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from proxgen_jax._tree import MaskOrFn, check_params_like, resolve_mask
from proxgen_jax._validation import check_beta, check_in_range, check_nonnegative, check_positive
from proxgen_jax.regularizers.base import RegularizerOrFn, check_regularizer, resolve_regularizers
from proxgen_jax.regularizers.l1 import L1


class ProxSGDState(NamedTuple):
    """Prox-SGD state: the 0-based step ``t``, the momentum ``v_t`` and the squared-gradient average ``r_t``."""

    count: chex.Array
    v: Any
    r: Any


def _decay(initial: float, power: float, count) -> jax.Array:
    """``initial / (t + 4)^power`` for the 0-based step ``t`` (a scalar, via exp/log)."""
    t = jnp.asarray(count, jnp.float32)
    return initial * jnp.exp(-power * jnp.log(t + 4.0))


def prox_sgd(
    lam: optax.ScalarOrSchedule = 1e-4,
    *,
    regularizer: RegularizerOrFn = None,
    eps0: float = 0.06,
    rho0: float = 0.9,
    a: float = 0.5,
    b: float = 0.5,
    beta: float = 0.999,
    delta: float = 1e-8,
    box: tuple[float, float] | None = None,
    bias_correction: bool = True,
    mask: MaskOrFn = None,
) -> optax.GradientTransformation:
    r"""Prox-SGD: momentum, an inexact prox *without learning rate*, then a convex-combination step.

    For the 0-based step ``t`` and the gradient ``g_t`` (Yang et al., Alg. 1 with their Table 1 /
    reference implementation, the form analysed in ProxGen Sec. 5, Eqs. 5–6):

    .. math::
       ρ_t = ρ_0/(t+4)^b,\quad ε_t = ε_0/(t+4)^a,\qquad
       v_t = (1-ρ_t) v_{t-1} + ρ_t g_t,\qquad r_t = β r_{t-1} + (1-β) g_t^2,

       τ_t = \sqrt{r_t/(1-β^{t+1})} + δ,\qquad
       \hat θ_t = \operatorname{clip}_{box}\big(\operatorname{prox}^{τ_t}_{λR}(θ_t - v_t/τ_t)\big),\qquad
       θ_{t+1} = θ_t + ε_t(\hat θ_t - θ_t).

    ``\hat θ_t`` solves the approximation subproblem ``argmin_x ⟨v_t, x − θ_t⟩ + λR(x) + ½(x−θ_t)ᵀdiag(τ_t)(x−θ_t)``,
    computed with the core regularizer's ``prox(z, step=1/τ_t, λ)`` — for ℓ1 soft thresholding at ``λ/τ_t``,
    exactly the authors' code. Unlike ProxGen's Eq. 2 there is no learning rate inside the prox: the step
    size ``ε_t`` only mixes ``θ_t`` and ``\hat θ_t``. Hence (ProxGen Sec. 5, Study 1) ``θ_{t+1}`` is exactly
    zero only if ``θ_t`` already was (``θ_{t+1} = (1 − ε_t)θ_t`` when ``\hat θ_t = 0``), and from ``θ_t = 0``
    a coordinate leaves zero exactly when ``|v_{t,i}| > λ`` (for ℓ1; ``\hat θ_t`` does not depend on ``τ_t``
    there).

    What we follow, from the authors' reference implementation (Keras, Yang Yang's repository): the
    schedules use the 0-based iteration counter (first step ``ρ = ρ_0/4^b``, ``ε = ε_0/4^a``); ``τ_t`` is
    Adam's bias-corrected RMS ``√(r_t/(1−β^{t+1}))`` plus ``δ`` outside the square root; the box constraint
    is applied by clipping ``\hat θ_t`` after the prox, which is the exact prox of ``λR + ι_box`` for
    convex one-dimensional ``R`` (the paper's setting — Prox-SGD is stated for convex regularizers);
    for non-convex regularizers the clip is the same heuristic. (A later PyTorch port swaps the momentum
    weights and starts the counter at 1; we do not follow it.)

    Args:
      lam: ``λ ≥ 0`` (the authors' ``mu``), a float — or an optax schedule of the 0-based step (an extension:
        Prox-SGD itself uses a constant ``λ``).
      regularizer: the regularizer (``None`` → :class:`~proxgen_jax.regularizers.L1`, the paper's), or a
        callable ``(path, leaf) -> Regularizer | None``.
      eps0, a: the step-size schedule ``ε_t = ε0/(t+4)^a``, ``0 < ε0 ≤ 1``, ``a ≥ 0``.
      rho0, b: the momentum schedule ``ρ_t = ρ0/(t+4)^b``, ``0 < ρ0 ≤ 1``, ``b ≥ 0``.
      beta: ``β ∈ [0, 1)`` of the squared-gradient average.
      delta: ``δ > 0`` added to ``τ_t``.
      box: ``None`` or ``(lo, hi)`` with ``lo < hi``: the constraint ``lo ≤ θ ≤ hi`` (e.g. ``(-1, 1)``).
      bias_correction: divide ``r_t`` by ``1 − β^{t+1}`` (the authors do).
      mask: leaves that get the regularizer and the box (``None``: all); the others take the two-stage
        step with ``R = 0`` and no box.

    Returns:
      An ``optax.GradientTransformation`` (``update`` requires ``params``) returning ``θ_{t+1} − θ_t``.
      It already includes the step size: do not chain a learning rate after it.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> tx = prox_sgd(lam=1e-4, box=(-1.0, 1.0))
      >>> params = {"w": jnp.array([0.5, -0.2])}
      >>> state = tx.init(params)
      >>> upd, state = tx.update({"w": jnp.array([1.0, -1.0])}, state, params)
      >>> params = optax.apply_updates(params, upd)

    References:
      Yang, Yuan, Chatzimichailidis, van Sloun, Lei & Chatzinotas, "ProxSGD: Training Structured Neural
      Networks under Regularization and Constraints", ICLR 2020. Yun, Lozano & Yang, NeurIPS 2021, Sec. 5.
    """
    check_nonnegative("lam", lam)
    check_in_range("eps0", eps0, 0.0, 1.0, low_open=True)
    check_in_range("rho0", rho0, 0.0, 1.0, low_open=True)
    check_nonnegative("a", a)
    check_nonnegative("b", b)
    check_beta("beta", beta)
    check_positive("delta", delta)
    if box is not None:
        if len(tuple(box)) != 2 or not float(box[0]) < float(box[1]):
            raise ValueError(f"`box` must be None or (lo, hi) with lo < hi, got {box!r}.")
        box = (float(box[0]), float(box[1]))
    check_regularizer(regularizer)
    if regularizer is None:
        regularizer = L1()

    def _state_like(p):
        p = jnp.asarray(p)
        return jnp.zeros(p.shape, jnp.promote_types(p.dtype, jnp.float32))

    def init_fn(params):
        resolve_regularizers(regularizer, params, mask)
        zeros = jax.tree.map(_state_like, params)
        return ProxSGDState(jnp.zeros([], jnp.int32), zeros, jax.tree.map(jnp.copy, zeros))

    def update_fn(updates, state, params=None):
        check_params_like("prox_sgd", params, updates)
        regs = resolve_regularizers(regularizer, params, mask)
        boxed = resolve_mask(mask, params)  # the leaves selected by `mask` get the box
        t = state.count
        lam_t = lam(t) if callable(lam) else lam
        rho = _decay(rho0, b, t)
        eps = _decay(eps0, a, t)
        corr = 1.0 - jnp.exp((t.astype(jnp.float32) + 1.0) * jnp.log(jnp.float32(beta))) if bias_correction \
            else jnp.float32(1.0)

        flat_p, treedef = jax.tree.flatten(params)
        flat_g = treedef.flatten_up_to(updates)
        flat_v = treedef.flatten_up_to(state.v)
        flat_r = treedef.flatten_up_to(state.r)
        out, new_v, new_r = [], [], []
        for p, g, v, r, reg, bx in zip(flat_p, flat_g, flat_v, flat_r, regs, boxed):
            p = jnp.asarray(p)
            dt = v.dtype
            theta = p.astype(dt)
            g = jnp.asarray(g).astype(dt)
            v = (1 - rho.astype(dt)) * v + rho.astype(dt) * g
            r = beta * r + (1 - beta) * g * g
            tau = jnp.sqrt(r / corr.astype(dt)) + delta
            z = theta - v / tau
            hat = z if reg is None else reg.prox(z, 1 / tau, jnp.asarray(lam_t, dt))
            if box is not None and bx:
                hat = jnp.clip(hat, box[0], box[1])
            out.append((eps.astype(dt) * (hat - theta)).astype(p.dtype))
            new_v.append(v)
            new_r.append(r)
        new_state = ProxSGDState(optax.safe_increment(t), jax.tree.unflatten(treedef, new_v),
                                 jax.tree.unflatten(treedef, new_r))
        return jax.tree.unflatten(treedef, out), new_state

    return optax.GradientTransformation(init_fn, update_fn)
