"""proxgen_jax: exact preconditioned proximal steps (ProxGen) as Optax transformations.

Floors, bottom to top: :mod:`proxgen_jax.regularizers` (pure math: value, prox, subgradient),
:mod:`proxgen_jax.preconditioners` and :mod:`proxgen_jax.transforms` (optax transformations),
:mod:`proxgen_jax.aliases` and :mod:`proxgen_jax.metrics` (ready optimizers and measurements).
"""

from proxgen_jax import baselines, regularizers
from proxgen_jax.aliases import (
    proxgen_adagrad,
    proxgen_adam,
    proxgen_kfac,
    proxgen_rmsprop,
    proxgen_sgd,
    revised_proxquant,
)
from proxgen_jax.metrics import quantize, regularization_value, regularized_objective, sparsity
from proxgen_jax.preconditioners import (
    EmaMomentumState,
    PreconditionedUpdates,
    ScaleByAdagradPrecondState,
    ScaleByAdamPrecondState,
    ScaleByAmsgradPrecondState,
    ScaleByRmspropPrecondState,
    ema_momentum,
    kfac_value_and_grad,
    scale_by_full_matrix_precond,
    scale_by_kfac_precond,
    scale_by_adagrad_precond,
    scale_by_adam_precond,
    scale_by_rmsprop_precond,
    scale_by_sgd_precond,
)
from proxgen_jax.regularizers import MCP, SCAD, L0, L1, Lq, Quantization, Regularizer
from proxgen_jax.transforms import (
    ProximalStepState,
    kernels_only,
    proximal_step_metric,
    prox_binary,
    prox_l0,
    prox_l1,
    prox_lq,
    prox_mcp,
    prox_quantize,
    prox_scad,
    proximal_step,
)

__version__ = "0.1.0"

__all__ = [
    "L0",
    "L1",
    "MCP",
    "SCAD",
    "EmaMomentumState",
    "Lq",
    "PreconditionedUpdates",
    "ProximalStepState",
    "Quantization",
    "Regularizer",
    "ScaleByAdagradPrecondState",
    "ScaleByAdamPrecondState",
    "ScaleByAmsgradPrecondState",
    "ScaleByRmspropPrecondState",
    "baselines",
    "ema_momentum",
    "kernels_only",
    "prox_binary",
    "prox_l0",
    "prox_l1",
    "prox_lq",
    "prox_mcp",
    "prox_quantize",
    "prox_scad",
    "proximal_step",
    "proximal_step_metric",
    "proxgen_adagrad",
    "proxgen_adam",
    "proxgen_kfac",
    "proxgen_rmsprop",
    "proxgen_sgd",
    "quantize",
    "regularization_value",
    "regularized_objective",
    "regularizers",
    "revised_proxquant",
    "scale_by_adagrad_precond",
    "scale_by_adam_precond",
    "scale_by_full_matrix_precond",
    "scale_by_kfac_precond",
    "kfac_value_and_grad",
    "scale_by_rmsprop_precond",
    "scale_by_sgd_precond",
    "sparsity",
]
