"""Preconditioners: optax transformations producing the direction ``(C_t+δI)^{-1} m_t`` and the metric ``C_t+δI``."""

from proxgen_jax.preconditioners.adagrad import (
    ScaleByAdagradPrecondState,
    scale_by_adagrad_precond,
)
from proxgen_jax.preconditioners.adam import (
    ScaleByAdamPrecondState,
    ScaleByAmsgradPrecondState,
    scale_by_adam_precond,
)
from proxgen_jax.preconditioners.full_matrix import (
    ScaleByFullMatrixPrecondState,
    scale_by_full_matrix_precond,
)
from proxgen_jax.preconditioners.kfac import (
    KroneckerFactors,
    ScaleByKfacPrecondState,
    bias_factors,
    dense_factors,
    dense_layers,
    scale_by_kfac_precond,
)
from proxgen_jax.preconditioners.kfac_capture import kfac_value_and_grad
from proxgen_jax.preconditioners.momentum import EmaMomentumState, ema_momentum
from proxgen_jax.preconditioners.preconditioned_updates import (
    MisplacedPreconditionerOutput,
    PreconditionedUpdates,
    split_updates,
)
from proxgen_jax.preconditioners.rmsprop import (
    ScaleByRmspropPrecondState,
    scale_by_rmsprop_precond,
)
from proxgen_jax.preconditioners.sgd import scale_by_sgd_precond
from proxgen_jax.solvers.metric_operators import DenseMetric, KroneckerMetric, MetricOperator

__all__ = [
    "DenseMetric",
    "KroneckerFactors",
    "KroneckerMetric",
    "MetricOperator",
    "ScaleByFullMatrixPrecondState",
    "ScaleByKfacPrecondState",
    "bias_factors",
    "dense_factors",
    "dense_layers",
    "kfac_value_and_grad",
    "scale_by_full_matrix_precond",
    "scale_by_kfac_precond",
    "EmaMomentumState",
    "MisplacedPreconditionerOutput",
    "PreconditionedUpdates",
    "ScaleByAdagradPrecondState",
    "ScaleByAdamPrecondState",
    "ScaleByAmsgradPrecondState",
    "ScaleByRmspropPrecondState",
    "ema_momentum",
    "scale_by_adagrad_precond",
    "scale_by_adam_precond",
    "scale_by_rmsprop_precond",
    "scale_by_sgd_precond",
    "split_updates",
]
