"""BatchNorm statistics for a fixed set of weights, and the freeze-then-fine-tune phase of quantised training.

Hard quantisation changes every layer's output scale (latent weights of size ~0.1 become ±1), so the running
BatchNorm statistics gathered during training no longer describe the network that is evaluated. Two remedies,
both from the quantisation literature:

* :func:`reestimate_batch_stats` recomputes the running mean and variance of every ``nnx.BatchNorm`` from the
  training inputs with the weights held fixed (no parameter changes): each chunk of ``x`` is passed through the
  network in training mode with ``momentum = 0`` (so the layer stores exactly that chunk's statistics) and the
  chunks' statistics are averaged with weights proportional to their sizes — PyTorch's cumulative
  ``momentum=None`` recalibration.
* :func:`freeze_finetune_tx` is the optimizer of ProxQuant's last phase (Bai et al., 2019: hard-quantise at a
  fixed epoch, then keep training with the quantised weights frozen): Adam on every leaf outside the frozen
  mask (BatchNorm scales/offsets, biases, the full-precision first and last layers), zero updates on the
  frozen leaves, which carry no optimizer state.

Example:
  >>> import jax.numpy as jnp
  >>> tx = freeze_finetune_tx(1e-3, {"kernel": True, "bias": False})
  >>> st = tx.init({"kernel": jnp.ones(2), "bias": jnp.zeros(2)})

References:
  Bai, Wang & Liberty, "ProxQuant: Quantized Neural Networks via Proximal Operators", ICLR 2019.
  Ioffe & Szegedy, "Batch Normalization", ICML 2015 (population statistics for inference).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from proxgen_jax._tree import MaskOrFn, resolve_mask
from proxgen_jax._validation import check_positive


def freeze_finetune_tx(learning_rate: optax.ScalarOrSchedule, frozen: MaskOrFn) -> optax.GradientTransformation:
    """Adam (``α`` = ``learning_rate``) on the leaves outside ``frozen``; zero updates (and no state) on the rest.

    Args:
      learning_rate: ``α > 0`` for the trainable leaves.
      frozen: the frozen leaves (a bool pytree or a callable on the params, e.g. the quantisation mask).

    Returns:
      An ``optax.GradientTransformation`` (an ``optax.multi_transform``).
    """
    check_positive("learning_rate", learning_rate)

    def labels(params):
        flags = resolve_mask(frozen, params)
        return jax.tree.unflatten(jax.tree.structure(params), ["frozen" if f else "train" for f in flags])

    return optax.multi_transform({"train": optax.adam(learning_rate), "frozen": optax.set_to_zero()}, labels)


def make_batch_stats_fn(graphdef: Any):
    """A jitted ``(params, rest, x) → rest`` storing the BatchNorm statistics of one chunk ``x`` (momentum 0).

    ``graphdef`` is the training-mode graph definition from ``nnx.split(model, nnx.Param, ...)``; ``rest`` the
    pure dict of the non-parameter state (the BatchNorm running statistics).
    """

    @jax.jit
    def chunk_stats(params, rest, x):
        m = nnx.merge(graphdef, params, rest)
        for _, mod in nnx.iter_modules(m):
            if isinstance(mod, nnx.BatchNorm):
                mod.momentum = 0.0
        m(x)
        return nnx.to_pure_dict(nnx.split(m, nnx.Param, ...)[2])

    return chunk_stats


def reestimate_batch_stats(chunk_stats, params: Any, rest: Any, x: np.ndarray, chunk: int = 1024) -> Any:
    """The running BatchNorm statistics of the network ``params`` on the inputs ``x``, weights held fixed.

    Args:
      chunk_stats: from :func:`make_batch_stats_fn` (built once per model, reused across calls).
      params: the parameters to evaluate (e.g. after hard quantisation).
      rest: the current non-parameter state (its structure is kept; its values are replaced).
      x: training inputs, ``(N, ...)``.
      chunk: inputs per forward pass; the per-chunk statistics are averaged weighted by chunk size.

    Returns:
      ``rest`` with every BatchNorm mean/variance replaced by the size-weighted average of the chunk statistics.
    """
    if int(chunk) < 1:
        raise ValueError(f"`chunk` must be a positive integer, got {chunk!r}.")
    n = x.shape[0]
    total = None
    for i in range(0, n, int(chunk)):
        xb = jnp.asarray(x[i:i + int(chunk)])
        w = xb.shape[0] / n
        st = jax.tree.map(lambda a, w=w: w * a, chunk_stats(params, rest, xb))
        total = st if total is None else jax.tree.map(jnp.add, total, st)
    return rest if total is None else total
