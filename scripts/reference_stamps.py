"""Write ``src/biasbench/data/reference_stamps.py``: the reference's distractor shapes and texture glyphs, as
OpenCV 4.5-4.7 draws them at the paper's size (32-px cells), for the ``drawing: reference`` dataset setting.

Run it with an OpenCV of that range, which needs numpy < 2 (biasbench's own environment has OpenCV 5, whose
``putText`` draws the Hershey glyphs differently, and 4.8-4.10 fill some polygons differently; measured)::

    python3 -m venv /tmp/cv47 && /tmp/cv47/bin/pip install opencv-python-headless==4.7.0.72 "numpy<2"
    PYTHONPATH=src /tmp/cv47/bin/python scripts/reference_stamps.py > src/biasbench/data/reference_stamps.py
    PYTHONPATH=src /tmp/cv47/bin/python scripts/reference_stamps.py --check   # module == this OpenCV's drawing

What the reference drew (``datasets/shape_generator.py`` and ``biased_mnist_dataset.py`` of
erobic/bias-mitigators, described in ``docs/dataset.md``): each shape on a 16x16 patch (a 32-px cell less 8 px
of padding each side), as ``cv2.polylines`` (closed, thickness 1) and then ``cv2.fillPoly`` over integer
vertices (``np.int32`` truncates the thirds), the circle as ``cv2.circle`` filled with radius 8 about (8, 8),
the semi-circle as that circle with columns 8-15 cleared; each texture as ``cv2.putText`` (Hershey Simplex,
scale 0.4, thickness 1, 8-connected lines) with its origin at each of the 36 points of the lattice
{6, 22, 38, 54, 70, 86}^2 of the 96x96 image. A glyph is written here as the pixels ``putText`` sets around
one origin inside the image. The image's top edge cuts the glyphs of the top row (y = 6), and OpenCV clips a
line before it rasterises it, which moves some of the pixels left inside: for the glyphs where that happens
(two of the ten), the top row's drawing is written too. The script checks that stamping the glyphs at the
36 origins (clipped to the image) gives ``putText``'s whole lattice exactly, so the module reproduces the
reference's textures pixel for pixel.
"""
from __future__ import annotations

import argparse
import sys

import cv2
import numpy as np

from biasbench.data.factors import SHAPES, TEXTURES

PATCH = 16
IMAGE = 96
LATTICE = tuple(int(v) for v in np.arange(6, IMAGE, IMAGE / 6))  # (6, 22, 38, 54, 70, 86), as the reference
FONT_SCALE = 0.4


def _polygon(vertices: list[tuple[float, float]]) -> np.ndarray:
    img = np.zeros((PATCH, PATCH), np.uint8)
    pts = np.array(vertices, np.int32).reshape(-1, 1, 2)  # x, y; truncated like the reference's arrays
    cv2.polylines(img, [pts], isClosed=True, color=255, thickness=1)
    cv2.fillPoly(img, [pts], color=255)
    return img > 0


def shapes() -> dict[str, np.ndarray]:
    """Bool 16x16 patches, keyed by shape name; vertices (x, y) in units of the patch's side d."""
    d = PATCH
    disc = np.zeros((d, d), np.uint8)
    cv2.circle(disc, (d // 2, d // 2), d // 2, 255, thickness=-1)
    half = disc.copy()
    half[:, d // 2:] = 0
    polygons = {
        "right_triangle": [(0, 0), (0, d), (d, d)],
        "obtuse_triangle": [(0, 0), (d / 3, d), (d, d)],
        "square": [(0, 0), (0, d), (d, d), (d, 0)],
        "parallelogram": [(d / 3, 0), (0, d), (2 * d / 3, d), (d, 0)],
        "kite": [(d / 2, 0), (0, d / 3), (d / 2, d), (d, d / 3)],
        "pentagon": [(d / 2, 0), (0, d / 3), (d / 3, d), (2 * d / 3, d), (d, d / 3)],
        "arrow": [(0, d / 4), (0, 3 * d / 4), (2 * d / 3, 3 * d / 4), (d, d / 2), (2 * d / 3, d / 4)],
    }
    out = {name: _polygon(v) for name, v in polygons.items()}
    out["plus"] = (_polygon([(d / 3, 0), (d / 3, d), (2 * d / 3, d), (2 * d / 3, 0)])
                   | _polygon([(0, d / 3), (0, 2 * d / 3), (d, 2 * d / 3), (d, d / 3)]))
    out["circle"], out["semi_circle"] = disc > 0, half > 0
    return {name: out[name] for name in SHAPES}


def _put_text(img: np.ndarray, text: str, x: int, y: int) -> None:
    cv2.putText(img, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, fontScale=FONT_SCALE, color=255)


def lattice(text: str) -> np.ndarray:
    """Bool 96x96: ``putText`` at the 36 origins, as the reference drew the texture."""
    img = np.zeros((IMAGE, IMAGE), np.uint8)
    for x in LATTICE:
        for y in LATTICE:
            _put_text(img, text, x, y)
    return img > 0


def glyph(text: str, oy: int = 40) -> tuple[int, int, np.ndarray]:
    """(dx, dy, rows): the pixels ``putText`` sets for one origin at height ``oy``, their bounding box's
    top-left corner at (origin x + dx, origin y + dy). At ``oy`` = 6 the canvas's top edge clips the glyph as
    the image's does."""
    img = np.zeros((64, 64), np.uint8)
    ox = 24
    _put_text(img, text, ox, oy)
    ys, xs = np.nonzero(img)
    if xs.min() == 0 or (ys.min() == 0 and oy > LATTICE[0]) or xs.max() == 63 or ys.max() == 63:
        raise SystemExit(f"glyph {text!r} touches the scratch canvas's edge")
    return int(xs.min() - ox), int(ys.min() - oy), img[ys.min():ys.max() + 1, xs.min():xs.max() + 1] > 0


def stamp_lattice(inner: tuple[int, int, np.ndarray], top: tuple[int, int, np.ndarray] | None = None) -> np.ndarray:
    """The glyph stamped at the 36 origins (``top``, if given, on the top row), clipped to the image."""
    top = top or inner
    out = np.zeros((IMAGE, IMAGE), bool)
    for x in LATTICE:
        for y in LATTICE:
            dx, dy, rows = top if y == LATTICE[0] else inner
            h, w = rows.shape
            x0, y0 = x + dx, y + dy
            ys, xs = slice(max(0, y0), min(IMAGE, y0 + h)), slice(max(0, x0), min(IMAGE, x0 + w))
            out[ys, xs] |= rows[ys.start - y0: ys.stop - y0, xs.start - x0: xs.stop - x0]
    return out


def _art(mask: np.ndarray, indent: str) -> str:
    return "\n".join(f'{indent}"{"".join("#" if v else "." for v in row)}",' for row in mask)


def module() -> str:
    lines = [
        '"""The reference\'s distractor shapes and texture glyphs at 32-px cells, as OpenCV '
        f'{cv2.__version__} draws them.',
        "",
        "Generated by ``scripts/reference_stamps.py`` (which says how, and checks every texture lattice against",
        "``cv2.putText``'s); do not edit by hand. ``#`` = drawn. Used by :mod:`biasbench.data.stamps` for the",
        '``drawing: reference`` dataset setting."""',
        "",
        f'OPENCV_VERSION = "{cv2.__version__}"',
        f"PATCH = {PATCH}",
        f"LATTICE = {LATTICE}",
        "",
        f"SHAPES: dict[str, tuple[str, ...]] = {{  # {PATCH}x{PATCH} patches, in the order of factors.SHAPES",
    ]
    for name, mask in shapes().items():
        lines += [f'    "{name}": (', _art(mask, " " * 8), "    ),"]
    lines += ["}", "",
              "GLYPHS: dict[str, tuple[int, int, tuple[str, ...]]] = {  # text -> (dx, dy, rows): the rows'",
              "    # top-left pixel at (origin x + dx, origin y + dy); the origin is putText's (bottom-left)"]
    counts, tops = {}, ["}", "", "GLYPHS_TOP_ROW: dict[str, tuple[int, int, tuple[str, ...]]] = {",
                        "    # the same, for the origins with y = 6 where OpenCV's clipping at the top edge moves",
                        "    # pixels (the other glyphs there are the ones above, cut at the edge)"]
    for text in TEXTURES:
        inner, top = glyph(text), glyph(text, LATTICE[0])
        whole = lattice(text)
        if not np.array_equal(stamp_lattice(inner, top), whole):
            raise SystemExit(f"glyph {text!r}: stamping it does not give putText's lattice")
        counts[text] = int(whole.sum())
        entries = [(lines, inner)] + ([] if np.array_equal(stamp_lattice(inner), whole) else [(tops, top)])
        for dst, (dx, dy, rows) in entries:
            dst += [f"    {text!r}: ({dx}, {dy}, (", _art(rows, " " * 8), "    )),"]
    lines += tops + ["}", "",
              "LATTICE_PIXELS: dict[str, int] = {  # pixels of each whole 96x96 lattice as putText drew it",
              "    " + ", ".join(f"{t!r}: {n}" for t, n in counts.items()) + ",", "}", ""]
    return "\n".join(lines)


def check() -> int:
    """Exit status 0 when the committed module equals this OpenCV's drawing."""
    from biasbench.data import reference_stamps as ref

    bad = [n for n, m in shapes().items()
           if not np.array_equal(np.array([[c == "#" for c in r] for r in ref.SHAPES[n]]), m)]

    def parse(entry):
        dx, dy, rows = entry
        return dx, dy, np.array([[c == "#" for c in r] for r in rows])

    for text in TEXTURES:
        top = parse(ref.GLYPHS_TOP_ROW[text]) if text in ref.GLYPHS_TOP_ROW else None
        if not np.array_equal(stamp_lattice(parse(ref.GLYPHS[text]), top), lattice(text)):
            bad.append(repr(text))
    print(f"OpenCV {cv2.__version__} vs module ({ref.OPENCV_VERSION}): "
          + (f"differ: {', '.join(bad)}" if bad else f"all {len(SHAPES)} shapes and {len(TEXTURES)} lattices equal"))
    return 1 if bad else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="compare the committed module with this OpenCV's drawing")
    args = ap.parse_args()
    if args.check:
        return check()
    major, minor = (int(v) for v in cv2.__version__.split(".")[:2])
    if (major, minor) < (4, 5) or (major, minor) > (4, 7):
        print(f"OpenCV {cv2.__version__}: need 4.5-4.7 (the reference's drawing; see the doc)", file=sys.stderr)
        return 2
    sys.stdout.write(module())
    return 0


if __name__ == "__main__":
    sys.exit(main())
