r"""Group ℓ1,2: ``R(θ) = Σ_g w_g ‖θ_g‖₂`` — the group prox in a diagonal metric (no closed form).

With ProxGen's diagonal metric ``C_t + δI`` the prox of the group norm is

.. math:: x^\star = \operatorname{argmin}_x\; λ w ‖x‖_2 + \tfrac12 \sum_i (x_i - z_i)^2 / a_i,
          \qquad a_i = α_t / (C_{t,i} + δ),

one problem per group. Write ``b_i = λ w a_i``. The group is exactly zero iff ``‖z/b‖₂ ≤ 1`` (that is,
``‖z/a‖₂ ≤ λw``; equality included). Otherwise ``x_i = z_i ρ/(ρ + b_i)`` where ``ρ = ‖x^⋆‖₂`` is the unique
positive root of ``Σ_i z_i²/(ρ + b_i)² = 1``. ``s(ρ) = 1/‖p(ρ)‖`` with ``p_i = z_i/(ρ + b_i)`` is increasing
and concave (the secular function of Moré & Sorensen's trust-region solver), so Newton's method on
``s(ρ) = 1`` started at any lower bound of the root increases monotonically to it. We start at

.. math:: ρ_0 = \max\bigl(‖z‖ - \bar b,\; \max_i (|z_i| - b_i),\; \text{tiny}\bigr),\qquad
          \bar b = \sum_i z_i^2 b_i / ‖z‖^2,

both lower bounds (the first by Jensen's inequality on the convex ``b ↦ (ρ+b)^{-2}``, the second from any
single term; ``tiny``, the smallest normal number, keeps ``1/(ρ + b_i)`` finite when ``b_i = 0``). ``ρ_0`` is
the exact root when all ``b_i`` are equal (block soft thresholding), and ``ρ ≥ max_i(|z_i| − b_i)`` keeps
``|p_i| ≤ 1`` in every iteration; the zero test is evaluated as ``‖z/(λwa)‖ ≤ 1``. Nothing overflows or
underflows whatever the spread of ``a_i`` (tested over 16 decades) or the scale of the group (tested from
``‖z‖ ≈ 1e-15`` to ``1e15`` in float32; below ``‖z‖² ≈ 1e-38`` the Newton steps stall at ``ρ_0``). At most
:data:`NEWTON_STEPS` safeguarded Newton steps follow, vectorised over all groups: no host sync,
jit/vmap/shard friendly.

Early exit (XLA:CPU). ``s`` rises with slope at least ``1/‖z‖`` everywhere (Jensen:
``Σ w_i(ρ+b_i)^{-3} ≥ (Σ w_i(ρ+b_i)^{-2})^{3/2}/‖z‖`` with ``w_i = z_i²``), so ``ρ* − ρ ≤ (1 − s(ρ))·‖z‖``:
a certificate from the sum every Newton step computes anyway. On the CPU the steps run in a ``while`` loop
that stops as soon as every group is certified within ``ε·ρ`` (:data:`RADIUS_TOL`); then ``x`` is within
``ε‖x‖`` of the minimiser and the objective within ``~ε²`` relative. In training, where the metric varies
smoothly within a group, the Jensen start is often certified at once (no Newton step); with ``a_i`` spread
over 16 decades all the steps run. On other backends the steps are unrolled (a GPU ``while`` loop would copy
its predicate to the host every iteration).

Cost: every per-group sum is one more pass over the leaf (on XLA:CPU a fused reduction): five to set up and
certify the start, two per Newton step. The metric-aware group prox is therefore several times the cost of an
elementwise prox; with a scalar step (Euclidean metric) the closed form is used.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from proxgen_jax.regularizers.base import Regularizer, as_float_array

#: Newton steps after the start ``ρ_0`` at most, per compute dtype (itemsize → steps). Measured on random groups
#: (sizes 2…512, ``a_i`` log-uniform over 1e-8…1e8 or bimodal at both ends, ``λ`` from 1e-12× to just below
#: the zero threshold), worst relative objective gap against a float64 bisection after k = 2, 3, 4, 5, 6
#: steps: float32 1.9e-4, 1.9e-5, 2.0e-7, 6.4e-8 (rounding), 6.4e-8; float64 2.7e-4, 2.7e-6, 2.5e-10, 6.0e-16,
#: 6.0e-16 (``python benchmarks/group_step_time.py --newton`` reruns the study, 3000 groups per case).
NEWTON_STEPS = {4: 4, 8: 6}

#: Relative radius tolerance of the early exit (itemsize → ε): Newton stops once ``ρ* − ρ ≤ ε·ρ`` is proved for
#: every group. ``x`` is then within ``ε‖x‖`` of the minimiser and the objective within ``~ε²`` relative.
RADIUS_TOL = {4: 2e-6, 8: 1e-12}

_WEIGHTINGS = ("one", "sqrt")

GroupAxes = int | Sequence[int] | None


def normalize_axes(group_axes: GroupAxes, ndim: int) -> tuple[int, ...]:
    """``group_axes`` as sorted non-negative axes of an ``ndim``-array; ``ValueError`` if they do not fit.

    ``None`` means every axis (the whole array is one group).
    """
    if group_axes is None:
        return tuple(range(ndim))
    axes = (group_axes,) if isinstance(group_axes, int) else tuple(group_axes)
    out = []
    for ax in axes:
        if not isinstance(ax, int) or isinstance(ax, bool):
            raise ValueError(f"`group_axes` must contain ints, got {group_axes!r}.")
        if not -ndim <= ax < ndim:
            raise ValueError(f"`group_axes`={group_axes!r} does not fit an array with ndim={ndim}.")
        out.append(ax % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"`group_axes`={group_axes!r} repeats an axis (ndim={ndim}).")
    return tuple(sorted(out))


def _sum(x, axes):
    return jnp.sum(x, axis=axes, keepdims=True)


@dataclasses.dataclass(frozen=True)
class GroupL12(Regularizer):
    r"""The group lasso penalty ``λ Σ_g w_g ‖θ_g‖₂`` (Yuan & Lin 2006), groups given by ``group_axes``.

    A group is the set of entries that share their indices on the *other* axes: for a Dense kernel
    ``(in, out)``, ``group_axes=(1,)`` makes one group per input feature (row) and ``(0,)`` one per output
    neuron; for a conv kernel ``(h, w, in, out)``, ``(0, 1, 2)`` makes one group per output filter. ``()``
    makes every entry its own group (ℓ1); ``None`` makes the whole array one group.

    ``prox(z, step, lam)`` solves ``argmin_x λ w_g ‖x_g‖ + Σ_i (x_i − z_i)²/(2 step_i)`` per group. With a
    scalar ``step`` (Euclidean metric) that is block soft thresholding,
    ``x_g = z_g · max(0, 1 − step·λw_g/‖z_g‖)``. With a per-coordinate ``step = α_t/(C_t+δ)`` there is no
    closed form: the group is zero iff ``‖z_g/step_g‖ ≤ λw_g`` and otherwise at most a few Newton steps on the
    radius ``ρ = ‖x_g‖`` solve it (on the CPU until ``ρ`` is certified within :data:`RADIUS_TOL`; module
    docstring). NaN in ``z`` or ``step`` gives NaN for the group.

    ``subgradient`` is ``λ w_g θ_g/‖θ_g‖``, and ``0`` (the minimal-norm element) on zero groups.

    Example:
      >>> import jax.numpy as jnp
      >>> from proxgen_jax.regularizers.group_l12 import GroupL12
      >>> reg = GroupL12(group_axes=(1,))           # one group per row
      >>> z = jnp.array([[3.0, 4.0], [0.3, 0.4]])
      >>> reg.prox(z, jnp.array([[1.0, 2.0], [1.0, 2.0]]), 1.0)  # second row: ‖z/step‖ ≤ 1 -> zero
      Array([[2.32..., 2.52...],
             [0.     , 0.     ]], dtype=float32)

    Args:
      group_axes: the axes one group spans (int, tuple of ints, negative allowed, or ``None`` for all).
      weighting: ``"one"`` (``w_g = 1``) or ``"sqrt"`` (``w_g = √|g|``, the group size — Yuan & Lin's choice,
        so that λ means the same for groups of different sizes).
      newton_steps: the most Newton steps after the start ``ρ_0``; ``None`` uses :data:`NEWTON_STEPS` for
        the dtype.

    References:
      Yuan & Lin, *Model selection and estimation in regression with grouped variables*, JRSS-B 2006.
      Moré & Sorensen, *Computing a trust region step*, SIAM J. Sci. Stat. Comput. 1983.
      Yun, Lozano & Yang, *Adaptive Proximal Gradient Methods for Structured Neural Networks*, NeurIPS 2021.
    """

    group_axes: GroupAxes = (1,)
    weighting: str = "one"
    newton_steps: int | None = None

    def __post_init__(self):
        axes = self.group_axes
        if axes is not None:
            axes = (axes,) if isinstance(axes, int) and not isinstance(axes, bool) else tuple(axes)
            if any(not isinstance(a, int) or isinstance(a, bool) for a in axes):
                raise ValueError(f"`group_axes` must be an int, a tuple of ints or None, got {self.group_axes!r}.")
            object.__setattr__(self, "group_axes", axes)
        if self.weighting not in _WEIGHTINGS:
            raise ValueError(f"`weighting` must be one of {_WEIGHTINGS}, got {self.weighting!r}.")
        if self.newton_steps is not None and (not isinstance(self.newton_steps, int) or self.newton_steps < 0):
            raise ValueError(f"`newton_steps` must be a non-negative int or None, got {self.newton_steps!r}.")

    # -- helpers ---------------------------------------------------------------------------------------
    def axes_for(self, x) -> tuple[int, ...]:
        """The normalised group axes for an array like ``x`` (``ValueError`` if they do not fit)."""
        return normalize_axes(self.group_axes, jnp.ndim(x))

    def group_weight(self, x) -> float:
        """``w_g`` for groups of an array shaped like ``x`` (a Python float)."""
        if self.weighting == "one":
            return 1.0
        shape = jnp.shape(x)
        return math.sqrt(math.prod(shape[a] for a in self.axes_for(x)))

    def group_norms(self, x) -> jax.Array:
        """``‖x_g‖₂`` per group, with the group axes kept as size-1 dimensions."""
        x = as_float_array(x)
        dt = jnp.promote_types(x.dtype, jnp.float32)
        x = x.astype(dt)
        return jnp.sqrt(_sum(x * x, self.axes_for(x)))

    # -- Regularizer API --------------------------------------------------------------------------------
    def value(self, x, lam) -> jax.Array:
        norms = self.group_norms(x)
        lam = jnp.asarray(lam, norms.dtype)
        return jnp.sum(lam * self.group_weight(x) * norms)

    def subgradient(self, x, lam) -> jax.Array:
        x = as_float_array(x)
        norms = self.group_norms(x)
        safe = jnp.where(norms == 0, jnp.ones_like(norms), norms)
        g = jnp.asarray(lam, norms.dtype) * self.group_weight(x) * x.astype(norms.dtype) / safe
        return jnp.where(norms == 0, jnp.zeros_like(g), g).astype(x.dtype)

    def prox(self, z, step, lam) -> jax.Array:
        z, out_dtype, axes, mu, step, steps = self.prox_setup(z, step, lam, NEWTON_STEPS)
        if step.ndim == 0:  # Euclidean metric: the closed form
            return _block_soft_threshold(z, step * mu, axes).astype(out_dtype)
        a = jnp.broadcast_to(step, z.shape)
        return _group_prox_diag(z, a, mu, axes, steps).astype(out_dtype)

    def prox_setup(self, z, step, lam, newton_table):
        """``(z, out_dtype, axes, μ = λw_g, step, newton_steps)``, all in the compute dtype (float32 or wider)."""
        z = as_float_array(z)
        out_dtype = z.dtype
        dt = jnp.promote_types(z.dtype, jnp.float32)
        z = z.astype(dt)
        mu = jnp.asarray(lam, dt) * jnp.asarray(self.group_weight(z), dt)  # λ w_g
        steps = newton_table[jnp.dtype(dt).itemsize] if self.newton_steps is None else self.newton_steps
        return z, out_dtype, self.axes_for(z), mu, jnp.asarray(step, dt), steps


def _block_soft_threshold(z, b, axes):
    """``z · max(0, 1 − b/‖z‖)`` per group, ``b`` constant on each group; zero iff ``‖z‖ ≤ b``."""
    norm = jnp.sqrt(_sum(z * z, axes))
    zero = norm <= b
    safe = jnp.where(zero, jnp.ones_like(norm), norm)
    return jnp.where(zero, jnp.zeros_like(z), z * ((safe - b) / safe))


def radius_error_bound(norm2_p, norm_z):
    """An upper bound on ``ρ* − ρ`` for ``ρ ≤ ρ*`` from ``‖p(ρ)‖²`` and ``‖z‖``: ``(1 − 1/‖p(ρ)‖)·‖z‖``.

    ``s(ρ) = 1/‖p(ρ)‖`` reaches 1 at the root and rises with slope ``≥ 1/‖z‖`` (module docstring), so it
    cannot take longer than ``(1 − s)·‖z‖`` to get there. Exact when all ``b_i`` are equal (``s`` is linear).
    """
    return (1 - jax.lax.rsqrt(norm2_p)) * norm_z


def _group_prox_diag(z, a, mu, axes, steps, *, adaptive=None):
    """``argmin_x μ‖x‖ + Σ_i (x_i − z_i)²/(2 a_i)`` per group, by Newton on ``1/‖p(ρ)‖ = 1``.

    ``a`` is the per-coordinate step, ``μ = λ w_g`` a scalar or per-group array, ``b_i = μ a_i``. At most
    ``steps`` Newton steps. ``adaptive`` (default: on XLA:CPU only) stops as soon as every group's radius is
    certified within :data:`RADIUS_TOL` (module docstring); otherwise all ``steps`` run, unrolled — on GPU a
    ``while`` loop would copy its predicate to the host every iteration.
    """
    zero = _zero_groups(z, a, mu, axes)
    rho = _radius(z, a, mu, axes, steps, adaptive)
    x = z * (rho / (rho + mu * a))
    return jnp.where(zero, jnp.zeros_like(z), x)


def _zero_groups(z, a, mu, axes):
    """The zero test ``‖z/(μa)‖ ≤ 1`` (⇔ ``‖z/a‖ ≤ λw``), per group.

    Overflow of ``z/(μa)`` errs towards "non-zero" and underflow towards "zero", both right whatever the scale
    of ``z`` and ``a``. NaN (NaN input, or 0/0 when λ = 0) fails the test and takes the Newton path, which
    returns NaN for NaN input and ``z`` itself for λ = 0.
    """
    return _sum(jnp.square(z / (mu * a)), axes) <= 1


@functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4, 5))
def _radius(z, a, mu, axes, steps, adaptive):
    """The radius ``ρ = ‖x*‖`` of each nonzero group (anything on zero groups), kept as ``keepdims`` sums.

    Differentiated implicitly (:func:`_radius_jvp`), not through the Newton steps: a ``while`` loop has no
    reverse-mode derivative, and the root's derivative is exact where the iterates' is not.
    """
    zero = _zero_groups(z, a, mu, axes)  # the same expression as the caller's: XLA computes it once
    nz2 = _sum(jnp.square(z), axes)
    nz = jnp.sqrt(nz2)
    abar = _sum(z * (a * z), axes) / jnp.where(nz2 > 0, nz2, jnp.ones_like(nz2))  # z²-weighted mean of a
    bbar = mu * abar  # Jensen: ρ ≥ ‖z‖ − b̄ (μ applied last: μ·Σ z²a alone may underflow)
    single = jnp.max(jnp.abs(z) - mu * a, axis=axes, keepdims=True)  # any one term: ρ ≥ |z_i| − b_i
    # ρ ≥ tiny keeps 1/(ρ + b_i) finite when b_i = 0 (λ = 0 or underflow); the true root is then ≥ |z_i|.
    rho = jnp.maximum(jnp.maximum(nz - bbar, single), jnp.finfo(z.dtype).tiny)
    hi = jnp.maximum(nz, rho)  # the root is ≤ ‖z‖ (max() only matters if ‖z‖² underflows)

    def norm2_p(rho):  # ‖p(ρ)‖² = Σ z_i²/(ρ + b_i)² (≥ 1 left of the root); |p_i| ≤ 1 as ρ ≥ |z_i| − b_i
        return _sum(jnp.square(z / (rho + mu * a)), axes)

    def newton(rho, s1=None):
        # Σ z_i²/(ρ + b_i)³ = −φ'(ρ)/2 > 0, as (z_i t_i^{-3/2})² ≤ 1/t_i: finite for any t_i ≥ tiny (a plain
        # z²·inv³ overflows below t ≈ 1e-13 in float32). Given ‖p‖² (the loop has it from its test), this
        # sum computes 1/(ρ + b_i) for itself: a shared one is materialised between reductions on XLA:CPU.
        inv = 1 / (rho + mu * a)
        if s1 is None:
            s1 = _sum(jnp.square(z * inv), axes)
        s2 = _sum(jnp.square(z * jnp.sqrt(inv) * inv), axes)
        delta = (jnp.sqrt(s1) - 1) * s1 / jnp.where(s2 > 0, s2, jnp.ones_like(s2))
        return jnp.minimum(jnp.maximum(rho + delta, rho), hi)  # monotone safeguard, and ρ ≤ ‖z‖

    def unrolled(rho):
        for _ in range(steps):
            rho = newton(rho)
        return rho

    def until_certified(rho):
        tol = RADIUS_TOL[jnp.dtype(z.dtype).itemsize]

        def uncertified(carry):
            rho, s1, k = carry
            open_ = ~(zero | (radius_error_bound(s1, nz) <= tol * rho))  # zero groups are done
            return (k < steps) & jnp.any(open_)

        def step(carry):
            rho, s1, k = carry
            rho = newton(rho, s1)
            return rho, norm2_p(rho), k + 1

        return jax.lax.while_loop(uncertified, step, (rho, norm2_p(rho), 0))[0]

    if steps:
        if adaptive is None:
            rho = jax.lax.platform_dependent(rho, cpu=until_certified, default=unrolled)
        else:
            rho = (until_certified if adaptive else unrolled)(rho)
    return rho


@_radius.defjvp
def _radius_jvp(axes, steps, adaptive, primals, tangents):
    """Implicit derivative of the root of ``F(ρ) = Σ_i z_i²/(ρ + μa_i)² − 1``: ``dρ = −dF/(∂F/∂ρ)``."""
    z, a, mu = primals
    dz, da, dmu = tangents
    rho = _radius(z, a, mu, axes, steps, adaptive)
    b = mu * a
    inv = 1 / (rho + b)
    p = z * inv
    db = dmu * a + mu * da
    # F = Σ p² − 1 with p_i = z_i/(ρ + b_i): ∂F/∂z_i = 2p_i/(ρ + b_i), ∂F/∂b_i = −2p_i²/(ρ + b_i), ∂F/∂ρ = Σ_i ∂F/∂b_i.
    slope = _sum(p * p * inv, axes)
    drho = (_sum(p * inv * dz, axes) - _sum(p * p * inv * db, axes)) / jnp.where(slope > 0, slope, 1)
    return rho, drho
