"""Regularizers: value, prox with a per-coordinate step, and subgradient — elementwise, shape-agnostic."""

from proxgen_jax.regularizers.base import ElementwiseRegularizer, Regularizer
from proxgen_jax.regularizers.group_l12 import GroupL12
from proxgen_jax.regularizers.group_mcp import GroupMCP
from proxgen_jax.regularizers.l0 import L0
from proxgen_jax.regularizers.l1 import L1
from proxgen_jax.regularizers.levels import BINARY_LEVELS, TERNARY_LEVELS, uniform_levels
from proxgen_jax.regularizers.lq import Lq, lq
from proxgen_jax.regularizers.mcp import MCP
from proxgen_jax.regularizers.nuclear import NuclearNorm
from proxgen_jax.regularizers.quantization import Quantization, binary, ternary
from proxgen_jax.regularizers.scad import SCAD

__all__ = [
    "BINARY_LEVELS",
    "TERNARY_LEVELS",
    "uniform_levels",
    "ElementwiseRegularizer",
    "GroupL12",
    "GroupMCP",
    "L0",
    "L1",
    "MCP",
    "NuclearNorm",
    "SCAD",
    "Lq",
    "Quantization",
    "Regularizer",
    "binary",
    "lq",
    "ternary",
]
