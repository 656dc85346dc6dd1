"""Construction-time argument checks that name the offending argument.

Hyperparameters may be Python numbers, concrete arrays, optax schedules, or JAX tracers (when a factory is
called inside ``jax.vmap``/``optax.inject_hyperparams``). Concrete values are checked eagerly and raise
``ValueError`` naming the argument; callables and tracers are accepted as they are, since their values are
only known inside the compiled step.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np


def concrete_float(value: Any) -> float | None:
    """Returns ``value`` as a Python float when it is a concrete scalar, else ``None``."""
    if callable(value) or isinstance(value, jax.core.Tracer):
        return None
    arr = np.asarray(value)
    if arr.ndim != 0:
        return None
    return float(arr)


def _fail(name: str, value: Any, requirement: str) -> None:
    raise ValueError(f"`{name}` must be {requirement}, got {value!r}.")


def check_in_range(name: str, value: Any, low: float, high: float, *,
                                      low_open: bool = False, high_open: bool = False) -> None:
    """Checks ``low (<|<=) value (<|<=) high`` for a concrete scalar; NaN always fails."""
    v = concrete_float(value)
    if v is None:
        return
    ok_low = v > low if low_open else v >= low
    ok_high = v < high if high_open else v <= high
    if math.isnan(v) or not (ok_low and ok_high):
        lb = "(" if low_open else "["
        hb = ")" if high_open else "]"
        _fail(name, value, f"in {lb}{low}, {high}{hb}")


def check_nonnegative(name: str, value: Any) -> None:
    check_in_range(name, value, 0.0, math.inf)


def check_positive(name: str, value: Any) -> None:
    check_in_range(name, value, 0.0, math.inf, low_open=True)


def check_beta(name: str, value: Any) -> None:
    """Momentum / averaging constants live in ``[0, 1)``."""
    check_in_range(name, value, 0.0, 1.0, high_open=True)
