"""Binary stamps, built once per cell size and drawing: the ten distractor shapes and the ten texture lattices.

Two drawings (the ``drawing`` dataset setting, :data:`DRAWINGS`, which also sets how digits are resized,
:mod:`biasbench.data.render`):

``biasbench`` (the default)
    Our own drawings, rasterised with Pillow. Shapes are filled polygons / discs without anti-aliasing on
    a ``cell_size // 2`` square patch (16x16 at the paper's 32-px cells), centred in a cell. Texture glyphs
    are stroke drawings in the spirit of OpenCV's Hershey-Simplex font at scale 0.4 in a glyph box of about
    8x9 px at 32-px cells, stamped with its bottom-left corner at the reference's 6x6 lattice of text
    origins ``{6, 22, 38, 54, 70, 86}`` (scaled with the cell size).
``reference``
    The reference's own pixels at 32-px cells: its shapes (``cv2.polylines`` + ``cv2.fillPoly`` over its
    integer vertices, ``cv2.circle``) and its ``cv2.putText`` glyphs, as OpenCV 4.5-4.7 draws them,
    recorded in :mod:`biasbench.data.reference_stamps` by ``scripts/reference_stamps.py`` (which checks
    every texture lattice against ``putText``'s). At other cell sizes they are resampled, as nothing in
    the reference defines them: shapes as OpenCV's ``INTER_AREA`` resize thresholded at one half (the
    rule the digits are resized by), glyph lattices so that no stroke is lost (a target pixel is set when
    any source pixel it covers is; enlarging repeats pixels). At 8-px cells two of the ten 4x4 shapes
    coincide (pentagon and plus); the ten lattices stay distinct.

Stamps are pure functions of the cell size and drawing, so rendering stays byte-for-byte reproducible.
"""
from __future__ import annotations

import functools

import numpy as np
from PIL import Image, ImageDraw

from ..errors import BiasbenchError
from . import reference_stamps as ref
from .factors import SHAPES, TEXTURES
from .resize import resize_matrix

MIN_CELL_SIZE = 8
"""Below 8 px a cell cannot hold a recognisable 4-px distractor or 2-px texture glyph."""

DRAWINGS: tuple[str, ...] = ("biasbench", "reference")
"""Values of the ``drawing`` dataset setting; the first is the default."""


def check_drawing(drawing: object) -> str:
    """``drawing`` if it names one of :data:`DRAWINGS`, else a :class:`BiasbenchError` naming the choices."""
    if drawing not in DRAWINGS:
        raise BiasbenchError(f"unknown drawing {drawing!r}; expected one of: {', '.join(DRAWINGS)} "
                             f"(reference: the reference's OpenCV pixels)")
    return str(drawing)

# Shapes: polygons in unit coordinates (x right, y down) on the patch.
_POLYGONS: dict[str, list[tuple[float, float]]] = {
    "right_triangle": [(0, 1), (1, 1), (0, 0)],
    "obtuse_triangle": [(0, 1), (1, 1), (0.25, 0.35)],
    "square": [(0.1, 0.1), (0.9, 0.1), (0.9, 0.9), (0.1, 0.9)],
    "parallelogram": [(0.3, 0.15), (1, 0.15), (0.7, 0.85), (0, 0.85)],
    "kite": [(0.5, 0), (0.85, 0.35), (0.5, 1), (0.15, 0.35)],
    "pentagon": [(0.5, 0), (1, 0.38), (0.81, 1), (0.19, 1), (0, 0.38)],
    "plus": [(0.35, 0), (0.65, 0), (0.65, 0.35), (1, 0.35), (1, 0.65), (0.65, 0.65), (0.65, 1),
             (0.35, 1), (0.35, 0.65), (0, 0.65), (0, 0.35), (0.35, 0.35)],
    "arrow": [(0, 0.35), (0.55, 0.35), (0.55, 0.1), (1, 0.5), (0.55, 0.9), (0.55, 0.65), (0, 0.65)],
}

# Glyphs: polylines in unit coordinates of the glyph box (x right, y down); a single point = a dot.
_GLYPHS: dict[str, list[list[tuple[float, float]]]] = {
    "-": [[(0, 0.6), (1, 0.6)]],
    "/": [[(0, 1), (1, 0)]],
    "|": [[(0.5, 0), (0.5, 1)]],
    "+": [[(0, 0.55), (1, 0.55)], [(0.5, 0.1), (0.5, 1)]],
    "x": [[(0, 0.3), (1, 1)], [(1, 0.3), (0, 1)]],
    "~": [[(0, 0.75), (0.33, 0.3), (0.67, 0.75), (1, 0.3)]],
    "::": [[(0.15, 0.4)], [(0.15, 1)], [(0.85, 0.4)], [(0.85, 1)]],
    ">": [[(0, 0.2), (1, 0.6), (0, 1)]],
    "<": [[(1, 0.2), (0, 0.6), (1, 1)]],
    "\\": [[(0, 0), (1, 1)]],
}

LATTICE_ORIGINS_32 = (6, 22, 38, 54, 70, 86)
GLYPH_BOX_32 = (8, 9)  # width, height at 32-px cells


def _scaled(v: float, cell_size: int) -> int:
    return int(np.floor(v * cell_size / 32 + 0.5))  # round half up, not to even


def _bitmap(rows: tuple[str, ...]) -> np.ndarray:
    return np.array([[ch == "#" for ch in row] for row in rows], dtype=bool)


def _reference_shape_patches(cell_size: int) -> np.ndarray:
    r = resize_matrix(cell_size // 2, ref.PATCH)
    src = np.stack([_bitmap(ref.SHAPES[name]) for name in SHAPES]).astype(np.float64)
    return (r @ src @ r.T) >= 0.5 - 1e-9  # at 32-px cells r is the identity: the reference's pixels


def _reference_texture_canvases(cell_size: int) -> np.ndarray:
    size, ref_size = 3 * cell_size, 3 * 2 * ref.PATCH  # the reference's 96-px image: 32-px cells, 16-px patches
    src = np.zeros((len(TEXTURES), ref_size, ref_size), dtype=bool)
    for k, text in enumerate(TEXTURES):
        for oy in ref.LATTICE:
            top = oy == ref.LATTICE[0] and text in ref.GLYPHS_TOP_ROW  # where OpenCV's clipping moved pixels
            dx, dy, rows = (ref.GLYPHS_TOP_ROW if top else ref.GLYPHS)[text]
            ys, xs = np.nonzero(_bitmap(rows))
            for ox in ref.LATTICE:
                y, x = oy + dy + ys, ox + dx + xs
                keep = (y >= 0) & (y < ref_size) & (x >= 0) & (x < ref_size)  # clipped at the edges, as drawn
                src[k, y[keep], x[keep]] = True
    if size >= ref_size:  # the same or enlarged: each target pixel takes the source pixel it lies in
        idx = np.arange(size) * ref_size // size
        return np.ascontiguousarray(src[:, idx][:, :, idx])
    out = np.zeros((len(TEXTURES), size, size), dtype=bool)  # shrunk: any source pixel sets its target
    k, y, x = np.nonzero(src)
    out[k, y * size // ref_size, x * size // ref_size] = True
    return out


@functools.lru_cache(maxsize=8)
def shape_patches(cell_size: int, drawing: str = DRAWINGS[0]) -> np.ndarray:
    """Bool (10, s, s) with s = cell_size // 2: the filled shapes, in :data:`SHAPES` order."""
    if check_drawing(drawing) == "reference":
        return _reference_shape_patches(cell_size)
    s = cell_size // 2
    out = np.zeros((len(SHAPES), s, s), dtype=bool)
    m = s - 1
    for k, name in enumerate(SHAPES):
        img = Image.new("L", (s, s), 0)
        draw = ImageDraw.Draw(img)
        if name == "circle":
            draw.ellipse([0, 0, m, m], fill=255)
        elif name == "semi_circle":
            draw.pieslice([0, -0.25 * m, m, 0.75 * m], 0, 180, fill=255)  # lower half-disc
        else:
            draw.polygon([(x * m, y * m) for x, y in _POLYGONS[name]], fill=255)
        out[k] = np.asarray(img) > 0
    return out


@functools.lru_cache(maxsize=8)
def shape_canvases(cell_size: int, drawing: str = DRAWINGS[0]) -> np.ndarray:
    """Bool (10, 9, H, W): shape k stamped in every cell except cell g (the digit's cell)."""
    c = cell_size
    s = c // 2
    off = (c - s) // 2
    patches = shape_patches(c, drawing)
    tiled = np.zeros((len(SHAPES), 3 * c, 3 * c), dtype=bool)
    for g in range(9):
        r, col = divmod(g, 3)
        tiled[:, r * c + off: r * c + off + s, col * c + off: col * c + off + s] = patches
    out = np.repeat(tiled[:, None], 9, axis=1)
    for g in range(9):
        r, col = divmod(g, 3)
        out[:, g, r * c: (r + 1) * c, col * c: (col + 1) * c] = False
    return out


@functools.lru_cache(maxsize=8)
def texture_canvases(cell_size: int, drawing: str = DRAWINGS[0]) -> np.ndarray:
    """Bool (10, H, W): each texture glyph stamped at the 6x6 lattice, in :data:`TEXTURES` order."""
    if check_drawing(drawing) == "reference":
        return _reference_texture_canvases(cell_size)
    c = cell_size
    size = 3 * c
    gw, gh = (max(3, _scaled(v, c)) for v in GLYPH_BOX_32)
    width = max(1, _scaled(1, c))
    out = np.zeros((len(TEXTURES), size, size), dtype=bool)
    for k, glyph in enumerate(TEXTURES):
        img = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(img)
        for ox in LATTICE_ORIGINS_32:
            for oy in LATTICE_ORIGINS_32:
                # origin = bottom-left, like cv2.putText; the top row is kept inside the canvas
                x0, y0 = _scaled(ox, c), max(0, _scaled(oy, c) - gh)
                for stroke in _GLYPHS[glyph]:
                    pts = [(int(x0 + x * (gw - 1) + 0.5), int(y0 + y * (gh - 1) + 0.5)) for x, y in stroke]
                    if len(pts) == 1:
                        px, py = pts[0]
                        draw.rectangle([px, py, px + width - 1, py + width - 1], fill=255)
                    else:
                        draw.line(pts, fill=255, width=width)
        out[k] = np.asarray(img) > 0
    return out
