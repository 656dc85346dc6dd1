"""Seconds JAX spends compiling — tracing, lowering to StableHLO and XLA compilation — apart from run time.

A jitted function's first call includes its compilation, so a wall-clock ``time s`` that starts before it mixes
the two (the first method of a run looks slowest). :class:`CompileClock` listens to JAX's own compile events
(``jax.monitoring``) while it is open and adds their durations up; the run time is the wall time minus that.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from proxgen_jax.train.compile_clock import CompileClock
  >>> with CompileClock() as clock:
  ...     _ = jax.jit(lambda x: x * 2)(jnp.ones(3))
  >>> clock.seconds > 0 and clock.compiles >= 1
  True
"""

from __future__ import annotations

import jax

COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
_BACKEND = COMPILE_EVENTS[-1]


class CompileClock:
    """Context manager: ``seconds`` spent compiling and ``compiles`` (XLA compilations) while open.

    Nesting is fine (each clock sees every compilation during its own span). Compilations served from a
    cache count only their (short) lookup.
    """

    def __init__(self):
        self.seconds = 0.0
        self.compiles = 0

    def _listen(self, event: str, duration_secs: float, **kwargs) -> None:
        del kwargs
        if event in COMPILE_EVENTS:
            self.seconds += float(duration_secs)
            self.compiles += event == _BACKEND

    def __enter__(self) -> CompileClock:
        jax.monitoring.register_event_duration_secs_listener(self._listen)
        return self

    def __exit__(self, *exc) -> None:
        jax.monitoring.unregister_event_duration_listener(self._listen)
