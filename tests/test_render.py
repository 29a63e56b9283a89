import numpy as np
import pytest
import torch

from biasbench.data.factors import FACTOR_TABLE, FACTORS
from biasbench.data.mnist import load_mnist
from biasbench.data.render import Renderer, resize_matrix, to_display_rgb
from biasbench.data.stamps import shape_patches
from biasbench.errors import BiasbenchError

F = {n: i for i, n in enumerate(FACTORS)}


def _row(**values):
    row = np.zeros((1, 7), dtype=np.uint8)
    for k, v in values.items():
        row[0, F[k]] = v
    return row


def _color(name, idx):
    return np.array(FACTOR_TABLE[name].values[idx], dtype=np.uint8)


def test_resize_matches_opencv_inter_area_coefficients():
    # cv2.resize(impulse, (32, 1), interpolation=cv2.INTER_AREA), columns 0-3 of output rows 0-4
    expected = [[1.0, 0, 0, 0], [1 / 7, 6 / 7, 0, 0], [0, 2 / 7, 5 / 7, 0], [0, 0, 3 / 7, 4 / 7], [0, 0, 0, 4 / 7]]
    r = resize_matrix(32)
    np.testing.assert_allclose(r[:5, :4], expected, atol=1e-4)
    for size in (8, 16, 32, 48):
        np.testing.assert_allclose(resize_matrix(size).sum(axis=1), 1.0)
    # shrinking 28 -> 14 is a plain 2x2 average
    np.testing.assert_allclose(resize_matrix(14)[3, 6:8], [0.5, 0.5])


@pytest.fixture(scope="module")
def digit():
    m = load_mnist()
    return m.train_images[:1]  # a "5"


@pytest.mark.parametrize("cell", [0, 4, 8])
def test_constructed_image(digit, cell):
    """Digit colour exactly on the silhouette in the chosen cell; shapes centred in the 8 other cells;
    background elsewhere; texture colour present."""
    c = 32
    row = _row(digit_color=0, background_color=0, digit_position=cell, distractor_shape=3,  # square
               distractor_color=1, texture=0, texture_color=0)
    img = Renderer(c).render(digit, row)[0].numpy().transpose(1, 2, 0)  # (96, 96, 3)
    dig, bg = _color("digit_color", 0), _color("background_color", 0)
    dis, tex = _color("distractor_color", 1), _color("texture_color", 0)
    assert len({tuple(x) for x in (dig, bg, dis, tex)}) == 4  # distinguishable colours

    def is_(col):
        return (img == col).all(axis=-1)

    r0, c0 = (cell // 3) * c, (cell % 3) * c
    digit_px = is_(dig)
    assert digit_px.sum() > 0
    outside = digit_px.copy()
    outside[r0:r0 + c, c0:c0 + c] = False
    assert not outside.any(), "digit colour outside the digit cell"
    # the silhouette has about (32/28)^2 times the MNIST pixels above 127
    expected = (digit[0] > 127).sum() * (32 / 28) ** 2
    assert abs(digit_px.sum() - expected) / expected < 0.15
    # every pixel is one of the four colours
    assert (digit_px | is_(bg) | is_(dis) | is_(tex)).all()
    assert is_(tex).sum() > 0
    # distractor: a square patch of cell/2 centred in each of the 8 other cells, none in the digit cell
    s, off = c // 2, c // 4
    square = shape_patches(c)[3]
    for g in range(9):
        gr, gc = (g // 3) * c, (g % 3) * c
        cell_dis = is_(dis)[gr:gr + c, gc:gc + c]
        if g == cell:
            assert not cell_dis.any()
            continue
        ys, xs = np.nonzero(cell_dis)
        assert ys.min() >= off and ys.max() < off + s and xs.min() >= off and xs.max() < off + s
        # centred: the bounding box of the square stamp is symmetric in the cell (within a pixel)
        assert abs((ys.min() + ys.max()) / 2 - (c - 1) / 2) <= 1.0
        # shape pixels not covered by texture carry the distractor colour
        patch = square & ~is_(tex)[gr + off:gr + off + s, gc + off:gc + off + s]
        assert cell_dis[off:off + s, off:off + s][patch].all()
    # background: pixels covered by no layer are background coloured
    assert is_(bg)[0:2, 0:2].any() or is_(bg).sum() > 0.3 * 96 * 96


def test_shapes_are_distinct_and_textures_are_distinct():
    for cell in (8, 32):
        p = shape_patches(cell).reshape(10, -1)
        assert len({row.tobytes() for row in p}) == 10
        r = Renderer(cell)
        assert len({t.tobytes() for t in r._textures_np}) == 10


def test_backends_agree_bit_for_bit(digit):
    m = load_mnist()
    rng = np.random.default_rng(0)
    fac = np.stack([rng.integers(0, FACTOR_TABLE[n].num_values, 300) for n in FACTORS], 1).astype(np.uint8)
    for cell in (8, 32):
        a = Renderer(cell, backend="numpy").render(m.train_images[:300], fac)
        b = Renderer(cell, backend="torch").render(torch.from_numpy(m.train_images[:300].copy()), fac)
        assert torch.equal(a, b)
        one = Renderer(cell, backend="numpy", threads=1).render(m.train_images[:300], fac)
        assert torch.equal(a, one)


def test_display_rgb_reverses_channel_order(digit):
    img = Renderer(8).render(digit, _row(digit_color=0))
    rgb = to_display_rgb(img)
    assert rgb.shape == (1, 24, 24, 3)
    assert (rgb[0] == [0, 0, 255]).all(axis=-1).any()  # (255, 0, 0) in BGR order shows as blue


def test_bad_cell_sizes():
    with pytest.raises(BiasbenchError, match="too small"):
        Renderer(6)
    with pytest.raises(BiasbenchError, match="even"):
        Renderer(9)
