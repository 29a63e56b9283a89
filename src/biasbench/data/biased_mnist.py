"""``BiasedMNIST``: a torchvision-style dataset over a recipe folder, plus a batch API for fast loops.

>>> ds = BiasedMNIST("data/bmnist", split="train", p_bias=0.7, download=True)   # generates if absent
>>> img, label, factors = ds[0]          # uint8 (3, 96, 96) tensor, int, int64 (7,) tensor
>>> x = ds.render(device="cuda")         # all images of the split, uint8 (N, 3, 96, 96), in batches

Images are rendered on demand from the recipe; ``__getitem__`` renders the whole split once (in
batches) and keeps it in memory (50,000 x 27,648 bytes = 1.4 GB for the paper's train split).
Channel order is the reference's (see :mod:`biasbench.data.factors`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..config import DatasetSettings
from ..errors import BiasbenchError
from .factors import FACTORS, aligned_mask, majority_mask
from .mnist import load_mnist
from .recipe import SPLITS, SplitRecipe, build_recipe, load_recipe, read_manifest, write_dataset
from .render import renderer_for


def generate(root: str | os.PathLike, settings: DatasetSettings, mnist_dir: str | None = None,
             download: bool = True) -> dict:
    """Build the recipe for ``settings`` and write it into ``root`` (see :func:`write_dataset`)."""
    mnist = load_mnist(mnist_dir, download=download)
    recipe = build_recipe(settings, {"train": mnist.train_labels, "test": mnist.test_labels})
    return write_dataset(root, settings, recipe)


class BiasedMNIST(torch.utils.data.Dataset):
    """Biased MNIST v1 (Shrestha et al., WACV 2022), one split.

    Args:
        root: dataset folder (``manifest.json`` + ``recipe.npz``).
        split: ``train``, ``val``, ``balanced_val`` or ``test``.
        p_bias, seed, cell_size, mode, n_train, n_val, n_test, jpeg_quality, drawing: dataset settings
            (:class:`~biasbench.config.DatasetSettings`). ``None`` (default)
            accepts whatever the folder holds; a value that differs from the folder's is an error.
            When the folder is empty and ``download`` is true, the dataset is generated with the given
            settings (paper defaults for those left ``None``).
        transform: applied to the uint8 (3, H, W) image tensor. target_transform: applied to the label.
        download: generate the recipe (and download MNIST if it is nowhere on disk) when missing.
        mnist_dir: explicit MNIST folder.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", p_bias: Any = None, seed: int | None = None,
                 cell_size: int | None = None, mode: str | None = None, n_train: int | None = None,
                 n_val: int | None = None, n_test: int | None = None, jpeg_quality: int | None = None,
                 drawing: str | None = None, transform: Callable | None = None,
                 target_transform: Callable | None = None, download: bool = True,
                 mnist_dir: str | os.PathLike | None = None):
        if split not in SPLITS:
            raise BiasbenchError(f"unknown split {split!r}; expected one of: {', '.join(SPLITS)}")
        self.root = Path(root)
        self.split = split
        self.transform = transform
        self.target_transform = target_transform
        self.mnist_dir = mnist_dir
        requested = {k: v for k, v in dict(p_bias=p_bias, seed=seed, cell_size=cell_size, mode=mode,
                                           n_train=n_train, n_val=n_val, n_test=n_test,
                                           jpeg_quality=jpeg_quality, drawing=drawing).items() if v is not None}
        if not (self.root / "manifest.json").exists():
            if not download:
                raise BiasbenchError(f"{self.root} holds no Biased MNIST dataset and download=False")
            generate(self.root, DatasetSettings(**requested), mnist_dir)
        self.manifest = read_manifest(self.root)
        self.settings = DatasetSettings.from_dict(self.manifest["settings"])
        if requested:
            wanted = DatasetSettings.from_dict({**self.settings.to_dict(), **requested})
            diff = self.settings.differences(wanted)
            if diff:
                raise BiasbenchError(f"{self.root} holds a dataset made with other settings "
                                     f"(folder vs requested): {'; '.join(diff)}")
        self.recipe: SplitRecipe = load_recipe(self.root, self.manifest)[split]
        self._images: torch.Tensor | None = None

    # --- recipe views -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.recipe)

    @property
    def labels(self) -> np.ndarray:
        return self.recipe.label

    @property
    def factors(self) -> np.ndarray:
        """uint8 (N, 7) value indices, columns in :data:`FACTORS` order."""
        return self.recipe.factors

    @property
    def factor_names(self) -> tuple[str, ...]:
        return FACTORS

    @property
    def image_size(self) -> int:
        return self.settings.image_size

    def majority(self) -> np.ndarray:
        """Bool (N, 7): majority/minority labelling under the dataset's mode."""
        return majority_mask(self.labels, self.factors, self.settings.mode)

    def aligned(self) -> np.ndarray:
        """Bool (N, 7): value equals the class-aligned value (what the sampler drew)."""
        return aligned_mask(self.labels, self.factors)

    # --- rendering ----------------------------------------------------------------------------
    def digits(self, indices: np.ndarray | None = None) -> np.ndarray:
        images, _ = load_mnist(self.mnist_dir).split(self.recipe.source)
        mi = self.recipe.mnist_index if indices is None else self.recipe.mnist_index[indices]
        return images[mi]

    def render(self, indices: np.ndarray | None = None, device: str | torch.device = "cpu",
               batch_size: int = 2048, progress: bool = False, cell_size: int | None = None) -> torch.Tensor:
        """Render the split (or ``indices`` of it) as uint8 (n, 3, H, W) on ``device``, in batches.
        ``cell_size`` renders the same recipe at another size (progressive learning)."""
        idx = np.arange(len(self)) if indices is None else np.asarray(indices)
        cell = cell_size or self.settings.cell_size
        renderer = renderer_for(self.settings, device, cell)
        size = 3 * cell
        out = torch.empty((len(idx), 3, size, size), dtype=torch.uint8, device=device)
        digits = self.digits(idx)
        factors = self.factors[idx]
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(idx), desc=f"render {self.split}", unit="img", leave=False)
        for start in range(0, len(idx), batch_size):
            stop = min(start + batch_size, len(idx))
            renderer.render(digits[start:stop], factors[start:stop], out=out[start:stop])
            if bar is not None:
                bar.update(stop - start)
        if bar is not None:
            bar.close()
        return out

    def tensors(self, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        """Everything a training loop needs, resident on ``device``: images, labels, factors."""
        return {
            "images": self.render(device=device),
            "labels": torch.from_numpy(self.labels.astype(np.int64)).to(device),
            "factors": torch.from_numpy(self.factors.astype(np.int64)).to(device),
        }

    # --- torchvision-style item access --------------------------------------------------------
    def __getitem__(self, i: int):
        if self._images is None:
            self._images = self.render()
        img = self._images[i]
        label = int(self.labels[i])
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            label = self.target_transform(label)
        return img, label, torch.from_numpy(self.factors[i].astype(np.int64))

    def __repr__(self) -> str:
        s = self.settings
        return (f"BiasedMNIST(root={str(self.root)!r}, split={self.split!r}, n={len(self)}, "
                f"image_size={s.image_size}, mode={s.mode!r}, seed={s.seed})")
