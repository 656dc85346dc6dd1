"""Training helpers and the command ``python -m proxgen_jax.train`` (the top floor, above the library).

* :mod:`~proxgen_jax.train.data` — digits, MNIST-1D and TFDS loaders returning NumPy splits;
* :mod:`~proxgen_jax.train.models` — small Flax NNX networks (MLP, CNN, ResNet);
* :mod:`~proxgen_jax.train.optimizers` — CLI names → optax transformations (ProxGen and baselines);
* :mod:`~proxgen_jax.train.loop` — one training run with per-epoch objective, accuracy, sparsity;
* :mod:`~proxgen_jax.train.diagnostics` — Theorem-1 conditions (C-3)/(C-4) per step;
* :mod:`~proxgen_jax.train.plots` — PNG curves, trade-off and diagnostics plots;
* :mod:`~proxgen_jax.train.cli` — the command line.

Submodules are imported lazily so ``import proxgen_jax.train.data`` stays light.
"""

from __future__ import annotations

__all__ = ["cli", "data", "diagnostics", "loop", "models", "optimizers", "plots"]
