r"""The nuclear norm ``R(W) = Σ_i σ_i(W)``: low rank by singular-value thresholding, exact in a diagonal metric.

**Matricisation.** A leaf with ``ndim ≥ 2`` is read as a matrix ``W`` of shape ``(prod(shape[:-1]), shape[-1])``
(``matricize="flatten"``, the default): a Dense kernel ``(in, out)`` is itself, a conv kernel ``(h, w, in, out)``
becomes ``(h·w·in, out)``. ``rank W ≤ r`` then means the layer factors into a conv with ``r`` filters followed
by a ``1×1`` conv ``r → out`` (the channel factorisation low-rank compression uses). ``matricize="batch"``
instead treats every ``(…, m, n)`` leaf as a stack of independent ``m × n`` matrices (the last two axes; e.g.
layers stacked for ``scan``) and sums their nuclear norms. Leaves with ``ndim < 2`` raise ``ValueError``.

**Euclidean prox** (a scalar ``step``; Cai, Candès & Shen 2010). With ``Z = U diag(s) Vᵀ``,

.. math:: \operatorname{prox}_{step·λ‖·‖_*}(Z) = U \operatorname{diag}\bigl((s - step·λ)_+\bigr) Vᵀ .

**Diagonal-metric prox** (ProxGen with Adam/RMSprop/AdaGrad: ``step_i = α_t/(C_{t,i}+δ)``). Write
``w_i = 1/step_i = (C_{t,i}+δ)/α_t``. The problem

.. math:: X^\star = \operatorname{argmin}_X\; F(X) = λ‖X‖_* + \tfrac12 \sum_i w_i (x_i - z_i)^2

is strongly convex but has no closed form (the weights break the unitary invariance). It is solved by an
accelerated proximal gradient method on the smooth part, whose gradient ``w⊙(X − Z)`` is ``L``-Lipschitz,
``L = max_i w_i``, with curvature at least ``μ = min_i w_i``: from ``Y``,

.. math:: V = Y - w⊙(Y - Z)/L,\qquad X^+ = \operatorname{SVT}_{λ/L}(V),\qquad
          Y \leftarrow X^+ + β (X^+ - X),\quad β = \frac{1 - \sqrt{μ/L}}{1 + \sqrt{μ/L}}

(Beck's V-FISTA, with O'Donoghue & Candès's gradient restart ``β = 0`` when ``⟨Y − X^+, X^+ − X⟩ > 0``). Its
rate is ``(1 − \sqrt{μ/L})^k``: about ``\sqrt{κ}\,\log(1/\text{tol})`` iterations for ``κ = L/μ``, the spread of
the metric within one matrix — one SVD each.

**Certificate.** Every iterate comes with a dual point for free: ``Ŷ = L(V − X^+) = L·U diag(min(s, λ/L)) Vᵀ``
has ``‖Ŷ‖₂ ≤ λ`` and ``⟨Ŷ, X^+⟩ = λ‖X^+‖_*``, so by Fenchel duality (``D(Y) = ⟨Y, Z⟩ − ½Σ y_i²/w_i`` on the
spectral ball ``‖Y‖₂ ≤ λ``)

.. math:: F(X^+) - F(X^\star) \;\le\; F(X^+) - D(Ŷ) \;=\; \tfrac12 \sum_i \bigl(w_i(z_i - x^+_i) - ŷ_i\bigr)^2 / w_i
          \;=:\; \text{gap}(X^+),

a sum of squares evaluated without cancellation; and ``½‖X^+ − X^\star‖²_w ≤ gap`` by strong convexity. The
loop stops once ``Σ gap ≤ tol · Σ F(X^+)`` over the leaf (**default tol = 1e-6: the objective is certified within
1e-6 relative of the exact minimum**) or after ``max_iters`` iterations; it returns the iterate with the smallest
certified gap (:func:`solve_nuclear_prox` also returns the gap). With a constant step (``κ = 1``) one iteration
is the exact SVT. The guarantee needs ``C_t + δ > 0`` everywhere (``μ > 0``); a coordinate with zero weight
makes the gap infinite and the loop runs to ``max_iters``.

Measured (random 6×5 problems, ``w`` log-uniform over ``[1, κ]``): in float32 to the default 1e-6 gap, median
(max) 12 (16), 48 (53), 128 (157), 372 (508) iterations for ``κ = 10, 1e2, 1e3, 1e4``; float32 certifies gaps
down to 1e-9. Against scipy (float64, 52 problems through ``proximal_step_metric`` after Adam, κ up to 1e3) the
true relative gap was ≤ 9.9e-7 at ``tol = 1e-6`` (tests/test_nuclear.py). The cost in training is one SVD per
iteration and grows like ``\sqrt{κ}``: fine for small and medium layers, expensive for large ones whose metric
spreads widely (beyond ``κ ≈ 3e4`` the default :data:`MAX_ITERS` may run out before the certificate; the best
certified iterate is returned).

References:
  Cai, Candès & Shen, *A Singular Value Thresholding Algorithm for Matrix Completion*, SIAM J. Optim. 2010.
  Beck, *First-Order Methods in Optimization*, SIAM 2017 (V-FISTA, §10.7.7).
  O'Donoghue & Candès, *Adaptive Restart for Accelerated Gradient Schemes*, Found. Comput. Math. 2015.
  Yun, Lozano & Yang, *Adaptive Proximal Gradient Methods for Structured Neural Networks*, NeurIPS 2021.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from proxgen_jax._validation import check_nonnegative
from proxgen_jax.regularizers.base import Regularizer, as_float_array

_MATRICIZE = ("flatten", "batch")
#: Default relative duality-gap tolerance of the diagonal-metric prox: ``F(X) − F* ≤ tol·F(X)`` is certified.
TOL = 1e-6
#: Default most accelerated proximal-gradient iterations (one SVD each) of the diagonal-metric prox.
MAX_ITERS = 1000


class NuclearProxResult(NamedTuple):
    """The diagonal-metric nuclear prox and its certificate.

    Attributes:
      x: the minimiser found, shaped like ``z``.
      gap: the certified bound ``F(x) − F(X*) ≤ gap`` (summed over the leaf's matrices; ``inf`` if none was
        certified, NaN for NaN input).
      objective: ``F(x) = λ‖x‖_* + ½ Σ_i (x_i − z_i)²/step_i``.
      iterations: accelerated proximal-gradient iterations run.
    """

    x: jax.Array
    gap: jax.Array
    objective: jax.Array
    iterations: jax.Array


@dataclasses.dataclass(frozen=True)
class NuclearNorm(Regularizer):
    r"""The nuclear (trace) norm ``λ‖W‖_* = λ Σ_i σ_i(W)`` of each parameter matrix: it drives whole singular
    values to exactly zero, i.e. low rank.

    ``prox(z, step, lam)`` solves ``argmin_X λ‖X‖_* + Σ_i (x_i − z_i)²/(2 step_i)``. With a scalar ``step``
    (Euclidean metric, e.g. after a plain optax transform) that is singular-value soft thresholding,
    ``U (s − step·λ)_+ Vᵀ``. With a per-coordinate ``step = α_t/(C_t+δ)`` (ProxGen after Adam, so also
    ``proximal_step_metric(NuclearNorm(), …)`` after ``scale_by_adam_precond()``) it is the exact convex prox in
    that metric, solved by accelerated proximal gradient with the Euclidean SVT inside, to a certified relative
    objective gap ``tol`` (module docstring). NaN in ``z`` or ``step`` gives NaN for the whole matrix.

    ``value`` is ``λ Σ σ_i``. ``subgradient`` is ``λ U_r V_rᵀ`` on the numerical rank ``r`` (singular values above
    ``max(m, n)·ε·σ_max``, NumPy's ``matrix_rank`` rule): the minimal-norm element of ``λ∂‖W‖_*``; ``0`` at
    ``W = 0``.

    Example:
      >>> import jax.numpy as jnp
      >>> from proxgen_jax.regularizers.nuclear import NuclearNorm
      >>> z = jnp.array([[3.0, 0.0], [0.0, 0.5]])
      >>> NuclearNorm().prox(z, 1.0, 1.0)  # singular values (3, 0.5) -> (2, 0): rank 1
      Array([[2., 0.],
             [0., 0.]], dtype=float32)

    Args:
      matricize: ``"flatten"`` (the leaf as ``(prod(shape[:-1]), shape[-1])``) or ``"batch"`` (a stack of
        matrices over the last two axes).
      tol: relative duality-gap tolerance of the metric prox, in ``(0, 1)``.
      max_iters: most iterations of the metric prox (``≥ 1``).

    References:
      Cai, Candès & Shen, *A Singular Value Thresholding Algorithm for Matrix Completion*, SIAM J. Optim. 2010.
      Yun, Lozano & Yang, *Adaptive Proximal Gradient Methods for Structured Neural Networks*, NeurIPS 2021.
    """

    matricize: str = "flatten"
    tol: float = TOL
    max_iters: int = MAX_ITERS

    def __post_init__(self):
        if self.matricize not in _MATRICIZE:
            raise ValueError(f"`matricize` must be one of {_MATRICIZE}, got {self.matricize!r}.")
        if isinstance(self.tol, bool) or not isinstance(self.tol, (int, float)) or not 0 < self.tol < 1:
            raise ValueError(f"`tol` must be a float in (0, 1), got {self.tol!r}.")
        if not isinstance(self.max_iters, int) or isinstance(self.max_iters, bool) or self.max_iters < 1:
            raise ValueError(f"`max_iters` must be an int ≥ 1, got {self.max_iters!r}.")

    # -- helpers ---------------------------------------------------------------------------------------
    def matrices(self, x) -> jax.Array:
        """``x`` as a stack ``(B, m, n)`` of the matrices the norm is taken over (``ValueError`` if ``ndim < 2``)."""
        shape = jnp.shape(x)
        if len(shape) < 2:
            raise ValueError(f"NuclearNorm needs an array with ndim ≥ 2, got shape {tuple(shape)}; leave 1-D "
                             "parameters unregularised (e.g. `mask=proxgen_jax.kernels_only`).")
        if self.matricize == "flatten":
            return jnp.reshape(x, (1, -1, shape[-1]))
        return jnp.reshape(x, (-1,) + tuple(shape[-2:]))

    def singular_values(self, x) -> jax.Array:
        """``σ(W)`` per matrix, ``(B, min(m, n))``, in float32 or wider."""
        x = as_float_array(x)
        return jnp.linalg.svd(self.matrices(x.astype(_compute(x.dtype))), compute_uv=False)

    # -- Regularizer API --------------------------------------------------------------------------------
    def value(self, x, lam) -> jax.Array:
        check_nonnegative("lam", lam)
        s = self.singular_values(x)
        return jnp.asarray(lam, s.dtype) * jnp.sum(s)

    def subgradient(self, x, lam) -> jax.Array:
        check_nonnegative("lam", lam)
        x = as_float_array(x)
        m = self.matrices(x.astype(_compute(x.dtype)))
        u, s, vt = jnp.linalg.svd(m, full_matrices=False)
        cut = max(m.shape[-2:]) * jnp.finfo(m.dtype).eps * jnp.max(s, axis=-1, keepdims=True)
        keep = (s > cut).astype(m.dtype)
        g = jnp.asarray(lam, m.dtype) * jnp.einsum("bik,bk,bkj->bij", u, keep, vt)
        return g.reshape(jnp.shape(x)).astype(x.dtype)

    def prox(self, z, step, lam) -> jax.Array:
        check_nonnegative("lam", lam)
        z = as_float_array(z)
        dt = _compute(z.dtype)
        step = jnp.asarray(step, dt)
        if step.ndim == 0:  # Euclidean metric: singular-value soft thresholding
            zm = self.matrices(z.astype(dt))
            return _svt(zm, step * jnp.asarray(lam, dt)).reshape(z.shape).astype(z.dtype)
        return solve_nuclear_prox(z, step, lam, matricize=self.matricize, tol=self.tol,
                                  max_iters=self.max_iters).x.astype(z.dtype)


def _compute(dtype):
    return jnp.promote_types(dtype, jnp.float32)


def _svt(m, tau):
    """``U (s − τ)_+ Vᵀ`` per matrix of the stack ``m`` (``(B, m, n)``); ``τ`` is a scalar or ``(B, 1)``."""
    u, s, vt = jnp.linalg.svd(m, full_matrices=False)
    return jnp.einsum("bik,bk,bkj->bij", u, jnp.maximum(s - tau, 0), vt)


def solve_nuclear_prox(z, step, lam, *, matricize: str = "flatten", tol: float = TOL,
                       max_iters: int = MAX_ITERS) -> NuclearProxResult:
    r"""``argmin_X λ‖X‖_* + Σ_i (x_i − z_i)²/(2 step_i)`` with its certified gap (module docstring).

    Args:
      z: the centre (``ndim ≥ 2``), matricised as ``matricize`` says.
      step: per-coordinate steps ``> 0``, broadcasting against ``z`` (ProxGen: ``α_t/(C_t+δ)``).
      lam: ``λ ≥ 0``.
      matricize: ``"flatten"`` or ``"batch"`` (see :class:`NuclearNorm`).
      tol: stop once ``Σ gap ≤ tol·Σ F`` (relative objective gap, certified).
      max_iters: most iterations.

    Returns:
      A :class:`NuclearProxResult` in the compute dtype (float32 or wider).
    """
    check_nonnegative("lam", lam)
    reg = NuclearNorm(matricize, tol, max_iters)
    z = as_float_array(z)
    dt = _compute(z.dtype)
    w = 1 / jnp.broadcast_to(jnp.asarray(step, dt), z.shape)
    zm, wm = reg.matrices(z.astype(dt)), reg.matrices(w)
    x, gap, f, k = _metric_svt(zm, wm, jnp.asarray(lam, dt), jnp.asarray(tol, dt), jnp.asarray(max_iters, jnp.int32))
    return NuclearProxResult(x.reshape(z.shape), gap, f, k)


class _State(NamedTuple):
    k: jax.Array
    x: jax.Array        # X_k (per matrix)
    y: jax.Array        # the extrapolated point
    best: jax.Array     # the iterate with the smallest certified gap, per matrix
    best_gap: jax.Array  # (B,)
    best_f: jax.Array    # (B,)


@functools.partial(jax.jit, inline=True)
def _metric_svt(z, w, lam, tol, max_iters):
    """V-FISTA with gradient restart on a stack ``(B, m, n)``; ``w = 1/step``. Returns ``(x, gap, F, iterations)``."""
    dt = z.dtype
    lmax = jnp.max(w, axis=(1, 2), keepdims=True)
    root = jnp.sqrt(jnp.min(w, axis=(1, 2), keepdims=True) / lmax)
    beta = (1 - root) / (1 + root)
    tau = lam / lmax
    bad = jnp.any(jnp.isnan(z) | jnp.isnan(w), axis=(1, 2))

    def step(y):
        v = y - w * (y - z) / lmax
        u, s, vt = jnp.linalg.svd(v, full_matrices=False)
        shrunk = jnp.maximum(s - tau[..., 0], 0)
        x = jnp.einsum("bik,bk,bkj->bij", u, shrunk, vt)
        # Ŷ = L(V − X⁺) = L·U min(s, λ/L) Vᵀ: ‖Ŷ‖₂ ≤ λ and ⟨Ŷ, X⁺⟩ = λ‖X⁺‖_*. Formed from the factors, not as
        # L(V − X⁺): that difference carries L·ulp(V) of rounding, enough to void the certificate when L is large.
        yhat = jnp.einsum("bik,bk,bkj->bij", u, lmax[..., 0] * jnp.minimum(s, tau[..., 0]), vt)
        r = z - x
        resid = w * r - yhat
        # Zero weight: the dual is finite only where ŷ = 0 (then that coordinate adds nothing).
        terms = jnp.where(w > 0, jnp.square(resid) / jnp.where(w > 0, w, 1), jnp.where(yhat == 0, 0, jnp.inf))
        gap = 0.5 * jnp.sum(terms, axis=(1, 2))
        f = lam * jnp.sum(shrunk, axis=1) + 0.5 * jnp.sum(w * r * r, axis=(1, 2))
        return x, gap, f

    def cond(s: _State):
        open_ = jnp.sum(s.best_gap) > tol * jnp.sum(s.best_f)  # NaN: False, so NaN input stops at once
        return (s.k < max_iters) & (open_ | (s.k == 0))

    def body(s: _State):
        x, gap, f = step(s.y)
        restart = jnp.sum((s.y - x) * (x - s.x), axis=(1, 2), keepdims=True) > 0
        y = x + jnp.where(restart, 0, beta) * (x - s.x)
        better = gap < s.best_gap
        best = jnp.where(better[:, None, None], x, s.best)
        return _State(s.k + 1, x, y, best, jnp.where(better, gap, s.best_gap), jnp.where(better, f, s.best_f))

    mean_w = jnp.mean(w, axis=(1, 2), keepdims=True)
    x0 = _svt(z, lam / mean_w[..., 0])  # warm start: the SVT in the average scalar metric
    inf = jnp.full(z.shape[:1], jnp.inf, dt)
    out = jax.lax.while_loop(cond, body, _State(jnp.zeros([], jnp.int32), x0, x0, x0, inf, inf))
    x = jnp.where(bad[:, None, None], jnp.nan, out.best)
    return x, jnp.sum(out.best_gap), jnp.sum(out.best_f), out.k
