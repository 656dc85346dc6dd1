"""Baselines the paper compares ProxGen against: subgradient training, Prox-SGD, ProxQuant, BinaryConnect, ℓ0-hc.

Each follows its published update rule and composes with optax (``l0_hc`` is a Flax nnx layer).
"""

from proxgen_jax.baselines.binary_connect import (
    binarize_params,
    clip_latent,
    sign_ste,
    stochastic_sign_ste,
)
from proxgen_jax.baselines.l0_hc import (
    L0Dense,
    count_zero_weights,
    hard_concrete_prob_zero,
    hard_concrete_sample,
    hard_concrete_test_gate,
    l0_layers,
    l0_penalty,
)
from proxgen_jax.baselines.prox_sgd import ProxSGDState, prox_sgd
from proxgen_jax.baselines.proxquant import binarize_and_freeze, hard_binarize, linear_ramp, proxquant
from proxgen_jax.baselines.subgradient import AddSubgradientState, add_subgradient, subgradient_adam

__all__ = [
    "AddSubgradientState",
    "L0Dense",
    "ProxSGDState",
    "add_subgradient",
    "binarize_and_freeze",
    "binarize_params",
    "clip_latent",
    "count_zero_weights",
    "hard_binarize",
    "hard_concrete_prob_zero",
    "hard_concrete_sample",
    "hard_concrete_test_gate",
    "l0_layers",
    "l0_penalty",
    "linear_ramp",
    "prox_sgd",
    "proxquant",
    "sign_ste",
    "stochastic_sign_ste",
    "subgradient_adam",
]
