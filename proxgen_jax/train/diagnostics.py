"""Theorem-1 diagnostics: the quantities of conditions (C-3) and (C-4), logged during training (paper, Fig. 1).

* (C-3)(i)  ``‖θ_{t+1} − θ_t‖₂ ≤ D`` — the size of the final step (after the prox);
* (C-3)(ii) ``‖g_t‖₂ ≤ G`` — the stochastic gradient norm;
* (C-4)     ``λ_min(α_t (C_t + δI)^{-1}) ≥ γ > 0`` — for a diagonal metric the smallest per-coordinate step
  ``min_i α_t / (C_{t,i} + δ)``. For Adam-preconditioned runs ``C_t = √v̂_t`` is read from the optimizer
  state's second moment ``nu`` (``v̂_t = ν_t / (1 − β₂^t)``); for SGD-type runs (``C_t = 0``, ``δ = 1``) it is ``α_t``.

Example:
  >>> import jax.numpy as jnp, optax
  >>> from proxgen_jax.train.diagnostics import min_effective_step
  >>> tx = optax.adam(1e-3); p = {"w": jnp.ones(3)}; s = tx.init(p)
  >>> _, s = tx.update({"w": jnp.array([1.0, 2.0, 4.0])}, s, p)
  >>> round(float(min_effective_step(s, 1e-3)), 7)  # α / (√v̂_max + δ) = 1e-3 / 4
  0.00025
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax


def find_second_moment_state(opt_state: Any) -> Any | None:
    """The first sub-state exposing ``count`` and ``nu`` (Adam-style), searched depth-first; ``None`` if absent."""
    if hasattr(opt_state, "nu") and hasattr(opt_state, "count"):
        return opt_state
    if hasattr(opt_state, "inner_states"):  # optax.multi_transform
        opt_state = opt_state.inner_states
    if isinstance(opt_state, dict):
        # ℓ0-hc labels the weights "w" and the gates "g": look at the weights' Adam first.
        opt_state = [opt_state[k] for k in sorted(opt_state, key=lambda k: (k != "w", str(k)))]
    if hasattr(opt_state, "inner_state") and not isinstance(opt_state, (tuple, list)):  # masked / wrappers
        opt_state = [opt_state.inner_state]
    if isinstance(opt_state, (tuple, list)):
        for s in opt_state:
            found = find_second_moment_state(s)
            if found is not None:
                return found
    return None


def min_effective_step(opt_state: Any, learning_rate: float, *, b2: float = 0.999, eps: float = 1e-8,
                       bias_correction: bool = True) -> jax.Array:
    """``min_i α_t / (C_{t,i} + δ)`` with ``C_t = √v̂_t`` from the optimizer state; ``α_t`` if there is no ``nu``."""
    st = find_second_moment_state(opt_state)
    if st is None:
        return jnp.asarray(learning_rate, jnp.float32)
    leaves = [v for v in jax.tree.leaves(st.nu) if jnp.size(v) > 0]
    if not leaves:
        return jnp.asarray(learning_rate, jnp.float32)
    vmax = jnp.max(jnp.stack([jnp.max(v.astype(jnp.float32)) for v in leaves]))
    if bias_correction:
        vmax = vmax / (1.0 - jnp.asarray(b2, jnp.float32) ** jnp.maximum(st.count, 1).astype(jnp.float32))
    return jnp.asarray(learning_rate, jnp.float32) / (jnp.sqrt(vmax) + eps)


def step_diagnostics(old_params: Any, new_params: Any, grads: Any, opt_state: Any,
                     learning_rate: float) -> dict[str, jax.Array]:
    """``{"step_norm": ‖θ_{t+1}−θ_t‖₂, "grad_norm": ‖g_t‖₂, "min_step": min_i α_t/(C_{t,i}+δ)}`` (jit-friendly)."""
    delta = jax.tree.map(lambda a, b: a.astype(jnp.float32) - b.astype(jnp.float32), new_params, old_params)
    return {"step_norm": optax.tree.norm(delta), "grad_norm": optax.tree.norm(grads),
            "min_step": min_effective_step(opt_state, learning_rate)}


def summarize(per_step: dict[str, list[float]]) -> dict[str, float]:
    """Empirical constants of (C-3)/(C-4): ``D = max‖Δθ‖``, ``G = max‖g‖``, ``γ = min step`` and the trend of the
    min step (last-tenth mean over first-tenth mean; ≥ 1 means it grew, as in the paper's Fig. 1-(b))."""
    import numpy as np
    out: dict[str, float] = {}
    if per_step.get("step_norm"):
        out["D_max_step_norm"] = float(np.max(per_step["step_norm"]))
    if per_step.get("grad_norm"):
        out["G_max_grad_norm"] = float(np.max(per_step["grad_norm"]))
    ms = per_step.get("min_step")
    if ms:
        a = np.asarray(ms, np.float64)
        k = max(len(a) // 10, 1)
        out["gamma_min_step"] = float(a.min())
        out["min_step_trend"] = float(a[-k:].mean() / max(a[:k].mean(), 1e-30))
    return out
