"""BinaryConnect (Courbariaux, Bengio & David, NeurIPS 2015): binary weights in the forward pass, real latents.

Training keeps real-valued *latent* weights ``w``; the forward (and backward) pass uses ``w_b = sign(w)``; the
gradient with respect to ``w_b`` is applied to ``w`` (straight-through estimator), and ``w`` is clipped to
``[−1, 1]`` after every update. Works with any model whose parameters are a pytree, without rewriting it:

* Flax linen: ``model.apply({"params": binarize_params(params, kernels_only)}, x)``;
* Flax nnx: ``graphdef, params, rest = nnx.split(model, nnx.Param, ...)``, then
  ``nnx.merge(graphdef, binarize_params(params, kernels_only), rest)(x)`` inside the loss.

Gradients taken with respect to the latent ``params`` flow through :func:`sign_ste`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from proxgen_jax._tree import MaskOrFn, check_params_like, resolve_mask
from proxgen_jax._validation import check_positive
from proxgen_jax.solvers.scale_fit import init_scale, nearest_level, scale_axes


def _hard_sign(w: jax.Array) -> jax.Array:
    """``+1`` for ``w ≥ 0``, ``−1`` for ``w < 0`` (NaN stays NaN), in the dtype of ``w``."""
    one = jnp.ones_like(w)
    return jnp.where(jnp.isnan(w), w, jnp.where(w >= 0, one, -one))


@jax.custom_vjp
def sign_ste(w: jax.Array) -> jax.Array:
    r"""Deterministic binarisation with a straight-through gradient.

    ``w_b = sign(w)`` forward, ``∂L/∂w = ∂L/∂w_b · 1_{|w| ≤ 1}`` backward.

    Forward: ``+1`` if ``w ≥ 0`` else ``−1`` — BinaryConnect's deterministic rule (Courbariaux et al., Eq. 1),
    so ``sign(0) = +1`` and the output is always a valid binary weight (``jnp.sign`` would give 0). NaN stays NaN.

    Backward: the straight-through estimator of the hard-tanh, ``g · 1_{|w| ≤ 1}`` (Hubara et al. 2016's form
    of the BinaryConnect gradient; at ``|w| = 1`` the gradient passes). With :func:`clip_latent` the latent
    weights stay in ``[−1, 1]``, where this is exactly BinaryConnect's identity straight-through gradient.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> w = jnp.array([-2.0, -0.5, 0.0, 0.7, 1.0, 1.5])
      >>> sign_ste(w).tolist()
      [-1.0, -1.0, 1.0, 1.0, 1.0, 1.0]
      >>> jax.grad(lambda w: jnp.sum(3.0 * sign_ste(w)))(w).tolist()
      [0.0, 3.0, 3.0, 3.0, 3.0, 0.0]

    References:
      Courbariaux, Bengio & David, "BinaryConnect: Training Deep Neural Networks with binary weights during
      propagations", NeurIPS 2015. Hubara et al., "Binarized Neural Networks", NeurIPS 2016.
    """
    return _hard_sign(jnp.asarray(w))


def _sign_ste_fwd(w):
    w = jnp.asarray(w)
    return _hard_sign(w), w


def _sign_ste_bwd(w, g):
    return (jnp.where(jnp.abs(w) <= 1, g, jnp.zeros_like(g)),)


sign_ste.defvjp(_sign_ste_fwd, _sign_ste_bwd)


def stochastic_sign_ste(key: jax.Array, w: jax.Array) -> jax.Array:
    r"""BinaryConnect's stochastic binarisation, with the same straight-through gradient as :func:`sign_ste`.

    ``w_b = +1`` with probability ``σ(w) = clip((w + 1)/2, 0, 1)`` (the hard sigmoid), else ``−1``
    (Courbariaux et al., Eq. 2–3). Gradient: ``g · 1_{|w| ≤ 1}``.
    """
    w = jnp.asarray(w)
    p = jnp.clip((w + 1) / 2, 0, 1)
    u = jax.random.uniform(key, w.shape, dtype=jnp.promote_types(w.dtype, jnp.float32))
    # w + stop_grad(target − w) would pass the gradient everywhere; reuse sign_ste for the |w| ≤ 1 cut-off.
    shift = jnp.where(u < p, jnp.ones_like(p), -jnp.ones_like(p)).astype(w.dtype)
    return sign_ste(w) + jax.lax.stop_gradient(shift - sign_ste(w))


def binarize_params(params: Any, mask: MaskOrFn = None, *, key: jax.Array | None = None) -> Any:
    """The parameters for BinaryConnect's forward pass: :func:`sign_ste` on the leaves selected by ``mask``.

    Other leaves (biases, normalisation scales with ``mask=kernels_only``) pass through unchanged. With ``key``
    the stochastic rule (:func:`stochastic_sign_ste`) is used, one independent key per leaf.

    Args:
      params: a pytree of latent weights (linen ``params`` dict, nnx ``State``, plain dict, ...).
      mask: ``None`` (all leaves), a pytree of bools, or a callable on ``params`` (e.g.
        :func:`~proxgen_jax.kernels_only`).
      key: ``None`` for deterministic binarisation, else a PRNG key for stochastic binarisation.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from proxgen_jax import kernels_only
      >>> params = {"dense": {"kernel": jnp.array([[0.3, -0.2]]), "bias": jnp.array([0.1, 0.2])}}
      >>> binarize_params(params, kernels_only)["dense"]["kernel"].tolist()
      [[1.0, -1.0]]
    """
    flags = resolve_mask(mask, params)
    leaves, treedef = jax.tree.flatten(params)
    keys = [None] * len(leaves) if key is None else list(jax.random.split(key, max(len(leaves), 1)))
    out = []
    for leaf, on, k in zip(leaves, flags, keys):
        if not on:
            out.append(leaf)
        elif k is None:
            out.append(sign_ste(leaf))
        else:
            out.append(stochastic_sign_ste(k, leaf))
    return jax.tree.unflatten(treedef, out)


def quantize_ste(w: jax.Array, levels: tuple, axes: tuple) -> jax.Array:
    r"""k-bit weights with a fitted scale and a straight-through gradient (BinaryConnect / XNOR-Net style).

    Forward: ``s·ℓ(w/s)`` with ``s`` the least-squares scale of ``w`` over ``axes`` (exact for binary and ternary
    grids, Lloyd otherwise: :func:`~proxgen_jax.solvers.scale_fit.init_scale`), refit at every call and not
    differentiated. Backward: ``g·1_{|w| ≤ s·max|L|}`` — the hard-tanh cut-off of :func:`sign_ste` at the grid's
    range. With ``levels = (−1, 1)`` and ``s = 1`` this is :func:`sign_ste`.

    Args:
      w: latent weights.
      levels: the sorted base grid ``L`` (e.g. ``pg.uniform_levels(2)``).
      axes: the axes one scale is shared over (:func:`~proxgen_jax.solvers.scale_fit.scale_axes`).
    """
    w = jnp.asarray(w)
    levels = tuple(sorted(float(v) for v in levels))
    wf = jax.lax.stop_gradient(w).astype(jnp.promote_types(w.dtype, jnp.float32))
    s = jax.lax.stop_gradient(init_scale(wf, levels, axes))
    safe = jnp.where(s > 0, s, jnp.ones_like(s))
    q = (s * nearest_level(wf / safe, levels)).astype(w.dtype)
    inside = jnp.abs(wf) <= s * max(abs(v) for v in levels)
    return jnp.where(inside, w + jax.lax.stop_gradient(q - w), jax.lax.stop_gradient(q))


def quantize_params_ste(params: Any, levels: tuple, mask: MaskOrFn = None, *, scale: str = "channel",
                        channel_axis: int = -1) -> Any:
    """The forward-pass parameters of straight-through k-bit training: :func:`quantize_ste` on the leaves
    selected by ``mask`` with one scale per tensor or per output channel (``scale``), others unchanged."""
    if scale not in ("tensor", "channel"):
        raise ValueError(f"`scale` must be 'tensor' or 'channel', got {scale!r}.")
    flags = resolve_mask(mask, params)
    leaves, treedef = jax.tree.flatten(params)
    out = [quantize_ste(x, levels, scale_axes(jnp.ndim(x), scale, channel_axis)) if on else x
           for x, on in zip(leaves, flags)]
    return jax.tree.unflatten(treedef, out)


def clipped_update(p: jax.Array, u: jax.Array, bound: float) -> jax.Array:
    """The update ``d`` (dtype of ``p``) with ``p + d`` equal to ``clip(p + u, −bound, bound)`` up to one ulp,
    and never outside ``[−bound, bound]`` once ``optax.apply_updates`` rounds ``p + d``."""
    dt = jnp.promote_types(p.dtype, jnp.float32)
    target = jnp.clip(p.astype(dt) + u.astype(dt), -bound, bound)
    d = (target - p.astype(dt)).astype(p.dtype)
    hi = jnp.asarray(bound, p.dtype)
    for _ in range(2):  # rounding of p + d can overshoot by an ulp; step d back towards the box
        d = jnp.where(p + d > hi, jnp.nextafter(d, jnp.asarray(-jnp.inf, p.dtype)), d)
        d = jnp.where(p + d < -hi, jnp.nextafter(d, jnp.asarray(jnp.inf, p.dtype)), d)
    return d


def clip_latent(bound: float = 1.0, *, mask: MaskOrFn = None) -> optax.GradientTransformation:
    r"""Keeps the latent weights in ``[−bound, bound]``: updates become ``clip(θ_t + u_t) − θ_t``.

    Place it **last** in the chain (after the learning rate), e.g.
    ``optax.chain(optax.adam(1e-3), clip_latent(1.0, mask=kernels_only))``: BinaryConnect's
    ``w_{t+1} = clip(w_t − η ∂C/∂w_b, −1, 1)`` (Courbariaux et al., Alg. 1). Leaves outside ``mask`` are
    not clipped. Updates keep the parameter dtype.

    Args:
      bound: ``> 0``, the clipping radius.
      mask: ``None`` (all leaves), a pytree of bools, or a callable on the params.

    Returns:
      An ``optax.GradientTransformation`` whose ``update`` requires ``params``.
    """
    check_positive("bound", bound)

    def init_fn(params):
        resolve_mask(mask, params)
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        check_params_like("clip_latent", params, updates)
        flags = resolve_mask(mask, params)
        flat_p, treedef = jax.tree.flatten(params)
        flat_u = treedef.flatten_up_to(updates)
        out = []
        for p, u, on in zip(flat_p, flat_u, flags):
            if not on:
                out.append(u)
                continue
            out.append(clipped_update(jnp.asarray(p), jnp.asarray(u), bound))
        return jax.tree.unflatten(treedef, out), state

    return optax.GradientTransformation(init_fn, update_fn)
