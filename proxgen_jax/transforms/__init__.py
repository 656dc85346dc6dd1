"""Optax transformations built on the regularizers: the proximal step and its named variants."""

from proxgen_jax._tree import kernels_only
from proxgen_jax.transforms.budgets import BudgetState, prox_nm, prox_sparsity
from proxgen_jax.transforms.prox_group import (
    input_feature_groups,
    output_unit_groups,
    prox_group_l12,
    prox_group_mcp,
)
from proxgen_jax.transforms.prox_nuclear import prox_nuclear
from proxgen_jax.transforms.prox_quantize import LearnedScaleState, learned_scales, prox_quantize, uniform_levels
from proxgen_jax.transforms.prox_transforms import (
    prox_binary,
    prox_l0,
    prox_l1,
    prox_lq,
    prox_mcp,
    prox_scad,
)
from proxgen_jax.transforms.proximal_step import ProximalStepState, proximal_step
from proxgen_jax.transforms.proximal_step_metric import ProximalStepMetricState, proximal_step_metric
from proxgen_jax.transforms.sparsity_recipes import (
    attention_head_groups,
    erk_sparsities,
    sparsity_schedule,
    uniform_sparsities,
)
from proxgen_jax.transforms.target_sparsity import (
    TargetSparsityState,
    sparsity_of,
    sparsity_ramp,
    target_sparsity,
    target_sparsity_info,
)

__all__ = [
    "LearnedScaleState",
    "learned_scales",
    "uniform_levels",
    "BudgetState",
    "attention_head_groups",
    "erk_sparsities",
    "prox_nm",
    "prox_sparsity",
    "sparsity_schedule",
    "uniform_sparsities",
    "TargetSparsityState",
    "sparsity_of",
    "sparsity_ramp",
    "target_sparsity",
    "target_sparsity_info",
    "input_feature_groups",
    "output_unit_groups",
    "prox_group_l12",
    "prox_group_mcp",
    "ProximalStepMetricState",
    "proximal_step_metric",
    "ProximalStepState",
    "kernels_only",
    "prox_binary",
    "prox_l0",
    "prox_l1",
    "prox_lq",
    "prox_mcp",
    "prox_nuclear",
    "prox_quantize",
    "prox_scad",
    "proximal_step",
]
