r"""Private faster forms of the prox for the fused optimizer step (chosen by the engine, never public API).

Every regularizer has one public minimiser, ``prox(z, step, lam)`` with a per-coordinate step. In ProxGen's
step with a diagonal metric the step is ``a_i = α_t/(C_{t,i}+δ)``, and two rewrites of that same minimiser
save work in the fused step — dispatched on the regularizer's type with ``functools.singledispatch``:

* :func:`prox_metric` ``(reg, z, α, c, λ)`` — ``argmin_x λR(x) + Σ_i c_i (x_i − z_i)²/(2α)``, the same point as
  ``reg.prox(z, α/c, λ)`` (the default), with thresholds compared as ``|z|·c ≤ αλ`` (one division fewer).
* :func:`prox_metric_scaled` ``(reg, c·z, α, c, λ)`` — the same prox given ``c·z = c·θ_t − α_t m_t``, which
  Adam, RMSprop and AdaGrad form without a division: a prox that divides by ``c`` anyway folds Adam's division
  into its own (ℓ1, MCP, SCAD register one).
* :func:`metric_step` ``(reg, θ_t, d, m_t, c, α, λ)`` — the whole step ``prox^{c}_{αλR}(θ_t − α d)`` with
  ``d = m_t/c``. The default forms ``z`` and calls :func:`prox_metric`; :func:`fold_metric_division` registers,
  for a regularizer class, the form through :func:`prox_metric_scaled` (used when ``m_t`` is known).

Each form is tested against brute force like ``prox`` (tests/test_prox_bruteforce.py).
"""

from __future__ import annotations

import functools

import jax.numpy as jnp


@functools.singledispatch
def prox_metric(regularizer, z, learning_rate, metric, lam):
    """``argmin_x λR(x) + Σ_i metric_i (x_i − z_i)²/(2α)``; default: ``prox(z, α/metric, λ)``."""
    return regularizer.prox(z, learning_rate / jnp.asarray(metric), lam)


@functools.singledispatch
def prox_metric_scaled(regularizer, cz, learning_rate, metric, lam):
    """:func:`prox_metric` given ``c·z`` (``c = metric``) instead of ``z``; default: divide, then prox_metric."""
    return prox_metric(regularizer, cz / jnp.asarray(metric), learning_rate, metric, lam)


@functools.singledispatch
def metric_step(regularizer, theta, direction, momentum, metric, learning_rate, lam):
    """``prox^{metric}_{αλR}(θ − α·direction)`` with ``direction = momentum/metric`` (``momentum`` may be None)."""
    del momentum
    return prox_metric(regularizer, theta - learning_rate * direction, learning_rate, metric, lam)


def _folded_step(regularizer, theta, direction, momentum, metric, learning_rate, lam):
    if momentum is None:
        return prox_metric(regularizer, theta - learning_rate * direction, learning_rate, metric, lam)
    return prox_metric_scaled(regularizer, metric * theta - learning_rate * momentum, learning_rate, metric, lam)


def fold_metric_division(cls: type) -> type:
    """Registers for ``cls`` the step through :func:`prox_metric_scaled`: ``c·z = c·θ_t − α_t m_t`` (no division)
    and the prox's own division by ``c`` — one division per coordinate for the whole Adam step. Measure the
    gain (benchmarks/step_cycles.py) before registering a class."""
    metric_step.register(cls, _folded_step)
    return cls
