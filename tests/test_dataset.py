import hashlib

import numpy as np
import pytest
import torch

from biasbench.config import DatasetSettings
from biasbench.data.biased_mnist import BiasedMNIST, generate
from biasbench.data.mnist import load_mnist
from biasbench.data.recipe import load_recipe, read_manifest
from biasbench.errors import BiasbenchError

from .conftest import TINY


def _digest(root):
    h = hashlib.sha256()
    for split in ("train", "val", "balanced_val", "test"):
        ds = BiasedMNIST(root, split=split, download=False)
        h.update(ds.factors.tobytes())
        h.update(ds.render().numpy().tobytes())
    return h.hexdigest()


def test_same_settings_same_bytes(tmp_path, tiny_root):
    other = tmp_path / "again"
    generate(other, DatasetSettings(**TINY))
    assert (other / "recipe.npz").read_bytes() == (tiny_root / "recipe.npz").read_bytes()
    assert read_manifest(other)["recipe_sha256"] == read_manifest(tiny_root)["recipe_sha256"]
    assert _digest(other) == _digest(tiny_root)
    third = tmp_path / "seed1"
    generate(third, DatasetSettings(**{**TINY, "seed": 1}))
    assert read_manifest(third)["recipe_sha256"] != read_manifest(tiny_root)["recipe_sha256"]


def test_splits_follow_the_paper_protocol(tiny_root):
    rec = load_recipe(tiny_root)
    m = load_mnist()
    assert {k: len(v) for k, v in rec.items()} == {"train": 2000, "val": 500, "balanced_val": 500, "test": 500}
    assert not set(rec["train"].mnist_index) & set(rec["val"].mnist_index)
    assert np.array_equal(rec["val"].mnist_index, rec["balanced_val"].mnist_index)
    assert not np.array_equal(rec["val"].factors, rec["balanced_val"].factors)
    assert np.array_equal(rec["test"].mnist_index, np.arange(500))
    assert np.array_equal(rec["test"].label, m.test_labels[:500])
    assert np.array_equal(rec["train"].label, m.train_labels[rec["train"].mnist_index])


def test_dataset_items_and_dataloader(tiny_root):
    ds = BiasedMNIST(tiny_root, split="train", download=False)
    img, label, factors = ds[3]
    assert img.shape == (3, 24, 24) and img.dtype == torch.uint8
    assert label == int(ds.labels[3]) and factors.shape == (7,)
    loader = torch.utils.data.DataLoader(ds, batch_size=64, shuffle=True)
    x, y, f = next(iter(loader))
    assert x.shape == (64, 3, 24, 24) and y.shape == (64,) and f.shape == (64, 7)
    t = BiasedMNIST(tiny_root, split="test", transform=lambda im: im.float() / 255, download=False)
    assert t[0][0].dtype == torch.float32
    assert torch.equal(ds.render(np.array([3])), img[None])


def test_settings_are_checked(tiny_root):
    with pytest.raises(BiasbenchError, match=r"other settings \(folder vs requested\): p_bias 0.7 vs 0.9"):
        BiasedMNIST(tiny_root, p_bias=0.9)
    assert BiasedMNIST(tiny_root, split="val", cell_size=8).image_size == 24
    with pytest.raises(BiasbenchError, match="unknown split"):
        BiasedMNIST(tiny_root, split="dev")


def test_dataset_generates_when_missing(tmp_path):
    ds = BiasedMNIST(tmp_path / "new", split="test", cell_size=8, n_train=100, n_val=50, n_test=50, p_bias=1.0)
    assert len(ds) == 50
    train = BiasedMNIST(tmp_path / "new", split="train")
    assert train.aligned().all()  # p_bias = 1: every factor aligned
    with pytest.raises(BiasbenchError, match="download=False"):
        BiasedMNIST(tmp_path / "absent", download=False)


@pytest.mark.parametrize("kwargs, match", [
    (dict(p_bias=1.5), r"p_bias must be in \[0, 1\]"),
    (dict(p_bias="texture=2"), "p_bias for texture"),
    (dict(p_bias="colour=0.5"), "unknown factor 'colour'"),
    (dict(mode="fancy"), "unknown mode"),
    (dict(cell_size=4), "too small to draw"),
    (dict(n_train=55_000, n_val=10_000), "exceeds the 60000"),
    (dict(n_test=20_000), r"test size must be in \[1, 10000\]"),
])
def test_bad_settings(kwargs, match):
    with pytest.raises(BiasbenchError, match=match):
        DatasetSettings(**kwargs)


def test_per_factor_p_bias(tmp_path):
    s = DatasetSettings(p_bias="digit_color=1.0,texture=0.0", cell_size=8, n_train=3000, n_val=10, n_test=10)
    generate(tmp_path / "d", s)
    ds = BiasedMNIST(tmp_path / "d", split="train")
    al = ds.aligned()
    assert al[:, 0].all() and not al[:, 5].any()
    assert abs(al[:, 1].mean() - 0.7) < 0.05
