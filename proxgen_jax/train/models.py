"""Small Flax NNX networks for CPU-scale experiments: an MLP, a small CNN and a small ResNet.

All take channels-last inputs and return logits ``(N, num_classes)``. Convolutional weights are named
``kernel`` (as in every Flax layer), so :func:`proxgen_jax.kernels_only` selects exactly the weights the
paper regularises (conv and dense kernels; biases and BatchNorm scales/offsets stay unregularised).

``SmallCNN`` and ``SmallResNet`` work for 2-D images ``(N, H, W, C)`` (e.g. digits, ``(N, 8, 8, 1)``) and,
with ``spatial_dims=1``, for sequences ``(N, L, C)`` (e.g. MNIST-1D, ``(N, 40, 1)``).

``SmallResNet`` uses BatchNorm: call ``model.train()`` / ``model.eval()`` to switch between batch statistics and
running averages, and carry the ``nnx.BatchStat`` state through a functional training step
(:mod:`proxgen_jax.train.loop` does this).

Example:
  >>> from flax import nnx
  >>> import jax.numpy as jnp
  >>> m = SmallCNN(10, rngs=nnx.Rngs(0))
  >>> m(jnp.zeros((2, 8, 8, 1))).shape
  (2, 10)
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx


class MLP(nnx.Module):
    """Fully connected ReLU network; inputs are flattened after the batch axis."""

    def __init__(self, in_features: int, hidden: Sequence[int] = (64,), num_classes: int = 10, *, rngs: nnx.Rngs):
        if int(in_features) < 1:
            raise ValueError(f"in_features must be >= 1, got {in_features!r}")
        if int(num_classes) < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes!r}")
        sizes = [int(in_features), *[int(h) for h in hidden]]
        self.hidden = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])
        self.head = nnx.Linear(sizes[-1], int(num_classes), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape(x.shape[0], -1)
        for layer in self.hidden:
            x = jax.nn.relu(layer(x))
        return self.head(x)


class SmallCNN(nnx.Module):
    """Conv(3)+ReLU blocks (2×2 max-pool after each but the first) → flatten → Linear.

    Args:
      num_classes: number of logits.
      rngs: NNX random streams for initialisation.
      channels: output channels of each conv block.
      in_channels: input channels (1 for digits / MNIST-1D).
      spatial_shape: input spatial size, ``(8, 8)`` for digits; ``(40,)`` for MNIST-1D sets ``spatial_dims = 1``.
    """

    def __init__(self, num_classes: int = 10, *, rngs: nnx.Rngs, channels: Sequence[int] = (16, 32),
                 in_channels: int = 1, spatial_shape: Sequence[int] = (8, 8)):
        spatial_shape = tuple(int(s) for s in spatial_shape)
        if len(spatial_shape) not in (1, 2) or min(spatial_shape) < 1:
            raise ValueError(f"spatial_shape must be 1 or 2 positive sizes, got {spatial_shape!r}")
        if not channels:
            raise ValueError("channels must be non-empty")
        self.spatial_dims = len(spatial_shape)
        ks = (3,) * self.spatial_dims
        sizes = [int(in_channels), *[int(c) for c in channels]]
        self.convs = nnx.List([nnx.Conv(a, b, kernel_size=ks, padding="SAME", rngs=rngs)
                               for a, b in zip(sizes[:-1], sizes[1:])])
        self.pool = []
        shape = list(spatial_shape)
        for i in range(len(self.convs)):
            do = i > 0 and min(shape) >= 2
            self.pool.append(do)
            if do:
                shape = [s // 2 for s in shape]
        flat = sizes[-1]
        for s in shape:
            flat *= s
        self.head = nnx.Linear(flat, int(num_classes), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        window = (2,) * self.spatial_dims
        for conv, do in zip(self.convs, self.pool):
            x = jax.nn.relu(conv(x))
            if do:
                x = nnx.max_pool(x, window_shape=window, strides=window)
        return self.head(x.reshape(x.shape[0], -1))


class _BasicBlock(nnx.Module):
    """Two 3×3 convs with BatchNorm and an identity (or 1×1 projection) shortcut (He et al., 2016)."""

    def __init__(self, cin: int, cout: int, stride: int, spatial_dims: int, *, rngs: nnx.Rngs):
        ks, st = (3,) * spatial_dims, (stride,) * spatial_dims
        self.conv1 = nnx.Conv(cin, cout, kernel_size=ks, strides=st, padding="SAME", use_bias=False, rngs=rngs)
        self.bn1 = nnx.BatchNorm(cout, momentum=0.9, rngs=rngs)
        self.conv2 = nnx.Conv(cout, cout, kernel_size=ks, padding="SAME", use_bias=False, rngs=rngs)
        self.bn2 = nnx.BatchNorm(cout, momentum=0.9, rngs=rngs)
        if stride != 1 or cin != cout:
            self.proj = nnx.Conv(cin, cout, kernel_size=(1,) * spatial_dims, strides=st, use_bias=False, rngs=rngs)
            self.bn_proj = nnx.BatchNorm(cout, momentum=0.9, rngs=rngs)
        else:
            self.proj = None
            self.bn_proj = None

    def __call__(self, x: jax.Array) -> jax.Array:
        h = jax.nn.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        s = x if self.proj is None else self.bn_proj(self.proj(x))
        return jax.nn.relu(h + s)


class SmallResNet(nnx.Module):
    """A CIFAR-style ResNet shrunk for 8×8 inputs: stem conv → stages of basic blocks → GAP → Linear.

    Args:
      num_classes: number of logits.
      rngs: NNX random streams.
      widths: channels per stage; every stage after the first halves the resolution.
      blocks_per_stage: basic blocks per stage.
      in_channels: input channels.
      spatial_dims: 2 for images, 1 for sequences.
    """

    def __init__(self, num_classes: int = 10, *, rngs: nnx.Rngs, widths: Sequence[int] = (16, 32),
                 blocks_per_stage: int = 1, in_channels: int = 1, spatial_dims: int = 2):
        if spatial_dims not in (1, 2):
            raise ValueError(f"spatial_dims must be 1 or 2, got {spatial_dims!r}")
        if int(blocks_per_stage) < 1:
            raise ValueError(f"blocks_per_stage must be >= 1, got {blocks_per_stage!r}")
        if not widths:
            raise ValueError("widths must be non-empty")
        ks = (3,) * spatial_dims
        self.spatial_dims = spatial_dims
        self.stem = nnx.Conv(int(in_channels), int(widths[0]), kernel_size=ks, padding="SAME", use_bias=False,
                             rngs=rngs)
        self.stem_bn = nnx.BatchNorm(int(widths[0]), momentum=0.9, rngs=rngs)
        blocks, cin = [], int(widths[0])
        for s, w in enumerate(widths):
            for b in range(int(blocks_per_stage)):
                stride = 2 if (s > 0 and b == 0) else 1
                blocks.append(_BasicBlock(cin, int(w), stride, spatial_dims, rngs=rngs))
                cin = int(w)
        self.blocks = nnx.List(blocks)
        self.head = nnx.Linear(cin, int(num_classes), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jax.nn.relu(self.stem_bn(self.stem(x)))
        for blk in self.blocks:
            x = blk(x)
        x = jnp.mean(x, axis=tuple(range(1, 1 + self.spatial_dims)))
        return self.head(x)


def make_model(name: str, input_shape: Sequence[int], num_classes: int = 10, *, seed: int = 0,
               hidden: Sequence[int] = (64,), channels: Sequence[int] = (16, 32)) -> nnx.Module:
    """Builds ``"mlp"``, ``"cnn"`` or ``"resnet"`` for per-example inputs of ``input_shape`` (no batch axis)."""
    rngs = nnx.Rngs(int(seed))
    shape = tuple(int(s) for s in input_shape)
    if name == "mlp":
        n = 1
        for s in shape:
            n *= s
        return MLP(n, tuple(hidden), num_classes, rngs=rngs)
    spatial = len(shape) - 1
    if name == "cnn":
        return SmallCNN(num_classes, rngs=rngs, channels=tuple(channels), in_channels=shape[-1],
                        spatial_shape=shape[:-1])
    if name == "resnet":
        return SmallResNet(num_classes, rngs=rngs, widths=tuple(channels), in_channels=shape[-1],
                           spatial_dims=spatial)
    raise ValueError(f"model must be 'mlp', 'cnn' or 'resnet', got {name!r}")
