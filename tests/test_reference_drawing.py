"""``drawing="reference"``: the reference generator's own pixels (its OpenCV shapes, its putText glyphs, its
float32 digit resize), checked against OpenCV, and wired into settings, datasets, identities and the CLI.

OpenCV 5 (the test extra's) still draws the reference's shapes and resizes its digits as OpenCV 4.5-4.7 did,
so those are compared with it here; its ``putText`` does not (it refuses float canvases and draws other
glyphs), so the glyphs are compared with the counts ``putText`` of OpenCV 4.7 gave, and with OpenCV 4.5.5 and
4.7 themselves by ``scripts/reference_stamps.py --check`` and ``scripts/reference_images_check.py``
(docs/dataset.md)."""
import numpy as np
import pytest
import torch

from biasbench.cli import main
from biasbench.config import DatasetSettings, TrainConfig
from biasbench.data import reference_stamps as ref
from biasbench.data.biased_mnist import BiasedMNIST, generate
from biasbench.data.factors import FACTOR_TABLE, FACTORS, SHAPES, TEXTURES
from biasbench.data.mnist import load_mnist
from biasbench.data.recipe import dataset_identity, read_manifest
from biasbench.data.render import Renderer
from biasbench.data.resize import opencv_enlarge_float32
from biasbench.data.stamps import shape_patches, texture_canvases
from biasbench.errors import BiasbenchError
from biasbench.train.loop import run_identity

from .conftest import TINY

cv2 = pytest.importorskip("cv2")


def opencv_shapes(d: int = 16) -> np.ndarray:
    """The reference's shape patches (``datasets/shape_generator.py``'s geometry, described in
    docs/dataset.md), drawn with OpenCV, in the order of ``SHAPES``."""
    def polygon(*polys):
        img = np.zeros((d, d), np.uint8)
        for v in polys:
            pts = np.array(v, np.int32).reshape(-1, 1, 2)
            cv2.polylines(img, [pts], isClosed=True, color=255, thickness=1)
            cv2.fillPoly(img, [pts], color=255)
        return img > 0

    disc = np.zeros((d, d), np.uint8)
    cv2.circle(disc, (d // 2, d // 2), d // 2, 255, thickness=-1)
    half = disc.copy()
    half[:, d // 2:] = 0
    out = {
        "circle": disc > 0, "semi_circle": half > 0,
        "right_triangle": polygon([(0, 0), (0, d), (d, d)]),
        "obtuse_triangle": polygon([(0, 0), (d / 3, d), (d, d)]),
        "square": polygon([(0, 0), (0, d), (d, d), (d, 0)]),
        "parallelogram": polygon([(d / 3, 0), (0, d), (2 * d / 3, d), (d, 0)]),
        "kite": polygon([(d / 2, 0), (0, d / 3), (d / 2, d), (d, d / 3)]),
        "pentagon": polygon([(d / 2, 0), (0, d / 3), (d / 3, d), (2 * d / 3, d), (d, d / 3)]),
        "plus": polygon([(d / 3, 0), (d / 3, d), (2 * d / 3, d), (2 * d / 3, 0)],
                        [(0, d / 3), (0, 2 * d / 3), (d, 2 * d / 3), (d, d / 3)]),
        "arrow": polygon([(0, d / 4), (0, 3 * d / 4), (2 * d / 3, 3 * d / 4), (d, d / 2), (2 * d / 3, d / 4)]),
    }
    return np.stack([out[s] for s in SHAPES])


def opencv_digit_masks(digits: np.ndarray) -> np.ndarray:
    """The reference's silhouettes: ``cv2.resize`` of ToTensor's [0, 1] float32 digits, x 255, > 127."""
    return np.stack([cv2.resize(np.repeat(d[:, :, None].astype(np.float32) / 255, 3, axis=2), (32, 32),
                                interpolation=cv2.INTER_AREA)[:, :, 0] * 255 > 127 for d in digits])


@pytest.fixture(scope="module")
def digits():
    return load_mnist().train_images[:2000].copy()  # writable, as torch.as_tensor wants


def test_shapes_are_the_reference_opencv_drawings():
    np.testing.assert_array_equal(shape_patches(32, "reference"), opencv_shapes())
    # the differences the reference's geometry makes: its semi-circle is the disc's left half, its square
    # fills the patch
    semi, square = (shape_patches(32, "reference")[SHAPES.index(s)] for s in ("semi_circle", "square"))
    assert semi[:, 8:].sum() == 0 and semi[:, :8].sum() > 0 and square.all()
    assert not np.array_equal(shape_patches(32, "reference"), shape_patches(32))


def test_texture_lattices_have_putTexts_pixels():
    """Each lattice holds as many pixels as OpenCV 4.7's putText set at the 36 origins; the top row's glyphs,
    which the image's edge cuts, are OpenCV's clipped drawings, not the inner glyph cut off."""
    lattices = texture_canvases(32, "reference")
    assert [int(t.sum()) for t in lattices] == [ref.LATTICE_PIXELS[t] for t in TEXTURES]
    assert ref.LATTICE_PIXELS == {"-": 288, "/": 480, "|": 480, "+": 534, "x": 504, "~": 576, "::": 288,
                                  ">": 492, "<": 456, "\\": 360}
    # '|' at x = 6 + 2: 14 px tall inside, 10 px (rows 0-9) on the top row
    bar = lattices[TEXTURES.index("|")]
    assert np.nonzero(bar[:, 8])[0][:10].tolist() == list(range(10)) and bar[:, 8].sum() == 10 + 5 * 14
    gt = lattices[TEXTURES.index(">")]
    inner_row0 = ref.GLYPHS[">"][2][0]
    assert gt[0, 6 + 2: 6 + 2 + len(inner_row0)].tolist() != [c == "#" for c in inner_row0]


@pytest.mark.parametrize("cell", [8, 10, 16, 64])
def test_other_cell_sizes_resample_the_reference(cell):
    shapes, lattices = shape_patches(cell, "reference"), texture_canvases(cell, "reference")
    assert shapes.shape == (10, cell // 2, cell // 2) and lattices.shape == (10, 3 * cell, 3 * cell)
    assert len({s.tobytes() for s in shapes}) >= 9  # at 4x4 (cell 8) pentagon and plus coincide
    assert len({t.tobytes() for t in lattices}) >= 9 and lattices.reshape(10, -1).any(axis=1).all()
    if cell == 64:  # enlarging repeats pixels: each reference pixel becomes a 2x2 block
        np.testing.assert_array_equal(lattices[:, ::2, ::2], texture_canvases(32, "reference"))
        assert lattices.sum() == 4 * texture_canvases(32, "reference").sum()


def test_digit_resize_is_opencvs_float32(digits):
    """The reference drawing's silhouettes are OpenCV's, pixel for pixel, on both backends; the default's
    exact float64 resize differs from them at near-ties (which is why the reference drawing has its own)."""
    expected = opencv_digit_masks(digits)
    np.testing.assert_array_equal(Renderer(32, drawing="reference").digit_masks_numpy(digits), expected)
    torch_masks = Renderer(32, backend="torch", drawing="reference").digit_masks(torch.from_numpy(digits))
    np.testing.assert_array_equal(torch_masks.numpy(), expected)
    x = np.repeat(digits[:50, :, :, None].astype(np.float32) / 255, 3, axis=3)
    values = np.stack([cv2.resize(d, (32, 32), interpolation=cv2.INTER_AREA)[:, :, 0] for d in x])
    np.testing.assert_array_equal(opencv_enlarge_float32(digits[:50], 32), values)  # every value, bit for bit
    assert (Renderer(32).digit_masks_numpy(digits) != expected).sum() > 0
    with pytest.raises(ValueError, match="enlarges"):
        opencv_enlarge_float32(digits[:2], 16)


def test_images_are_the_reference_generators(digits):
    """Whole images with the JPEG round trip: the background, the reference's shapes in the 8 other cells
    (OpenCV), the glyph lattice, the digit (OpenCV's resize), then cv2.imencode / imdecode at quality 95."""
    rng = np.random.default_rng(0)
    n = 40
    factors = np.stack([rng.integers(0, FACTOR_TABLE[f].num_values, n) for f in FACTORS], axis=1).astype(np.uint8)
    ours = Renderer(32, drawing="reference", jpeg_quality=95).render(digits[:n], factors).numpy()
    by_torch = Renderer(32, backend="torch", drawing="reference", jpeg_quality=95).render(digits[:n], factors)
    np.testing.assert_array_equal(by_torch.numpy(), ours)  # the backend every GPU uses
    shapes, lattices, masks = opencv_shapes(), texture_canvases(32, "reference"), opencv_digit_masks(digits[:n])
    for i, row in enumerate(factors):
        v = {f: int(x) for f, x in zip(FACTORS, row)}
        color = {f: FACTOR_TABLE[f].values[v[f]] for f in FACTORS}
        img = np.empty((96, 96, 3), np.uint8)
        img[:] = color["background_color"]
        cell = FACTOR_TABLE["digit_position"].values[v["digit_position"]]
        for g in set(range(9)) - {cell}:
            r, c = divmod(g, 3)
            img[32 * r + 8: 32 * r + 24, 32 * c + 8: 32 * c + 24][shapes[v["distractor_shape"]]] = \
                color["distractor_color"]
        img[lattices[v["texture"]]] = color["texture_color"]
        r, c = divmod(cell, 3)
        img[32 * r: 32 * r + 32, 32 * c: 32 * c + 32][masks[i]] = color["digit_color"]
        expected = cv2.imdecode(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])[1], cv2.IMREAD_COLOR)
        np.testing.assert_array_equal(ours[i].transpose(1, 2, 0), expected, err_msg=f"image {i}")


def test_settings_ids_and_folder_checks(tmp_path):
    default, reference = DatasetSettings(**TINY), DatasetSettings(**TINY, drawing="reference")
    assert "drawing" not in default.to_dict()  # datasets, trials and runs from before the option keep their ids
    assert reference.to_dict()["drawing"] == "reference"
    assert DatasetSettings.from_dict(reference.to_dict()) == reference
    with pytest.raises(BiasbenchError, match="unknown drawing 'opencv'.*biasbench, reference"):
        DatasetSettings(drawing="opencv")
    a, b = tmp_path / "a", tmp_path / "b"
    generate(a, default)
    generate(b, reference)
    ma, mb = read_manifest(a), read_manifest(b)
    assert ma["recipe_sha256"] == mb["recipe_sha256"]  # same recipe, other pixels: the identities tell them apart
    assert dataset_identity(ma) == ma["recipe_sha256"] + "+cell8"
    assert dataset_identity(mb) == mb["recipe_sha256"] + "+reference-drawing+cell8"
    cfg = TrainConfig(data=str(a))
    assert run_identity(cfg, ma) != run_identity(cfg, mb)
    with pytest.raises(BiasbenchError, match="drawing biasbench vs reference"):
        BiasedMNIST(a, "train", drawing="reference")
    ds = BiasedMNIST(b, "train", drawing="reference")
    images = ds.render(np.arange(64))
    renderer = Renderer(8, drawing="reference")
    np.testing.assert_array_equal(images.numpy(), renderer.render(ds.digits(np.arange(64)), ds.factors[:64]).numpy())
    assert not torch.equal(images, BiasedMNIST(a, "train").render(np.arange(64)))


def test_cli_generate_with_the_reference_drawing(tmp_path, capsys):
    out = tmp_path / "ds"
    assert main(["data", "generate", "--out", str(out), "--cell-size", "8", "--n-train", "100", "--n-val", "20",
                 "--n-test", "20", "--drawing", "reference", "--jpeg-quality", "95"]) == 0
    assert "drawn as the reference drew them after a JPEG round trip at quality 95" in capsys.readouterr().out
    assert main(["data", "stats", str(out)]) == 0
    assert "jpeg_quality=95  drawing=reference" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["data", "generate", "--out", str(tmp_path / "x"), "--drawing", "opencv"])
    assert exc.value.code == 2 and "invalid choice: 'opencv'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
