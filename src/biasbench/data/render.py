"""The Biased MNIST v1 renderer: recipe rows -> uint8 images, a whole batch at a time (torch, CPU or GPU).

For a batch of N recipe rows the renderer works in three vectorised steps:

1. **Digit silhouettes.** MNIST digits (N, 28, 28) are resized to the cell size with OpenCV's
   ``INTER_AREA`` rule, written as a separable weight matrix ``R`` (cell x 28): ``resized = R D R^T``.
   When enlarging (28 -> 32, the paper's size) OpenCV's INTER_AREA is a linear interpolation with
   "pixel-area relation" coefficients: for output pixel ``d``, ``sx = floor(d * 28 / c)``,
   ``f = (d + 1) - (sx + 1) * c / 28``, ``f = 0 if f <= 0 else f - floor(f)``, weights ``1 - f`` on
   ``sx`` and ``f`` on ``sx + 1`` (clamped at the border). When shrinking it is the exact area average.
   The silhouette is ``resized > 127`` (computed in float64 so ties do not depend on the device).
2. **A layer map** (N, H, W) uint8 by priority: 0 background, 1 distractor (shape in the 8 non-digit
   cells), 2 texture glyph, 3 digit. Later layers win, exactly the reference's drawing order
   (background, shapes, texture, digit), computed as maxima of precomputed stamp canvases.
3. **Colours** from a per-image palette (N, 4, 3): planar masked copies on the CPU, a gather on a GPU.

Output layout is (N, 3, H, W) uint8, what the models take. Channel ``c`` holds element ``c`` of the reference's colour tuples
(its BGR order, see :mod:`biasbench.data.factors`); :func:`to_display_rgb` flips channels for viewing.

``RENDERER_VERSION`` goes into every dataset manifest; bump it whenever pixels change.
"""
from __future__ import annotations

import functools

import numpy as np
import torch

from ..errors import BiasbenchError
from .factors import FACTOR_TABLE, FACTORS
from .stamps import MIN_CELL_SIZE, shape_canvases, texture_canvases

RENDERER_VERSION = "1"
MNIST_SIZE = 28


def resize_matrix(out_size: int, in_size: int = MNIST_SIZE) -> np.ndarray:
    """OpenCV ``INTER_AREA`` resize as an (out_size, in_size) float64 weight matrix (see module doc)."""
    w = np.zeros((out_size, in_size), dtype=np.float64)
    scale = in_size / out_size
    if out_size > in_size:  # enlarging: linear with area-relation coefficients
        inv = out_size / in_size
        for d in range(out_size):
            sx = int(np.floor(d * scale))
            f = (d + 1) - (sx + 1) * inv
            f = 0.0 if f <= 0 else f - np.floor(f)
            if sx >= in_size - 1:
                sx, f = in_size - 1, 0.0
            w[d, sx] += 1 - f
            if f:
                w[d, sx + 1] += f
    else:  # shrinking (or same size): exact area average
        for d in range(out_size):
            lo, hi = d * scale, (d + 1) * scale
            for s in range(int(np.floor(lo)), min(in_size, int(np.ceil(hi)))):
                w[d, s] = max(0.0, min(hi, s + 1) - max(lo, s)) / scale
    return w


def check_cell_size(cell_size: int) -> int:
    if not isinstance(cell_size, (int, np.integer)) or cell_size < MIN_CELL_SIZE:
        raise BiasbenchError(
            f"cell size {cell_size!r} is too small to draw; expected an integer >= {MIN_CELL_SIZE} "
            f"(8 gives 24x24 images, 32 the paper's 96x96)"
        )
    if cell_size % 2:
        raise BiasbenchError(f"cell size {cell_size} must be even (distractors are cell_size/2 wide)")
    return int(cell_size)


def _color_table(name: str) -> np.ndarray:
    return np.asarray(FACTOR_TABLE[name].values, dtype=np.uint8)  # (10, 3)


class Renderer:
    """Renders recipe rows at one cell size on one device. Stamps are built once per instance."""

    def __init__(self, cell_size: int = 32, device: str | torch.device = "cpu"):
        self.cell_size = check_cell_size(cell_size)
        self.size = 3 * self.cell_size
        self.device = torch.device(device)
        d = self.device
        self._shapes = torch.from_numpy(shape_canvases(self.cell_size).reshape(90, self.size, self.size)).to(d)
        self._textures = torch.from_numpy(texture_canvases(self.cell_size)).to(d)
        self._resize = torch.from_numpy(resize_matrix(self.cell_size)).to(d)
        cols = [FACTORS.index(n) for n in ("background_color", "distractor_color", "texture_color", "digit_color")]
        self._palette_cols = torch.tensor(cols, device=d)
        tables = np.stack([_color_table(n) for n in ("background_color", "distractor_color",
                                                      "texture_color", "digit_color")])  # (4, 10, 3)
        self._tables = torch.from_numpy(tables).to(d)
        self._f = {n: FACTORS.index(n) for n in FACTORS}

    def digit_masks(self, digits: torch.Tensor) -> torch.Tensor:
        """Bool (N, c, c): resized MNIST digits thresholded at > 127."""
        x = digits.to(self.device, torch.float64)
        r = self._resize
        resized = r @ x @ r.T
        return resized > 127.0 + 1e-9

    def render(self, digits: torch.Tensor | np.ndarray, factors: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Render N images. ``digits``: uint8 (N, 28, 28); ``factors``: (N, 7) value indices.

        Returns uint8 (N, 3, H, W), contiguous, on the renderer's device; H = W = 3 * cell_size.
        """
        digits = torch.as_tensor(digits).to(self.device)
        fac = torch.as_tensor(np.asarray(factors) if isinstance(factors, np.ndarray) else factors)
        fac = fac.to(self.device, torch.long)
        n, c, size = fac.shape[0], self.cell_size, self.size
        cell = fac[:, self._f["digit_position"]]
        shape = fac[:, self._f["distractor_shape"]]
        tex = fac[:, self._f["texture"]]

        layer = self._shapes[shape * 9 + cell].to(torch.uint8)  # 1 where a distractor is drawn
        layer.masked_fill_(self._textures[tex], 2)
        digit_canvas = torch.zeros((n, 3, c, 3, c), dtype=torch.bool, device=self.device)
        digit_canvas[torch.arange(n, device=self.device), cell // 3, :, cell % 3, :] = self.digit_masks(digits)
        layer.masked_fill_(digit_canvas.view(n, size, size), 3)

        values = fac[:, self._palette_cols]  # (N, 4): background, distractor, texture, digit colour index
        palette = self._tables[torch.arange(4, device=self.device), values]  # (N, 4, 3)
        return self._colour(layer.view(n, -1), palette).view(n, 3, size, size)

    @staticmethod
    def _colour(layer: torch.Tensor, palette: torch.Tensor) -> torch.Tensor:
        """Planar colouring: out[n, c, p] = palette[n, layer[n, p], c]; (N, HW) -> (N, 3, HW) uint8.

        On the CPU a gather is memory-bound and slow; three masked copies per channel over
        contiguous uint8 planes vectorise well (about 4x faster). On a GPU one gather is best.
        """
        n, hw = layer.shape
        if layer.device.type != "cpu":
            flat = layer.long() + 4 * torch.arange(n, device=layer.device)[:, None]
            return palette.view(n * 4, 3)[flat].permute(0, 2, 1).contiguous()
        lay, pal = layer.numpy(), palette.numpy()
        masks = [lay == k for k in (1, 2, 3)]
        out = np.empty((n, 3, hw), dtype=np.uint8)
        for c in range(3):
            plane = out[:, c]
            plane[...] = pal[:, 0, c:c + 1]
            for k in (1, 2, 3):
                np.copyto(plane, np.broadcast_to(pal[:, k, c:c + 1], (n, hw)), where=masks[k - 1])
        return torch.from_numpy(out)


@functools.lru_cache(maxsize=8)
def get_renderer(cell_size: int, device: str = "cpu") -> Renderer:
    return Renderer(cell_size, device)


def to_display_rgb(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) model-order images -> (N, H, W, 3) RGB for people (reverses the BGR tuple order)."""
    arr = images.cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    return np.ascontiguousarray(arr.transpose(0, 2, 3, 1)[..., ::-1])
