"""Pictures and exports: the sample grid (``data show``) and image export (``data export``)."""
from __future__ import annotations

import csv
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..errors import BiasbenchError
from ..utils import atomic_write
from .biased_mnist import BiasedMNIST
from .factors import FACTORS, NUM_CLASSES
from .render import to_display_rgb

EXPORT_FORMATS = ("npy", "png")


def pick_examples(ds: BiasedMNIST, per_side: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Per class, the ``per_side`` images with the most and with the fewest class-aligned factors.

    Returns two int arrays (10, per_side) of split indices (-1 where a class has too few images).
    """
    n_aligned = ds.aligned().sum(axis=1)
    labels = ds.labels.astype(np.int64)
    # one stable sort by (class, -aligned count): no per-image Python
    order = np.lexsort((np.arange(len(ds)), -n_aligned, labels))
    starts = np.searchsorted(labels[order], np.arange(NUM_CLASSES + 1))
    most = np.full((NUM_CLASSES, per_side), -1)
    fewest = np.full((NUM_CLASSES, per_side), -1)
    for c in range(NUM_CLASSES):  # 10 classes, not images
        block = order[starts[c]: starts[c + 1]]
        k = min(per_side, len(block))
        if k:
            most[c, :k] = block[:k]
            fewest[c, :k] = block[::-1][:k]
    return most, fewest


def sample_grid(ds: BiasedMNIST, per_side: int = 4, tile: int | None = None) -> Image.Image:
    """Rows = classes 0-9; left block = class-aligned examples, right block = minority examples."""
    most, fewest = pick_examples(ds, per_side)
    idx = np.concatenate([most, fewest], axis=1)  # (10, 2k)
    valid = idx >= 0
    images = to_display_rgb(ds.render(idx[valid]))
    size = ds.image_size
    tile = tile or max(size, 64)
    gap, header, left, pad = 8, 20, 24, 2
    cols = 2 * per_side
    step = tile + pad
    width = left + cols * step + gap
    height = header + NUM_CLASSES * step
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.text((left + 4, 4), "class-aligned (most factors aligned)", fill=(0, 0, 0))
    draw.text((left + per_side * step + gap + 4, 4), "minority (fewest factors aligned)", fill=(0, 0, 0))
    k = 0
    for r in range(NUM_CLASSES):
        draw.text((6, header + r * step + tile // 2 - 6), str(r), fill=(0, 0, 0))
        for c in range(cols):
            if not valid[r, c]:
                continue
            img = Image.fromarray(images[k]).resize((tile, tile), Image.NEAREST)
            k += 1
            x = left + c * step + (gap if c >= per_side else 0)
            canvas.paste(img, (x, header + r * step))
    return canvas


def save_png(image: Image.Image, path: str | os.PathLike) -> None:
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def export_split(ds: BiasedMNIST, fmt: str, out: str | os.PathLike, progress: bool = True) -> Path:
    """Render a split and write it to the folder ``out`` (created atomically: temp folder, then rename).

    ``npy``: ``images.npy`` uint8 (N, 3, H, W) in model channel order, ``labels.npy``, ``factors.npy``.
    ``png``: ``00000.png`` ... in display RGB, plus ``labels.csv`` (index, label, the seven factors).
    """
    if fmt not in EXPORT_FORMATS:
        raise BiasbenchError(f"unknown export format {fmt!r}; expected one of: {', '.join(EXPORT_FORMATS)}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BiasbenchError(f"{out} already exists and is not empty; choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        images = ds.render(progress=progress)
        if fmt == "npy":
            np.save(tmp / "images.npy", images.numpy())
            np.save(tmp / "labels.npy", ds.labels)
            np.save(tmp / "factors.npy", ds.factors)
        else:
            rgb = to_display_rgb(images)
            from tqdm.auto import tqdm

            for i in tqdm(range(len(ds)), desc="write png", unit="img", disable=not progress, leave=False):
                Image.fromarray(rgb[i]).save(tmp / f"{i:05d}.png")  # one file per image: I/O, not compute
            with open(tmp / "labels.csv", "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(["index", "label", *FACTORS])
                w.writerows(np.column_stack([np.arange(len(ds)), ds.labels, ds.factors]).tolist())
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
