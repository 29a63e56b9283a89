"""Evaluate trained runs on another dataset: how a model's accuracy and bias move under a shift of the factors.

A run records its metrics on the splits of the dataset it was trained on. ``biasbench evaluate RUN --data DIR``
runs the model the run kept at an evaluation epoch (``weights/epochNNN.pt``: the weights its records describe,
:meth:`~biasbench.methods.base.Method.evaluated_model_state`) on a split of any other Biased MNIST dataset of the
same image size, for example:

- the reference generator's own images (``--drawing reference --jpeg-quality 95``): does the model still
  work when only the drawing changes?
- a test set with one factor held fixed (``--fixed texture=3``) or another ``p_bias``: a controlled shift,
  observational where the counterfactual audit (:mod:`.audit`) is interventional;
- the same dataset: the run's own records again (a check; exact on the CPU).

``--shift KEY=VALUE`` (:func:`shifted_settings`) makes such a dataset from the run's own settings with one changed,
on first use, so the other settings cannot be got wrong.

The metrics are :func:`~biasbench.eval.metrics.evaluate_split`'s over the chosen split, with the logits (ECE,
ABCC) and without ``alpha`` (the tuning-distribution accuracy weights patterns by the *training* split's
distribution, which belongs to the run's dataset). Precision and memory layout are the run's own
(``precision``, ``channels_last`` resolved for the device as training resolves them), batches of 1,024 as in
training's evaluation, so a CPU evaluation of the run's own dataset gives its recorded metrics exactly.

Each evaluation is written to ``RUN/evaluations/<dataset id>-<split>-epochNNN.json`` (atomically); asking
again for the same (dataset, split, epoch) reads it back instead of computing it.
"""
from __future__ import annotations

import os
import sys
from dataclasses import asdict, fields
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..config import DatasetSettings, parse_fixed
from ..data.biased_mnist import BiasedMNIST
from ..data.factors import FACTORS
from ..data.recipe import SPLITS, dataset_identity, read_manifest
from ..errors import BiasbenchError
from ..utils import atomic_write_json, read_json_record, stable_hash
from .audit import kept_epochs, load_run_model
from .metrics import evaluate_split


def parse_shift(items: list[str] | None) -> dict[str, str]:
    """``--shift`` items as ``{setting: value}``: any dataset setting but the cell size (a model's input size is
    fixed); one error line for a malformed item or an unknown setting."""
    keys = [f.name for f in fields(DatasetSettings) if f.name != "cell_size"]
    out: dict[str, str] = {}
    for item in items or []:
        if "=" not in item:
            raise BiasbenchError(f"--shift takes KEY=VALUE, e.g. drawing=reference; got {item!r}")
        k, v = (x.strip() for x in item.split("=", 1))
        if k == "cell_size":
            raise BiasbenchError("--shift cell_size: a run's model takes the image size it was trained at; the "
                                 "images can shift in anything but their size")
        if k not in keys:
            raise BiasbenchError(f"--shift {k}=...: unknown dataset setting {k!r}; expected one of: "
                                 f"{', '.join(keys)}")
        out[k] = v
    return out


def shifted_settings(base: DatasetSettings, shift: dict[str, str]) -> DatasetSettings:
    """``base`` with the ``shift`` settings changed (:func:`parse_shift`). ``p_bias=NAME=P,...`` and
    ``fixed=NAME=I,...`` change the named factors and keep the others' (``fixed=none`` holds none fixed); a bad
    value is the settings' own error."""
    d = asdict(base)
    for k, v in shift.items():
        if k == "p_bias" and "=" in v:
            pairs = {}
            for item in v.split(","):
                if "=" not in item:
                    raise BiasbenchError(f"bad p_bias item {item!r} in --shift; expected NAME=P, e.g. texture=0.9")
                name, p = item.split("=", 1)
                pairs[name.strip()] = p.strip()
            d[k] = {**base.p_bias, **pairs}
        elif k == "fixed":
            d[k] = {} if v.lower() == "none" else {**base.fixed, **parse_fixed(v)}
        else:
            d[k] = v
    return DatasetSettings(**d)


def evaluation_data(run_dir: str | os.PathLike, data: str | os.PathLike | None, shift: dict[str, str] | None) -> Path:
    """The dataset folder to evaluate a run on: ``data`` itself without a shift; with one, the run's dataset
    settings shifted (:func:`shifted_settings`), in ``data`` as a datasets root (default: the folder holding the
    run's recorded dataset, so a sweep's shifted datasets go beside its own), generated there on first use."""
    if not shift:
        if data is None:
            raise BiasbenchError("give --data DIR (a dataset to evaluate on) or --shift KEY=VALUE (the run's own "
                                 "dataset, shifted)")
        return Path(data)
    from ..sweep.trial import ensure_dataset
    from .audit import run_dataset

    rec = read_json_record(Path(run_dir) / "config.json", key="config")
    settings = shifted_settings(DatasetSettings.from_dict(rec.get("dataset", {}).get("settings", {})), shift)
    root = Path(data) if data is not None else run_dataset(rec, None).parent
    return ensure_dataset(root, settings)


EVAL_BATCH = 1024
"""Images per forward pass: training's evaluation batch (:meth:`Trainer._predict`), so the logits match."""


def dataset_key(manifest: dict) -> str:
    """A short id of a dataset's images (:func:`dataset_identity`, hashed): the evaluations' file names."""
    return stable_hash(dataset_identity(manifest), 12)


def evaluation_path(run_dir: str | os.PathLike, manifest: dict, split: str, epoch: int) -> Path:
    return Path(run_dir) / "evaluations" / f"{dataset_key(manifest)}-{split}-epoch{epoch:03d}.json"


@torch.no_grad()
def model_logits(model: torch.nn.Module, images: torch.Tensor, amp: bool, channels_last: bool) -> torch.Tensor:
    """float32 logits (N, classes) of ``model`` (in eval mode) over uint8 ``images``, in :data:`EVAL_BATCH`
    chunks (the last zero-padded), under bf16 autocast when ``amp``, channels-last when asked: training's
    evaluation path (:func:`~biasbench.train.loop.eval_batches`, :func:`~biasbench.train.loop.prep_images`)."""
    from ..train.loop import eval_batches, prep_images

    model.eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    outs = []
    for chunk, n in eval_batches(images, EVAL_BATCH):
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=amp):
            outs.append(model(prep_images(chunk, channels_last))[:n].float())
    return torch.cat(outs) if outs else torch.zeros((0, 10))


def _recorded(run_dir: Path, epoch: int, split: str) -> dict | None:
    """The run's own metrics of ``split`` at ``epoch`` (its ``metrics.json``), or None."""
    history = read_json_record(run_dir / "metrics.json", {}).get("history", [])
    hits = [h["metrics"] for h in history if h.get("epoch") == epoch and h.get("split") == split and "metrics" in h]
    return hits[-1] if hits else None


def evaluate_run(run_dir: str | os.PathLike, data: str | os.PathLike | None, split: str = "test",
                 epoch: int | None = None, device: str = "auto", progress: bool | None = None,
                 shift: dict[str, str] | None = None, images: dict | None = None) -> dict:
    """Evaluate a run's kept weights (evaluation epoch ``epoch``; default its last) on ``split`` of the dataset
    in ``data``, or of the run's own dataset shifted by ``shift`` (:func:`evaluation_data`; see module doc).
    Returns the JSON-ready result, also written to :func:`evaluation_path`; ``reused`` is true when that file
    already held it. ``images``: a dict that keeps the last rendered split between calls (:func:`evaluate_runs`
    evaluates a sweep's runs on one dataset: rendering the reference's drawing with its JPEG round trip takes
    6.6 s per 10,000 96-px images on the 2-core CPU, the paper CNN's fp32 forward pass over them 48 s)."""
    from ..train.loop import resolve_device, resolve_numerics

    run_dir = Path(run_dir)
    if split not in SPLITS:
        raise BiasbenchError(f"unknown split {split!r}; expected one of: {', '.join(SPLITS)}")
    data = evaluation_data(run_dir, data, shift)
    manifest = read_manifest(data)
    if epoch is None:
        kept = kept_epochs(run_dir)
        if not kept:
            raise BiasbenchError(f"run {run_dir} kept no evaluated weights (weights/epochNNN.pt): it was trained "
                                 f"before runs kept them, or has not reached an evaluation epoch yet")
        epoch = kept[-1]
    out_path = evaluation_path(run_dir, manifest, split, epoch)
    if out_path.is_file():
        try:
            done = read_json_record(out_path)
        except BiasbenchError:  # a corrupt earlier result: computed again, and replaced
            done = {}
        if done.get("dataset", {}).get("recipe_sha256") == manifest["recipe_sha256"]:
            return {**done, "reused": True}
    dev = resolve_device(device)
    model, rec = load_run_model(run_dir, dev, epoch)
    cfg = rec.get("config", {})
    trained = DatasetSettings.from_dict(rec.get("dataset", {}).get("settings", {}))
    given = DatasetSettings.from_dict(manifest["settings"])
    if trained.cell_size != given.cell_size:
        raise BiasbenchError(f"run {rec.get('run_id')} was trained on {trained.image_size}x{trained.image_size} "
                             f"images; {data} holds {given.image_size}x{given.image_size} (cell size "
                             f"{given.cell_size}): evaluate it on a dataset of cell size {trained.cell_size}")
    amp, channels_last = resolve_numerics(cfg.get("precision", "auto"), cfg.get("channels_last", "auto"), dev)
    ds = BiasedMNIST(data, split=split, download=False)
    if progress is None:
        progress = sys.stderr.isatty()
    key = (dataset_key(manifest), split, str(dev))
    if images is None or images.get("key") != key:
        rendered = ds.render(device=dev, progress=progress)
        if images is not None:
            images.clear()  # one split kept: free the last before holding the next
            images.update(key=key, images=rendered)
    else:
        rendered = images["images"]
    logits = model_logits(model, rendered, amp, channels_last).cpu()
    pred = logits.argmax(1).numpy()
    metrics = evaluate_split(pred, ds.labels.astype(np.int64), ds.factors.astype(np.int64), given.mode,
                             logits=logits.numpy())
    same = "recipe_sha256" in rec.get("dataset", {}) and dataset_identity(rec["dataset"]) == dataset_identity(manifest)
    result = {
        "run_id": rec.get("run_id", run_dir.name),
        "method": cfg.get("method"), "model": cfg.get("model"), "seed": cfg.get("seed"),
        "explicit": list(cfg.get("explicit") or []),
        "epoch": epoch,
        "split": split,
        "dataset": {"path": str(data), "recipe_sha256": manifest["recipe_sha256"], "settings": manifest["settings"]},
        "trained_on_this_dataset": same,
        "shift": trained.differences(given),
        "metrics": metrics,
        "recorded_test": _recorded(run_dir, epoch, "test"),
    }
    atomic_write_json(out_path, result)
    _log_to_tracker(run_dir, result, out_path)
    return {**result, "reused": False}


def _log_to_tracker(run_dir: Path, result: dict, path: Path) -> None:
    """The evaluation's headline metrics in the run's own tracker records (when it has any), at the epoch of the
    weights, under ``shift_<dataset id>_<split>/``: accuracy, worst group and each factor's MMD."""
    from ..track import log_to_run_trackers

    m = result["metrics"]
    prefix = f"shift_{dataset_key(result['dataset'])}_{result['split']}"
    metrics = {f"{prefix}/accuracy": m["accuracy"], f"{prefix}/worst_group": m["worst_group"]}
    metrics.update({f"{prefix}/{f}/mmd": v["mmd"] for f, v in m["factors"].items() if v["mmd"] == v["mmd"]})
    log_to_run_trackers(run_dir, "evaluate", metrics, int(result["epoch"]), [path])


def _cannot_evaluate(run_dir: Path, manifest: dict, epoch: int | None) -> str | None:
    """Why :func:`evaluate_run` would refuse a finished run on this dataset (no weights of the epoch, another
    image size), or None."""
    kept = kept_epochs(run_dir)
    if not kept or (epoch is not None and epoch not in kept):
        return f"no weights of epoch {epoch}" if kept else "no kept weights"
    trained = read_json_record(run_dir / "config.json").get("dataset", {}).get("settings", {})
    cell = DatasetSettings.from_dict(trained).cell_size
    if cell != DatasetSettings.from_dict(manifest["settings"]).cell_size:
        return f"trained at cell size {cell}"
    return None


def evaluate_runs(root: str | os.PathLike, data: str | os.PathLike | None, split: str = "test",
                  epoch: int | None = None, device: str = "auto", progress: bool | None = None,
                  log: Callable[[str], None] = print, shift: dict[str, str] | None = None) -> list[dict]:
    """:func:`evaluate_run` for every finished run of a runs or sweep folder
    (:func:`biasbench.report.summary.run_dirs`), each on ``data`` or on its own dataset shifted by ``shift``. Runs
    not finished, of another image size, or without weights of ``epoch`` are left out with a line in ``log``; none
    left is an error."""
    from ..report.summary import finished_runs

    # one dataset for every run without a shift: a bad --data fails before any run is read
    manifest = None if shift else read_manifest(evaluation_data(root, data, shift))
    results, images = [], {}
    for tag, run in finished_runs(root, "evaluate", log):
        run_data = evaluation_data(run, data, shift)
        why = _cannot_evaluate(run, manifest or read_manifest(run_data), epoch)
        if why:
            log(f"{tag}: {why}, not evaluated")
            continue
        res = evaluate_run(run, run_data, split, epoch, device, progress, images=images)
        log(f"{tag} ({res['method']}): accuracy {res['metrics']['accuracy']:.2f}"
            + (" (already evaluated)" if res["reused"] else ""))
        results.append(res)
    if not results:
        raise BiasbenchError(f"no run of {root} could be evaluated on {data or 'its shifted dataset'} (see the lines "
                             f"above)")
    return results


def shift_label(result: dict) -> str:
    """How an evaluation's dataset differs from the run's (its settings, trained vs evaluated), for tables."""
    if result.get("trained_on_this_dataset"):
        return "the run's own dataset"
    return "; ".join(result.get("shift") or []) or "same settings, other recipe"


def format_evaluation(result: dict) -> str:
    """What ``biasbench evaluate RUN`` prints: the split's accuracies beside the run's recorded test metrics,
    then the bias per factor on the given split (:func:`~biasbench.report.summary.factor_lines`, as ``train``)."""
    from ..report.summary import factor_lines, split_lines

    m, rec = result["metrics"], result.get("recorded_test")
    shift = shift_label(result)
    lines = [f"run {result['run_id']}  {result['method']} / {result['model']}  seed {result['seed']}  weights of "
             f"epoch {result['epoch']}",
             f"on {result['dataset']['path']} ({result['split']}; vs the training dataset: {shift})", ""]
    lines += split_lines(([("recorded test (unbiased)", rec)] if rec else []) + [(f"this {result['split']}", m)],
                         label_width=24, first="")
    lines += ["", f"bias on this {result['split']}, in points (as train prints it: MMD = majority - minority "
                  f"accuracy; DP, EO gap, ABCC)", *factor_lines(m["factors"])]
    return "\n".join(lines)


def format_evaluations(results: list[dict]) -> str:
    """One line per evaluated run: its recorded test accuracy, the accuracy here and the change."""
    head = (f"{'run_id':14s}{'method':14s}{'explicit':20s}{'seed':>5s}{'epoch':>6s}{'recorded':>10s}{'here':>8s}"
            f"{'change':>8s}{'worst grp':>11s}{'mean MMD':>10s}")
    lines = [head]
    for r in results:
        m, rec = r["metrics"], r.get("recorded_test")
        explicit = ",".join(r["explicit"]) or "-"
        explicit = explicit if len(explicit) <= 19 else explicit[:16] + "..."
        before = f"{rec['accuracy']:.2f}" if rec else "-"
        change = f"{m['accuracy'] - rec['accuracy']:+.2f}" if rec else "-"
        mmd = [m["factors"][f]["mmd"] for f in FACTORS if m["factors"][f]["mmd"] == m["factors"][f]["mmd"]]
        lines.append(f"{r['run_id']:14s}{str(r['method']):14s}{explicit:20s}{r['seed']!s:>5s}{r['epoch']:>6d}"
                     f"{before:>10s}{m['accuracy']:8.2f}{change:>8s}{m['worst_group']:11.2f}"
                     f"{(f'{np.mean(mmd):.2f}' if mmd else '-'):>10s}")
    return "\n".join(lines)
