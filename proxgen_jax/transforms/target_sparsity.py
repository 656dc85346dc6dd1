"""A λ controller: the proximal step with ``λ_t`` chosen on-line to reach a target sparsity."""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple, Union

import chex
import jax
import jax.numpy as jnp
import optax

from proxgen_jax._validation import check_in_range, check_nonnegative, check_positive, concrete_float
from proxgen_jax.preconditioners.direction import split_updates
from proxgen_jax.regularizers.base import Regularizer
from proxgen_jax.transforms.masks import MaskOrFn, first_mismatch
from proxgen_jax.transforms.proximal_step import RegularizerOrFn, leaf_step, resolve_regularizers

# Density floor inside log(1 − s): keeps the error finite at s = 1 (0.1 % of the weights).
_DENSITY_FLOOR = 1e-3


class TargetSparsityState(NamedTuple):
    """State of :func:`target_sparsity`; every field is logged per step.

    Fields are scalars (``per_leaf=False``) or vectors with one entry per regularised leaf, in the order of
    ``jax.tree.leaves(params)`` (``per_leaf=True``).

    Attributes:
      count: steps taken ``t`` (int32 scalar).
      log_lam: ``log λ_t``, the log of the weight used at the last step.
      integral: the controller's integral term ``I_t`` (log units).
      sparsity: the sparsity measured after the last step (fraction of zero weights / zero groups).
      target: the ramped target ``s_t`` used at the last step (scalar).
      peak_excess: ``max_t (s_t' − s*)`` over the steps after the target was first reached, in fraction
        units — the worst overshoot so far (``-inf`` before the target is reached).
    """

    count: chex.Array
    log_lam: chex.Array
    integral: chex.Array
    sparsity: chex.Array
    target: chex.Array
    peak_excess: chex.Array


ScalarOrSchedule = Union[float, Callable[[Any], Any]]


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


def _register_group_l12() -> None:
    """Counts zero groups for :class:`~proxgen_jax.regularizers.group_l12.GroupL12` when it is installed."""
    try:
        from proxgen_jax.regularizers.group_l12 import GroupL12
    except ImportError:  # the group regularizer is optional
        return

    @sparsity_of.register(GroupL12)
    def _group_sparsity(regularizer, leaf):
        leaf = jnp.asarray(leaf)
        axes = _group_axes(regularizer, leaf.ndim)
        if not axes:
            return jnp.mean(leaf == 0, dtype=jnp.float32)
        return jnp.mean(jnp.all(leaf == 0, axis=axes), dtype=jnp.float32)


def _group_axes(regularizer, ndim: int) -> tuple[int, ...]:
    """The axes reduced inside one group (``group_axes`` of the regularizer), normalised to ``0..ndim-1``."""
    axes = getattr(regularizer, "group_axes", None)
    if axes is None:
        return tuple(range(ndim))
    if isinstance(axes, int):
        axes = (axes,)
    return tuple(sorted({int(a) % ndim for a in axes})) if ndim else ()


_register_group_l12()


# --------------------------------------------------------------------------------------------- ramp
def sparsity_ramp(target: float, ramp_steps: int, *, begin: int = 0, shape: str = "cubic") -> Callable:
    """The target schedule ``s_t``: 0 until ``begin``, then ``s*`` reached at ``begin + ramp_steps``.

    ``shape="cubic"`` is Zhu & Gupta's gradual-pruning ramp ``s_t = s*(1 − (1 − u)³)``, ``u = (t − t₀)/T``,
    fast at first and flat at the end (the controller settles on a slowly moving target); ``"linear"`` is
    ``s_t = s*·u``.
    """
    if shape not in ("cubic", "linear"):
        raise ValueError(f"`ramp_shape` must be 'cubic' or 'linear', got {shape!r}.")
    target = float(target)
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
    gain_p: float = 0.5,
    gain_i: float = 0.02,
    down_factor: float = 4.0,
) -> optax.GradientTransformation:
    r"""The proximal step with ``λ_t`` set by a PI controller so that the weights reach a target sparsity.

    Users think in "90 % of the weights are zero", not in ``λ``. This transformation replaces the prox link
    of a ProxGen chain (``proximal_step``/``prox_*``) and applies, at every step,

    .. math::  θ_{t+1} = \operatorname{prox}^{C_t+δI}_{α_t λ_t R}(θ_t − α_t (C_t+δI)^{-1} m_t),

    with ``λ_t`` chosen from the sparsity ``s_t`` measured right after the previous step (exact zeros, or
    zero groups for group penalties, see :func:`sparsity_of`) and a target ``s̄_t`` that ramps from 0 to
    ``s*`` over ``ramp_steps`` (:func:`sparsity_ramp`). The error is measured on the log *density*,

    .. math::  e_t = \log(1 − s_t) − \log(1 − \bar s_t)\quad(> 0:\ \text{too dense}),

    so one point of sparsity weighs more at 95 % than at 50 %, and ``log λ`` follows a PI law with
    asymmetric integral gain and clamping (anti-windup):

    .. math::  I_t = \operatorname{clip}(I_{t−1} + k_i\,κ(e_t)\,e_t),\quad
               \log λ_t = \log λ_{init} + I_t + k_p e_t,\quad κ(e) = 1 \text{ if } e>0 \text{ else } κ_{down}.

    Lowering ``λ`` faster than raising it (``κ_down > 1``) catches the delayed cascade of weights that a
    nonconvex prox (ℓ0, ℓq, MCP, SCAD) pushes to zero after ``λ`` has stopped rising. Everything runs
    inside the jitted step (no host sync, no recompilation; ``λ_t`` is a traced scalar).

    ``λ_t`` and the sparsity are in the state: ``optax.tree_utils.tree_get(opt_state, "log_lam")``, or
    :func:`target_sparsity_info` for ``{"lam", "sparsity", "target", "count", "peak_excess"}``.

    Example:
      >>> import optax, proxgen_jax as pg
      >>> from proxgen_jax.transforms.target_sparsity import target_sparsity, target_sparsity_info
      >>> tx = optax.chain(pg.scale_by_adam_precond(),
      ...                  target_sparsity(pg.regularizers.Lq(0.5), target=0.8, ramp_steps=500,
      ...                                  mask=pg.kernels_only))
      >>> # after training: target_sparsity_info(opt_state)["lam"], ...["sparsity"]

    Args:
      regularizer: a :class:`~proxgen_jax.regularizers.Regularizer` or a callable ``(path, leaf) ->
        Regularizer | None`` (as in :func:`~proxgen_jax.proximal_step`); must be one whose zero set grows
        with ``λ`` (ℓ0, ℓq, ℓ1, MCP, SCAD, group ℓ1,2 — not a quantisation penalty).
      target: the final sparsity ``s*`` in ``[0, 1)``, or an optax-style schedule ``t ↦ s̄_t`` (then the
        ramp arguments are ignored).
      ramp_steps: ``T``, steps over which the target ramps from 0 to ``s*`` (0: the full target at once).
      ramp_begin: first step of the ramp (dense training before it).
      ramp_shape: ``"cubic"`` (default) or ``"linear"``.
      learning_rate: ``α_t > 0``, a float or a schedule.
      lam_init: ``λ_0 > 0``, the weight before any feedback; the controller moves ``log λ`` from there.
      lam_min, lam_max: clamp of ``λ_t`` (and anti-windup bound of the integral term).
      per_leaf: one controller (one ``λ``) per regularised leaf, each leaf reaching ``s*``; otherwise one
        ``λ`` for all masked-in weights, whose overall sparsity reaches ``s*``.
      mask: which leaves to regularise and count (as in :func:`~proxgen_jax.proximal_step`).
      gain_p: ``k_p ≥ 0``, the proportional gain (log λ per unit of log-density error).
      gain_i: ``k_i > 0``, the integral gain per step.
      down_factor: ``κ_down ≥ 1``, how much faster the integral falls than it rises.

    Returns:
      An ``optax.GradientTransformation`` whose ``update`` requires ``params``; its state is a
      :class:`TargetSparsityState`.

    References:
      Yun, Lozano & Yang, *Adaptive Proximal Gradient Methods for Structured Neural Networks*, NeurIPS 2021.
      Zhu & Gupta, *To prune, or not to prune*, 2017 (the cubic sparsity ramp).
      Åström & Hägglund, *Advanced PID Control*, 2006 (integrator clamping against windup).
    """
    if callable(target):
        target_fn = target
    else:
        check_in_range("target", target, 0.0, 1.0, high_open=True)
        if concrete_float(ramp_steps) is None or int(ramp_steps) != ramp_steps or ramp_steps < 0:
            raise ValueError(f"`ramp_steps` must be a non-negative integer, got {ramp_steps!r}.")
        if int(ramp_begin) != ramp_begin or ramp_begin < 0:
            raise ValueError(f"`ramp_begin` must be a non-negative integer, got {ramp_begin!r}.")
        target_fn = sparsity_ramp(float(target), int(ramp_steps), begin=int(ramp_begin), shape=ramp_shape)
    check_positive("learning_rate", learning_rate)
    for name, value in (("lam_init", lam_init), ("lam_min", lam_min), ("lam_max", lam_max), ("gain_i", gain_i)):
        check_positive(name, value)
    check_nonnegative("gain_p", gain_p)
    check_in_range("down_factor", down_factor, 1.0, math.inf)
    if not float(lam_min) <= float(lam_init) <= float(lam_max):
        raise ValueError(f"`lam_init` must lie in [lam_min, lam_max] = [{lam_min}, {lam_max}], got {lam_init!r}.")
    if regularizer is None or not (isinstance(regularizer, Regularizer) or callable(regularizer)):
        raise ValueError(f"`regularizer` must be a proxgen_jax Regularizer or a callable, got {regularizer!r}.")

    log_init = math.log(float(lam_init))
    i_lo = math.log(float(lam_min)) - log_init
    i_hi = math.log(float(lam_max)) - log_init
    log_lo, log_hi = math.log(float(lam_min)), math.log(float(lam_max))

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

    def init_fn(params):
        regs = controlled(params)
        s0 = measure(jax.tree.leaves(params), regs)
        return TargetSparsityState(
            count=jnp.zeros([], jnp.int32),
            log_lam=jnp.full(s0.shape, log_init, jnp.float32),
            integral=jnp.zeros(s0.shape, jnp.float32),
            sparsity=s0,
            target=jnp.zeros([], jnp.float32),
            peak_excess=jnp.full(s0.shape, -jnp.inf, jnp.float32),
        )

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("target_sparsity needs the current parameters: call `update(updates, state, params)`.")
        direction, metric = split_updates(updates)
        where = first_mismatch(params, direction)
        if where is not None:
            raise ValueError(f"updates do not match the parameter tree at {where}.")
        regs = controlled(params)
        count = state.count
        alpha = learning_rate(count) if callable(learning_rate) else learning_rate
        goal = jnp.asarray(target_fn(count), jnp.float32)

        # PI law on log λ, error on the log density.
        err = (jnp.log(jnp.maximum(1.0 - state.sparsity, _DENSITY_FLOOR))
               - jnp.log(jnp.maximum(1.0 - goal, _DENSITY_FLOOR)))
        k_i = jnp.where(err > 0, gain_i, gain_i * down_factor)
        integral = jnp.clip(state.integral + k_i * err, i_lo, i_hi)
        log_lam = jnp.clip(log_init + integral + gain_p * err, log_lo, log_hi)
        lam = jnp.exp(log_lam)

        flat_p, treedef = jax.tree.flatten(params)
        flat_d = treedef.flatten_up_to(direction)
        flat_c = [None] * len(flat_p) if metric is None else treedef.flatten_up_to(metric)
        out, new_leaves, k = [], [], 0
        for p, d, c, reg in zip(flat_p, flat_d, flat_c, regs):
            lam_leaf = None
            if reg is not None:
                lam_leaf = lam[k] if per_leaf else lam
                k += 1
            u = leaf_step(reg, p, d, c, alpha, lam_leaf)
            out.append(u)
            # Exactly what optax.apply_updates will produce, so the measurement counts the real zeros.
            new_leaves.append(jnp.asarray(p + u).astype(jnp.asarray(p).dtype) if reg is not None else p)
        s_new = measure(new_leaves, regs)

        final = goal if callable(target) else jnp.asarray(target_fn(jnp.iinfo(jnp.int32).max), jnp.float32)
        reached = (state.peak_excess > -jnp.inf) | (s_new >= final)
        peak = jnp.where(reached, jnp.maximum(state.peak_excess, s_new - final), state.peak_excess)
        new_state = TargetSparsityState(
            count=optax.safe_increment(count),
            log_lam=log_lam,
            integral=integral,
            sparsity=s_new,
            target=goal,
            peak_excess=peak,
        )
        return jax.tree.unflatten(treedef, out), new_state

    return optax.GradientTransformation(init_fn, update_fn)


def _find_state(opt_state: Any) -> TargetSparsityState:
    found = []

    def visit(node):
        if isinstance(node, TargetSparsityState):
            found.append(node)
            return True
        return False

    jax.tree_util.tree_flatten(opt_state, is_leaf=visit)
    if not found:
        raise ValueError("no TargetSparsityState in this optimizer state (is target_sparsity in the chain?).")
    if len(found) > 1:
        raise ValueError(f"{len(found)} TargetSparsityStates in this optimizer state; pass one of them.")
    return found[0]


def target_sparsity_info(opt_state: Any) -> dict[str, jax.Array]:
    """``λ_t``, the measured sparsity, the ramped target, the step and the worst overshoot, for logging.

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
        "peak_excess": st.peak_excess,
    }
