"""A λ controller: the proximal step with ``λ_t`` chosen on-line to reach a target sparsity."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax
from optax import tree_utils as otu

from proxgen_jax._tree import MaskOrFn, require_params
from proxgen_jax._validation import check_in_range, check_nonnegative, check_positive, concrete_float
from proxgen_jax.regularizers.base import Regularizer, RegularizerOrFn, resolve_regularizers
from proxgen_jax.transforms.engine import closed_form, prepare_step
from proxgen_jax.transforms.proximal_step import decay_flags, hyperparams_at

# Density floor inside log(1 − s): keeps the error finite at s = 1 (0.1 % of the weights).
_DENSITY_FLOOR = 1e-3


class TargetSparsityState(NamedTuple):
    """State of :func:`target_sparsity`; every field is logged per step.

    ``log_lam``, ``integral``, ``sparsity`` and ``peak_excess`` are scalars (``per_leaf=False``) or vectors
    with one entry per regularised leaf, in the order of ``jax.tree.leaves(params)`` (``per_leaf=True``).

    Attributes:
      count: steps taken ``t`` (int32 scalar).
      log_lam: ``log λ_t``, the log of the weight used at the last step.
      integral: the controller's integral term ``I_t`` (log units).
      sparsity: the sparsity measured after the last step (fraction of zero weights / zero groups).
      target: the ramped target ``s_t`` used at the last step (scalar).
      guard_steps: how many steps the guard has corrected ``λ_t`` (each costs ``guard_iters + 3`` trial proxes).
      peak_excess: ``max_t (s_t' − s*)`` over the steps after the target was first reached, in fraction
        units — the worst overshoot so far (``-inf`` before the target is reached).
    """

    count: chex.Array
    log_lam: chex.Array
    integral: chex.Array
    sparsity: chex.Array
    target: chex.Array
    guard_steps: chex.Array
    peak_excess: chex.Array


# --------------------------------------------------------------------------------------------- sparsity hook
@functools.singledispatch
def sparsity_of(regularizer: Regularizer, leaf: jax.Array) -> jax.Array:
    """The fraction of *units* of ``leaf`` that ``regularizer`` has removed (a float32 scalar).

    Elementwise regularizers count exactly-zero entries. A structured regularizer counts its own units —
    group regularizers count zero *groups* — by registering an overload::

        @sparsity_of.register(MyGroupRegularizer)
        def _(regularizer, leaf):
            return jnp.mean(jnp.all(leaf == 0, axis=regularizer.group_axes), dtype=jnp.float32)

    :func:`target_sparsity` feeds this measurement back to its controller. Over several leaves it averages
    the per-leaf fractions weighted by leaf size (the fraction of *weights* in removed units).
    """
    del regularizer
    return jnp.mean(jnp.asarray(leaf) == 0, dtype=jnp.float32)


def _register_groups() -> None:
    """Counts zero *groups* for the group regularizers (GroupL12, GroupMCP)."""
    from proxgen_jax.regularizers.group_l12 import GroupL12
    from proxgen_jax.regularizers.group_mcp import GroupMCP

    def group_sparsity(regularizer, leaf):
        leaf = jnp.asarray(leaf)
        return jnp.mean(jnp.all(leaf == 0, axis=regularizer.axes_for(leaf)), dtype=jnp.float32)

    sparsity_of.register(GroupL12, group_sparsity)
    sparsity_of.register(GroupMCP, group_sparsity)


_register_groups()


# --------------------------------------------------------------------------------------------- ramp
def sparsity_ramp(target: float, ramp_steps: int, *, begin: int = 0, shape: str = "cubic") -> Callable:
    """The target schedule ``s_t``: 0 until ``begin``, then ``s*`` reached at ``begin + ramp_steps``.

    ``shape="cubic"`` is Zhu & Gupta's gradual-pruning ramp ``s_t = s*(1 − (1 − u)³)``, ``u = (t − t₀)/T``,
    fast at first and flat at the end (the controller settles on a slowly moving target); ``"linear"`` is
    ``s_t = s*·u``.
    """
    if shape not in ("cubic", "linear"):
        raise ValueError(f"`ramp_shape` must be 'cubic' or 'linear', got {shape!r}.")
    check_in_range("target", target, 0.0, 1.0, high_open=True)
    if concrete_float(target) is not None:
        target = float(target)  # a tracer (vmap over targets, inject_hyperparams) stays traced
    ramp_steps = int(ramp_steps)
    begin = int(begin)

    def schedule(count):
        t = jnp.asarray(count, jnp.float32) - begin
        u = jnp.clip(t / max(ramp_steps, 1), 0.0, 1.0) if ramp_steps > 0 else (t >= 0).astype(jnp.float32)
        v = 1.0 - u
        frac = 1.0 - v * v * v if shape == "cubic" else u
        return target * frac

    return schedule


# --------------------------------------------------------------------------------------------- transform
def target_sparsity(
    regularizer: RegularizerOrFn,
    target: float | Callable = 0.9,
    *,
    ramp_steps: int = 1000,
    ramp_begin: int = 0,
    ramp_shape: str = "cubic",
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    lam_init: float = 1e-4,
    lam_min: float = 1e-12,
    lam_max: float = 1e4,
    per_leaf: bool = False,
    mask: MaskOrFn = None,
    gain_p: float = 1.0,
    gain_i: float = 0.05,
    down_factor: float = 4.0,
    margin: float | None = 0.005,
    track: str = "ramp",
    guard_iters: int = 16,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    weight_decay_mask: MaskOrFn = None,
) -> optax.GradientTransformation:
    r"""The proximal step with ``λ_t`` set by a PI controller so that the weights reach a target sparsity.

    Users think in "90 % of the weights are zero", not in ``λ``. This transformation replaces the prox link
    of a ProxGen chain (``proximal_step``/``prox_*``) and applies, at every step,

    .. math::  θ_{t+1} = \operatorname{prox}^{C_t+δI}_{α_t λ_t R}(θ_t − α_t (C_t+δI)^{-1} m_t),

    with ``λ_t`` chosen from the sparsity ``s_t`` measured right after the previous step (exact zeros, or
    zero groups for group penalties, see :func:`sparsity_of`) and a target ``s̄_t`` that ramps from 0 to
    ``s*`` over ``ramp_steps`` (:func:`sparsity_ramp`).

    **PI law.** The error is measured on the log *density* (one point of sparsity weighs more at 95 % than
    at 50 %), ``e_t = log(1 − s_t) − log(1 − s̄_t)`` (``> 0``: too dense), and

    .. math::  I_t = \operatorname{clip}(I_{t−1} + k_i\,κ(e_t)\,e_t),\qquad
               \log λ_t^{PI} = \log λ_0 + I_t + k_p e_t,\qquad κ(e) = 1\ (e>0),\ κ_{down}\ (e≤0).

    **Guard (measured-sparsity feedforward).** Sparsity lags ``λ``: weights shrink towards the threshold for
    many steps and a nonconvex prox (ℓ0, ℓq, MCP, SCAD) then zeroes them in a delayed cascade — the "slow,
    then overshoot" of plain feedback. But the prox is computed here, so the sparsity a step *will* produce is
    known before it is taken. If ``λ_t^{PI}`` would leave the sparsity above ``s̄_t + margin`` (or, see
    ``track``, below ``s̄_t − margin``), ``λ_t`` is replaced by the largest ``λ`` leaving at most ``s̄_t``
    zeros (the smallest leaving at least ``s̄_t``), found by bisection on ``log λ`` over
    ``[log λ_min, log λ^PI]`` (``[log λ^PI, log λ_max]``) with ``guard_iters`` trial proxes, only on those
    steps (``lax.cond``); the integral is then reset so that the PI output equals the ``λ_t`` used
    (back-calculation anti-windup). The zero set of every supported prox grows with ``λ``, so each step's
    sparsity stays ≤ ``s̄_t + margin`` — except for zeros that even ``λ_min`` keeps (e.g. weights whose
    gradient is exactly zero), which the guard cannot and does not try to undo; raising ``λ`` never pushes
    the sparsity past ``s̄_t + margin`` either (if the next zero jumps past it, the guard stops just below
    ``s̄_t``). Everything runs inside the jitted step (no host sync, no recompilation); the state counts the
    guarded steps (``guard_steps``). Under ``vmap`` the ``lax.cond`` becomes a select, so the trial proxes
    then run on every step.

    ``λ_t`` and the sparsity are in the state: ``optax.tree_utils.tree_get(opt_state, "log_lam")``, or
    :func:`target_sparsity_info` for ``{"lam", "sparsity", "target", "count", "guard_steps", "peak_excess"}``.

    Example:
      >>> import optax, proxgen_jax as pg
      >>> from proxgen_jax.transforms.target_sparsity import target_sparsity, target_sparsity_info
      >>> tx = optax.chain(pg.scale_by_adam_precond(),
      ...                  target_sparsity(pg.regularizers.Lq(0.5), target=0.8, ramp_steps=500,
      ...                                  mask=pg.kernels_only))
      >>> # in the train loop: target_sparsity_info(opt_state)["lam"], ...["sparsity"]

    Args:
      regularizer: a :class:`~proxgen_jax.regularizers.Regularizer` or a callable ``(path, leaf) ->
        Regularizer | None`` (as in :func:`~proxgen_jax.proximal_step`); one whose zero set grows with ``λ``
        (ℓ0, ℓq, ℓ1, MCP, SCAD, group ℓ1,2 — not a quantisation penalty).
      target: the final sparsity ``s*`` in ``[0, 1)``, or a schedule ``t ↦ s̄_t`` (then the ramp arguments
        are ignored).
      ramp_steps: ``T``, steps over which the target ramps from 0 to ``s*`` (0: the full target at once).
      ramp_begin: first step of the ramp (dense training before it).
      ramp_shape: ``"cubic"`` (default, Zhu & Gupta) or ``"linear"``.
      learning_rate: ``α_t > 0``, a float or a schedule.
      lam_init: ``λ_0 > 0``, the weight before any feedback; the controller moves ``log λ`` from there.
      lam_min, lam_max: clamp of ``λ_t`` (and bounds of the integral term).
      per_leaf: one controller (one ``λ``) per regularised leaf, each leaf reaching ``s*``; otherwise one
        ``λ`` for all masked-in weights, whose overall sparsity (zero weights ÷ weights) reaches ``s*``.
      mask: which leaves to regularise and count (as in :func:`~proxgen_jax.proximal_step`).
      gain_p: ``k_p ≥ 0``, the proportional gain (log λ per unit of log-density error).
      gain_i: ``k_i > 0``, the integral gain per step.
      down_factor: ``κ_down ≥ 1``, how much faster the integral falls than it rises.
      margin: half-width of the band around ``s̄_t`` outside which the guard corrects ``λ_t`` (fraction,
        ``≥ 0``); ``None`` disables the guard (pure PI).
      track: which side of the band is guarded: ``"ramp"`` (default) both sides at every step — the
        sparsity follows the ramp within ``±margin``; ``"hold"`` the upper side always and the lower side
        once ``s*`` has been reached; ``"ceiling"`` the upper side only (fewest trial proxes; the PI alone
        brings the sparsity up).
      guard_iters: bisection steps of the guard (resolution ``log(λ_max/λ_min) / 2**guard_iters`` in
        ``log λ``; each guarded step costs ``guard_iters + 3`` prox evaluations).
      weight_decay, weight_decay_mask: decoupled weight decay, as in :func:`~proxgen_jax.proximal_step`.

    Returns:
      An ``optax.GradientTransformation`` whose ``update`` requires ``params``; its state is a
      :class:`TargetSparsityState`.

    References:
      Yun, Lozano & Yang, *Adaptive Proximal Gradient Methods for Structured Neural Networks*, NeurIPS 2021.
      Zhu & Gupta, *To prune, or not to prune*, 2017 (the cubic sparsity ramp).
      Åström & Hägglund, *Advanced PID Control*, 2006 (integrator clamping and back-calculation).
    """
    if callable(target):
        target_fn = target
    else:
        check_in_range("target", target, 0.0, 1.0, high_open=True)
        if not isinstance(ramp_steps, int) or ramp_steps < 0:
            raise ValueError(f"`ramp_steps` must be a non-negative integer, got {ramp_steps!r}.")
        if not isinstance(ramp_begin, int) or ramp_begin < 0:
            raise ValueError(f"`ramp_begin` must be a non-negative integer, got {ramp_begin!r}.")
        target_fn = sparsity_ramp(target, ramp_steps, begin=ramp_begin, shape=ramp_shape)
    check_positive("learning_rate", learning_rate)
    check_nonnegative("weight_decay", weight_decay)
    for name, value in (("lam_init", lam_init), ("lam_min", lam_min), ("lam_max", lam_max)):
        check_positive(name, value)
        if concrete_float(value) is None:
            raise ValueError(f"`{name}` must be a concrete positive float, got {value!r}.")
    check_positive("gain_i", gain_i)
    check_nonnegative("gain_p", gain_p)
    check_in_range("down_factor", down_factor, 1.0, math.inf)
    if margin is not None:
        check_nonnegative("margin", margin)
    if track not in ("hold", "ramp", "ceiling"):
        raise ValueError(f"`track` must be 'hold', 'ramp' or 'ceiling', got {track!r}.")
    if not isinstance(guard_iters, int) or guard_iters < 1:
        raise ValueError(f"`guard_iters` must be a positive integer, got {guard_iters!r}.")
    if not float(lam_min) <= float(lam_init) <= float(lam_max):
        raise ValueError(f"`lam_init` must lie in [lam_min, lam_max] = [{lam_min}, {lam_max}], got {lam_init!r}.")
    if regularizer is None or not (isinstance(regularizer, Regularizer) or callable(regularizer)):
        raise ValueError(f"`regularizer` must be a proxgen_jax Regularizer or a callable, got {regularizer!r}.")

    log_init = math.log(float(lam_init))
    log_lo, log_hi = math.log(float(lam_min)), math.log(float(lam_max))
    i_lo, i_hi = log_lo - log_init, log_hi - log_init

    def controlled(params):
        regs = resolve_regularizers(regularizer, params, mask)
        if not any(r is not None for r in regs):
            raise ValueError("target_sparsity: no leaf is regularised (check `mask` and `regularizer`).")
        return regs

    def measure(leaves, regs):
        """Per-controller sparsity: one entry per regularised leaf, or their size-weighted mean."""
        fracs, sizes = [], []
        for leaf, reg in zip(leaves, regs):
            if reg is not None:
                fracs.append(sparsity_of(reg, leaf))
                sizes.append(jnp.size(leaf))
        fracs = jnp.stack(fracs)
        if per_leaf:
            return fracs
        w = jnp.asarray(sizes, jnp.float32)
        return jnp.sum(fracs * w) / jnp.sum(w)

    def log_density(s):
        return jnp.log(jnp.maximum(1.0 - s, _DENSITY_FLOOR))

    def init_fn(params):
        regs = controlled(params)
        decay_flags(weight_decay_mask, params)  # fail early, naming the path
        s0 = measure(jax.tree.leaves(params), regs)
        return TargetSparsityState(
            count=jnp.zeros([], jnp.int32),
            log_lam=jnp.full(s0.shape, log_init, jnp.float32),
            integral=jnp.zeros(s0.shape, jnp.float32),
            sparsity=s0,
            target=jnp.zeros([], jnp.float32),
            guard_steps=jnp.zeros([], jnp.int32),
            peak_excess=jnp.full(s0.shape, -jnp.inf, jnp.float32),
        )

    def update_fn(updates, state, params=None):
        require_params("target_sparsity", params)
        regs = controlled(params)
        count = state.count
        hp = hyperparams_at(count, learning_rate, 0.0, weight_decay)
        goal = jnp.asarray(target_fn(count), jnp.float32)

        # PI law on log λ, error on the log density.
        err = log_density(state.sparsity) - log_density(goal)
        k_i = jnp.where(err > 0, gain_i, gain_i * down_factor)
        integral = jnp.clip(state.integral + k_i * err, i_lo, i_hi)
        log_lam = jnp.clip(log_init + integral + gain_p * err, log_lo, log_hi)
        step = prepare_step("target_sparsity", updates, params, regs, hp.learning_rate,
                            weight_decay=hp.weight_decay, decay_flags=decay_flags(weight_decay_mask, params))

        def step_at(log_lam):
            """The solutions and the sparsity they produce for ``λ = exp(log_lam)``."""
            lam = jnp.exp(log_lam)
            xs, k = [], 0
            for leaf in step.leaves:
                if leaf.spec is None:
                    xs.append(None)
                    continue
                xs.append(closed_form(leaf, lam[k] if per_leaf else lam))
                k += 1
            # What optax.apply_updates will produce, so the measurement counts the real zeros.
            return xs, measure(step.new_params(xs), regs)

        out, s_new = step_at(log_lam)
        final = goal if callable(target) else jnp.asarray(target_fn(jnp.iinfo(jnp.int32).max), jnp.float32)
        if margin is not None:
            # Guard: keep the step's sparsity ≤ s̄_t + margin, and, once s* was reached, ≥ s̄_t − margin.
            ceiling, floor = goal + margin, goal - margin
            down = s_new > ceiling
            if track == "ramp":
                up = (s_new < floor) & ~down
            elif track == "hold":
                up = (state.peak_excess > -jnp.inf) & (s_new < floor) & ~down
            else:
                up = jnp.zeros_like(down)

            def guard(_):
                # Bisection on log λ over [log λ_min, log λ^PI] (down) or [log λ^PI, log λ_max] (up) back
                # to the ramped target itself (not the band's edge, so the next steps start centred): down
                # finds the largest λ leaving ≤ s̄_t zeros, up the smallest leaving ≥ s̄_t. Zeros that even
                # λ_min keeps (e.g. weights whose gradient is exactly zero) raise that level to the sparsity
                # at λ_min: the guard only refuses zeros that a smaller λ would avoid.
                lo = jnp.where(down, log_lo, log_lam)
                hi = jnp.where(up, log_hi, log_lam)
                cap = jnp.maximum(goal, jnp.where(down, step_at(lo)[1], 0.0))

                def body(_, bounds):
                    lo, hi = bounds
                    mid = 0.5 * (lo + hi)
                    s_mid = step_at(mid)[1]
                    to_hi = jnp.where(down, s_mid > cap, s_mid >= goal)
                    return jnp.where(to_hi, lo, mid), jnp.where(to_hi, mid, hi)

                lo, hi = jax.lax.fori_loop(0, guard_iters, body, (lo, hi))
                # Up: hi leaves ≥ s̄_t zeros; if whole groups / few weights make that jump past the band,
                # take lo (just below s̄_t) instead — the guard never pushes above s̄_t + margin itself.
                up_choice = jnp.where(step_at(hi)[1] <= ceiling, hi, lo)
                chosen = jnp.where(down, lo, jnp.where(up, up_choice, log_lam))
                out_g, s_g = step_at(chosen)
                return chosen, out_g, s_g

            fire = jnp.any(down | up)
            log_lam, out, s_new = jax.lax.cond(fire, guard, lambda _: (log_lam, out, s_new), None)
            guard_steps = state.guard_steps + fire.astype(jnp.int32)
            # Back-calculation anti-windup: the PI output equals the λ actually used.
            integral = jnp.clip(log_lam - log_init - gain_p * err, i_lo, i_hi)
        else:
            guard_steps = state.guard_steps

        reached = (state.peak_excess > -jnp.inf) | (s_new >= final)
        peak = jnp.where(reached, jnp.maximum(state.peak_excess, s_new - final), state.peak_excess)
        new_state = TargetSparsityState(
            count=optax.safe_increment(count),
            log_lam=log_lam,
            integral=integral,
            sparsity=s_new,
            target=goal,
            guard_steps=guard_steps,
            peak_excess=peak,
        )
        return step.updates(out), new_state

    return optax.GradientTransformation(init_fn, update_fn)


def _find_state(opt_state: Any) -> TargetSparsityState:
    if isinstance(opt_state, TargetSparsityState):
        return opt_state
    found = otu.tree_get_all_with_path(opt_state, "TargetSparsityState")
    if not found:
        raise ValueError("no TargetSparsityState in this optimizer state (is target_sparsity in the chain?).")
    if len(found) > 1:
        raise ValueError(f"{len(found)} TargetSparsityStates in this optimizer state; pass one of them.")
    return found[0][1]


def target_sparsity_info(opt_state: Any) -> dict[str, jax.Array]:
    """``λ_t``, the measured sparsity, the ramped target, the step, guard count and worst overshoot, for logging.

    Accepts the whole optimizer state (a chain, ``inject_hyperparams``, ``MultiSteps``... containing one
    :class:`TargetSparsityState`) or the state itself. Works under ``jit`` (values are JAX arrays), e.g. to
    return them from the train step for plotting.
    """
    st = _find_state(opt_state)
    return {
        "lam": jnp.exp(st.log_lam),
        "sparsity": st.sparsity,
        "target": st.target,
        "count": st.count,
        "guard_steps": st.guard_steps,
        "peak_excess": st.peak_excess,
    }
