"""Data loaders and models of proxgen_jax.train: shapes, dtypes, ranges, splits, the TFDS conversion path."""

from __future__ import annotations

import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from proxgen_jax._tree import kernels_only
from proxgen_jax.train import data, models
from proxgen_jax.train.optimizers import binary_mask


def test_digits_split_shapes_ranges_and_stratification():
    from sklearn.datasets import load_digits
    ref = load_digits()
    x_tr, y_tr, x_te, y_te = data.load_digits_split(seed=0, test_fraction=0.25)
    assert x_tr.shape[1:] == (8, 8, 1) and x_te.shape[1:] == (8, 8, 1)
    assert x_tr.dtype == np.float32 and y_tr.dtype == np.int32 and y_te.dtype == np.int32
    assert x_tr.shape[0] + x_te.shape[0] == ref.images.shape[0]
    assert 0.0 <= x_tr.min() and x_tr.max() <= 1.0 and x_tr.max() == 1.0
    # Every class keeps its proportion (within one example of round(25 %)).
    counts = np.bincount(ref.target, minlength=10)
    np.testing.assert_array_less(np.abs(np.bincount(y_te, minlength=10) - 0.25 * counts), 1.0)
    # The multiset of images is preserved: the split is a permutation of sklearn's data (pixels * 16 are ints).
    all_x = np.concatenate([x_tr, x_te]).reshape(-1, 64) * 16
    np.testing.assert_array_equal(np.sort(all_x.sum(1)), np.sort(ref.data.sum(1)))
    # Deterministic per seed, different across seeds.
    again = data.load_digits_split(seed=0)
    np.testing.assert_array_equal(again[1], y_tr)
    other = data.load_digits_split(seed=1)
    assert not np.array_equal(other[1], y_tr)


def test_digits_split_rejects_bad_fraction():
    with pytest.raises(ValueError, match="test_fraction"):
        data.load_digits_split(test_fraction=1.0)


def test_mnist1d_shapes_standardised_and_global_rng_restored():
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    x_tr, y_tr, x_te, y_te = data.load_mnist1d(seed=3, num_samples=200, train_split=0.75)
    assert np.array_equal(np.random.get_state()[1], before)
    assert x_tr.shape == (150, 40, 1) and x_te.shape == (50, 40, 1)
    assert x_tr.dtype == np.float32 and y_tr.dtype == np.int32
    assert set(np.unique(np.concatenate([y_tr, y_te]))) == set(range(10))
    allx = np.concatenate([x_tr, x_te])
    assert abs(float(allx.mean())) < 1e-4 and abs(float(allx.std()) - 1.0) < 1e-4  # the generator standardises
    x2 = data.load_mnist1d(seed=3, num_samples=200, train_split=0.75)[0]
    np.testing.assert_array_equal(x2, x_tr)


def test_tfds_array_conversion_on_a_standin():
    rng = np.random.default_rng(0)
    batch = {"image": rng.integers(0, 256, (7, 5, 4), dtype=np.uint8), "label": np.arange(7, dtype=np.int64)}
    x, y = data.arrays_from_tfds(batch)
    assert x.shape == (7, 5, 4, 1) and x.dtype == np.float32 and y.dtype == np.int32
    np.testing.assert_allclose(x[..., 0], batch["image"] / 255.0, rtol=1e-6)
    x3, y3 = data.arrays_from_tfds({"image": np.ones((4, 2, 2, 3), np.float64) * 0.5, "label": [1, 2, 3, 4]},
                                   max_examples=3)
    assert x3.shape == (3, 2, 2, 3) and np.all(x3 == 0.5) and y3.tolist() == [1, 2, 3]
    with pytest.raises(ValueError, match="disagree"):
        data.arrays_from_tfds({"image": np.zeros((3, 2, 2)), "label": np.zeros(2)})


def test_load_tfds_through_a_fake_tfds_module(monkeypatch):
    calls = []

    def load(name, split, batch_size, data_dir):
        calls.append((name, split, batch_size))
        n = 6 if split == "train" else 4
        return {"image": np.full((n, 3, 3), 255, np.uint8), "label": np.arange(n) % 2}

    fake = types.SimpleNamespace(load=load, as_numpy=lambda d: d)
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)
    x_tr, y_tr, x_te, y_te = data.load_dataset("tfds:fake_mnist")
    assert calls == [("fake_mnist", "train", -1), ("fake_mnist", "test", -1)]
    assert x_tr.shape == (6, 3, 3, 1) and x_te.shape == (4, 3, 3, 1) and np.all(x_tr == 1.0)
    assert y_te.dtype == np.int32


def test_batches_cover_each_example_once():
    x = np.arange(10, dtype=np.float32)[:, None]
    y = np.arange(10, dtype=np.int32)
    seen = np.concatenate([b[1] for b in data.batches(x, y, 3, np.random.default_rng(0), drop_last=False)])
    assert sorted(seen.tolist()) == list(range(10))
    full = [b[1] for b in data.batches(x, y, 3, np.random.default_rng(0))]
    assert [len(b) for b in full] == [3, 3, 3]


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet"])
@pytest.mark.parametrize("shape", [(8, 8, 1), pytest.param((40, 1), marks=pytest.mark.slow)])  # 1-D: mnist1d
def test_models_output_shapes_and_kernel_mask(name, shape):
    m = models.make_model(name, shape, 10, seed=0)
    out = m(jnp.zeros((3, *shape)))
    assert out.shape == (3, 10)
    params = nnx.to_pure_dict(nnx.split(m, nnx.Param, ...)[1])
    flags = jax.tree_util.tree_flatten_with_path(kernels_only(params))[0]
    for path, on in flags:
        assert on == ("kernel" in jax.tree_util.keystr(path))
    # The binary task keeps the first and the last layer in full precision.
    bflags = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(binary_mask(params))[0]}
    assert not any(v for k, v in bflags.items() if "head" in k or "stem" in k or "[0]['kernel']" in k and
                   ("convs" in k or "hidden" in k))
    if name != "mlp":
        assert any(bflags.values())


@pytest.mark.slow  # 13 s; the ResNet's shapes are tested in the default run
def test_resnet_batchnorm_train_vs_eval():
    m = models.SmallResNet(10, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (8, 8, 8, 1)) * 3 + 1
    m.eval()
    y0 = m(x)
    np.testing.assert_allclose(np.asarray(m(x)), np.asarray(y0))  # eval: running stats, nothing changes
    stats0 = jax.tree.leaves(nnx.state(m, nnx.BatchStat))
    m.train()
    m(x)
    stats1 = jax.tree.leaves(nnx.state(m, nnx.BatchStat))
    assert any(not np.allclose(a, b) for a, b in zip(stats0, stats1))
    # The stem's running mean moved by (1 - momentum) times the batch mean of its conv output.
    conv_out = m.stem(x)
    np.testing.assert_allclose(np.asarray(m.stem_bn.mean[...]), 0.1 * np.asarray(conv_out.mean((0, 1, 2))),
                               rtol=1e-4, atol=1e-6)


def test_model_argument_validation():
    with pytest.raises(ValueError, match="model"):
        models.make_model("vgg", (8, 8, 1))
    with pytest.raises(ValueError, match="in_features"):
        models.MLP(0, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="spatial_shape"):
        models.SmallCNN(10, rngs=nnx.Rngs(0), spatial_shape=(2, 2, 2))
