import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest

from biasbench.data import mnist
from biasbench.errors import BiasbenchError

SHIPPED = Path(__file__).resolve().parents[1] / "data" / "mnist"


def test_shipped_files_load_and_verify():
    m = mnist.load_mnist(SHIPPED)
    assert m.train_images.shape == (60000, 28, 28) and m.train_images.dtype == np.uint8
    assert m.test_images.shape == (10000, 28, 28)
    assert m.train_labels[:5].tolist() == [5, 0, 4, 1, 9]  # the canonical first training labels
    assert m.test_labels[:3].tolist() == [7, 2, 1]


def test_raw_files_are_read_too(tmp_path):
    for stem in mnist.FILES:
        (tmp_path / stem).write_bytes(gzip.decompress((SHIPPED / f"{stem}.gz").read_bytes()))
    m = mnist.load_mnist(tmp_path)
    assert m.test_labels.shape == (10000,)


def _copy(tmp_path):
    for stem in mnist.FILES:
        shutil.copy(SHIPPED / f"{stem}.gz", tmp_path / f"{stem}.gz")
    return tmp_path


def test_corrupt_file_names_file_and_checksum(tmp_path):
    d = _copy(tmp_path)
    stem = "t10k-labels-idx1-ubyte"
    raw = bytearray(gzip.decompress((d / f"{stem}.gz").read_bytes()))
    raw[100] ^= 1
    (d / f"{stem}.gz").write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(BiasbenchError) as exc:
        mnist.load_mnist(d)
    msg = str(exc.value)
    assert stem in msg and mnist.FILES[stem] in msg and "--mnist" in msg


def test_not_gzip_is_a_clear_error(tmp_path):
    d = _copy(tmp_path)
    (d / "train-labels-idx1-ubyte.gz").write_bytes(b"garbage")
    with pytest.raises(BiasbenchError, match="train-labels-idx1-ubyte"):
        mnist.load_mnist(d)


def test_missing_file_in_explicit_dir(tmp_path):
    d = _copy(tmp_path)
    (d / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(BiasbenchError, match="t10k-images-idx3-ubyte.*2646ac647ad5339dbf082846283269ea"):
        mnist.locate(d)


def test_search_order_env_before_checkout(tmp_path, monkeypatch):
    (tmp_path / "env").mkdir()
    d = _copy(tmp_path / "env")
    monkeypatch.setenv("BIASBENCH_MNIST_DIR", str(d))
    assert mnist.locate() == d
    monkeypatch.delenv("BIASBENCH_MNIST_DIR")
    assert mnist.locate() == SHIPPED.resolve()


def test_download_into_cache_from_a_mirror(tmp_path, monkeypatch):
    """No checkout copy, no env, empty cache: the files come from the (file://) mirror and are verified."""
    (tmp_path / "mirror").mkdir()
    mirror = _copy(tmp_path / "mirror")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("BIASBENCH_MNIST_MIRRORS", "file:///nonexistent/," + mirror.as_uri() + "/")
    monkeypatch.setattr(mnist, "_checkout_dir", lambda: tmp_path / "nowhere")
    monkeypatch.chdir(tmp_path)
    folder = mnist.locate(download=True)
    assert folder == tmp_path / "cache" / "biasbench" / "mnist"
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{s}.gz" for s in mnist.FILES)
    assert mnist.load_mnist().train_labels[0] == 5
    with pytest.raises(BiasbenchError, match="MNIST not found"):
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty"))
        mnist.locate(download=False)


def test_idx_parser_rejects_bad_headers():
    with pytest.raises(BiasbenchError, match="magic"):
        mnist.parse_idx(b"\x00\x00\x0d\x01\x00\x00\x00\x01\x00")
    with pytest.raises(BiasbenchError, match="size"):
        mnist.parse_idx(b"\x00\x00\x08\x01\x00\x00\x00\x05\x00")
