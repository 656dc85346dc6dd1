"""Small in-memory datasets for the training command and benchmarks (CPU scale, no download by default).

Every loader returns ``(x_train, y_train, x_test, y_test)`` as NumPy arrays: ``float32`` inputs in
channels-last layout and ``int32`` labels. Shapes:

* :func:`load_digits_split` — scikit-learn's 8×8 handwritten digits, ``(N, 8, 8, 1)`` in ``[0, 1]`` (1797 images).
* :func:`load_mnist1d` — the MNIST-1D generator (Greydanus & Kobak, 2020), ``(N, 40, 1)`` standardised sequences,
  generated locally (no download).
* :func:`load_tfds` — any image-classification dataset from ``tensorflow-datasets`` (optional dependency, imported
  lazily: ``pip install proxgen_jax[tfds]``), ``(N, H, W, C)`` in ``[0, 1]``.

Example:
  >>> from proxgen_jax.train.data import load_digits_split
  >>> x_tr, y_tr, x_te, y_te = load_digits_split(seed=0)
  >>> x_tr.shape, x_tr.dtype, y_tr.dtype
  ((1347, 8, 8, 1), dtype('float32'), dtype('int32'))
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

Split = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _stratified_split(n_classes: int, y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a per-class shuffled train/test split (class proportions kept)."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in range(n_classes):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        n_test = int(round(test_fraction * idx.size))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    train_idx, test_idx = np.concatenate(train), np.concatenate(test)
    rng.shuffle(train_idx)
    rng.shuffle(test_idx)
    return train_idx, test_idx


def load_digits_split(seed: int = 0, test_fraction: float = 0.25) -> Split:
    """scikit-learn's 8×8 digits as images ``(N, 8, 8, 1)`` in ``[0, 1]`` with a stratified train/test split.

    Args:
      seed: seed of the split (the images themselves are fixed).
      test_fraction: fraction of each class held out, in ``(0, 1)``.

    Returns:
      ``(x_train, y_train, x_test, y_test)``; ``float32`` images, ``int32`` labels in ``0..9``.
    """
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (np.asarray(d.images, np.float32) / 16.0)[..., None]
    y = np.asarray(d.target, np.int32)
    tr, te = _stratified_split(10, y, float(test_fraction), int(seed))
    return x[tr], y[tr], x[te], y[te]


def load_mnist1d(seed: int = 42, num_samples: int = 5000, train_split: float = 0.8) -> Split:
    """MNIST-1D sequences ``(N, 40, 1)`` from the ``mnist1d`` generator (offline, deterministic in ``seed``).

    Uses ``mnist1d.data.make_dataset`` with its default arguments except ``seed``, ``num_samples`` and
    ``train_split`` (defaults are the package's: 5000 samples, 80 % train). The generator reseeds NumPy's
    global RNG; the previous global state is restored afterwards.

    Returns:
      ``(x_train, y_train, x_test, y_test)``; ``float32`` sequences (standardised by the generator), ``int32`` labels.
    """
    if int(num_samples) < 10:
        raise ValueError(f"num_samples must be >= 10, got {num_samples!r}")
    if not 0.0 < float(train_split) < 1.0:
        raise ValueError(f"train_split must be in (0, 1), got {train_split!r}")
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed, args.num_samples, args.train_split = int(seed), int(num_samples), float(train_split)
    state = np.random.get_state()
    try:
        d = make_dataset(args)
    finally:
        np.random.set_state(state)
    as_x = lambda a: np.asarray(a, np.float32)[..., None]  # noqa: E731
    return as_x(d["x"]), np.asarray(d["y"], np.int32), as_x(d["x_test"]), np.asarray(d["y_test"], np.int32)


def arrays_from_tfds(batch: Mapping[str, Any], image_key: str = "image", label_key: str = "label",
                     max_examples: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Converts one full-split ``tfds.as_numpy(..., batch_size=-1)`` dict into ``(x, y)`` arrays.

    Integer images (``uint8``) are scaled to ``[0, 1]``; float images are kept; a channel axis is added to
    ``(N, H, W)`` images; labels become ``int32``.
    """
    x = np.asarray(batch[image_key])
    y = np.asarray(batch[label_key]).astype(np.int32).reshape(-1)
    if max_examples is not None:
        x, y = x[: int(max_examples)], y[: int(max_examples)]
    if np.issubdtype(x.dtype, np.integer):
        x = x.astype(np.float32) / float(np.iinfo(x.dtype).max)
    else:
        x = x.astype(np.float32)
    if x.ndim == 3:
        x = x[..., None]
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"images and labels disagree in length: {x.shape[0]} vs {y.shape[0]}")
    return x, y


def load_tfds(name: str, *, train_split: str = "train", test_split: str = "test", data_dir: str | None = None,
              max_train: int | None = None, max_test: int | None = None, image_key: str = "image",
              label_key: str = "label") -> Split:
    """An image-classification dataset from ``tensorflow-datasets`` (e.g. ``"mnist"``, ``"cifar10"``).

    ``tensorflow-datasets`` is optional and imported here only (``pip install proxgen_jax[tfds]``); the
    dataset is downloaded/prepared by TFDS into ``data_dir`` on first use. Whole splits are loaded in memory,
    so cap them with ``max_train`` / ``max_test`` for CPU runs.
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("load_tfds needs tensorflow-datasets: pip install 'proxgen_jax[tfds]'") from e
    out = []
    for split, cap in ((train_split, max_train), (test_split, max_test)):
        batch = tfds.as_numpy(tfds.load(name, split=split, batch_size=-1, data_dir=data_dir))
        out.extend(arrays_from_tfds(batch, image_key, label_key, cap))
    return out[0], out[1], out[2], out[3]


def load_dataset(spec: str, seed: int = 0) -> Split:
    """Dispatches a CLI dataset name: ``"digits"``, ``"mnist1d"`` or ``"tfds:NAME"``."""
    if spec == "digits":
        return load_digits_split(seed=seed)
    if spec == "mnist1d":
        return load_mnist1d()
    if spec.startswith("tfds:"):
        return load_tfds(spec.split(":", 1)[1])
    raise ValueError(f"dataset must be 'digits', 'mnist1d' or 'tfds:NAME', got {spec!r}")


def batches(x: np.ndarray, y: np.ndarray, batch_size: int, rng: np.random.Generator, *,
            drop_last: bool = True) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One epoch of shuffled minibatches (the last partial batch is dropped by default, keeping shapes static)."""
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    n = x.shape[0]
    perm = rng.permutation(n)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for i in range(0, stop, batch_size):
        j = perm[i:i + batch_size]
        yield x[j], y[j]
