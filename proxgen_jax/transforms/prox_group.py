r"""Group sparsity as optax transformations: group priors' proxes in the preconditioner's metric.

``optax.chain(scale_by_adam_precond(), prox_group_l12(lam, lr, group_axes=...))`` applies ProxGen's step
``θ_{t+1} = prox^{C_t+δI}_{α_t λ R}(θ_t − α_t (C_t+δI)^{-1} m_t)`` with ``R(θ) = Σ_g w_g ‖θ_g‖₂``: whole rows,
columns or filters become exactly zero. :func:`prox_group_mcp` does the same for the non-convex group MCP
``Σ_g P_{λw_g,γ}(‖θ_g‖₂)``. See :class:`~proxgen_jax.regularizers.group_l12.GroupL12` and
:class:`~proxgen_jax.regularizers.group_mcp.GroupMCP` for the maths and
:func:`~proxgen_jax.transforms.proximal_step.proximal_step` for the chain.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from proxgen_jax._tree import MaskOrFn
from proxgen_jax.regularizers.base import Regularizer
from proxgen_jax.regularizers.group_l12 import GroupL12, normalize_axes
from proxgen_jax.regularizers.group_mcp import GroupMCP
from proxgen_jax.transforms.proximal_step import proximal_step

GroupAxesOrFn = int | Sequence[int] | Callable[[Any, Any], Sequence[int] | None] | None


def output_unit_groups(path, leaf) -> tuple[int, ...] | None:
    """Group axes giving one group per output unit: every axis but the last.

    A Dense kernel ``(in, out)`` gets one group per output neuron (a column), a conv kernel ``(h, w, in, out)``
    one group per output filter; arrays with ``ndim < 2`` (biases, norm scales) are left unregularised.
    Pass it as ``group_axes=output_unit_groups`` to remove whole neurons and filters.
    """
    del path
    nd = jnp.ndim(leaf)
    return tuple(range(nd - 1)) if nd >= 2 else None


def input_feature_groups(path, leaf) -> tuple[int, ...] | None:
    """Group axes giving one group per input feature of a Dense kernel ``(in, out)``: axis 1 (a row).

    Leaves with ``ndim != 2`` are left unregularised. This is the group-sparse input layer of neural
    Granger causality (Tank et al. 2021) and of feature selection.
    """
    del path
    return (1,) if jnp.ndim(leaf) == 2 else None


def prox_group_l12(
    lam: optax.ScalarOrSchedule = 1e-4,
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    *,
    group_axes: GroupAxesOrFn = (1,),
    weighting: str = "one",
    mask: MaskOrFn = None,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    weight_decay_mask: MaskOrFn = None,
    newton_steps: int | None = None,
) -> optax.GradientTransformation:
    r"""Group lasso ``λ Σ_g w_g ‖θ_g‖₂`` by the exact preconditioned proximal step.

    Per group ``g`` and with ``a_i = α_t/(C_{t,i}+δ)``, ``z = θ_t − α_t(C_t+δI)^{-1} m_t``:

    .. math:: θ_{t+1,g} = \operatorname{argmin}_x\; λ w_g ‖x‖_2 + \sum_{i∈g} \frac{(x_i - z_i)^2}{2 a_i},

    exactly zero iff ``‖z_g/a_g‖₂ ≤ λ w_g``, otherwise ``x_i = z_i ρ/(ρ + λ w_g a_i)`` with the radius ``ρ``
    found by at most 4 (float32) or 6 (float64) monotone Newton steps (worst relative objective gap measured
    2e-7 / 6e-16 with ``a_i`` spread over 16 decades). On the CPU the steps stop as soon as every group's radius
    is certified within 2e-6 (float32) or 1e-12 (float64) relative — often at once in training. After a plain
    optax transform (no metric) this is block soft thresholding with ``a_i = α_t``.

    Cost: the per-group sums make this several times the cost of an elementwise prox: on a 2-core CPU with a
    ResNet-34-shaped tree (jitted, donated buffers; ``benchmarks/step_overhead.py``) 5–7× the ``optax.adam``
    step, about half of it the two full-size temporaries (``z`` and ``a``) XLA:CPU allocates afresh on every
    call, half the four sums of a step that needs one Newton step (see
    :mod:`~proxgen_jax.regularizers.group_l12`); the Euclidean closed form costs ~1.3×.

    Example:
      >>> import optax, proxgen_jax as pg
      >>> from proxgen_jax.transforms.prox_group import prox_group_l12, output_unit_groups
      >>> tx = optax.chain(pg.scale_by_adam_precond(),
      ...                  prox_group_l12(1e-3, 1e-3, group_axes=output_unit_groups))  # prune neurons/filters

    Args:
      lam: ``λ ≥ 0``, a float or an optax schedule.
      learning_rate: ``α_t > 0``, a float or an optax schedule.
      group_axes: the axes one group spans, for every regularised leaf: an int or tuple of ints (Dense
        ``(in, out)``: ``(1,)`` → one group per input feature, ``(0,)`` per output neuron; conv
        ``(h, w, in, out)``: ``(0, 1, 2)`` per output filter), ``None`` (the whole leaf is one group), or a
        callable ``(path, leaf) -> axes | None`` choosing per leaf, ``None`` leaving that leaf unregularised
        (e.g. :func:`output_unit_groups`). Axes that do not fit a leaf raise ``ValueError`` naming its path.
      weighting: ``"one"`` (``w_g = 1``) or ``"sqrt"`` (``w_g = √(group size)``).
      mask: which leaves to regularise (``None``: all; e.g. :func:`~proxgen_jax.kernels_only` to skip biases).
      newton_steps: override the largest number of Newton steps (``None``: 4 in float32, 6 in float64).

    Returns:
      An ``optax.GradientTransformation``; its ``update`` requires ``params``.

    References:
      Yun, Lozano & Yang, *Adaptive Proximal Gradient Methods for Structured Neural Networks*, NeurIPS 2021.
      Yuan & Lin, *Model selection and estimation in regression with grouped variables*, JRSS-B 2006.
    """
    # Validates weighting / newton_steps / static axes now, at construction.
    GroupL12(None if callable(group_axes) else group_axes, weighting, newton_steps)
    choose = per_leaf_groups("prox_group_l12", group_axes, lambda axes: GroupL12(axes, weighting, newton_steps))
    return proximal_step(choose, lam, learning_rate, mask=mask, weight_decay=weight_decay,
                         weight_decay_mask=weight_decay_mask)


def prox_group_mcp(
    lam: optax.ScalarOrSchedule = 1e-4,
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    *,
    gamma: float = 3.0,
    group_axes: GroupAxesOrFn = (1,),
    weighting: str = "one",
    mask: MaskOrFn = None,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    weight_decay_mask: MaskOrFn = None,
    newton_steps: int | None = None,
) -> optax.GradientTransformation:
    r"""Group MCP ``Σ_g P_{λw_g,γ}(‖θ_g‖₂)`` by the exact preconditioned proximal step.

    ``P_{μ,γ}(ρ) = μρ − ρ²/(2γ)`` for ``ρ ≤ γμ``, ``γμ²/2`` beyond (Zhang's MCP on the group norm,
    ``μ = λ w_g``): groups are removed as by the group lasso, but groups with ``‖θ_g‖ ≥ γλw_g`` are not shrunk.
    Per group ``g``, with ``a_i = α_t/(C_{t,i}+δ)`` and ``z = θ_t − α_t(C_t+δI)^{-1} m_t``:

    .. math:: θ_{t+1,g} = \operatorname{argmin}_x\; P_{λw_g,γ}(‖x‖_2) + \sum_{i∈g} \frac{(x_i - z_i)^2}{2 a_i}.

    The problem is convex when every ``a_i < γ`` (then the group is exactly zero iff ``‖z_g/a_g‖₂ ≤ λw_g``) and
    non-convex otherwise (Adam's ``a_i`` reaches ~1e8 where ``C_t ≈ 0``); in both cases the global minimiser
    is returned: the best of ``0``, ``z`` and the interior stationary point, whose radius is found by a fixed
    number of monotone Newton steps (float32: 6, float64: 10). After a plain optax transform (no metric) it is
    group firm thresholding with ``a = α_t`` (hard group thresholding if ``α_t ≥ γ``). See
    :class:`~proxgen_jax.regularizers.group_mcp.GroupMCP`.

    Example:
      >>> import optax, proxgen_jax as pg
      >>> from proxgen_jax.transforms.prox_group import prox_group_mcp, output_unit_groups
      >>> tx = optax.chain(pg.scale_by_adam_precond(),
      ...                  prox_group_mcp(1e-3, 1e-3, gamma=3.0, group_axes=output_unit_groups))

    Args:
      lam: ``λ ≥ 0`` (MCP's own λ: it shapes the penalty), a float or an optax schedule.
      learning_rate: ``α_t > 0``, a float or an optax schedule.
      gamma: the concavity ``γ > 0`` (``γ → ∞`` is the group lasso).
      group_axes: the axes one group spans, for every regularised leaf, or a callable ``(path, leaf) ->
        axes | None``; as in :func:`prox_group_l12`. Axes that do not fit a leaf raise ``ValueError`` naming
        its path.
      weighting: ``"one"`` (``w_g = 1``) or ``"sqrt"`` (``w_g = √(group size)``).
      mask: which leaves to regularise (``None``: all; e.g. :func:`~proxgen_jax.kernels_only`).
      newton_steps: override the number of Newton steps (``None``: 6 in float32, 10 in float64).

    Returns:
      An ``optax.GradientTransformation``; its ``update`` requires ``params``.

    References:
      Zhang, *Nearly unbiased variable selection under minimax concave penalty*, Ann. Statist. 2010.
      Huang, Breheny & Ma, *A selective review of group selection in high-dimensional models*, Statist. Sci.
      2012.
      Yun, Lozano & Yang, *Adaptive Proximal Gradient Methods for Structured Neural Networks*, NeurIPS 2021.
    """
    # Validates gamma / weighting / newton_steps / static axes now, at construction.
    GroupMCP(gamma, None if callable(group_axes) else group_axes, weighting, newton_steps)
    choose = per_leaf_groups("prox_group_mcp", group_axes,
                             lambda axes: GroupMCP(gamma, axes, weighting, newton_steps))
    return proximal_step(choose, lam, learning_rate, mask=mask, weight_decay=weight_decay,
                         weight_decay_mask=weight_decay_mask)


def per_leaf_groups(name: str, group_axes: GroupAxesOrFn,
                    make: Callable[[tuple[int, ...]], Regularizer]) -> Callable[[Any, Any], Regularizer | None]:
    """The per-leaf regularizer callable of a group transformation (for :func:`proximal_step`).

    ``group_axes`` (static axes, or a callable ``(path, leaf) -> axes | None``, ``None`` leaving the leaf
    unregularised) is resolved and normalised for each leaf, and ``make(axes)`` builds its regularizer. Axes
    that do not fit a leaf raise ``ValueError`` naming the transformation ``name``, the parameter's path and
    its shape.
    """

    def choose(path, leaf):
        axes = group_axes(path, leaf) if callable(group_axes) else group_axes
        if axes is None and callable(group_axes):
            return None
        try:
            axes = normalize_axes(axes, jnp.ndim(leaf))
        except ValueError as err:
            raise ValueError(f"{name}: parameter {jax.tree_util.keystr(path)} with shape "
                             f"{tuple(jnp.shape(leaf))}: {err} Use `mask` (e.g. proxgen_jax.kernels_only) or a "
                             "callable `group_axes` to choose the leaves.") from None
        return make(axes)

    return choose
