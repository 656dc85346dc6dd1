"""ℓ0-hc (Louizos, Welling & Kingma, ICLR 2018): ℓ0 regularisation through hard-concrete gates, as Flax nnx.

Each gate ``z ∈ [0, 1]`` follows the hard-concrete distribution: with ``u ~ U(0, 1)``,

    s = σ((log u − log(1 − u) + log α)/β),   s̄ = s(ζ − γ) + γ,   z = min(1, max(0, s̄)),

so ``z`` is exactly 0 with probability ``Q(0) = σ(β log(−γ/ζ) − log α)`` and exactly 1 with probability
``σ(log α − β log((1 − γ)/(ζ − 1)))``. The expected ℓ0 norm of the gated weights is
``Σ_j (1 − Q_j(0))·(#weights behind gate j)`` (their Eq. 12), differentiable in ``log α``; at test time the
gate is deterministic, ``ẑ = min(1, max(0, σ(log α)(ζ − γ) + γ))`` (their Eq. 13), and the weights behind a
closed gate are exactly zero. This is the ℓ0 baseline of ProxGen Sec. 4 (ℓ0 cannot be trained by
subgradients).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from proxgen_jax._validation import check_in_range, check_positive

_U_EPS = 1e-6  # u ~ U(ε, 1 − ε), as in the authors' code, keeps log u finite


def hard_concrete_sample(key: jax.Array, log_alpha: jax.Array, beta: float = 2 / 3, gamma: float = -0.1,
                         zeta: float = 1.1, shape=None) -> jax.Array:
    """Samples hard-concrete gates ``z = min(1, max(0, σ((logit u + log α)/β)(ζ − γ) + γ))``.

    ``shape`` defaults to ``log_alpha.shape`` (it must broadcast against it). Reparameterised: differentiable
    in ``log_alpha`` where ``0 < s̄ < 1``.
    """
    log_alpha = jnp.asarray(log_alpha)
    shape = log_alpha.shape if shape is None else shape
    u = jax.random.uniform(key, shape, jnp.promote_types(log_alpha.dtype, jnp.float32), _U_EPS, 1 - _U_EPS)
    s = jax.nn.sigmoid((jnp.log(u) - jnp.log1p(-u) + log_alpha) / beta)
    return jnp.clip(s * (zeta - gamma) + gamma, 0, 1).astype(log_alpha.dtype)


def hard_concrete_prob_zero(log_alpha: jax.Array, beta: float = 2 / 3, gamma: float = -0.1,
                            zeta: float = 1.1) -> jax.Array:
    """``P(z = 0) = Q(0) = σ(β log(−γ/ζ) − log α)``, the CDF of the stretched concrete at 0."""
    return jax.nn.sigmoid(beta * math.log(-gamma / zeta) - jnp.asarray(log_alpha))


def hard_concrete_test_gate(log_alpha: jax.Array, gamma: float = -0.1, zeta: float = 1.1) -> jax.Array:
    """The deterministic test-time gate ``min(1, max(0, σ(log α)(ζ − γ) + γ))``."""
    return jnp.clip(jax.nn.sigmoid(jnp.asarray(log_alpha)) * (zeta - gamma) + gamma, 0, 1)


class L0Dense(nnx.Module):
    r"""A dense layer with hard-concrete ℓ0 gates (Louizos et al.'s ``L0Dense``), for Flax nnx.

    ``y = (x ⊙ z) W + b`` with one gate per input unit (``gates="input"``, the authors' layer: a closed gate
    removes a whole row of ``W``, i.e. group sparsity), or ``y = x (W ⊙ Z) + b`` with one gate per weight
    (``gates="weight"``, the elementwise ℓ0 of ProxGen's ℓ0 prox). In training mode (``deterministic=False``,
    set by ``model.train()``) gates are sampled — one sample per call shared by the batch, or one per example
    with ``local_rep=True``; in evaluation mode (``model.eval()``) the deterministic test-time gates are used.

    Parameters: ``kernel (in, out)`` (He-normal, fan-out, as the authors), ``bias (out,)`` (zeros) and
    ``log_alpha`` (``(in,)`` or ``(in, out)``) initialised at ``log(1 − p) − log p`` (``p = droprate_init``)
    plus ``N(0, 0.01²)`` noise. Train on ``loss + λ/N · Σ expected_l0()`` (see :func:`l0_penalty`); the
    authors also clamp ``log α`` to ``[log 0.01, log 100]`` after each step (:meth:`constrain_parameters`).

    Args:
      in_features, out_features: layer sizes.
      rngs: ``nnx.Rngs``; ``params`` initialises the weights, the ``rng_collection`` stream (default
        ``"dropout"``, falling back to ``default``) samples the gates.
      droprate_init: initial ``P(gate closed)``-like rate ``p ∈ (0, 1)``.
      beta: temperature ``β > 0`` (2/3).
      gamma, zeta: the stretch interval ``(γ, ζ)`` with ``γ < 0``, ``ζ > 1`` (−0.1, 1.1).
      use_bias: add a bias (not gated, as the authors' dense layer).
      gates: ``"input"`` or ``"weight"``.
      local_rep: one gate sample per example (the authors' option); needs ``gates="input"``.
      deterministic: start in evaluation mode.

    Example:
      >>> from flax import nnx
      >>> import jax.numpy as jnp
      >>> layer = L0Dense(4, 3, rngs=nnx.Rngs(0))
      >>> y = layer(jnp.ones((2, 4)))          # sampled gates (training mode)
      >>> layer.eval(); y = layer(jnp.ones((2, 4)))  # test-time gates
      >>> int(layer.num_zero_weights()), float(layer.expected_l0()) > 0
      (0, True)

    References:
      Louizos, Welling & Kingma, "Learning Sparse Neural Networks through L0 Regularization", ICLR 2018.
    """

    def __init__(self, in_features: int, out_features: int, *, rngs: nnx.Rngs, droprate_init: float = 0.5,
                 beta: float = 2 / 3, gamma: float = -0.1, zeta: float = 1.1, use_bias: bool = True,
                 gates: str = "input", local_rep: bool = False, deterministic: bool = False,
                 rng_collection: str = "dropout", dtype=jnp.float32):
        check_in_range("droprate_init", droprate_init, 0.0, 1.0, low_open=True, high_open=True)
        check_positive("beta", beta)
        check_in_range("gamma", gamma, -math.inf, 0.0, high_open=True)
        check_in_range("zeta", zeta, 1.0, math.inf, low_open=True)
        if gates not in ("input", "weight"):
            raise ValueError(f"`gates` must be 'input' or 'weight', got {gates!r}.")
        if local_rep and gates != "input":
            raise ValueError("`local_rep=True` needs gates='input'.")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.beta, self.gamma, self.zeta = float(beta), float(gamma), float(zeta)
        self.gates, self.local_rep, self.use_bias = gates, bool(local_rep), bool(use_bias)
        self.deterministic = deterministic
        self.rng_collection = rng_collection
        init = jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal")
        self.kernel = nnx.Param(init(rngs.params(), (self.in_features, self.out_features), dtype))
        self.bias = nnx.Param(jnp.zeros((self.out_features,), dtype)) if use_bias else nnx.data(None)
        gate_shape = (self.in_features,) if gates == "input" else (self.in_features, self.out_features)
        mean = math.log(1 - droprate_init) - math.log(droprate_init)
        self.log_alpha = nnx.Param(mean + 1e-2 * jax.random.normal(rngs.params(), gate_shape, dtype))
        self.rngs = rngs[rng_collection].fork()

    # --- gates ---------------------------------------------------------------------------------------
    def prob_zero(self) -> jax.Array:
        """``P(z_j = 0)`` for every gate."""
        return hard_concrete_prob_zero(self.log_alpha[...], self.beta, self.gamma, self.zeta)

    def test_gates(self) -> jax.Array:
        """The deterministic test-time gates ``ẑ``."""
        return hard_concrete_test_gate(self.log_alpha[...], self.gamma, self.zeta)

    def sample_gates(self, key: jax.Array, batch: int | None = None) -> jax.Array:
        """Hard-concrete samples: gate shape, or ``(batch, in)`` with ``local_rep``."""
        shape = self.log_alpha.shape if batch is None else (batch,) + tuple(self.log_alpha.shape)
        return hard_concrete_sample(key, self.log_alpha[...], self.beta, self.gamma, self.zeta, shape)

    def _weights_per_gate(self) -> int:
        return self.out_features if self.gates == "input" else 1

    def expected_l0(self) -> jax.Array:
        """``E‖W ⊙ z‖₀ = Σ_j (1 − Q_j(0))·(#weights behind gate j)`` — the expected number of nonzero kernel
        entries (bias excluded), differentiable in ``log α``."""
        return jnp.sum(1 - self.prob_zero()) * self._weights_per_gate()

    def penalty(self, lam: float = 1.0, weight_decay: float = 0.0) -> jax.Array:
        """The authors' regulariser ``Σ_j (1 − Q_j(0)) Σ_{k∈j} (λ + ½·weight_decay·W_k²) + ½·weight_decay‖b‖²``."""
        w2 = self.kernel[...] ** 2
        per_gate = lam + 0.5 * weight_decay * w2
        if self.gates == "input":
            per_gate = jnp.sum(per_gate, axis=1)
        out = jnp.sum((1 - self.prob_zero()) * per_gate)
        if self.use_bias and weight_decay:
            out = out + 0.5 * weight_decay * jnp.sum(self.bias[...] ** 2)
        return out

    def test_kernel(self) -> jax.Array:
        """The kernel used at test time, ``W ⊙ ẑ`` (rows or entries behind closed gates are exactly 0)."""
        z = self.test_gates()
        return self.kernel[...] * (z[:, None] if self.gates == "input" else z)

    def num_zero_weights(self) -> jax.Array:
        """Number of exactly-zero entries of the test-time kernel ``W ⊙ ẑ``."""
        return jnp.sum(self.test_kernel() == 0)

    def constrain_parameters(self, low: float = math.log(1e-2), high: float = math.log(1e2)) -> None:
        """Clamps ``log α`` in place, as the authors do after every optimizer step."""
        self.log_alpha[...] = jnp.clip(self.log_alpha[...], low, high)

    # --- forward -------------------------------------------------------------------------------------
    def __call__(self, x: jax.Array, *, deterministic: bool | None = None) -> jax.Array:
        det = self.deterministic if deterministic is None else deterministic
        w = self.kernel[...]
        if det:
            y = x @ self.test_kernel()
        elif self.local_rep:
            z = self.sample_gates(self.rngs(), x.shape[0])
            y = (x * z) @ w
        else:
            z = self.sample_gates(self.rngs())
            y = x @ (w * (z[:, None] if self.gates == "input" else z))
        if self.use_bias:
            y = y + self.bias[...]
        return y


def l0_layers(model: nnx.Module) -> list[L0Dense]:
    """All :class:`L0Dense` submodules of ``model`` (including itself)."""
    return [m for _, m in nnx.iter_graph(model) if isinstance(m, L0Dense)]


def l0_penalty(model: nnx.Module) -> jax.Array:
    """``Σ`` over the model's :class:`L0Dense` layers of :meth:`L0Dense.expected_l0` (multiply by ``λ/N``)."""
    return sum((layer.expected_l0() for layer in l0_layers(model)), jnp.zeros([], jnp.float32))


def count_zero_weights(model: nnx.Module) -> tuple[int, int]:
    """``(exactly-zero test-time kernel entries, total kernel entries)`` over the model's L0Dense layers."""
    layers = l0_layers(model)
    zeros = sum(int(layer.num_zero_weights()) for layer in layers)
    total = sum(layer.in_features * layer.out_features for layer in layers)
    return zeros, total
