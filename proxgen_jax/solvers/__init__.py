"""Pure-math solvers on one step's subproblem: metric operators and the inner prox solver in a general metric."""

from proxgen_jax.solvers.metric_operators import (
    DenseMetric,
    DiagonalMetric,
    KroneckerMetric,
    MetricOperator,
    as_operator,
    subproblem_objective,
)
from proxgen_jax.solvers.metric_prox import MetricProxResult, solve_metric_prox

__all__ = [
    "DenseMetric",
    "DiagonalMetric",
    "KroneckerMetric",
    "MetricOperator",
    "MetricProxResult",
    "as_operator",
    "solve_metric_prox",
    "subproblem_objective",
]
