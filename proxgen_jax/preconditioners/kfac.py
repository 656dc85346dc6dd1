r"""Proximal KFAC: the Kronecker-factored preconditioner of the paper's Sec. 2, and its statistics capture.

For a Dense layer ``y = a W + b`` (``W`` of shape ``(d_in, d_out)``, Flax's convention) KFAC approximates the
(empirical) Fisher block of ``W`` by ``C_{t,[l]} = E[δ δᵀ] ⊗ E[a aᵀ]``, ``a`` the layer input and ``δ`` the
per-example gradient of the loss with respect to the layer output. As an operator on ``W`` it is
``W ↦ A W G`` with ``A = E[a aᵀ]`` (``d_in × d_in``) and ``G = E[δ δᵀ]`` (``d_out × d_out``).

**Where the statistics come from.** The preconditioner's ``update`` takes an extra keyword argument
``kfac_stats``: a tree keyed like the parameters whose Dense kernel (and bias) entries are
:class:`KroneckerFactors` — the mini-batch estimates ``A_B = aᵀa/n`` and ``G_B = n δᵀδ`` (rows = examples;
``δ`` is the gradient of the *batch-mean* loss, hence the factor ``n``). In Flax nnx,
:func:`kfac_value_and_grad` produces them alongside the loss and gradients: it taps every ``nnx.Linear``
during the forward pass, records the inputs (``Module.sow``) and differentiates with respect to a zero
perturbation added to each output (``Module.perturb``, the standard JAX trick), all in the same backward pass
as the gradients. Outside nnx, :func:`dense_factors` and :func:`bias_factors` compute the entries from inputs
and output gradients that you capture yourself. ``nnx.Optimizer.update(model, grads, kfac_stats=stats)``
forwards the keyword to the transformation.

**Biases.** A bias is its own block with ``A = [1]`` (the input "1"), so its metric is ``G``: the
kernel–bias cross term of Martens & Grosse's homogeneous-coordinate variant is dropped, which keeps every leaf's
metric self-contained and the prox per leaf.

**The metric and damping.** The running factors are EMAs ``A_t = β A_{t−1} + (1−β) A_B`` (bias-corrected
like Adam's moments); every ``update_every`` steps their eigendecompositions are refreshed (at every step
during the first ``warmup`` steps), and between refreshes the last ones are used for both the direction and
the prox, so both always see the same ``M``:

* ``damping_mode="exact"`` (default): ``M = A ⊗ G + δI`` — exactly the paper's ``C_t + δI``, inverted in the
  factors' eigenbasis (``(λ_i^A λ_j^G + δ)^{-1}``);
* ``damping_mode="factored"``: Martens & Grosse's π-splitting ``M = (A + π√δ I) ⊗ (G + √δ/π I)`` with
  ``π = √((tr A/d_in)/(tr G/d_out))``.

The direction is ``M^{-1} m_t`` with the EMA momentum ``m_t = ρ m_{t−1} + (1−ρ) g_t`` (Algorithm 1, line 6)
and the metric leaf a :class:`KroneckerMetric`; chain with
:func:`~proxgen_jax.transforms.proximal_step_metric.proximal_step_metric`, whose inner solver uses only ``Ã X G̃``
products and ``λ_max(M) = max λ^A · max λ^G (+ δ)`` (and, on small leaves, single columns ``M e_i`` for its
coordinate-descent polish) — never the ``d × d`` matrix. Leaves without factors (embeddings, norm scales, ...)
go through ``fallback``, a diagonal ProxGen preconditioner such as ``scale_by_adam_precond()``.

References:
  Martens & Grosse, *Optimizing Neural Networks with Kronecker-factored Approximate Curvature*, ICML 2015.
  Yun, Lozano & Yang, *Adaptive Proximal Gradient Methods for Structured Neural Networks*, NeurIPS 2021.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from proxgen_jax._tree import MaskOrFn, key_name, resolve_mask
from proxgen_jax._validation import check_beta, check_positive
from proxgen_jax.preconditioners.preconditioned_updates import (
    PreconditionedUpdates,
    split_updates,
)
from proxgen_jax.solvers.metric_operators import (
    DAMPING_MODES,
    KroneckerMetric,
    matrix_shape,
    symmetric_eigh,
)

_INPUTS = "_kfac_inputs"
_OUTPUTS = "_kfac_outputs"


class KroneckerFactors(NamedTuple):
    """Mini-batch estimates ``A_B = E[a aᵀ]`` (``(d_in, d_in)``) and ``G_B = E[δ δᵀ]`` (``(d_out, d_out)``)."""

    a_cov: jax.Array
    g_cov: jax.Array


def _rows(x):
    x = jnp.asarray(x)
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    return x.reshape(-1, x.shape[-1])


def dense_factors(inputs: jax.Array, output_grads: jax.Array) -> KroneckerFactors:
    """The kernel's factors from layer inputs ``(..., d_in)`` and output gradients ``(..., d_out)``.

    ``output_grads`` are the gradients of the *mean* loss over the ``n`` rows (all leading axes), so the
    per-example gradient is ``n δ``: ``A_B = aᵀa/n``, ``G_B = n δᵀδ``. Then ``Σ_rows a δᵀ`` is the kernel's
    gradient, and ``A_B ⊗ G_B`` the empirical Fisher's Kronecker approximation.
    """
    a, d = _rows(inputs), _rows(output_grads)
    n = a.shape[0]
    return KroneckerFactors(a.T @ a / n, n * (d.T @ d))


def bias_factors(output_grads: jax.Array) -> KroneckerFactors:
    """The bias's factors: ``A = [[1]]`` and ``G_B = n δᵀδ`` (the bias's per-example gradient is ``n δ``)."""
    d = _rows(output_grads)
    return KroneckerFactors(jnp.ones((1, 1), d.dtype), d.shape[0] * (d.T @ d))


def _path_names(path) -> tuple[str, ...]:
    """Key names along ``path``; a trailing ``.value`` (an ``nnx.Variable`` viewed as a pytree) is dropped."""
    if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == "value":
        path = path[:-1]
    return tuple(key_name(k) for k in path)


def dense_layers(params: Any) -> Any:
    """Default ``factored`` mask: 2-D leaves named ``kernel``, and 1-D ``bias`` leaves next to such a kernel.

    Matches Flax's ``nnx.Linear`` / ``nn.Dense`` parameters; embeddings, norm scales and conv kernels are left
    to the ``fallback``.
    """
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    kernels = {_path_names(p)[:-1] for p, leaf in flat
               if p and _path_names(p)[-1] == "kernel" and jnp.ndim(leaf) == 2}

    def pick(path, leaf):
        names = _path_names(path)
        if not names:
            return False
        if names[-1] == "kernel":
            return jnp.ndim(leaf) == 2
        return names[-1] == "bias" and jnp.ndim(leaf) == 1 and names[:-1] in kernels

    return jax.tree_util.tree_map_with_path(pick, params)


class KfacLeafState(NamedTuple):
    """One factored leaf: EMA factors and the eigendecompositions (of the bias-corrected factors) in use."""

    a_cov: jax.Array
    g_cov: jax.Array
    a_vals: jax.Array
    a_vecs: jax.Array
    g_vals: jax.Array
    g_vecs: jax.Array


class ScaleByKfacPrecondState(NamedTuple):
    count: chex.Array
    mu: tuple          # momentum per leaf (None for fallback leaves)
    layers: tuple      # KfacLeafState per leaf (None for fallback leaves)
    fallback: Any      # the fallback's state on the non-factored leaves


def _flat_stats(kfac_stats) -> dict:
    flat = jax.tree_util.tree_flatten_with_path(kfac_stats, is_leaf=lambda x: isinstance(x, KroneckerFactors))[0]
    out = {}
    for path, leaf in flat:
        if isinstance(leaf, KroneckerFactors):
            out[_path_names(path)] = leaf
    return out


def scale_by_kfac_precond(
    momentum: float = 0.9,
    decay: float = 0.95,
    damping: float = 1e-3,
    *,
    damping_mode: str = "exact",
    update_every: int = 10,
    warmup: int = 20,
    bias_correction: bool = True,
    factored: MaskOrFn = dense_layers,
    fallback: optax.GradientTransformation | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""KFAC as a ProxGen preconditioner: ``C_{t,[l]} = E[δ_l δ_lᵀ] ⊗ E[a_{l−1} a_{l−1}ᵀ]`` per Dense layer.

    .. math::
        m_t = ρ m_{t-1} + (1-ρ) g_t,\quad A_t = β A_{t-1} + (1-β) A_B,\quad G_t = β G_{t-1} + (1-β) G_B,
        \quad M_t = \hat A_t ⊗ \hat G_t + δ I,\quad \text{direction} = M_t^{-1} \hat m_t

    (hats: division by ``1 − ρ^t`` / ``1 − β^t`` when ``bias_correction``; ``M_t`` from the eigendecompositions
    of the last refresh, every ``update_every`` steps; see the module docstring for ``damping_mode``). The
    output is ``PreconditionedUpdates(direction, metric)`` with a :class:`KroneckerMetric` per factored leaf.
    ``update`` requires the keyword ``kfac_stats`` (module docstring; produced by :func:`kfac_value_and_grad`).

    Example (Flax nnx; a complete loop is in ``benchmarks/kfac_digits.py``):
      >>> import optax, proxgen_jax as pg
      >>> from flax import nnx
      >>> from proxgen_jax.preconditioners import scale_by_kfac_precond, kfac_value_and_grad
      >>> from proxgen_jax.transforms.proximal_step_metric import proximal_step_metric
      >>> model = nnx.Sequential(nnx.Linear(4, 8, rngs=nnx.Rngs(0)), nnx.relu, nnx.Linear(8, 3, rngs=nnx.Rngs(1)))
      >>> tx = optax.chain(scale_by_kfac_precond(damping=1e-2),
      ...                  proximal_step_metric(pg.regularizers.L1(), lam=1e-4, learning_rate=0.05,
      ...                                       mask=pg.kernels_only))
      >>> opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
      >>> def loss_fn(model, x, y):
      ...     return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()
      >>> @nnx.jit
      ... def train_step(model, opt, x, y):
      ...     loss, grads, stats = kfac_value_and_grad(loss_fn)(model, x, y)
      ...     opt.update(model, grads, kfac_stats=stats)
      ...     return loss

    Args:
      momentum: ``ρ`` in ``[0, 1)``.
      decay: factor EMA decay ``β`` in ``[0, 1)``.
      damping: ``δ > 0``.
      damping_mode: ``"exact"`` (``A⊗G + δI``) or ``"factored"`` (π-splitting).
      update_every: eigendecomposition refresh period ``k ≥ 1``.
      warmup: the first ``warmup`` steps refresh at every step (the early factor EMAs change fast; a stale
        early metric can make the first steps diverge).
      bias_correction: debias the momentum and the factor EMAs.
      factored: which leaves get Kronecker factors (mask or callable; default :func:`dense_layers`).
      fallback: a diagonal ProxGen preconditioner for the other leaves (e.g. ``scale_by_adam_precond()``);
        required when ``factored`` leaves some leaf out. It sees a tree with ``None`` at factored leaves.

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    References:
      Martens & Grosse, *Optimizing Neural Networks with Kronecker-factored Approximate Curvature*, ICML 2015.
    """
    check_beta("momentum", momentum)
    check_beta("decay", decay)
    check_positive("damping", damping)
    if damping_mode not in DAMPING_MODES:
        raise ValueError(f"`damping_mode` must be one of {DAMPING_MODES}, got {damping_mode!r}.")
    if not isinstance(update_every, int) or isinstance(update_every, bool) or update_every < 1:
        raise ValueError(f"`update_every` must be an int ≥ 1, got {update_every!r}.")
    if not isinstance(warmup, int) or isinstance(warmup, bool) or warmup < 0:
        raise ValueError(f"`warmup` must be an int ≥ 0, got {warmup!r}.")
    if fallback is not None and not hasattr(fallback, "update"):
        raise ValueError(f"`fallback` must be an optax GradientTransformation or None, got {fallback!r}.")

    def flags_for(params):
        return resolve_mask(factored, params, what="factored")

    def masked(tree, flags):
        leaves, treedef = jax.tree.flatten(tree)
        return jax.tree.unflatten(treedef, [None if f else x for x, f in zip(leaves, flags)])

    def init_fn(params):
        flags = flags_for(params)
        paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
        if fallback is None and not all(flags):
            first = paths[flags.index(False)]
            raise ValueError(f"parameter {first} has no Kronecker factors (not selected by `factored`); pass "
                             "`fallback=scale_by_adam_precond()` (or another diagonal preconditioner) for such "
                             "leaves, or a `factored` mask that covers them.")
        mu, layers = [], []
        for p, f in zip(jax.tree.leaves(params), flags):
            if not f:
                mu.append(None)
                layers.append(None)
                continue
            dt = jnp.promote_types(jnp.asarray(p).dtype, jnp.float32)
            da, dg = matrix_shape(jnp.shape(p))
            mu.append(jnp.zeros(jnp.shape(p), dt))
            layers.append(KfacLeafState(jnp.zeros((da, da), dt), jnp.zeros((dg, dg), dt), jnp.zeros((da,), dt),
                                        jnp.eye(da, dtype=dt), jnp.zeros((dg,), dt), jnp.eye(dg, dtype=dt)))
        fb_state = fallback.init(masked(params, flags)) if fallback is not None else optax.EmptyState()
        return ScaleByKfacPrecondState(jnp.zeros([], jnp.int32), tuple(mu), tuple(layers), fb_state)

    def update_fn(updates, state, params=None, *, kfac_stats=None, **extra_args):
        flags = flags_for(updates)
        flat_with_path, treedef = jax.tree_util.tree_flatten_with_path(updates)
        if any(flags) and kfac_stats is None:
            raise ValueError("scale_by_kfac_precond needs the Kronecker factors: call "
                             "`update(grads, state, params, kfac_stats=stats)` (see kfac_value_and_grad).")
        stats = _flat_stats(kfac_stats) if kfac_stats is not None else {}
        count = optax.safe_increment(state.count)
        refresh = jnp.logical_or(count <= warmup, (count - 1) % update_every == 0)

        new_layers, batch = [], []
        for (path, g), f, ls in zip(flat_with_path, flags, state.layers):
            if not f:
                new_layers.append(None)
                continue
            key = _path_names(path)
            if key not in stats:
                raise ValueError(f"`kfac_stats` has no KroneckerFactors for {jax.tree_util.keystr(path)}.")
            fac = stats[key]
            da, dg = matrix_shape(jnp.shape(g))
            if jnp.shape(fac.a_cov) != (da, da) or jnp.shape(fac.g_cov) != (dg, dg):
                raise ValueError(f"`kfac_stats` at {jax.tree_util.keystr(path)} has factor shapes "
                                 f"{jnp.shape(fac.a_cov)}, {jnp.shape(fac.g_cov)}; expected {(da, da)}, {(dg, dg)}.")
            dt = ls.a_cov.dtype
            a_cov = decay * ls.a_cov + (1 - decay) * jnp.asarray(fac.a_cov).astype(dt)
            g_cov = decay * ls.g_cov + (1 - decay) * jnp.asarray(fac.g_cov).astype(dt)
            corr = (1 - jnp.asarray(decay, dt) ** count.astype(dt)) if bias_correction else jnp.ones([], dt)
            new_layers.append(ls._replace(a_cov=a_cov, g_cov=g_cov))
            batch.append((a_cov / corr, g_cov / corr))

        # Refresh every eigendecomposition at once (one predicate), or keep the previous ones.
        idx = [i for i, f in enumerate(flags) if f]

        def fresh(covs):
            return [symmetric_eigh(a) + symmetric_eigh(g) for a, g in covs]

        def stale(covs):
            del covs
            ls_ = [state.layers[i] for i in idx]
            return [(s.a_vals, s.a_vecs, s.g_vals, s.g_vecs) for s in ls_]

        eig = jax.lax.cond(refresh, fresh, stale, batch) if idx else []

        flat_m, directions, metrics = [], [], []
        eig_iter = iter(eig)
        layers_out = list(new_layers)
        for i, ((_, g), f) in enumerate(zip(flat_with_path, flags)):
            if not f:
                flat_m.append(None)
                directions.append(None)
                metrics.append(None)
                continue
            a_vals, a_vecs, g_vals, g_vecs = next(eig_iter)
            layers_out[i] = layers_out[i]._replace(a_vals=a_vals, a_vecs=a_vecs, g_vals=g_vals, g_vecs=g_vecs)
            dt = a_vals.dtype
            m = momentum * state.mu[i] + (1 - momentum) * jnp.asarray(g).astype(dt)
            flat_m.append(m)
            m_hat = m / (1 - jnp.asarray(momentum, dt) ** count.astype(dt)) if bias_correction and momentum else m
            metric = KroneckerMetric.from_eigh(a_vals, a_vecs, g_vals, g_vecs, damping, jnp.shape(g), damping_mode)
            directions.append(metric.solve(m_hat))
            metrics.append(metric)

        fb_state = state.fallback
        if fallback is not None and not all(flags):
            masked_params = masked(params, flags) if params is not None else None
            fb_out, fb_state = fallback.update(masked(updates, flags), state.fallback, masked_params)
            fb_dir, fb_metric, _ = split_updates(fb_out)
            fb_dirs = treedef.flatten_up_to(fb_dir)
            fb_metrics = [None] * len(flags) if fb_metric is None else treedef.flatten_up_to(fb_metric)
            for i, f in enumerate(flags):
                if not f:
                    directions[i] = fb_dirs[i]
                    metrics[i] = fb_metrics[i]

        direction = jax.tree.unflatten(treedef, directions)
        metric = jax.tree.unflatten(treedef, metrics)
        new_state = ScaleByKfacPrecondState(count, tuple(flat_m), tuple(layers_out), fb_state)
        return PreconditionedUpdates(direction, metric), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
