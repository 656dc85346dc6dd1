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
a certificate from the sum every Newton step computes anyway. A Newton step from ``ρ`` to ``ρ⁺`` leaves the root
in ``[ρ⁺, ρ + (1 − s(ρ))‖z‖]``, so ``ρ⁺`` is certified by that bracket's width ``(1 − s)‖z‖ − (ρ⁺ − ρ)``
without another sum: the width is second order where the ``b_i`` of a group are nearly equal (zero when they
are equal). On the CPU every pass runs only while some group of the leaf is not yet certified within ``ε·ρ``
(:data:`RADIUS_TOL`): ``‖p(ρ_0)‖²`` first, then (in a ``cond``) Newton steps in a ``while`` loop; then ``x``
is within ``ε‖x‖`` of the minimiser and the objective within ``~ε²`` relative. The zero test and the one-term
bound are skipped (a ``cond``) on leaves where every group has ``‖z‖ − b̄ > κ‖z‖`` (:data:`JENSEN_MARGIN`):
such a group is nonzero (a zero group has ``‖z‖ ≤ b̄``) and its iterates keep ``|p_i| ≤ 1/κ``. In training,
where the metric varies smoothly within a group, the Jensen start is often certified at once (no Newton step)
or after one step; with ``a_i`` spread over 16 decades all the steps run. On other backends every pass runs,
the steps unrolled (a GPU ``cond`` or ``while`` would copy its predicate to the host).

Cost: every per-group sum is one more pass over the leaf, reading ``z`` and ``a`` (on XLA:CPU a fused
reduction): two for the Jensen start, two more where a zero test is needed, one to certify the start and two per
Newton step; the answer is one more elementwise pass. On XLA:CPU ``z`` and ``a`` are the only full-size
temporaries (``b = μa`` is formed inside each pass, see :func:`_own`): every array a ``cond`` or ``while``
reads, and every array two fused passes would share, is written out in full into a fresh allocation whose pages
fault in on every call, which costs more than a pass. With ProxGen's Adam step on a ResNet-34-shaped tree (one
group per output filter, 2-core CPU) the step costs 5–6× ``optax.adam``'s: about half of it the two temporaries,
half the four sums (``‖z‖``, ``b̄``, then one Newton step). With a scalar step (Euclidean metric) the closed form
is used.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from proxgen_jax.regularizers import _metric_forms
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

#: The Jensen start's margin ``κ``: a group with ``‖z‖ − b̄ > κ‖z‖`` is nonzero (by Jensen, a zero group has
#: ``‖z‖ ≤ b̄``) however the sums round, as long as the group has fewer than ``1/(16 ε_mach)`` entries, and its
#: Newton iterates keep ``|p_i| ≤ 1/κ``: a leaf where every group is so needs neither the zero test nor the
#: one-term bound (two passes fewer, decided at run time on XLA:CPU).
JENSEN_MARGIN = 0.125

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


@_metric_forms.metric_step.register(GroupL12)
def _metric_step(regularizer, theta, direction, momentum, metric, learning_rate, lam):
    """ProxGen's step ``prox^{C_t+δ}_{α_t λR}(θ_t − α_t d)`` with ``a = α_t/(C_t+δ)`` and ``z = θ_t − m_t·a``.

    Given ``m_t`` (Adam, RMSprop, AdaGrad) ``z`` is formed from ``a`` instead of the direction
    ``d = m_t/(C_t+δ)``: one division by ``C_t+δ`` per coordinate instead of two, and on XLA:CPU one full-size
    temporary fewer (every pass of the group prox reads ``z`` and ``a``).
    """
    a = learning_rate / jnp.asarray(metric)
    z = theta - learning_rate * direction if momentum is None else theta - momentum * a
    return regularizer.prox(z, a, lam)


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
    rho = _radius(z, a, mu, axes, steps, adaptive)  # 0 on zero groups
    mu, rho = _own(mu, rho)
    return jnp.where(rho == 0, jnp.zeros_like(z), z * (rho / (rho + mu * a)))


def _own(mu, per_group):
    """``μ`` as a value of its own for one pass (with that pass's per-group operand), so that the pass forms
    ``b = μa`` itself.

    The passes' ``μ·a`` are otherwise one expression, which XLA merges into a single full-size array shared by
    every pass: on XLA:CPU a temporary, written out in full (a fresh allocation whose pages fault in on every call)
    and read back by each pass. Tied to the pass's own per-group operand by an optimisation barrier, each ``μ``
    is a distinct runtime value and each pass keeps ``b`` in registers.
    """
    return jax.lax.optimization_barrier((mu, per_group))


def _norm2_p(z, a, mu, rho, axes):
    """``‖p(ρ)‖² = Σ_i z_i²/(ρ + b_i)²`` (≥ 1 left of the root): one pass over the group, one division."""
    mu, rho = _own(mu, rho)
    return _sum(jnp.square(z / (rho + mu * a)), axes)


def _slope_sum(z, a, mu, rho, axes):
    """``Σ_i z_i²/(ρ + b_i)³ = −φ'(ρ)/2`` with ``φ = ‖p‖²``, formed as ``p_i²/t_i`` (``t_i = ρ + b_i``).

    ``|p_i|`` is bounded at every iterate (by 1 once ``ρ ≥ max_i(|z_i| − b_i)``, by ``1/κ`` on the Jensen
    start), so each term is finite for any ``t_i ≥ tiny``, where a plain ``z²·t^{-3}`` overflows below
    ``t ≈ 1e-13`` in float32.
    """
    mu, rho = _own(mu, rho)
    t = rho + mu * a
    return _sum(jnp.square(z / t) / t, axes)


def _jensen_start(z, a, mu, axes):
    """``(‖z‖, ‖z‖ − b̄)`` per group, ``b̄ = μ Σ_i z_i² a_i/‖z‖²``: the Jensen lower bound on ``ρ*``.

    ``b̄`` is summed as ``μ·Σ (z_i/‖z‖)² a_i`` (weights ``≤ 1``, ``μ`` applied last), so it neither overflows
    nor underflows where ``z²``, ``a`` and ``μ`` are far apart in scale. Two passes: ``‖z‖`` first, then ``b̄``.
    """
    nz = jnp.sqrt(_sum(jnp.square(z), axes))
    inv_nz = 1 / jnp.where(nz > 0, nz, jnp.ones_like(nz))
    return nz, nz - mu * _sum(jnp.square(z * inv_nz) * a, axes)


def _zero_test_and_single(z, a, mu, axes):
    """``(zero, max_i(|z_i| − b_i))`` per group: the exact zero test ``‖z/b‖ ≤ 1`` and the one-term bound.

    Overflow of ``z/b`` errs towards "non-zero" and underflow towards "zero", both right whatever the scale
    of ``z`` and ``b = μa``. NaN (NaN input, or 0/0 when λ = 0) fails the test and takes the Newton path, which
    returns NaN for NaN input and ``z`` itself for λ = 0. Two passes over the group.
    """
    zero = _sum(jnp.square(z / (mu * a)), axes) <= 1
    mu, _ = _own(mu, zero)
    single = jnp.max(jnp.abs(z) - mu * a, axis=axes, keepdims=True)  # any one term: ρ* ≥ |z_i| − b_i
    return zero, single


def _start(single, rho_jensen, dtype):
    """``ρ_0 = max(‖z‖ − b̄, max_i(|z_i| − b_i), tiny)``; ``tiny`` keeps ``1/(ρ + b_i)`` finite when ``b_i = 0``.

    (``λ = 0`` or underflow; the true root is then ``≥ |z_i|``.) Zero groups are carried along, never used.
    """
    return jnp.maximum(jnp.maximum(rho_jensen, single), jnp.finfo(dtype).tiny)


def _newton_step(rho, s1, s2, norm_z, hi):
    """One safeguarded Newton step on ``s(ρ) = 1/‖p(ρ)‖ = 1`` and the width of the bracket it leaves.

    From ``s1 = ‖p(ρ)‖²`` and ``s2 = Σ z_i²/(ρ+b_i)³`` (so ``s' = s2·s1^{-3/2}``) the step is
    ``δ = (1 − s)/s' = (√s1 − 1)·s1/s2``. ``s`` is concave, so ``ρ + δ ≤ ρ*`` (monotone; the safeguard keeps
    ``ρ ≤ ρ_new ≤ hi = ‖z‖``); its slope is ``≥ 1/‖z‖``, so ``ρ* ≤ ρ + (1 − s)‖z‖``. The root is therefore in
    ``[ρ_new, ρ + (1 − s)‖z‖]``, of width ``(1 − s)‖z‖ − δ`` — second order where ``s`` is nearly linear
    (``b_i`` nearly equal on the group), zero when all ``b_i`` are equal: a certificate for ``ρ_new`` without
    another pass.
    """
    delta = (jnp.sqrt(s1) - 1) * s1 / jnp.where(s2 > 0, s2, jnp.ones_like(s2))
    rho_new = jnp.minimum(jnp.maximum(rho + delta, rho), hi)
    width = (rho - rho_new) + radius_error_bound(s1, norm_z)
    return rho_new, width


def _open(zero, width, rho, tol):
    """Groups not yet certified: nonzero and ``ρ* − ρ ≤ width ≤ ε·ρ`` not proved (NaN stays open)."""
    return ~(zero | (width <= tol * rho))


@functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4, 5))
def _radius(z, a, mu, axes, steps, adaptive):
    """The radius ``ρ = ‖x*‖`` of each group, ``0`` on zero groups, kept as ``keepdims`` sums.

    Every pass reads ``z`` and ``a`` and forms ``b = μa`` itself: on XLA:CPU a shared ``b`` (or any full-size
    array handed to a ``cond``/``while``) is a temporary written out in full, and fresh temporaries cost page
    faults on every call, more than a pass. Differentiated implicitly (:func:`_radius_jvp`), not through the
    Newton steps: a ``while`` loop has no reverse-mode derivative, and the root's derivative is exact where the
    iterates' is not.
    """
    if adaptive is None:
        return jax.lax.platform_dependent(z, a, mu, cpu=functools.partial(_radius_certified, axes=axes, steps=steps),
                                          default=functools.partial(_radius_unrolled, axes=axes, steps=steps))
    return (_radius_certified if adaptive else _radius_unrolled)(z, a, mu, axes=axes, steps=steps)


def _radius_unrolled(z, a, mu, *, axes, steps):
    """All passes, no control flow (off the CPU): setup, then ``steps`` Newton steps of two sums each."""
    nz, rho_j = _jensen_start(z, a, mu, axes)
    zero, single = _zero_test_and_single(z, a, mu, axes)
    rho = _start(single, rho_j, z.dtype)
    hi = jnp.maximum(nz, rho)  # the root is ≤ ‖z‖ (max() only matters if ‖z‖² underflows)
    for _ in range(steps):
        s2 = _slope_sum(z, a, mu, jax.lax.optimization_barrier(rho), axes)  # see _radius_certified
        rho = _newton_step(rho, _norm2_p(z, a, mu, rho, axes), s2, nz, hi)[0]
    return jnp.where(zero, jnp.zeros_like(rho), rho)


def _radius_certified(z, a, mu, *, axes, steps):
    """The early-exit solver (XLA:CPU): every pass but the first two runs only while it is still needed.

    1. ``‖z‖`` and ``b̄`` (two passes). Unless every group clears the Jensen margin (:data:`JENSEN_MARGIN`), the
       zero test and the one-term bound (two passes, in a ``cond``).
    2. ``‖p(ρ_0)‖²`` (one pass): groups with ``(1 − s)‖z‖ ≤ ε·ρ_0`` are done.
    3. If any is open (a ``cond``): Newton steps, each certified by its bracket width (:func:`_newton_step`): the
       first needs one more pass (its ``‖p‖²`` is step 2's), the others two, in a ``while`` loop that stops once
       every group is certified or after ``steps``.
    """
    dt = z.dtype
    tol = RADIUS_TOL[jnp.dtype(dt).itemsize]
    nz, rho_j = _jensen_start(z, a, mu, axes)
    group_size = math.prod(z.shape[ax] for ax in axes)
    if group_size * jnp.finfo(dt).eps * 16 < 1:
        clear = jnp.all(rho_j > JENSEN_MARGIN * nz)
        zero, single = jax.lax.cond(
            clear,
            lambda: (jnp.zeros(nz.shape, bool), jnp.full(nz.shape, -jnp.inf, dt)),
            lambda: _zero_test_and_single(z, a, mu, axes))
    else:
        zero, single = _zero_test_and_single(z, a, mu, axes)
    rho = _start(single, rho_j, dt)
    if not steps:
        return jnp.where(zero, jnp.zeros_like(rho), rho)
    hi = jnp.maximum(nz, rho)
    s1 = _norm2_p(z, a, mu, rho, axes)
    open_ = _open(zero, radius_error_bound(s1, nz), rho, tol)

    def newton(rho, s1, open_):
        # A ρ of its own: in the loop the two sums at the same ρ would otherwise share ρ + b (and z/(ρ + b)),
        # written out in full and read back by both (see _own).
        s2 = _slope_sum(z, a, mu, jax.lax.optimization_barrier(rho), axes)
        rho, width = _newton_step(rho, s1, s2, nz, hi)
        return rho, open_ & _open(zero, width, rho, tol)

    def more(carry):
        rho, open_, k = carry
        return (k < steps) & jnp.any(open_)

    def step(carry):
        rho, open_, k = carry
        return *newton(rho, _norm2_p(z, a, mu, rho, axes), open_), k + 1

    def refine():
        return jax.lax.while_loop(more, step, (*newton(rho, s1, open_), 1))[0]

    rho = jax.lax.cond(jnp.any(open_), refine, lambda: rho)
    return jnp.where(zero, jnp.zeros_like(rho), rho)


@_radius.defjvp
def _radius_jvp(axes, steps, adaptive, primals, tangents):
    """Implicit derivative of the root of ``F(ρ) = Σ_i z_i²/(ρ + b_i)² − 1``: ``dρ = −dF/(∂F/∂ρ)``; 0 on zero groups."""
    z, a, mu = primals
    dz, da, dmu = tangents
    rho = _radius(z, a, mu, axes, steps, adaptive)
    inv = 1 / (rho + mu * a)
    db = dmu * a + mu * da
    p = z * inv
    # F = Σ p² − 1 with p_i = z_i/(ρ + b_i): ∂F/∂z_i = 2p_i/(ρ + b_i), ∂F/∂b_i = −2p_i²/(ρ + b_i), ∂F/∂ρ = Σ_i ∂F/∂b_i.
    slope = _sum(p * p * inv, axes)
    drho = (_sum(p * inv * dz, axes) - _sum(p * p * inv * db, axes)) / jnp.where(slope > 0, slope, 1)
    return rho, jnp.where(rho == 0, jnp.zeros_like(drho), drho)
