"""Maps the training command's names (``--optimizer``, ``--regularizer``, ``--task``) to optax transformations.

:func:`build_optimizer` returns an :class:`OptimizerSpec`: the ``optax.GradientTransformation`` plus what the
training loop needs around it — the regularizer ``R`` and weight ``λ`` used to log ``F(θ) = f(θ) + λR(θ)``,
the mask of regularised leaves, an optional forward-pass parameter map (BinaryConnect's ``sign`` with a
straight-through gradient) and an optional evaluation map (final hard quantisation for binary networks).

Optimizers (``α`` = ``--lr``, ``λ`` = ``--lam``):

* ``proxgen_adam`` — ProxGen with Adam's preconditioner (the paper's main instance), exact prox in ``C_t+δI``.
* ``proxgen_sgd`` — ProxGen with ``C_t = 0``, ``δ = 1`` and EMA momentum 0.9.
* ``subgradient_adam`` — Adam on ``g_t + λ∂R(θ_t)`` (the paper's subgradient baseline).
* ``prox_sgd`` — Prox-SGD (Yang et al., 2020) with its default schedules.
* ``proxquant`` — the original ProxQuant (Bai et al., 2019): Adam step, then a *Euclidean* prox, λ ramped.
* ``revised_proxquant`` — ProxGen's revised ProxQuant: the prox in the metric ``C_t+δI``, λ ramped.
* ``binary_connect`` — Adam on latent weights, forward with ``sign(θ)`` (straight-through), latent clip to ±1.
* ``l0_hc`` — Louizos et al. (2018) hard-concrete ℓ0 gates on every regularised weight (gates' Adam rate ×10).
* ``adam`` — plain Adam, no regularisation (the dense / full-precision reference).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from proxgen_jax._tree import MaskOrFn, kernels_only, key_name
from proxgen_jax.aliases import proxgen_adam, proxgen_sgd, revised_proxquant
from proxgen_jax.metrics import regularization_value
from proxgen_jax.regularizers import L0, L1, MCP, SCAD, Lq, Quantization, lq

OPTIMIZERS = ("proxgen_adam", "proxgen_sgd", "subgradient_adam", "prox_sgd", "proxquant", "revised_proxquant",
              "binary_connect", "l0_hc", "adam")
REGULARIZERS = ("l0", "l1", "lhalf", "ltwothirds", "lq", "mcp", "scad", "binary", "group")
TASKS = ("sparse", "binary", "group")
BINARY_LEVELS = (-1.0, 1.0)
#: ℓ0-hc's gate parameters ``log α`` use Adam with this multiple of ``--lr``: with the weights' rate, gates
#: cannot close within a CPU-scale run (``log α`` must travel from 0 to about −2.4).
L0HC_GATE_LR_MULT = 10.0


@dataclasses.dataclass
class OptimizerSpec:
    """An optimizer and its surroundings, as the training loop consumes them.

    Attributes:
      name: the CLI name.
      tx: the optax transformation (its ``update`` is always called with ``params``).
      regularizer: ``R`` (or a per-leaf callable) for logging ``F = f + λR``; ``None`` if unregularised.
      lam: the (final) ``λ`` used in ``F``.
      mask: regularised leaves (a callable on params).
      forward: params → params used in the forward pass (``None``: identity).
      finalize: params → params evaluated at test time (``None``: identity).
      finalize_state: ``(params, opt_state) → params`` evaluated at test time instead of ``finalize`` (snapping
        to scales learned in the optimizer state).
    """

    name: str
    tx: optax.GradientTransformation
    regularizer: Any
    lam: float
    mask: MaskOrFn
    forward: Callable[[Any], Any] | None = None
    finalize: Callable[[Any], Any] | None = None
    init_gates: Callable[[Any, Any], Any] | None = None
    gated_forward: Callable[[Any, Any, Any], Any] | None = None
    gate_penalty: Callable[[Any], Any] | None = None
    gated_eval: Callable[[Any, Any], Any] | None = None
    finalize_state: Callable[[Any, Any], Any] | None = None


def binary_mask(params: Any) -> Any:
    """Kernels except the first layer and the classifier head (kept full precision, as in ProxQuant / BinaryConnect)."""
    kern = kernels_only(params)

    def keep(path, on):
        names = [key_name(k) for k in path]
        first = ("stem" in names or "head" in names
                 or any(a in ("convs", "hidden") and b == "0" for a, b in zip(names[:-1], names[1:])))
        return bool(on) and not first
    return jax.tree_util.tree_map_with_path(keep, kern)


def hidden_kernels(params: Any) -> Any:
    """Kernels except the classifier head's: zero groups there remove hidden neurons and filters, never a class."""
    kern = kernels_only(params)
    return jax.tree_util.tree_map_with_path(lambda path, on: bool(on) and "head" not in
                                            [key_name(k) for k in path], kern)


def make_regularizer(name: str, *, q: float = 0.5, gamma: float | None = None) -> Any:
    """``R`` for a CLI ``--regularizer`` name (``group`` returns a per-leaf callable: one group per output unit)."""
    if name == "l0":
        return L0()
    if name == "l1":
        return L1()
    if name == "lhalf":
        return Lq(0.5)
    if name == "ltwothirds":
        return Lq(2.0 / 3.0)
    if name == "lq":
        return lq(q)
    if name == "mcp":
        return MCP() if gamma is None else MCP(gamma)
    if name == "scad":
        return SCAD() if gamma is None else SCAD(gamma)
    if name == "binary":
        return Quantization(BINARY_LEVELS, q)
    if name == "group":
        from proxgen_jax.regularizers.group_l12 import GroupL12

        def per_leaf(path, leaf):
            # Groups are the output units: the ℓ2 norm runs over every axis but the last.
            return GroupL12(group_axes=tuple(range(jnp.ndim(leaf) - 1)))
        return per_leaf
    raise ValueError(f"regularizer must be one of {REGULARIZERS}, got {name!r}")


def _linear_ramp(lam: float, steps: int):
    return optax.linear_schedule(0.0, lam, max(int(steps), 1))


def quantization_levels(bits: int | None) -> tuple[float, ...]:
    """The binary task's base levels: ``±1`` for ``bits`` ``None`` or 1, else ``uniform_levels(bits)``."""
    from proxgen_jax.regularizers.levels import uniform_levels
    return BINARY_LEVELS if bits is None or bits == 1 else uniform_levels(bits)


def snap_to_learned_scales(levels, mask: MaskOrFn) -> Callable[[Any, Any], Any]:
    """``(params, opt_state) → quantize(params, levels, mask, scales=learned_scales(opt_state))``; when the state
    holds no learned scales (the fine-tune phase after a freeze: the weights are already snapped) the params."""
    from proxgen_jax.metrics import quantize
    from proxgen_jax.transforms.prox_quantize import learned_scales

    snap_jit = jax.jit(lambda params, scales: quantize(params, levels, mask, scales=scales))

    def snap(params, opt_state):
        try:
            scales = learned_scales(opt_state)
        except ValueError:
            return params
        return snap_jit(params, scales)
    return snap


def _learned_scale_spec(name: str, levels, q: float, lam: float, lr: float, total_steps: int,
                        scale: str) -> OptimizerSpec:
    """The binary task with levels ``s·L`` learned per tensor/channel (networks without BatchNorm): every kernel
    is quantised; ``F`` logs ``f`` only (the penalty depends on the learned scales)."""
    from proxgen_jax.metrics import quantize
    from proxgen_jax.transforms.prox_quantize import prox_quantize
    mask = kernels_only
    ramp = _linear_ramp(lam, total_steps)
    refit = jax.jit(lambda p: quantize(p, levels, mask, scale=scale))  # PTQ: a least-squares scale fitted to θ
    if name == "revised_proxquant":
        tx = revised_proxquant(lr, q, ramp, levels=levels, scale=scale, mask=mask)
    elif name == "proxquant":  # Euclidean prox after a plain Adam step, least-squares fit: PARQ's rule
        tx = optax.chain(optax.scale_by_adam(), prox_quantize(levels, q, ramp, lr, scale=scale, mask=mask))
    elif name == "binary_connect":
        from proxgen_jax.baselines.binary_connect import quantize_params_ste
        return OptimizerSpec(name, optax.adam(lr), None, lam, mask, finalize=refit,
                             forward=lambda p: quantize_params_ste(p, levels, mask, scale=scale))
    elif name == "adam":
        return OptimizerSpec(name, optax.adam(lr), None, lam, mask, finalize=refit)
    else:
        raise ValueError(f"--scale supports adam, proxquant, revised_proxquant and binary_connect, got {name!r}")
    return OptimizerSpec(name, tx, None, lam, mask, finalize_state=snap_to_learned_scales(levels, mask))


def build_optimizer(name: str, *, task: str = "sparse", regularizer: str = "lhalf", q: float = 0.5,
                    lam: float = 1e-4, lr: float = 1e-3, total_steps: int = 1000, bits: int | None = None,
                    scale: str | None = None, budget: Any = None) -> OptimizerSpec:
    """Builds an :class:`OptimizerSpec` for a CLI optimizer name.

    Args:
      name: one of :data:`OPTIMIZERS`.
      task: ``"sparse"`` (regularise all kernels), ``"binary"`` (quantise kernels but the first/last layer,
        levels ±1, λ ramped linearly over training) or ``"group"``.
      regularizer: one of :data:`REGULARIZERS` (``binary`` task: the exponent ``q`` of ``dist(θ, ±1)^q``).
      q: exponent for ``lq`` / ``binary``.
      lam: ``λ ≥ 0`` (for ramped methods, its final value).
      lr: ``α > 0``.
      total_steps: training length, for λ ramps.
      bits: binary task: bits per weight (``None``/1: ``±1``; k: :func:`~proxgen_jax.uniform_levels` ``(k)``).
      scale: binary task: ``None`` (fixed levels) or ``"tensor"``/``"channel"``: levels ``s·L`` with learned
        scales, every kernel quantised (``adam``: post-training fit; ``binary_connect``: straight-through with a
        least-squares scale; ``proxquant``: Euclidean prox + least-squares fit, PARQ's rule; ``revised_proxquant``:
        the prox and the fit in the metric ``C_t+δI``); the test accuracy is after snapping to ``s·L``.
      budget: a :class:`~proxgen_jax.train.budgets.Budget` on the kernels (``--sparsity`` / ``--nm``):
        ``proxgen_adam`` projects onto it in Adam's metric (with ``λR`` too unless ``regularizer="none"``);
        ``adam`` stays the dense reference.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if lam < 0:
        raise ValueError(f"lam must be >= 0, got {lam!r}")
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if scale is not None and (task != "binary" or scale not in ("tensor", "channel")):
        raise ValueError(f"scale must be 'tensor' or 'channel' with the binary task, got {scale!r} (task={task!r})")
    if bits is not None and (task != "binary" or not isinstance(bits, int) or bits < 1):
        raise ValueError(f"bits must be an int >= 1 with the binary task, got {bits!r} (task={task!r})")
    if budget is not None:
        return _budget_spec(name, budget, task=task, regularizer=regularizer, q=q, lam=lam, lr=lr,
                            total_steps=total_steps)
    levels = quantization_levels(bits)
    if scale is not None:
        return _learned_scale_spec(name, levels, q, lam, lr, total_steps, scale)
    if task == "binary":
        reg: Any = Quantization(levels, q)
        mask: MaskOrFn = binary_mask
    else:
        reg = make_regularizer("group" if task == "group" else regularizer, q=q)
        mask = kernels_only
    finalize = None
    if task == "binary" and name != "adam":
        from proxgen_jax.metrics import quantize
        finalize = lambda p: quantize(p, levels, mask)  # noqa: E731

    if name == "adam":
        return OptimizerSpec(name, optax.adam(lr), reg, lam, mask)
    if name == "proxgen_adam":
        return OptimizerSpec(name, proxgen_adam(lr, reg, lam, mask=mask), reg, lam, mask, finalize=finalize)
    if name == "proxgen_sgd":
        return OptimizerSpec(name, proxgen_sgd(lr, reg, lam, mask=mask), reg, lam, mask, finalize=finalize)
    if name == "subgradient_adam":
        from proxgen_jax.baselines.subgradient import subgradient_adam
        return OptimizerSpec(name, subgradient_adam(lr, reg, lam, mask=mask), reg, lam, mask, finalize=finalize)
    if name == "prox_sgd":
        from proxgen_jax.baselines.prox_sgd import prox_sgd
        return OptimizerSpec(name, prox_sgd(lam, regularizer=reg, mask=mask), reg, lam, mask, finalize=finalize)
    if name == "proxquant":
        from proxgen_jax.baselines.proxquant import proxquant
        tx = proxquant(lr, lam, ramp_steps=total_steps, q=q, levels=levels, clip=True, mask=mask)
        return OptimizerSpec(name, tx, Quantization(levels, q), lam, mask, finalize=finalize)
    if name == "revised_proxquant":
        tx = revised_proxquant(lr, q, _linear_ramp(lam, total_steps), levels=levels, mask=mask)
        return OptimizerSpec(name, tx, Quantization(levels, q), lam, mask, finalize=finalize)
    if name == "binary_connect":
        if levels != BINARY_LEVELS:
            raise ValueError("binary_connect with fixed levels is binary (±1); use --scale for k bits")
        from proxgen_jax.baselines.binary_connect import binarize_params, clip_latent
        tx = optax.chain(optax.adam(lr), clip_latent(1.0, mask=mask))
        return OptimizerSpec(name, tx, Quantization(levels, q), lam, mask,
                             forward=lambda p: binarize_params(p, mask), finalize=finalize)
    # l0_hc: plain Adam on (θ, log α); the expected-ℓ0 penalty is added to the loss by the loop.
    hc = HardConcreteGates(mask=mask, lam=lam)
    tx = optax.multi_transform({"w": optax.adam(lr), "g": optax.adam(L0HC_GATE_LR_MULT * lr)},
                               lambda t: {"params": jax.tree.map(lambda _: "w", t["params"]),
                                          "gates": jax.tree.map(lambda _: "g", t["gates"])})
    return OptimizerSpec(name, tx, L0(), lam, mask, init_gates=hc.init, gated_forward=hc.sample,
                         gate_penalty=hc.penalty, gated_eval=hc.deterministic)


def _budget_spec(name: str, budget, *, task: str, regularizer: str, q: float, lam: float, lr: float,
                 total_steps: int) -> OptimizerSpec:
    """A budget on the kernels: ``proxgen_adam`` (the projection in Adam's metric) or ``adam`` (dense)."""
    from proxgen_jax.train.budgets import budget_tx
    if task != "sparse" or name not in ("proxgen_adam", "adam"):
        raise ValueError(f"a budget (--sparsity / --nm) needs the sparse task and proxgen_adam or adam, got "
                         f"{name!r} (task={task!r})")
    if name == "adam":
        return OptimizerSpec(name, optax.adam(lr), None, 0.0, kernels_only)
    reg = None if regularizer == "none" else make_regularizer(regularizer, q=q)
    tx = budget_tx(budget, lr, total_steps, regularizer=reg, lam=lam if reg is not None else 0.0)
    return OptimizerSpec(name, tx, reg, lam if reg is not None else 0.0, kernels_only)


@dataclasses.dataclass(frozen=True)
class HardConcreteGates:
    """ℓ0-hc (Louizos, Welling & Kingma, ICLR 2018): one hard-concrete gate ``z_j`` per regularised weight.

    Built on :mod:`proxgen_jax.baselines.l0_hc`'s hard-concrete functions, but functional and model-agnostic
    (where ``L0Dense`` is a dense layer): the gates multiply the weights selected by ``mask`` (``θ ⊙ z``), so it works
    for conv kernels as well as dense ones. Training minimises ``f(θ ⊙ z) + λ Σ_j P(z_j ≠ 0)`` with
    ``z = clip(sigmoid((log u − log(1−u) + log α)/β)(ζ−γ) + γ, 0, 1)``, ``u ~ U(0, 1)``, and
    ``P(z_j ≠ 0) = sigmoid(log α_j − β log(−γ/ζ))``; at test time ``z = clip(sigmoid(log α)(ζ−γ)+γ, 0, 1)``,
    exactly zero for gates that closed. Constants ``β = 2/3, γ = −0.1, ζ = 1.1`` as in the paper; ``log α`` is
    initialised at ``log((1−p)/p)`` with drop rate ``p`` plus N(0, 0.01²) noise.
    """

    mask: Any = None
    lam: float = 1e-4
    beta: float = 2.0 / 3.0
    gamma: float = -0.1
    zeta: float = 1.1
    drop_init: float = 0.5

    def _flags(self, params):
        from proxgen_jax._tree import resolve_mask
        return resolve_mask(self.mask, params)

    def init(self, params, key):
        leaves, treedef = jax.tree.flatten(params)
        keys = jax.random.split(key, max(len(leaves), 1))
        mean = math.log((1.0 - self.drop_init) / self.drop_init)
        out = [mean + 0.01 * jax.random.normal(k, jnp.shape(x), jnp.float32) if on else jnp.zeros((0,), jnp.float32)
               for x, on, k in zip(leaves, self._flags(params), keys)]
        return jax.tree.unflatten(treedef, out)

    def _apply(self, params, gates, z_fn):
        leaves, treedef = jax.tree.flatten(params)
        g_leaves = treedef.flatten_up_to(gates)
        out = [x * z_fn(g, i).astype(x.dtype) if on else x
               for i, (x, g, on) in enumerate(zip(leaves, g_leaves, self._flags(params)))]
        return jax.tree.unflatten(treedef, out)

    def sample(self, params, gates, key):
        from proxgen_jax.baselines.l0_hc import hard_concrete_sample
        return self._apply(params, gates, lambda la, i: hard_concrete_sample(
            jax.random.fold_in(key, i), la, self.beta, self.gamma, self.zeta))

    def deterministic(self, params, gates):
        from proxgen_jax.baselines.l0_hc import hard_concrete_test_gate
        return self._apply(params, gates, lambda la, i: hard_concrete_test_gate(la, self.gamma, self.zeta))

    def penalty(self, gates):
        from proxgen_jax.baselines.l0_hc import hard_concrete_prob_zero
        return self.lam * sum((jnp.sum(1.0 - hard_concrete_prob_zero(g, self.beta, self.gamma, self.zeta))
                               for g in jax.tree.leaves(gates)), jnp.zeros([], jnp.float32))


def regularizer_value(params: Any, spec: OptimizerSpec) -> jax.Array:
    """``λ·R(θ)`` over the regularised leaves of ``params`` (per-leaf regularizers supported)."""
    if spec.regularizer is None:
        return jnp.zeros([], jnp.float32)
    return regularization_value(params, spec.regularizer, spec.lam, spec.mask)

