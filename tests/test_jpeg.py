"""The JPEG round trip of the reference's dataset files: byte-exact against libjpeg-turbo (OpenCV, the
reference's own calls, and Pillow), and wired into datasets, rendering and run identities."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from biasbench.cli import main
from biasbench.config import DatasetSettings, TrainConfig
from biasbench.data.biased_mnist import BiasedMNIST, generate
from biasbench.data.jpeg import REFERENCE_QUALITY, jpeg_roundtrip, quant_tables
from biasbench.data.recipe import read_manifest
from biasbench.data.render import Renderer
from biasbench.errors import BiasbenchError
from biasbench.train.loop import run_identity

from .conftest import TINY


def pillow_roundtrip(images: np.ndarray, quality: int) -> np.ndarray:
    """libjpeg-turbo through Pillow; images in model (BGR) order, as OpenCV would hand them over."""
    out = []
    for img in images:
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(img.transpose(1, 2, 0)[..., ::-1])).save(buf, "JPEG", quality=quality)
        buf.seek(0)
        out.append(np.asarray(Image.open(buf).convert("RGB"))[..., ::-1].transpose(2, 0, 1))
    return np.stack(out)


def noise(n, h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 3, h, w), dtype=np.uint8)


@pytest.mark.parametrize("h,w", [(96, 96), (24, 24), (30, 42), (25, 17)])
@pytest.mark.parametrize("quality", [95, 50, 7, 100])
def test_roundtrip_equals_libjpeg_on_noise(h, w, quality):
    """Noise reaches every rounding step; sizes that are not multiples of 16 exercise the MCU padding."""
    x = noise(3, h, w, seed=h * w + quality)
    ours = jpeg_roundtrip(torch.from_numpy(x), quality).numpy()
    assert np.array_equal(ours, pillow_roundtrip(x, quality))
    assert not np.array_equal(ours, x)


def test_roundtrip_equals_libjpeg_at_extreme_contrast():
    """Checkerboards, stripes and grids of 0 and 255 in every channel combination: the largest DCT
    coefficients, where 32-bit integer arithmetic would overflow first."""
    yy, xx = np.mgrid[:32, :32]
    masks = [(yy + xx) % 2, yy % 2, xx % 2, (yy // 2 + xx // 2) % 2, ((yy % 8) < 4) ^ ((xx % 8) < 4),
             ((xx % 8 == 0) | (yy % 8 == 0)).astype(int)]
    x = np.stack([np.stack([np.where(m ^ inv, 255 * c, 255 * (1 - c)) for c in (c0, c1, c2)]).astype(np.uint8)
                  for m in masks for inv in (0, 1) for c0 in (0, 1) for c1 in (0, 1) for c2 in (0, 1)])
    for quality in (100, 95, 1):
        assert np.array_equal(jpeg_roundtrip(torch.from_numpy(x), quality).numpy(), pillow_roundtrip(x, quality))


def test_roundtrip_equals_the_references_opencv_calls(tiny_root, tmp_path):
    """What ``cv2.imwrite(path, img)`` then ``cv2.imread(path)`` give, on rendered images at 24 and 96 px."""
    cv2 = pytest.importorskip("cv2")
    big = tmp_path / "big"
    generate(big, DatasetSettings(n_train=40, n_val=10, n_test=10))
    for root in (tiny_root, big):
        x = BiasedMNIST(root, split="test", download=False).render(np.arange(6)).numpy()
        ref = []
        for i, img in enumerate(x):
            path = str(tmp_path / f"{i}.jpg")
            assert cv2.imwrite(path, np.ascontiguousarray(img.transpose(1, 2, 0)))  # OpenCV's default quality
            ref.append(cv2.imread(path).transpose(2, 0, 1))
        ours = jpeg_roundtrip(torch.from_numpy(x), REFERENCE_QUALITY).numpy()
        assert np.array_equal(ours, np.stack(ref))


def test_quantisers_follow_libjpeg_scaling():
    luma50, chroma50 = quant_tables(50)  # quality 50 is the standard's tables themselves
    assert luma50[0].tolist() == [16, 11, 10, 16, 24, 40, 51, 61] and chroma50[0, 0] == 17 and chroma50[7, 7] == 99
    assert (quant_tables(100)[0] == 1).all()
    luma95, _ = quant_tables(95)  # scale 10: (t * 10 + 50) // 100
    assert luma95[0].tolist() == [2, 1, 1, 2, 2, 4, 5, 6]
    assert (quant_tables(1)[1] == 255).all()  # baseline clamps at 255


def test_roundtrip_checks_its_input():
    with pytest.raises(BiasbenchError, match="uint8"):
        jpeg_roundtrip(torch.zeros(1, 3, 8, 8), 95)
    with pytest.raises(BiasbenchError, match="1..100"):
        jpeg_roundtrip(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), 101)
    x = torch.from_numpy(noise(2, 16, 16))
    assert torch.equal(jpeg_roundtrip(x, 0), x)  # 0: lossless, a copy
    same = x.clone()
    assert jpeg_roundtrip(same, 90, out=same) is same and torch.equal(same, jpeg_roundtrip(x, 90))


def test_jpeg_dataset_renders_the_roundtrip_of_the_lossless_images(tiny_root, tmp_path):
    root = tmp_path / "j95"
    generate(root, DatasetSettings(**TINY, jpeg_quality=95))
    lossless, jpeg = (BiasedMNIST(r, split="val", download=False) for r in (tiny_root, root))
    assert jpeg.settings.jpeg_quality == 95 and lossless.settings.jpeg_quality == 0
    a, b = lossless.render(), jpeg.render(batch_size=100)
    assert torch.equal(b, jpeg_roundtrip(a, 95))
    assert (a != b).float().mean() > 0.05  # the round trip changes many pixels (colour fringes, thin glyphs)
    # both renderer backends, on any device, give the same bytes
    digits, fac = lossless.digits(np.arange(50)), lossless.factors[:50]
    numpy_r = Renderer(8, backend="numpy", jpeg_quality=95).render(digits, fac)
    assert torch.equal(numpy_r, Renderer(8, backend="torch", jpeg_quality=95).render(digits, fac))
    assert torch.equal(numpy_r, b[:50])
    # the folder's setting is checked like any other
    with pytest.raises(BiasbenchError, match="jpeg_quality 95 vs 0"):
        BiasedMNIST(root, jpeg_quality=0, download=False)


def test_jpeg_quality_is_part_of_identities_but_lossless_ids_are_unchanged(tiny_root, tmp_path):
    lossless = DatasetSettings(**TINY)
    assert "jpeg_quality" not in lossless.to_dict()  # hashes of lossless datasets and trials as before
    assert DatasetSettings.from_dict(lossless.to_dict()) == lossless
    j95 = DatasetSettings(**TINY, jpeg_quality="95")
    assert j95.to_dict()["jpeg_quality"] == 95 and DatasetSettings.from_dict(j95.to_dict()) == j95
    assert lossless.differences(j95) == ["jpeg_quality 0 vs 95"]
    root = tmp_path / "j95"
    generate(root, j95)
    m0, m95 = read_manifest(tiny_root), read_manifest(root)
    assert m0["recipe_sha256"] == m95["recipe_sha256"]  # same recipe, different images
    cfg = TrainConfig(data=str(tiny_root))
    assert run_identity(cfg, m0) != run_identity(cfg, m95)
    for bad in (-1, 101, "high", 9.5):
        with pytest.raises(BiasbenchError, match="JPEG quality"):
            DatasetSettings(**TINY, jpeg_quality=bad)


def test_cli_generates_a_jpeg_dataset_and_refuses_bad_quality(tmp_path, capsys):
    args = ["data", "generate", "--cell-size", "8", "--n-train", "100", "--n-val", "20", "--n-test", "20"]
    assert main(args + ["--out", str(tmp_path / "j"), "--jpeg-quality", "95"]) == 0
    assert "JPEG round trip at quality 95" in capsys.readouterr().out
    assert main(["data", "stats", str(tmp_path / "j")]) == 0
    assert "jpeg_quality=95" in capsys.readouterr().out
    assert main(args + ["--out", str(tmp_path / "j")]) == 2  # the folder holds the JPEG variant
    assert "jpeg_quality 95 vs 0" in capsys.readouterr().err
    assert main(args + ["--out", str(tmp_path / "bad"), "--jpeg-quality", "101"]) == 2
    assert "JPEG quality must be 1..100" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
