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
:func:`~proxgen_jax.transforms.prox_metric.proximal_step_metric`, whose inner solver uses only ``Ã X G̃``
products and ``λ_max(M) = max λ^A · max λ^G (+ δ)`` (and, on small leaves, single columns ``M e_i`` for its
coordinate-descent polish) — never the ``d × d`` matrix. Leaves without factors (embeddings, norm scales, ...)
go through ``fallback``, a diagonal ProxGen preconditioner such as ``scale_by_adam_precond()``.

References:
  Martens & Grosse, *Optimizing Neural Networks with Kronecker-factored Approximate Curvature*, ICML 2015.
  Yun, Lozano & Yang, *Adaptive Proximal Gradient Methods for Structured Neural Networks*, NeurIPS 2021.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from typing import Any, Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from proxgen_jax._validation import check_beta, check_positive
from proxgen_jax.preconditioners.direction import PreconditionedUpdates, split_updates
from proxgen_jax.preconditioners.full_matrix import MetricOperator, symmetric_eigh
from proxgen_jax.transforms.masks import MaskOrFn, resolve_mask

_MODES = ("exact", "factored")
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


def _matrix_shape(shape) -> tuple[int, int]:
    """A leaf ``(..., d_out)`` seen as the matrix ``(prod(...), d_out)``; a bias ``(d,)`` is ``(1, d)``."""
    shape = tuple(shape)
    if not shape:
        return 1, 1
    return math.prod(shape[:-1]), shape[-1]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KroneckerMetric(MetricOperator):
    r"""``M = Ã ⊗ G̃ + s I`` on a leaf seen as the matrix ``X`` (``(d_in, d_out)``): ``M X = Ã X G̃ + s X``.

    ``Ã = U_A diag(e_A) U_Aᵀ`` and ``G̃ = U_G diag(e_G) U_Gᵀ`` are the (damped) factors, stored with their
    eigendecompositions so that ``M^{-1} X = U_A [(U_Aᵀ X U_G) / (e_A e_Gᵀ + s)] U_Gᵀ``,
    ``diag(M) = diag(Ã) diag(G̃)ᵀ + s`` and ``λ_max(M) = max e_A · max e_G + s`` cost factor-sized work only
    (and a column ``M e_i``, an outer product of factor columns, ``O(n)``).
    In row-major ``vec`` the dense matrix is ``kron(Ã, G̃) + s I``.
    """

    a_mat: jax.Array
    g_mat: jax.Array
    a_vecs: jax.Array
    a_vals: jax.Array
    g_vecs: jax.Array
    g_vals: jax.Array
    shift: jax.Array
    shape: tuple = dataclasses.field(metadata=dict(static=True))

    @classmethod
    def from_eigh(cls, a_vals, a_vecs, g_vals, g_vecs, damping, shape, mode: str = "exact") -> "KroneckerMetric":
        """The metric from the factors' eigendecompositions (``A = U_A diag(a_vals) U_Aᵀ``) and ``δ``."""
        if mode not in _MODES:
            raise ValueError(f"`damping_mode` must be one of {_MODES}, got {mode!r}.")
        a_vals = jnp.maximum(a_vals, 0)
        g_vals = jnp.maximum(g_vals, 0)
        damping = jnp.asarray(damping, a_vals.dtype)
        if mode == "exact":
            ea, eg, shift = a_vals, g_vals, damping
        else:
            mean_a = jnp.mean(a_vals)
            mean_g = jnp.mean(g_vals)
            ok = jnp.logical_and(mean_a > 0, mean_g > 0)
            pi = jnp.where(ok, jnp.sqrt(jnp.where(ok, mean_a, 1) / jnp.where(ok, mean_g, 1)), 1)
            root = jnp.sqrt(damping)
            ea, eg, shift = a_vals + pi * root, g_vals + root / pi, jnp.zeros_like(damping)
        a_mat = (a_vecs * ea[None, :]) @ a_vecs.T
        g_mat = (g_vecs * eg[None, :]) @ g_vecs.T
        return cls(0.5 * (a_mat + a_mat.T), 0.5 * (g_mat + g_mat.T), a_vecs, ea, g_vecs, eg, shift, tuple(shape))

    @classmethod
    def from_factors(cls, a_cov, g_cov, damping, shape, mode: str = "exact") -> "KroneckerMetric":
        """The metric from the factor matrices themselves (one ``eigh`` each)."""
        a_vals, a_vecs = symmetric_eigh(jnp.asarray(a_cov))
        g_vals, g_vecs = symmetric_eigh(jnp.asarray(g_cov))
        return cls.from_eigh(a_vals, a_vecs, g_vals, g_vecs, damping, shape, mode)

    def _mat(self, x):
        return x.reshape(_matrix_shape(self.shape))

    def matvec(self, x):
        xm = self._mat(x)
        return (self.a_mat @ xm @ self.g_mat + self.shift * xm).reshape(self.shape)

    def solve(self, x):
        y = self.a_vecs.T @ self._mat(x) @ self.g_vecs
        y = y / (self.a_vals[:, None] * self.g_vals[None, :] + self.shift)
        return (self.a_vecs @ y @ self.g_vecs.T).reshape(self.shape)

    def diagonal(self):
        d = jnp.diagonal(self.a_mat)[:, None] * jnp.diagonal(self.g_mat)[None, :] + self.shift
        return d.reshape(self.shape)

    def max_eigenvalue(self):
        return jnp.max(self.a_vals) * jnp.max(self.g_vals) + self.shift

    def column(self, i):
        """``M e_i`` for the entry ``i = a·d_out + b``: ``Ã[:, a] G̃[b, :] + s e_i`` — ``O(n)`` work."""
        _, dg = _matrix_shape(self.shape)
        a, b = i // dg, i % dg
        col = self.a_mat[:, a][:, None] * self.g_mat[b, :][None, :]
        return col.at[a, b].add(self.shift).reshape(self.shape)


def _key_name(key) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _path_names(path) -> tuple[str, ...]:
    """Key names along ``path``; a trailing ``.value`` (an ``nnx.Variable`` viewed as a pytree) is dropped."""
    if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == "value":
        path = path[:-1]
    return tuple(_key_name(k) for k in path)


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
      >>> from proxgen_jax.preconditioners.kfac import scale_by_kfac_precond, kfac_value_and_grad
      >>> from proxgen_jax.transforms.prox_metric import proximal_step_metric
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
    if damping_mode not in _MODES:
        raise ValueError(f"`damping_mode` must be one of {_MODES}, got {damping_mode!r}.")
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
            da, dg = _matrix_shape(jnp.shape(p))
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
            da, dg = _matrix_shape(jnp.shape(g))
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
        for i, ((path, g), f) in enumerate(zip(flat_with_path, flags)):
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
            fb_dir, fb_metric = split_updates(fb_out)
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


# --------------------------------------------------------------------------------------------------------------
# Flax nnx statistics capture
# --------------------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _tapped_linear():
    """Within the context, ``nnx.Linear.__call__`` records its input and perturbs its output under ``nnx.capture``.

    The tap is active only inside ``nnx.capture`` (the module carries ``__captures__``); elsewhere Linear
    behaves as usual. The class attribute is restored on exit (Flax's own ``capture(method_outputs=...)``
    instruments classes the same way).
    """
    from flax import nnx

    original = nnx.Linear.__call__
    if getattr(original, "_proxgen_kfac_tap", False):  # nested use
        yield
        return

    @functools.wraps(original)
    def tapped(self, inputs, *args, **kwargs):
        y = original(self, inputs, *args, **kwargs)
        if hasattr(self, "__captures__"):
            self.sow(nnx.Intermediate, _INPUTS, inputs)
            y = self.perturb(_OUTPUTS, y)
        return y

    tapped._proxgen_kfac_tap = True
    nnx.Linear.__call__ = tapped
    try:
        yield
    finally:
        nnx.Linear.__call__ = original


def _flat(state) -> dict:
    from flax import nnx

    out = {}
    for path, var in nnx.to_flat_state(state):
        out[tuple(path)] = var.get_value() if hasattr(var, "get_value") else var
    return out


def _nest(flat: dict) -> dict:
    root: dict = {}
    for path, value in flat.items():
        node = root
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = value
    return root


def kfac_value_and_grad(loss_fn: Callable[..., Any], *, has_aux: bool = False) -> Callable[..., Any]:
    """Like ``nnx.value_and_grad(loss_fn)``, also returning the KFAC statistics of every ``nnx.Linear``.

    ``loss_fn(model, *args, **kwargs)`` must return the *mean* loss over the batch (or ``(loss, aux)`` with
    ``has_aux``). The returned function gives ``(loss, grads, kfac_stats)`` (``((loss, aux), grads,
    kfac_stats)`` with ``has_aux``): ``grads`` as ``nnx.grad`` gives them (w.r.t. ``nnx.Param``), and
    ``kfac_stats`` a nested dict keyed like the parameters with :class:`KroneckerFactors` at each Linear's
    ``kernel`` and ``bias`` — pass it on as ``optimizer.update(model, grads, kfac_stats=kfac_stats)``.

    One forward and one backward pass: the output gradients ``δ`` come from differentiating with respect to
    zero perturbations added to each Linear's output (``Module.perturb``), in the same backward pass as the
    parameter gradients; the inputs are recorded with ``Module.sow``. Under ``jit`` XLA removes the
    shape-only pass that creates the zero perturbations.

    Limitations: only ``nnx.Linear`` (and subclasses that do not override ``__call__``) is tapped; a layer
    called more than once per loss (weight sharing) raises ``ValueError``; during tracing the class attribute
    ``nnx.Linear.__call__`` is temporarily replaced (not thread-safe across concurrent traces).

    Example:
      >>> loss, grads, stats = kfac_value_and_grad(loss_fn)(model, x, y)   # doctest: +SKIP
      >>> optimizer.update(model, grads, kfac_stats=stats)                  # doctest: +SKIP
    """
    def wrapped(model, *args, **kwargs):
        from flax import nnx

        with _tapped_linear():
            _, probes = nnx.capture(loss_fn, nnx.Perturbation)(model, *args, **kwargs)

            def inner(model, probes):
                out, inter = nnx.capture(loss_fn, nnx.Intermediate, init=probes)(model, *args, **kwargs)
                loss, aux = out if has_aux else (out, None)
                return loss, (aux, inter)

            (loss, (aux, inter)), (grads, probe_grads) = nnx.value_and_grad(
                inner, argnums=(0, 1), has_aux=True)(model, probes)

        inputs = {k[:-1]: v for k, v in _flat(inter).items() if k[-1] == _INPUTS}
        deltas = {k[:-1]: v for k, v in _flat(probe_grads).items() if k[-1] == _OUTPUTS}
        modules = dict(nnx.iter_modules(model))
        stats = {}
        for path, recorded in inputs.items():
            if len(recorded) != 1:
                raise ValueError(f"nnx.Linear at {path} was called {len(recorded)} times in one loss; "
                                 "kfac_value_and_grad supports one call per layer.")
            delta = deltas[path]
            stats[path + ("kernel",)] = dense_factors(recorded[0], delta)
            if getattr(modules.get(path), "bias", None) is not None:
                stats[path + ("bias",)] = bias_factors(delta)
        out = (loss, aux) if has_aux else loss
        return out, grads, _nest(stats)

    return wrapped
