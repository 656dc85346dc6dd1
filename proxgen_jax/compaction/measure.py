"""Measuring a dense and a compacted model side by side: test accuracy and jitted inference latency.

* :func:`with_state` — a copy of an nnx module holding given parameters (and BatchNorm statistics), as pure dicts
  (what ``nnx.to_pure_dict`` and the training loop's ``params`` are);
* :func:`accuracy` — eval-mode top-1 accuracy over a whole set, in chunks;
* :func:`latency` — median wall time of one jitted eval-mode forward call (compilation excluded);
* :func:`compare` — both models' accuracy, and their latencies at several batch sizes measured *interleaved*
  (dense, compact, dense, ...), so that load on a shared machine hits both alike.

Example:
  >>> import jax.numpy as jnp, numpy as np
  >>> from flax import nnx
  >>> lin = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  >>> accuracy(lin, np.eye(3, dtype=np.float32), np.array([0, 1, 0])) in (0.0, 1 / 3, 2 / 3, 1.0)
  True
  >>> latency(lin, jnp.ones((1, 3)), repeats=3) > 0
  True
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def with_state(model: nnx.Module, params: Any, rest: Any = None) -> nnx.Module:
    """A copy of ``model`` whose ``nnx.Param`` leaves are ``params`` (and other state ``rest``), as pure dicts.

    Args:
      model: the module giving classes and structure (left unchanged).
      params: pure dict of the parameters, shaped like ``nnx.to_pure_dict(nnx.state(model, nnx.Param))``.
      rest: pure dict of the remaining state (BatchNorm running statistics); ``None`` keeps ``model``'s.

    Returns:
      A new module, in ``model``'s train/eval mode.
    """
    graphdef, pstate, rstate = nnx.split(nnx.clone(model), nnx.Param, ...)
    nnx.replace_by_pure_dict(pstate, params)
    if rest is not None:
        nnx.replace_by_pure_dict(rstate, rest)
    return nnx.merge(graphdef, pstate, rstate)


def _eval_fn(model: nnx.Module):
    clone = nnx.clone(model)
    clone.eval()
    graphdef, state = nnx.split(clone)
    fn = jax.jit(lambda st, x: nnx.merge(graphdef, st)(x))
    return lambda x: fn(state, x)


def accuracy(model: nnx.Module, x: np.ndarray, y: np.ndarray, *, chunk: int = 1024) -> float:
    """Eval-mode top-1 accuracy of ``model`` on ``(x, y)`` (``model`` itself untouched)."""
    fn = _eval_fn(model)
    correct = 0
    for i in range(0, x.shape[0], int(chunk)):
        correct += int(jnp.sum(jnp.argmax(fn(jnp.asarray(x[i:i + chunk])), -1) == jnp.asarray(y[i:i + chunk])))
    return correct / max(x.shape[0], 1)


def _time_once(fn, x) -> tuple[float, float]:
    """Wall seconds and CPU seconds (all threads of this process) of one call."""
    t, c = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn(x))
    return time.perf_counter() - t, time.process_time() - c


def latency(model: nnx.Module, x: Any, *, repeats: int = 50, warmup: int = 3) -> float:
    """Median seconds of one jitted eval-mode call ``model(x)`` (after compilation and ``warmup`` calls)."""
    fn = _eval_fn(model)
    x = jnp.asarray(x)
    for _ in range(max(int(warmup), 1)):
        jax.block_until_ready(fn(x))
    return float(np.median([_time_once(fn, x)[0] for _ in range(max(int(repeats), 1))]))


def compare(dense: nnx.Module, small: nnx.Module, x: np.ndarray, y: np.ndarray, *,
            batch_sizes: Sequence[int] = (1, 256), repeats: int = 50, warmup: int = 3) -> dict:
    """Test accuracy and median jitted latency of ``dense`` and ``small`` (``small`` takes the same inputs).

    Latencies are measured interleaved, call by call, on the first ``b`` examples of ``x`` (tiled if ``x`` is
    shorter), after ``warmup`` calls of each: wall time, and the CPU time of the process during the call (all its
    threads; less sensitive than wall time to other jobs taking the cores, which stretch the wall time only).

    Returns:
      ``{"acc_dense", "acc_small", "latency": {b: {"dense_ms", "small_ms", "speedup", "dense_min_ms",
      "small_min_ms", "dense_cpu_ms", "small_cpu_ms"}}}``: median wall times and their ratio, the fastest call of
      each, and the median CPU time per call.
    """
    out = {"acc_dense": accuracy(dense, x, y), "acc_small": accuracy(small, x, y), "latency": {}}
    fd, fs = _eval_fn(dense), _eval_fn(small)
    for b in batch_sizes:
        xb = jnp.asarray(np.resize(x, (int(b), *x.shape[1:])))
        for _ in range(max(int(warmup), 1)):
            jax.block_until_ready(fd(xb))
            jax.block_until_ready(fs(xb))
        td, ts = [], []
        for _ in range(max(int(repeats), 1)):
            td.append(_time_once(fd, xb))
            ts.append(_time_once(fs, xb))
        (wd, cd), (ws, cs) = (np.asarray(t).T * 1e3 for t in (td, ts))
        d, s = float(np.median(wd)), float(np.median(ws))
        out["latency"][int(b)] = {"dense_ms": d, "small_ms": s, "speedup": d / s if s > 0 else float("nan"),
                                  "dense_min_ms": float(np.min(wd)), "small_min_ms": float(np.min(ws)),
                                  "dense_cpu_ms": float(np.median(cd)), "small_cpu_ms": float(np.median(cs))}
    return out
