"""The Biased MNIST v1 renderer: recipe rows -> uint8 images, a whole batch at a time (torch, CPU or GPU).

For a batch of N recipe rows the renderer works in three vectorised steps:

1. **Digit silhouettes.** MNIST digits (N, 28, 28) are resized to the cell size with OpenCV's
   ``INTER_AREA`` rule, written as a separable weight matrix ``R`` (cell x 28): ``resized = R D R^T``
   (:mod:`biasbench.data.resize`). The silhouette is ``resized > 127``, computed in float64 so ties do
   not depend on the device. With ``drawing="reference"`` an enlarged digit (the paper's 28 -> 32) is
   instead computed in OpenCV's own float32 arithmetic on the reference's [0, 1] floats
   (:func:`~biasbench.data.resize.opencv_enlarge_float32`), which puts the near-ties on the reference's side.
2. **A layer map** (N, H, W) uint8 by priority: 0 background, 1 distractor (shape in the 8 non-digit
   cells), 2 texture glyph, 3 digit. Later layers win, exactly the reference's drawing order
   (background, shapes, texture, digit), computed as maxima of precomputed stamp canvases
   (:mod:`biasbench.data.stamps`: our drawings, or with ``drawing="reference"`` the reference's pixels).
3. **Colours** from a per-image palette (N, 4, 3): planar masked copies on the CPU, a gather on a GPU.
4. Optionally (``jpeg_quality``, a dataset setting) the exact JPEG round trip the reference's files went
   through (:mod:`biasbench.data.jpeg`), on the same device.

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
from .jpeg import check_quality, jpeg_roundtrip
from .resize import MNIST_SIZE, opencv_enlarge_float32, resize_matrix
from .stamps import DRAWINGS, MIN_CELL_SIZE, check_drawing, shape_canvases, texture_canvases

RENDERER_VERSION = "1"


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


_CHUNK_PIXELS = 64 * 96 * 96
_PALETTE_FACTORS = ("background_color", "distractor_color", "texture_color", "digit_color")
"""Colour factor of each layer: 0 background, 1 distractor, 2 texture, 3 digit."""


class Renderer:
    """Renders recipe rows at one cell size. Stamps are built once per instance.

    Two backends give byte-identical images: ``numpy`` (the CPU default: planar uint8 arithmetic,
    the batch cut into cache-sized chunks spread over ``threads`` threads; numpy releases the GIL) and
    ``torch`` (any device; the default on a GPU, where one gather colours the whole batch).
    ``jpeg_quality`` > 0 passes every rendered batch through :func:`~biasbench.data.jpeg.jpeg_roundtrip`;
    ``drawing`` (:data:`~biasbench.data.stamps.DRAWINGS`) picks the shapes, the glyphs and the digits'
    arithmetic: ``reference`` draws the reference's pixels (exactly, at 32-px cells).
    """

    def __init__(self, cell_size: int = 32, device: str | torch.device = "cpu", backend: str = "auto",
                 threads: int | None = None, jpeg_quality: int = 0, drawing: str = DRAWINGS[0]):
        self.cell_size = check_cell_size(cell_size)
        self.jpeg_quality = check_quality(jpeg_quality)
        self.drawing = check_drawing(drawing)
        self.size = 3 * self.cell_size
        self.device = torch.device(device)
        if backend == "auto":
            backend = "numpy" if self.device.type == "cpu" else "torch"
        if backend not in ("numpy", "torch") or (backend == "numpy" and self.device.type != "cpu"):
            raise BiasbenchError(f"bad renderer backend {backend!r} for device {self.device}; "
                                 f"expected 'torch', or 'numpy' on the CPU")
        self.backend = backend
        self.threads = threads or max(1, torch.get_num_threads())
        hw = self.size * self.size
        self._shapes_np = shape_canvases(self.cell_size, self.drawing).reshape(90, hw).view(np.uint8)  # 0/1
        self._textures_np = (texture_canvases(self.cell_size, self.drawing).reshape(10, hw).view(np.uint8)
                             * np.uint8(2))
        self._resize_np = resize_matrix(self.cell_size)
        self._opencv_float32 = self.drawing == "reference" and self.cell_size > MNIST_SIZE
        self._tables_np = np.stack([_color_table(n) for n in _PALETTE_FACTORS])  # (4, 10, 3)
        self._palette_cols = np.array([FACTORS.index(n) for n in _PALETTE_FACTORS])
        self._f = {n: FACTORS.index(n) for n in FACTORS}
        if backend == "torch":
            d = self.device
            self._shapes = torch.from_numpy(self._shapes_np).to(d)
            self._textures = torch.from_numpy(self._textures_np).to(d)
            self._resize = torch.from_numpy(self._resize_np).to(d)
            self._tables = torch.from_numpy(self._tables_np).to(d)
            if d.type == "cuda":  # shared (get_renderer): other threads render on their own streams, which do not
                torch.cuda.current_stream(d).synchronize()  # wait for these copies on this one

    def render(self, digits: torch.Tensor | np.ndarray, factors: torch.Tensor | np.ndarray,
               out: torch.Tensor | None = None) -> torch.Tensor:
        """Render N images. ``digits``: uint8 (N, 28, 28); ``factors``: (N, 7) value indices.

        Returns uint8 (N, 3, H, W), contiguous, on the renderer's device; H = W = 3 * cell_size.
        ``out``, if given, is a contiguous uint8 tensor of that shape to render into (no extra copy).
        """
        n = len(factors)
        shape = (n, 3, self.size, self.size)
        if out is None:
            out = torch.empty(shape, dtype=torch.uint8, device=self.device)
        elif tuple(out.shape) != shape or out.dtype != torch.uint8 or not out.is_contiguous():
            raise BiasbenchError(f"render out= must be a contiguous uint8 tensor of shape {shape}")
        if n == 0:
            return out
        if self.backend == "numpy":
            digits_np = digits.numpy() if isinstance(digits, torch.Tensor) else np.asarray(digits)
            fac_np = factors.cpu().numpy() if isinstance(factors, torch.Tensor) else np.asarray(factors)
            out_np = out.numpy()
            # cache blocking: chunks of ~0.6 MB per plane stay in L2 across the ~25 passes (2.5x faster)
            chunk = max(1, _CHUNK_PIXELS // (self.size * self.size))
            slices = [slice(i, min(i + chunk, n)) for i in range(0, n, chunk)]
            work = lambda sl: self._render_numpy(digits_np[sl], fac_np[sl], out_np[sl])  # noqa: E731
            if self.threads == 1 or len(slices) == 1:
                for sl in slices:
                    work(sl)
            else:
                list(_pool(self.threads).map(work, slices))
        else:
            out.copy_(self._render_torch(torch.as_tensor(digits), torch.as_tensor(np.asarray(factors))
                                         if isinstance(factors, np.ndarray) else factors))
        if self.jpeg_quality:
            jpeg_roundtrip(out, self.jpeg_quality, out=out)
        return out

    # -- numpy backend (CPU) --------------------------------------------------------------------
    def digit_masks_numpy(self, digits: np.ndarray) -> np.ndarray:
        """Bool (N, c, c): resized MNIST digits thresholded at > 127 (float64, or OpenCV's float32)."""
        if self._opencv_float32:
            return opencv_enlarge_float32(digits, self.cell_size) * np.float32(255) > np.float32(127)
        r = self._resize_np
        return (r @ digits.astype(np.float64) @ r.T) > 127.0 + 1e-9

    def _render_numpy(self, digits: np.ndarray, fac: np.ndarray, out: np.ndarray) -> None:
        n, c = len(fac), self.cell_size
        fac = fac.astype(np.int64)
        cell = fac[:, self._f["digit_position"]]
        layer = self._shapes_np[fac[:, self._f["distractor_shape"]] * 9 + cell]  # (N, HW): 0 or 1
        np.maximum(layer, self._textures_np[fac[:, self._f["texture"]]], out=layer)  # texture: 2
        digit = np.zeros((n, 3, c, 3, c), dtype=np.uint8)
        digit[np.arange(n), cell // 3, :, cell % 3, :] = self.digit_masks_numpy(digits).view(np.uint8) * np.uint8(3)
        np.maximum(layer, digit.reshape(n, -1), out=layer)  # digit: 3
        palette = self._tables_np[np.arange(4), fac[:, self._palette_cols]]  # (N, 4, 3)
        # out = p0 + sum_k [layer == k] * (p_k - p0), in uint8 modular arithmetic: the masks are
        # disjoint, so each pixel gets exactly its layer's colour. Data-independent and vectorised.
        planes = out.reshape(n, 3, -1)
        masks = [(layer == k).view(np.uint8) for k in (1, 2, 3)]
        tmp = np.empty_like(layer)
        for ch in range(3):
            p0 = palette[:, 0, ch:ch + 1]
            plane = planes[:, ch]
            plane[...] = p0
            for k in (1, 2, 3):
                np.multiply(masks[k - 1], palette[:, k, ch:ch + 1] - p0, out=tmp)
                np.add(plane, tmp, out=plane)

    # -- torch backend (any device) ---------------------------------------------------------------
    def digit_masks(self, digits: torch.Tensor) -> torch.Tensor:
        """Bool (N, c, c) on the renderer's device (float64, so ties do not depend on the device; or OpenCV's
        float32 steps, each a separate correctly rounded operation, so no device fuses them)."""
        if self._opencv_float32:
            return opencv_enlarge_float32(digits.to(self.device), self.cell_size) * 255.0 > 127.0
        x = digits.to(self.device, torch.float64)
        return (self._resize @ x @ self._resize.T) > 127.0 + 1e-9

    def _render_torch(self, digits: torch.Tensor, fac: torch.Tensor) -> torch.Tensor:
        d = self.device
        fac = fac.to(d, torch.long)
        n, c, size = fac.shape[0], self.cell_size, self.size
        cell = fac[:, self._f["digit_position"]]
        layer = self._shapes[fac[:, self._f["distractor_shape"]] * 9 + cell]
        layer = torch.maximum(layer, self._textures[fac[:, self._f["texture"]]])
        digit = torch.zeros((n, 3, c, 3, c), dtype=torch.uint8, device=d)
        digit[torch.arange(n, device=d), cell // 3, :, cell % 3, :] = self.digit_masks(digits).to(torch.uint8) * 3
        layer = torch.maximum(layer, digit.view(n, -1))
        cols = torch.from_numpy(self._palette_cols).to(d)
        palette = self._tables[torch.arange(4, device=d), fac[:, cols]]  # (N, 4, 3)
        flat = layer.long() + 4 * torch.arange(n, device=d)[:, None]
        return palette.view(n * 4, 3)[flat].permute(0, 2, 1).reshape(n, 3, size, size)


@functools.lru_cache(maxsize=4)
def _pool(workers: int):
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="biasbench-render")


@functools.lru_cache(maxsize=8)
def get_renderer(cell_size: int, device: str = "cpu", jpeg_quality: int = 0, drawing: str = DRAWINGS[0]) -> Renderer:
    """The shared renderer of these settings (stamps and device tensors are built once per process)."""
    return Renderer(cell_size, device, jpeg_quality=jpeg_quality, drawing=drawing)


def renderer_for(settings, device: str | torch.device = "cpu", cell_size: int | None = None) -> Renderer:
    """The shared renderer of a dataset's settings (a :class:`~biasbench.config.DatasetSettings`): its cell
    size (or ``cell_size``, to render the same recipe at another size) and its image options."""
    return get_renderer(cell_size or settings.cell_size, str(torch.device(device)), settings.jpeg_quality,
                        settings.drawing)


def to_display_rgb(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) model-order images -> (N, H, W, 3) RGB for people (reverses the BGR tuple order)."""
    arr = images.cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    return np.ascontiguousarray(arr.transpose(0, 2, 3, 1)[..., ::-1])
