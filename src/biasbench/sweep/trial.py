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


def run_trial(trial: dict, data_root: str, out: str, tracker: str = "none", device: str = "auto",
              compile_model: bool | str = False, cuda_graphs: bool | str = False) -> dict:
    """Run one trial (a :meth:`Trial.to_dict`); returns a small JSON-ready result."""
    return run_unit([trial], data_root, out, tracker, device, compile_model, cuda_graphs)[0]


def run_unit(trials: list[dict], data_root: str, out: str, tracker: str = "none", device: str = "auto",
             compile_model: bool | str = False, cuda_graphs: bool | str = False) -> list[dict]:
    """Run one unit of work: a single trial alone, or several trials that :func:`plan_units` found fusable
    trained as one fused network (:func:`biasbench.train.fused.train_fused`). One result per trial."""
    from ..train.fused import train_fused
    from ..train.loop import Trainer

    ts = [Trial.from_dict(t) for t in trials]
    data = ensure_dataset(data_root, ts[0].dataset)
    if any(t.dataset != ts[0].dataset for t in ts):
        raise BiasbenchError("trials of one fused unit must share their dataset")
    cfgs = [t.train_config(str(data)) for t in ts]
    runs = Path(out) / "runs"
    if len(cfgs) == 1:
        results = [Trainer(cfgs[0], runs, tracker=tracker, device=device, progress=False,
                           compile_model=compile_model, cuda_graphs=cuda_graphs).run()]
    else:
        results = train_fused(cfgs, runs, tracker=tracker, device=device, progress=False, compile_model=compile_model,
                              cuda_graphs=cuda_graphs)
    return [{"trial_id": t.trial_id, "run_id": r["run_id"], "status": r["status"], "fused": len(ts),
             "test_accuracy": r["final"]["test"]["accuracy"]} for t, r in zip(ts, results)]


def plan_units(trials: list[Trial], fuse: int) -> list[list[Trial]]:
    """Split trials into units of work: groups of at most ``fuse`` trials with the same dataset and the same
    configuration up to seed and explicit set (:func:`biasbench.train.fused.fuse_key`), in the order the
    trials come; ``fuse=1`` (or a trial that cannot be fused) gives one trial per unit."""
    from ..train.fused import fusable, fuse_key

    if fuse < 1:
        raise BiasbenchError(f"--fuse must be >= 1, got {fuse}")
    groups: dict[str, list[Trial]] = {}
    units: list[list[Trial]] = []
    for t in trials:
        cfg = t.train_config("-")
        if fuse == 1 or fusable(cfg) is not None:
            units.append([t])
            continue
        key = stable_hash({"dataset": t.dataset.to_dict(), "config": fuse_key(cfg)}, 16)
        group = groups.get(key)
        if group is None or len(group) == fuse:
            group = groups[key] = []
            units.append(group)
        group.append(t)
    return units
