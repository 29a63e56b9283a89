"""A dataset is its recipe: per image the MNIST digit index, the label and the seven factor values.

On disk a dataset folder holds two files, both written atomically:

- ``recipe.npz``: for each split ``S`` the arrays ``S__mnist_index`` (int32), ``S__label`` (uint8) and
  ``S__factors`` (uint8, N x 7, columns in :data:`FACTORS` order). About 1 MB for the full dataset.
- ``manifest.json``: format and generator/renderer versions, the settings, the MNIST checksums, the
  split sizes and the SHA-256 of the recipe arrays (checked on every load).

Splits (paper-reference §1.4): one seeded permutation of the 60,000 MNIST-train digits gives
``train`` (first ``n_train``) and ``val`` (next ``n_val``), both at the training ``p_bias``;
``balanced_val`` = the val digits with factors re-drawn at p = 0.1; ``test`` = the first ``n_test``
MNIST-test digits at p = 0.1. Randomness: ``SeedSequence(seed)`` spawns one independent stream for the
permutation and one per split, so the same settings give byte-identical recipes.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import __version__
from ..config import DEFAULT_CELL_SIZE, UNBIASED_P, DatasetSettings
from ..errors import BiasbenchError
from ..utils import atomic_write, atomic_write_json
from .factors import FACTORS, sample_factors
from .mnist import FILES as MNIST_MD5
from .render import RENDERER_VERSION
from .stamps import DRAWINGS

SPLITS: tuple[str, ...] = ("train", "val", "balanced_val", "test")
SPLIT_SOURCE = {"train": "train", "val": "train", "balanced_val": "train", "test": "test"}
"""Which MNIST split each dataset split draws its digits from."""
FORMAT = "biasbench.biased_mnist"
GENERATOR_VERSION = "1"
MANIFEST = "manifest.json"
RECIPE = "recipe.npz"


@dataclass(frozen=True)
class SplitRecipe:
    """One split: ``mnist_index`` (N,) int32 into the source MNIST split, ``label`` (N,) uint8,
    ``factors`` (N, 7) uint8."""

    name: str
    mnist_index: np.ndarray
    label: np.ndarray
    factors: np.ndarray

    def __len__(self) -> int:
        return int(self.label.shape[0])

    @property
    def source(self) -> str:
        return SPLIT_SOURCE[self.name]


def build_recipe(settings: DatasetSettings, mnist_labels: dict[str, np.ndarray]) -> dict[str, SplitRecipe]:
    """Draw the recipe for all four splits. ``mnist_labels``: {'train': (60000,), 'test': (10000,)}."""
    streams = np.random.SeedSequence(settings.seed).spawn(1 + len(SPLITS))
    perm = np.random.default_rng(streams[0]).permutation(len(mnist_labels["train"]))
    idx = {
        "train": perm[: settings.n_train],
        "val": perm[settings.n_train: settings.n_train + settings.n_val],
        "test": np.arange(settings.n_test),
    }
    idx["balanced_val"] = idx["val"]
    p_train = np.array([settings.p_bias[f] for f in FACTORS])
    p_unbiased = np.full(len(FACTORS), UNBIASED_P)
    out = {}
    for split, stream in zip(SPLITS, streams[1:]):
        mi = idx[split].astype(np.int32)
        labels = mnist_labels[SPLIT_SOURCE[split]][mi].astype(np.uint8)
        p = p_train if split in ("train", "val") else p_unbiased
        factors = sample_factors(labels, p, np.random.default_rng(stream), settings.mode)
        for name, value in settings.fixed.items():
            factors[:, FACTORS.index(name)] = value
        out[split] = SplitRecipe(split, mi, labels, factors)
    return out


def recipe_hash(recipe: dict[str, SplitRecipe]) -> str:
    h = hashlib.sha256()
    for split in SPLITS:
        r = recipe[split]
        for arr in (r.mnist_index, r.label, r.factors):
            h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def dataset_identity(manifest: dict) -> str:
    """What a run's images are a function of: the recipe's SHA-256 (MNIST indices, labels, factor values),
    plus what the recipe does not tell apart: ``+jpegQ`` for a dataset whose images get the JPEG round trip,
    ``+reference-drawing`` for one drawn as the reference drew, and ``+cellN`` for a cell size other than the
    paper's 32 px (the same draws rendered at 24 and 48 px are other images; before the 17th session the
    identity left the size out, so a run at one size was taken for a finished run at another).

    Takes a manifest or a run record's ``dataset`` entry (both hold ``recipe_sha256`` and ``settings``).
    For datasets with every option at the paper's default it is the recipe hash itself, so the run ids of
    full-size runs (``docs/reproduction``) are unchanged."""
    settings = manifest.get("settings", {})
    quality, drawing = settings.get("jpeg_quality", 0), settings.get("drawing", DRAWINGS[0])
    cell = settings.get("cell_size", DEFAULT_CELL_SIZE)
    return (manifest["recipe_sha256"] + (f"+jpeg{quality}" if quality else "")
            + (f"+{drawing}-drawing" if drawing != DRAWINGS[0] else "")
            + (f"+cell{cell}" if cell != DEFAULT_CELL_SIZE else ""))


def make_manifest(settings: DatasetSettings, recipe: dict[str, SplitRecipe]) -> dict:
    return {
        "format": FORMAT,
        "generator_version": GENERATOR_VERSION,
        "renderer_version": RENDERER_VERSION,
        "created_with": f"biasbench {__version__}",
        "settings": settings.to_dict(),
        "factors": list(FACTORS),
        "splits": {s: len(recipe[s]) for s in SPLITS},
        "image_shape": [3, settings.image_size, settings.image_size],
        "mnist_md5": dict(MNIST_MD5),
        "recipe_sha256": recipe_hash(recipe),
    }


def _save_npz(path: str, recipe: dict[str, SplitRecipe]) -> None:
    arrays = {}
    for s in SPLITS:
        arrays[f"{s}__mnist_index"] = recipe[s].mnist_index
        arrays[f"{s}__label"] = recipe[s].label
        arrays[f"{s}__factors"] = recipe[s].factors
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def write_dataset(root: str | os.PathLike, settings: DatasetSettings, recipe: dict[str, SplitRecipe]) -> dict:
    """Write ``recipe.npz`` and ``manifest.json`` into ``root`` atomically (recipe first, manifest last).

    ``root`` may not exist, be empty, or already hold the same dataset (then nothing is written).
    A folder holding anything else is refused and left untouched.
    """
    root = Path(root)
    manifest = make_manifest(settings, recipe)
    if root.exists():
        if not root.is_dir():
            raise BiasbenchError(f"{root} exists and is not a folder")
        if (root / MANIFEST).exists():
            existing = read_manifest(root)
            old = DatasetSettings.from_dict(existing["settings"])
            if old != settings or existing.get("recipe_sha256") != manifest["recipe_sha256"]:
                diff = "; ".join(old.differences(settings)) or "different recipe or generator version"
                raise BiasbenchError(
                    f"{root} already holds a different dataset (existing vs requested: {diff}); "
                    f"choose another --out or delete it"
                )
            load_recipe(root, existing)  # verifies the recipe file too
            return existing
        if any(root.iterdir()):
            raise BiasbenchError(f"{root} is not empty and holds no biasbench dataset; choose another --out")
    root.mkdir(parents=True, exist_ok=True)
    atomic_write(root / RECIPE, lambda tmp: _save_npz(tmp, recipe))
    atomic_write_json(root / MANIFEST, manifest)
    return manifest


def read_manifest(root: str | os.PathLike) -> dict:
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise BiasbenchError(f"{root} holds no Biased MNIST dataset (no {MANIFEST}); create one with "
                             f"'biasbench data generate --out {root}'")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BiasbenchError(f"corrupt manifest {path}: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BiasbenchError(f"corrupt manifest {path}: not a {FORMAT} manifest")
    for key in ("settings", "recipe_sha256", "generator_version", "renderer_version", "splits"):
        if key not in manifest:
            raise BiasbenchError(f"corrupt manifest {path}: missing {key!r}")
    if manifest["generator_version"] != GENERATOR_VERSION or manifest["renderer_version"] != RENDERER_VERSION:
        raise BiasbenchError(
            f"{root} was made by generator {manifest['generator_version']} / renderer "
            f"{manifest['renderer_version']}; this biasbench has {GENERATOR_VERSION} / {RENDERER_VERSION}: "
            f"regenerate it"
        )
    try:
        DatasetSettings.from_dict(manifest["settings"])
    except (BiasbenchError, TypeError) as exc:
        raise BiasbenchError(f"corrupt manifest {path}: bad settings ({exc})") from None
    return manifest


def load_recipe(root: str | os.PathLike, manifest: dict | None = None) -> dict[str, SplitRecipe]:
    """Read and verify ``recipe.npz`` against the manifest's hash."""
    root = Path(root)
    manifest = manifest or read_manifest(root)
    path = root / RECIPE
    try:
        with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as z:
            recipe = {
                s: SplitRecipe(s, z[f"{s}__mnist_index"], z[f"{s}__label"], z[f"{s}__factors"]) for s in SPLITS
            }
    except FileNotFoundError:
        raise BiasbenchError(f"{path} is missing; regenerate the dataset") from None
    except Exception as exc:  # zip/npy errors, missing keys
        raise BiasbenchError(f"corrupt recipe {path}: {exc}") from None
    if recipe_hash(recipe) != manifest["recipe_sha256"]:
        raise BiasbenchError(f"corrupt recipe {path}: its SHA-256 does not match the manifest")
    return recipe
