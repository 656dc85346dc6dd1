r"""Quantisation prox links: fixed levels, or levels ``s·L`` with a scale learned in the metric at every step.

With ``scale="channel"`` (or ``"tensor"``) the step is

.. math:: s_t = \operatorname{argmin}_s \sum_i (C_t+δ)_i (z_i - s\,ℓ(z_i/s))^2,\qquad
          θ_{t+1} = \operatorname{prox}^{C_t+δI}_{α_t λ\,\operatorname{dist}(\cdot, s_t L)^q}(z),\quad
          z = θ_t - α_t (C_t+δI)^{-1} m_t,

the scale fitted in the preconditioner's metric (:mod:`proxgen_jax.solvers.scale_fit`) and the prox of the scaled
W-shape from the base one: ``x = s·prox_{dist(·,L)^q}(z/s; step α/c, weight λ s^{q−2})``. After a plain
``optax.scale_by_adam()`` the fit is ordinary least squares — torchao PARQ's rule — as a baseline.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from proxgen_jax._tree import MaskOrFn, path_str, resolve_mask
from proxgen_jax._validation import check_in_range
from proxgen_jax.regularizers.levels import uniform_levels
from proxgen_jax.regularizers.quantization import Quantization
from proxgen_jax.solvers.metric_operators import NOT_DIAGONAL, MetricOperator
from proxgen_jax.solvers.scale_fit import fit_scale, init_scale, scale_axes
from proxgen_jax.transforms.engine import prepare_step
from proxgen_jax.transforms.proximal_step import (
    check_step_args,
    decay_flags,
    hyperparams_at,
    proximal_step,
)

_SCALES = (None, "tensor", "channel")
LevelsOrFn = Any  # a sequence of levels, or a callable (path, leaf) -> levels | None


class LearnedScaleState(NamedTuple):
    """Step count and one scale per quantised leaf (per channel: the channel axis kept, the others of size 1)."""

    count: chex.Array
    scales: tuple


def _levels_for(levels: LevelsOrFn, path, leaf, q: float):
    """The sorted base levels for one leaf (``None``: not quantised); bad levels name the leaf's path."""
    got = levels(path, leaf) if callable(levels) else levels
    if got is None:
        return None
    try:
        return Quantization(tuple(got), q).levels
    except (TypeError, ValueError) as err:
        raise ValueError(f"`levels` for {path_str(path)}: {err}") from None


def prox_quantize(levels: LevelsOrFn, q: float = 1.0, lam: optax.ScalarOrSchedule = 1e-4,
                  learning_rate: optax.ScalarOrSchedule = 1e-3, *, scale: str | None = None, channel_axis: int = -1,
                  mask: MaskOrFn = None, weight_decay: optax.ScalarOrSchedule = 0.0,
                  weight_decay_mask: MaskOrFn = None) -> optax.GradientTransformation:
    r"""``λ·dist(θ, L)^q`` for a finite level set ``L``, the levels fixed or ``s·L`` with a scale learned in the metric.

    With ``scale=None`` this is :func:`~proxgen_jax.proximal_step` with ``Quantization(levels, q)``: the W-shaped
    prox in ``C_t+δI`` (revised ProxQuant, Table 2). With ``scale="tensor"`` or ``"channel"`` the levels are
    ``s·L``, one ``s ≥ 0`` per leaf or per slice along ``channel_axis``, refit at every step to the point the prox
    is taken at, ``z = θ_t − α_t (C_t+δI)^{-1} m_t``, in the same metric:

    .. math:: s_t = \operatorname{argmin}_{s} \sum_i (C_t+δ)_i\,(z_i - s\,ℓ_i)^2,\qquad
              θ_{t+1} = \operatorname{prox}^{C_t+δI}_{α_t λ\, \operatorname{dist}(\cdot,\, s_t L)^q}(z),

    exact for binary ``{−a, a}`` (``s = Σ c|z| / (aΣ c)``) and ternary ``{−a, 0, a}`` grids (a sorted scan), a
    few weighted Lloyd iterations from the previous scale for other grids (never increasing the weighted
    distance); see :mod:`proxgen_jax.solvers.scale_fit`. For ``q = 0`` and ``λ`` large enough every coordinate
    lands exactly on ``s_t·ℓ``: the joint minimiser over ``(θ, s)``; for other ``q`` the fit and the prox are one
    alternating step. The updates are nudged so that ``optax.apply_updates`` reproduces the landing bit for bit
    wherever a float update can (always once ``θ_t`` is near its level; a first step from far away can miss by an
    ulp of ``s_t·ℓ − θ_t``). After a plain ``optax.scale_by_adam()`` (no metric) the fit is ordinary least squares and
    the prox Euclidean — torchao PARQ's rule, kept as the baseline. Leaves with fewer than two axes get one scale
    per tensor under ``"channel"``. The state holds a step count and the scales
    (:class:`LearnedScaleState`; read them with :func:`learned_scales`, snap with
    ``pg.quantize(params, levels, scales=...)``); the first scales are fitted to the initial weights
    (:func:`~proxgen_jax.solvers.scale_fit.init_scale`).

    Example:
      >>> import optax, proxgen_jax as pg
      >>> tx = optax.chain(pg.scale_by_adam_precond(),
      ...                  pg.prox_quantize(pg.uniform_levels(2), q=0.5, lam=1e-3, learning_rate=1e-3,
      ...                                   scale="channel", mask=pg.kernels_only))

    Args:
      levels: the base levels ``L`` (e.g. :func:`~proxgen_jax.uniform_levels`, ``pg.TERNARY_LEVELS``), or a
        per-leaf callable ``(path, leaf) -> levels | None`` — bit widths per leaf, e.g.
        ``lambda path, x: pg.uniform_levels(4 if x.shape[0] == 64 else 2)``; ``None`` leaves are not quantised.
      q: the exponent in ``[0, 1]``.
      lam: ``λ ≥ 0``, float or schedule.
      learning_rate: ``α_t > 0``, float or schedule.
      scale: ``None`` (levels as given), ``"tensor"`` or ``"channel"`` (learned scales, see above).
      channel_axis: the output-channel axis for ``scale="channel"`` (``-1``: the last axis of Flax kernels).
      mask: which leaves to quantise (``None``: all; a pytree of bools; a callable such as ``pg.kernels_only``).
      weight_decay, weight_decay_mask: decoupled weight decay ``θ ← θ(1 − α_t·wd)`` before the prox, as in
        :func:`~proxgen_jax.proximal_step`.

    Returns:
      An ``optax.GradientTransformation`` whose ``update`` requires ``params``.

    References:
      Bai, Wang & Liberty, "ProxQuant: Quantized Neural Networks via Proximal Operators", ICLR 2019.
      Yun, Lozano & Yang, "Adaptive Proximal Gradient Methods for Structured Neural Networks", NeurIPS 2021.
      Jin et al., "PARQ: Piecewise-Affine Regularized Quantization" (torchao ``prototype/parq``), 2025.
    """
    check_in_range("q", q, 0.0, 1.0)
    if scale not in _SCALES:
        raise ValueError(f"`scale` must be None, 'tensor' or 'channel', got {scale!r}.")
    if scale is not None and (not isinstance(channel_axis, int) or isinstance(channel_axis, bool)):
        raise ValueError(f"`channel_axis` must be an int, got {channel_axis!r}.")  # noqa: TRY004  (house rule)
    if not callable(levels):
        Quantization(tuple(levels), q)  # validates the levels
    if scale is None:
        regularizer = (lambda path, leaf: None if (lv := _levels_for(levels, path, leaf, q)) is None
                       else Quantization(lv, q)) if callable(levels) else Quantization(tuple(levels), q)
        return proximal_step(regularizer, lam, learning_rate, mask=mask, weight_decay=weight_decay,
                             weight_decay_mask=weight_decay_mask)
    check_step_args(lam, learning_rate, weight_decay)

    def specs(params) -> list:
        flags = resolve_mask(mask, params)
        out = []
        for (path, leaf), on in zip(jax.tree_util.tree_flatten_with_path(params)[0], flags):
            lv = _levels_for(levels, path, leaf, q) if on else None
            if lv is None:
                out.append(None)
                continue
            if max(abs(v) for v in lv) == 0:
                raise ValueError(f"`levels` for {path_str(path)} are all zero; a scale needs a nonzero level.")
            nd = jnp.ndim(leaf)
            if scale == "channel" and nd >= 2 and not -nd <= channel_axis < nd:
                raise ValueError(f"`channel_axis`={channel_axis} does not fit the leaf at {path_str(path)}.")
            axes = scale_axes(nd, scale, channel_axis)
            out.append((lv, axes))
        return out

    def init_fn(params):
        decay_flags(weight_decay_mask, params)
        scales = []
        for leaf, spec in zip(jax.tree.leaves(params), specs(params)):
            if spec is None:
                scales.append(None)
                continue
            lv, axes = spec
            x = jnp.asarray(leaf)
            scales.append(init_scale(x.astype(jnp.promote_types(x.dtype, jnp.float32)), lv, axes))
        return LearnedScaleState(jnp.zeros([], jnp.int32), tuple(scales))

    def update_fn(updates, state, params=None):
        hp = hyperparams_at(state.count, learning_rate, lam, weight_decay)
        step = prepare_step("prox_quantize", updates, params, specs(params) if params is not None else [],
                            hp.learning_rate, weight_decay=hp.weight_decay,
                            decay_flags=decay_flags(weight_decay_mask, params))
        xs, scales = [], []
        for leaf, s_prev in zip(step.leaves, state.scales):
            if leaf.spec is None:
                xs.append(None)
                scales.append(s_prev)
                continue
            if isinstance(leaf.metric, MetricOperator):
                raise TypeError(NOT_DIAGONAL.format(name=type(leaf.metric).__name__))
            lv, axes = leaf.spec
            z = leaf.centre()
            c = jnp.ones([], z.dtype) if leaf.metric is None else leaf.metric
            s = fit_scale(z, c, s_prev.astype(z.dtype), lv, axes)
            xs.append(scaled_prox(Quantization(lv, q), z, leaf.alpha / c, jnp.asarray(hp.lam, z.dtype), s, q))
            scales.append(s.astype(s_prev.dtype))
        return step.landing_updates(xs), LearnedScaleState(optax.safe_increment(state.count), tuple(scales))

    return optax.GradientTransformation(init_fn, update_fn)


def scaled_prox(base: Quantization, z, step, lam, s, q: float):
    r"""``argmin_x λ·dist(x, sL)^q + (x − z)²/(2·step)`` from the base prox: with ``x = s·y`` the problem is
    ``s²[(y − z/s)²/(2·step) + λ s^{q−2} dist(y, L)^q]``, so ``x = s·prox_{dist(·,L)^q}(z/s; step, λ s^{q−2})``.
    A zero scale (an all-zero channel) leaves ``z`` unchanged."""
    pos = s > 0
    s_safe = jnp.where(pos, s, jnp.ones_like(s))
    y = base.prox(z / s_safe, step, lam * s_safe ** (q - 2.0))
    return jnp.where(pos, s_safe * y, z)


def learned_scales(opt_state: Any) -> tuple:
    """The scales of the (single) :class:`LearnedScaleState` in an optimizer state, one entry per param leaf."""
    found = optax.tree_utils.tree_get_all_with_path(opt_state, "LearnedScaleState")
    if len(found) != 1:
        raise ValueError(f"expected one LearnedScaleState in the optimizer state, found {len(found)}.")
    return found[0][1].scales


__all__ = ["LearnedScaleState", "learned_scales", "prox_quantize", "scaled_prox", "uniform_levels"]
