"""The trial function both runners call: make sure the trial's dataset exists, then train (or skip a
finished run, or resume an interrupted one). Records go to ``SWEEP/runs/<run_id>/``."""
from __future__ import annotations

import os
from pathlib import Path

from ..config import DatasetSettings
from ..data.biased_mnist import generate
from ..data.recipe import read_manifest
from ..errors import BiasbenchError
from ..utils import stable_hash
from .spec import Trial


def dataset_dir(data_root: str | os.PathLike, settings: DatasetSettings) -> Path:
    """Where a trial's dataset lives: ``data_root`` itself when it holds exactly these settings, else
    ``data_root/<settings hash>`` (generated on first use; a recipe is about 1 MB)."""
    root = Path(data_root)
    if (root / "manifest.json").is_file():
        try:
            if DatasetSettings.from_dict(read_manifest(root)["settings"]) == settings:
                return root
        except BiasbenchError:
            pass
    return root / f"bmnist-{stable_hash(settings.to_dict(), 10)}"


def ensure_dataset(data_root: str | os.PathLike, settings: DatasetSettings) -> Path:
    d = dataset_dir(data_root, settings)
    if not (d / "manifest.json").is_file():
        generate(d, settings)
    return d


def run_trial(trial: dict, data_root: str, out: str, tracker: str = "none", device: str = "auto") -> dict:
    """Run one trial (a :meth:`Trial.to_dict`); returns a small JSON-ready result."""
    from ..train.loop import Trainer

    t = Trial.from_dict(trial)
    data = ensure_dataset(data_root, t.dataset)
    result = Trainer(t.train_config(str(data)), Path(out) / "runs", tracker=tracker, device=device,
                     progress=False).run()
    return {"trial_id": t.trial_id, "run_id": result["run_id"], "status": result["status"],
            "test_accuracy": result["final"]["test"]["accuracy"]}
