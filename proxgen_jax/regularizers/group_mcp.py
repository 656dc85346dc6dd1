r"""Group MCP: ``R(θ) = Σ_g P_{λw_g,γ}(‖θ_g‖₂)`` — non-convex group sparsity, prox in a diagonal metric.

``P_{μ,γ}`` is Zhang's minimax concave penalty applied to the group norm (Huang, Breheny & Ma 2012):
``P(ρ) = μρ − ρ²/(2γ)`` for ``ρ ≤ γμ`` and ``γμ²/2`` beyond, with ``μ = λ w_g``. ProxGen's step with the
diagonal metric ``C_t + δI`` needs, per group,

.. math:: x^\star = \operatorname{argmin}_x\; P(‖x‖_2) + \sum_i \frac{(x_i - z_i)^2}{2 a_i},
          \qquad a_i = α_t / (C_{t,i} + δ).

**Candidates.** The objective is coercive, so a global minimiser exists; where ``x ≠ 0`` it is
differentiable, so ``x^⋆`` is ``0`` or a stationary point. A stationary ``x ≠ 0`` with ``ρ = ‖x‖`` has
``x_i = z_i ρ/(ρ + P'(ρ) a_i)``: for ``ρ ≥ γμ`` that is ``x = z`` (valid iff ``‖z‖ ≥ γμ``); for
``ρ ∈ (0, γμ)`` it is ``x_i = z_i ρ/t_i(ρ)`` with ``t_i(ρ) = ρ(1 − a_i/γ) + μ a_i > 0`` and ``ρ`` a root of
``h(ρ) = Σ_i z_i²/t_i(ρ)² = 1``. ``h`` is convex, so there are at most two roots. Let ``φ(ρ)`` be the least
objective on the sphere ``‖x‖ = ρ``: for ``ρ < ‖z‖`` it is attained at the trust-region point
``x(ν) = z/(1 + aν)`` with ``‖x(ν)‖ = ρ``, ``ν > 0``, and ``φ'(ρ) = P'(ρ) − νρ``, which is negative where
``h(ρ) > 1`` and positive where ``h(ρ) < 1``. So the smaller root ``ρ_L`` (where ``h`` falls through 1) is a
local minimum of ``φ`` and the larger one a local maximum, never the prox. The candidates are
therefore ``0``, ``z`` and the interior local minimum ``x_L`` (when ``h(0) = ‖z/(μa)‖² > 1``), and the prox is
the one with the lowest objective. When every ``a_i < γ`` the problem is convex and the choice is structural:
``0`` iff ``‖z/(μa)‖ ≤ 1``, else ``x_L`` if it exists, else ``z``.

**The interior root.** Substitute ``τ = γμρ/(γμ − ρ) ∈ (0, ∞)`` (so ``ρ = τ/(1 + τ/(γμ))``). Then
``x_i = z_i τ/(τ + μ a_i)`` and the root condition reads

.. math:: G(τ) = S(τ) - 1 - \frac{τ}{γμ} = 0,\qquad S(τ) = 1/\bigl\|z/(τ + μa)\bigr\|_2,

where ``S`` is the concave, increasing secular function of the group-lasso prox (Moré & Sorensen; see
:mod:`~proxgen_jax.regularizers.group_l12`, which is the case ``γ = ∞``). ``G`` is concave, so Newton's
method started left of the smallest root increases monotonically to it, and if the slope ``G'`` is not
positive at a point where ``G < 0`` there is no root to its right. The start is the largest of the lower bounds

.. math:: τ_0 = \max\Bigl(\frac{‖z‖ - μ\bar a}{1 - ‖z‖/(γμ)},\;
          \max_i \frac{|z_i| - μ a_i}{1 - |z_i|/(γμ)},\; \text{tiny}\Bigr),\qquad
          \bar a = \sum_i z_i^2 a_i/‖z‖^2,

from ``S(τ) ≤ (τ + μ\bar a)/‖z‖`` (Jensen) and ``S(τ) ≤ (τ + μa_i)/|z_i|``; a bound whose denominator is not
positive while its numerator is proves that ``G < 0`` everywhere (no interior candidate). With equal ``a_i``
(a scalar step) ``S`` is linear and ``τ_0`` is the root. A fixed number of safeguarded Newton steps follows
(:data:`NEWTON_STEPS`), vectorised over all groups: no host sync, jit/vmap/shard friendly.

**Scale.** Each group is divided by ``m = max_i |z_i|`` first (``μ`` with it; ``a`` and ``γ`` are
unchanged), so the objectives compared are those of a problem with ``|z_i| ≤ 1``, and nothing overflows or
underflows for ``a_i`` over 16 decades whatever the scale of ``z`` (tested from ``‖z‖ ≈ 1e-15`` to ``1e15`` in
float32). ``x_L`` is formed as ``z − z·μa/(τ + μa)`` where ``μa_i < τ`` and as ``z·τ/(τ + μa)`` elsewhere, each
coordinate to a relative rounding error, so coordinates with tiny ``a_i`` keep ``z_i`` exactly.

**Ties** (equal objective in the compute dtype, e.g. exactly on the hard threshold) go to the candidate with
the larger norm: ``z``, then ``x_L``, then ``0`` — as :class:`~proxgen_jax.regularizers.mcp.MCP` keeps
``z`` at its hard threshold. The zero condition ``‖z/(μa)‖ ≤ 1`` of the convex case includes equality.

Cost: about twice :class:`~proxgen_jax.regularizers.group_l12.GroupL12`'s metric prox (six Newton steps
against four in float32, and more set-up reductions: on a 2-core CPU, 2048 groups of 512 in float32 take 17 ms
against 8.6 ms, and 0.7 ms for the elementwise MCP); with a scalar step (Euclidean metric) the closed form is
used.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from proxgen_jax._validation import check_positive
from proxgen_jax.regularizers.base import Regularizer, as_float_array
from proxgen_jax.regularizers.group_l12 import GroupAxes, GroupL12, _sum

#: Newton steps after the start ``τ_0``, per compute dtype (itemsize → steps). Measured on random groups (sizes
#: 1…300, ``a_i`` log-uniform over 1e-8…1e8, ``γ`` from below to above all ``a_i``, ``λ`` near each threshold
#: or off them, plus groups with ``‖z‖ ≈ γλw`` to 1e-12, the slowest case), worst relative objective gap against
#: the float64 reference of ``tests/test_group_mcp.py`` after k = 4, 5, 6, 7, 8, 10 steps: float32 1.5e-5,
#: 4.4e-6, 3.2e-7, 6.4e-8 (rounding); float64 1.5e-5, 4.4e-6, 3.2e-7, 4.4e-8, 8.3e-10, 6.4e-16.
NEWTON_STEPS = {4: 6, 8: 10}


@dataclasses.dataclass(frozen=True)
class GroupMCP(Regularizer):
    r"""Group MCP ``Σ_g P_{λw_g,γ}(‖θ_g‖₂)`` (Huang, Breheny & Ma 2012), groups given by ``group_axes``.

    ``P_{μ,γ}(ρ) = μρ − ρ²/(2γ)`` for ``ρ ≤ γμ`` and ``γμ²/2`` beyond (Zhang's MCP, with ``μ = λ w_g``): the
    penalty of a group grows like the group lasso's near zero and stops growing at ``‖θ_g‖ = γλw_g``, so large
    groups are not shrunk (less bias than :class:`~proxgen_jax.regularizers.group_l12.GroupL12`). As in
    :class:`~proxgen_jax.regularizers.mcp.MCP`, ``lam`` is MCP's own λ (it shapes the penalty).

    ``prox(z, step, lam)`` solves ``argmin_x P(‖x_g‖) + Σ_i (x_i − z_i)²/(2 step_i)`` per group, with ProxGen's
    per-coordinate ``step = α_t/(C_t+δ)``. The problem is convex when every ``step_i < γ`` and non-convex
    otherwise (with Adam ``step_i`` reaches ~1e8 where ``C_t ≈ 0``); the global minimiser is returned in both
    cases (module docstring). With a scalar ``step = a`` (Euclidean metric) it is the closed form

    * ``a < γ``: group firm thresholding, ``0`` if ``‖z‖ ≤ aλw``;
      ``z · γ/(γ − a) · (1 − aλw/‖z‖)`` if ``‖z‖ ≤ γλw``; ``z`` beyond;
    * ``a ≥ γ``: hard group thresholding, ``0`` if ``‖z‖ < λw√(aγ)``, else ``z`` (``z`` at the tie).

    NaN in ``z``, ``step`` or ``lam`` gives NaN for the group, never a silent zero.

    ``value`` is ``Σ_g P(‖θ_g‖)``; ``subgradient`` is the gradient ``max(λw_g − ‖θ_g‖/γ, 0) θ_g/‖θ_g‖`` where
    ``θ_g ≠ 0``, and ``0`` (the minimal-norm element) on zero groups.

    Example:
      >>> import jax.numpy as jnp
      >>> from proxgen_jax.regularizers.group_mcp import GroupMCP
      >>> reg = GroupMCP(gamma=3.0, group_axes=(1,))  # one group per row
      >>> z = jnp.array([[3.0, 4.0], [0.3, 0.4], [1.5, 2.0]])
      >>> reg.prox(z, 0.5, 1.0)  # ‖z‖ = 5 ≥ γλ: kept; 0.5 ≤ aλ: zero; 2.5: firm, × γ/(γ−a)·(1 − aλ/‖z‖)
      Array([[3.  , 4.  ],
             [0.  , 0.  ],
             [1.44, 1.92]], dtype=float32)

    Args:
      gamma: the concavity parameter ``γ > 0`` (``γ → ∞`` is the group lasso).
      group_axes: the axes one group spans (int, tuple of ints, negative allowed, or ``None`` for all); as
        :class:`~proxgen_jax.regularizers.group_l12.GroupL12`.
      weighting: ``"one"`` (``w_g = 1``) or ``"sqrt"`` (``w_g = √|g|``, the group size).
      newton_steps: Newton steps after the start ``τ_0``; ``None`` uses :data:`NEWTON_STEPS` for the dtype.

    References:
      Zhang, *Nearly unbiased variable selection under minimax concave penalty*, Ann. Statist. 2010.
      Huang, Breheny & Ma, *A selective review of group selection in high-dimensional models*, Statist. Sci.
      2012.
      Yun, Lozano & Yang, *Adaptive Proximal Gradient Methods for Structured Neural Networks*, NeurIPS 2021.
    """

    gamma: float = 3.0
    group_axes: GroupAxes = (1,)
    weighting: str = "one"
    newton_steps: int | None = None

    def __post_init__(self):
        check_positive("gamma", self.gamma)
        GroupL12.__post_init__(self)  # validates and normalises group_axes, weighting, newton_steps

    # The group bookkeeping is GroupL12's (same fields, same meaning).
    axes_for = GroupL12.axes_for
    group_weight = GroupL12.group_weight
    group_norms = GroupL12.group_norms
    prox_setup = GroupL12.prox_setup

    # -- Regularizer API --------------------------------------------------------------------------------
    def value(self, x, lam) -> jax.Array:
        norms = self.group_norms(x)
        mu = jnp.asarray(lam, norms.dtype) * self.group_weight(x)
        return jnp.sum(_mcp(norms, mu, self.gamma))

    def subgradient(self, x, lam) -> jax.Array:
        x = as_float_array(x)
        norms = self.group_norms(x)
        mu = jnp.asarray(lam, norms.dtype) * self.group_weight(x)
        safe = jnp.where(norms == 0, jnp.ones_like(norms), norms)
        g = jnp.maximum(mu - norms / self.gamma, 0) * x.astype(norms.dtype) / safe
        return jnp.where(norms == 0, jnp.zeros_like(g), g).astype(x.dtype)

    def prox(self, z, step, lam) -> jax.Array:
        z, out_dtype, axes, mu, step, steps = self.prox_setup(z, step, lam, NEWTON_STEPS)
        gamma = jnp.asarray(self.gamma, z.dtype)
        if step.ndim == 0:  # Euclidean metric: the closed form
            return _group_firm_threshold(z, step, mu, gamma, axes).astype(out_dtype)
        a = jnp.broadcast_to(step, z.shape)
        return _group_mcp_prox_diag(z, a, mu, gamma, axes, steps).astype(out_dtype)


def _mcp(rho, mu, gamma):
    """``P_{μ,γ}(ρ)`` for ``ρ ≥ 0``."""
    return jnp.where(rho <= gamma * mu, rho * (mu - rho / (2 * gamma)), gamma * mu * mu / 2)


@functools.partial(jax.jit, static_argnames=("axes",))
def _group_firm_threshold(z, a, mu, gamma, axes):
    """The Euclidean (scalar ``a``) group MCP prox: firm thresholding if ``a < γ``, hard thresholding else."""
    nz2 = _sum(z * z, axes)
    nz = jnp.sqrt(nz2)
    bad = jnp.isnan(nz2) | jnp.isnan(a) | jnp.isnan(mu)
    convex = a < gamma
    safe = jnp.where(nz > 0, nz, jnp.ones_like(nz))
    gap = jnp.where(convex, gamma - a, jnp.ones_like(a))
    # z·γ/(γ − a)·(1 − aμ/‖z‖) written as z·(1 − s), s = a(γμ − ‖z‖)/((γ − a)‖z‖) ∈ [0, 1] on the firm piece,
    # so that tiny steps return z exactly; the clip keeps cancellation from flipping the sign.
    shrink = jnp.clip(a * (gamma * mu - nz) / (gap * safe), 0, 1)
    firm = z - z * shrink
    zero = jnp.where(convex, nz <= a * mu, nz2 < mu * mu * (a * gamma))
    use_firm = convex & (nz <= gamma * mu)
    x = jnp.where(zero, jnp.zeros_like(z), jnp.where(use_firm, firm, z))
    return jnp.where(bad, jnp.full_like(z, jnp.nan), x)


# Jitted so that eager calls compile once per shape (inside an outer jit it is simply inlined).
@functools.partial(jax.jit, static_argnames=("axes", "steps"))
def _group_mcp_prox_diag(z, a, mu, gamma, axes, steps):
    """``argmin_x P_{μ,γ}(‖x‖) + Σ_i (x_i − z_i)²/(2 a_i)`` per group (module docstring for the maths).

    ``a`` is the per-coordinate step (shape of ``z``), ``μ = λ w_g`` and ``γ`` scalars or per-group arrays.
    """
    dt = z.dtype
    eps = jnp.finfo(dt).eps
    tiny = jnp.finfo(dt).tiny
    inf = jnp.asarray(jnp.inf, dt)
    bad = jnp.any(jnp.isnan(z) | jnp.isnan(a), axis=axes, keepdims=True) | jnp.isnan(mu)

    # Scale the group to max|z_i| = 1 (μ with it): the problem for (z/m, μ/m, a) has objective F/m².
    m = jnp.max(jnp.abs(z), axis=axes, keepdims=True)
    m = jnp.where(m > 0, m, jnp.ones_like(m))  # zero groups stay zero; NaN is flagged by `bad`
    zs = z / m
    mus = mu / m
    b = mus * a
    k = 1 / (gamma * mus)  # 1/(γμ) in the scaled problem
    azs = jnp.abs(zs)

    # h(0) = ‖z/(μa)‖² ≤ 1: no interior stationary point; in the convex case the prox is exactly 0.
    zero_firm = _sum(jnp.square(zs / b), axes) <= 1
    nz2 = _sum(zs * zs, axes)  # ≥ 1 unless the group is zero
    nz = jnp.sqrt(nz2)
    abar = _sum(zs * (a * zs), axes) / jnp.where(nz2 > 0, nz2, jnp.ones_like(nz2))
    amax = jnp.max(a, axis=axes, keepdims=True)
    convex = amax < gamma

    def lower_bound(num, den):
        # τ_L ≥ num/den if den > 0; no root at all if den ≤ 0 < num; nothing learnt if num ≤ 0.
        safe_den = jnp.where(den > 0, den, jnp.ones_like(den))
        return jnp.where(num > 0, jnp.where(den > 0, num / safe_den, inf), -inf)

    single = jnp.max(lower_bound(azs - b, 1 - k * azs), axis=axes, keepdims=True)
    jensen = lower_bound(nz - mus * abar, 1 - k * nz)
    tau0 = jnp.maximum(jnp.maximum(single, jensen), tiny)
    noroot = tau0 == inf
    # Beyond τ_cap, x(τ) = z·τ/(τ + μa) equals z to rounding (and z is a candidate): cap the iterates there.
    tau_cap = jnp.maximum(mus * amax, nz) / (eps * eps)
    tau = jnp.where(noroot, jnp.ones_like(tau0), jnp.minimum(tau0, tau_cap))
    for _ in range(steps):
        inv = 1 / (tau + b)
        s1 = _sum(jnp.square(zs * inv), axes)  # ‖z/(τ+b)‖², ≤ n since τ ≥ |z_i| − b_i
        s2 = _sum(jnp.square(zs * jnp.sqrt(inv) * inv), axes)  # Σ z²/(τ+b)³ = −(d/dτ ‖·‖²)/2
        r = jax.lax.rsqrt(s1)
        g = r - 1 - k * tau  # G(τ) < 0 left of the root
        dg = s2 * r * r * r - k  # G'(τ) = S'(τ) − 1/(γμ)
        delta = jnp.where(dg > 0, -g / jnp.where(dg > 0, dg, jnp.ones_like(dg)), jnp.zeros_like(dg))
        tau = jnp.minimum(jnp.maximum(tau + delta, tau), tau_cap)  # monotone safeguard, and the cap

    inv = 1 / (tau + b)
    # x_L = z τ/(τ + μa) to a relative ulp or two: as a correction to z where μa < τ (so that coordinates with
    # μa ≪ τ return z exactly: one ulp in x_i costs ulp²/(2a_i), which can exceed the whole objective when a_i is
    # tiny), and as the product where the shrinkage is strong (no spurious exact zeros).
    x_l = jnp.where(b < tau, z - z * (b * inv), z * (tau * inv))
    p2 = jnp.square(zs * inv)
    rho_l = tau * jnp.sqrt(_sum(p2, axes))  # ‖x_L‖ (scaled)
    # Objectives of the scaled problem: Σ (x − z)²/(2a) = (μ/2) Σ μa (z/(τ + μa))² along the curve.
    f_l = _mcp(rho_l, mus, gamma) + 0.5 * mus * _sum(b * p2, axes)
    f_0 = 0.5 * _sum(zs * zs / a, axes)
    f_z = _mcp(nz, mus, gamma)
    valid_l = ~zero_firm & ~noroot & ~jnp.isnan(f_l)
    # Convex case: 0 is the prox iff zero_firm; otherwise 0 is never the prox (and z only if no root).
    f_l = jnp.where(valid_l, f_l, inf)
    f_0 = jnp.where(convex & ~zero_firm, inf, f_0)
    f_z = jnp.where(convex & zero_firm, inf, f_z)
    take_z = f_z <= jnp.minimum(f_0, f_l)
    take_l = ~take_z & (f_l <= f_0)
    x = jnp.where(take_z, z, jnp.where(take_l, x_l, jnp.zeros_like(z)))
    return jnp.where(bad, jnp.full_like(z, jnp.nan), x)
