"""Counterfactual bias audit: how a trained model's prediction changes when exactly one factor changes.

Because every image is rendered from its recipe, the audit can re-render image i with factor f set to
another value v and everything else (digit, other factors) unchanged. For each factor f it collects the
triples (image i, value v, prediction p) over the counterfactual values of every audited image, plus the
original image itself (v = its own value). With ``values=None`` every other value is used (9 per image,
8 for the digit position); ``values=K`` draws K of them per image (seeded). Per factor:

- ``flip_rate`` = mean over counterfactual pairs (v != original) of [p(i, f=v) != p(i)];
- ``forced_majority_accuracy`` = accuracy over the triples whose value is class-aligned for the image's
  label (majority under the dataset's mode), ``forced_minority_accuracy`` over the others, and
  ``gap`` = majority - minority: an *interventional* MMD, free of the confounding that the
  observational MMD has (the other factors are held fixed);
- ``value_class_matrix[v][c]`` = fraction of triples with value v predicted as class c (rows sum to 1):
  which values pull predictions toward which classes (a diagonal = the factor is used as a shortcut).

Rendering and inference are batched (``batch`` counterfactual images at a time) on the chosen device.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..data.biased_mnist import BiasedMNIST
from ..data.factors import FACTOR_TABLE, FACTORS, NUM_CLASSES, factor_majority
from ..data.render import renderer_for
from ..errors import BiasbenchError
from ..models import create_model
from ..utils import read_json_record


def load_run_model(run_dir: str | os.PathLike, device: torch.device,
                   epoch: int | None = None) -> tuple[torch.nn.Module, dict]:
    """The main model of a run, from its ``config.json`` and ``checkpoint.pt`` (the last completed epoch), or,
    with ``epoch``, from the weights the run kept at that evaluation epoch (``weights/epochNNN.pt``). When the
    checkpoint's epoch was an evaluation epoch, its kept weights are taken: the model as evaluated, which for DFR
    holds the refit last layer that the checkpoint's model lacks (the same weights for every other method). The
    returned record is the config record plus ``checkpoint_epoch``, the epoch of the weights."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise BiasbenchError(f"{run_dir} is not a run folder (no config.json)")
    rec = read_json_record(cfg_path, key="config")
    cfg = rec["config"]
    if epoch is None:
        path = run_dir / "checkpoint.pt"
        if not path.is_file():
            raise BiasbenchError(f"run {run_dir} has no checkpoint (checkpoint.pt); train it first")
    else:
        path = run_dir / "weights" / f"epoch{epoch:03d}.pt"
        if not path.is_file():
            kept = ", ".join(map(str, kept_epochs(run_dir))) or "none (trained before runs kept them)"
            raise BiasbenchError(f"run {run_dir} kept no weights of epoch {epoch}; kept: {kept}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if epoch is None and (run_dir / "weights" / f"epoch{int(ckpt['epoch']):03d}.pt").is_file():
            path = run_dir / "weights" / f"epoch{int(ckpt['epoch']):03d}.pt"  # the model as evaluated
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
            epoch = int(ckpt["epoch"])
        state = ckpt["method"]["modules"]["model"] if epoch is None else ckpt["model"]
    except Exception as exc:
        raise BiasbenchError(f"corrupt checkpoint {path}: {exc}") from None
    model = create_model(cfg["model"], num_classes=10, **cfg.get("model_kwargs", {}))
    model.load_state_dict(state)
    return model.to(device).eval(), {**rec, "checkpoint_epoch": int(ckpt["epoch"])}


def kept_epochs(run_dir: str | os.PathLike) -> list[int]:
    """The evaluation epochs whose weights a run kept (``weights/epochNNN.pt``), in order."""
    return sorted(int(p.stem[5:]) for p in (Path(run_dir) / "weights").glob("epoch[0-9][0-9][0-9].pt"))


class _Predictor:
    def __init__(self, model: torch.nn.Module, device: torch.device):
        self.model, self.device = model, device
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.model = self.model.to(memory_format=torch.channels_last)

    @torch.no_grad()
    def __call__(self, images_u8: torch.Tensor) -> np.ndarray:
        x = images_u8.float()
        if self.cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cuda):
            return self.model(x).argmax(1).cpu().numpy()


def counterfactual_audit(model: torch.nn.Module, ds: BiasedMNIST, device: torch.device, samples: int | None = None,
                         values: int | None = None, seed: int = 0, batch: int = 2048,
                         progress: bool | None = None) -> dict:
    """Run the audit on split ``ds`` (see module doc); returns a JSON-ready dict."""
    n_all = len(ds)
    if samples is not None and not 1 <= samples <= n_all:
        raise BiasbenchError(f"--samples must be in [1, {n_all}] for the {ds.split} split, got {samples}")
    max_alt = min(FACTOR_TABLE[f].num_values for f in FACTORS) - 1
    if values is not None and not 1 <= values <= max_alt:
        raise BiasbenchError(f"--values must be in [1, {max_alt}] (the position factor has {max_alt} "
                             f"alternatives), got {values}")
    rng = np.random.default_rng(seed)
    idx = np.arange(n_all) if samples is None else np.sort(rng.choice(n_all, samples, replace=False))
    n = len(idx)
    digits = ds.digits(idx)
    fac = ds.factors[idx].astype(np.int64)
    y = ds.labels[idx].astype(np.int64)
    mode = ds.settings.mode
    renderer = renderer_for(ds.settings, device)
    predict = _Predictor(model, device)

    def render_predict(img_idx: np.ndarray, factor_rows: np.ndarray) -> np.ndarray:
        out = np.empty(len(img_idx), dtype=np.int64)
        for s in range(0, len(img_idx), batch):
            sl = slice(s, s + batch)
            out[sl] = predict(renderer.render(digits[img_idx[sl]], factor_rows[sl]))
        return out

    orig_pred = render_predict(np.arange(n), fac)
    total = sum(n * (values or FACTOR_TABLE[f].num_values - 1) for f in FACTORS)
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc="audit", unit="img", leave=False,
               disable={True: False, False: True, None: None}[progress])
    result = {"split": ds.split, "n_images": n, "values_per_image": values or "all", "seed": seed,
              "original_accuracy": float(100.0 * np.mean(orig_pred == y)), "factors": {}}
    for f, name in enumerate(FACTORS):
        nv = FACTOR_TABLE[name].num_values
        alt = (fac[:, f:f + 1] + 1 + np.arange(nv - 1)) % nv  # (n, nv - 1): every other value
        if values is not None:
            pick = rng.random(alt.shape).argsort(axis=1)[:, :values]
            alt = np.take_along_axis(alt, pick, axis=1)
        k = alt.shape[1]
        img_idx = np.repeat(np.arange(n), k)
        rows = fac[img_idx].copy()
        rows[:, f] = alt.reshape(-1)
        pred = np.empty(len(img_idx), dtype=np.int64)
        for s in range(0, len(img_idx), 8 * batch):  # chunks keep the progress bar moving
            sl = slice(s, s + 8 * batch)
            pred[sl] = render_predict(img_idx[sl], rows[sl])
            bar.update(len(pred[sl]))
        # triples: counterfactuals plus the originals
        t_val = np.concatenate([rows[:, f], fac[:, f]])
        t_pred = np.concatenate([pred, orig_pred])
        t_y = np.concatenate([y[img_idx], y])
        correct = t_pred == t_y
        maj = factor_majority(name, t_y, t_val, mode)
        counts = np.bincount(t_val * NUM_CLASSES + t_pred, minlength=nv * NUM_CLASSES).reshape(nv, NUM_CLASSES)
        with np.errstate(invalid="ignore"):
            matrix = counts / counts.sum(axis=1, keepdims=True)
        a_maj = float(100.0 * correct[maj].mean()) if maj.any() else float("nan")
        a_min = float(100.0 * correct[~maj].mean()) if (~maj).any() else float("nan")
        result["factors"][name] = {
            "flip_rate": float(np.mean(pred != orig_pred[img_idx])),
            "forced_majority_accuracy": a_maj,
            "forced_minority_accuracy": a_min,
            "gap": a_maj - a_min,
            "n_pairs": int(len(pred)),
            "value_labels": [str(v) for v in FACTOR_TABLE[name].values],
            "value_class_matrix": np.nan_to_num(matrix).round(6).tolist(),
        }
    bar.close()
    return result


def format_audit(result: dict) -> str:
    epoch = f" (model of epoch {result['checkpoint_epoch']})" if "checkpoint_epoch" in result else ""
    lines = [f"counterfactual audit of run {result.get('run_id', '?')}{epoch} on {result['split']}: "
             f"{result['n_images']} images, values per image: {result['values_per_image']}, "
             f"original accuracy {result['original_accuracy']:.2f}", "",
             f"{'factor':18s}{'flip rate':>10s}{'forced maj.':>13s}{'forced min.':>13s}{'gap':>8s}{'pairs':>9s}"]
    for name, r in result["factors"].items():
        lines.append(f"{name:18s}{r['flip_rate']:10.3f}{r['forced_majority_accuracy']:13.2f}"
                     f"{r['forced_minority_accuracy']:13.2f}{r['gap']:8.2f}{r['n_pairs']:9d}")
    lines.append("")
    lines.append("flip rate: share of single-factor changes that change the prediction; forced maj./min.: "
                 "accuracy with the factor set to the class-aligned / a conflicting value (gap = difference).")
    return "\n".join(lines)


def plot_audit(result: dict, out_dir: str | os.PathLike) -> list[Path]:
    """Write ``flip_rates.png`` (bar chart) and ``value_class.png`` (value x predicted-class heatmaps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..utils import atomic_write

    out_dir = Path(out_dir)
    names = list(result["factors"])
    flips = [result["factors"][n]["flip_rate"] for n in names]
    paths = []

    fig, ax = plt.subplots(figsize=(7, 3.6))
    bars = ax.bar(range(len(names)), flips, color="#4c72b0")
    ax.set_xticks(range(len(names)), [n.replace("_", "\n") for n in names], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("prediction flip rate")
    ax.set_title(f"Counterfactual audit ({result['split']}, {result['n_images']} images): "
                 f"how often changing one factor changes the prediction", fontsize=9)
    for b, v in zip(bars, flips):
        ax.text(b.get_x() + b.get_width() / 2, v + 0.02, f"{v:.2f}", ha="center", fontsize=8)
    fig.tight_layout()
    p = out_dir / "flip_rates.png"
    atomic_write(p, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    paths.append(p)

    fig, axes = plt.subplots(2, 4, figsize=(14, 7))
    for ax, name in zip(axes.flat, names):
        m = np.asarray(result["factors"][name]["value_class_matrix"])
        im = ax.imshow(m, vmin=0, vmax=1, cmap="viridis")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("predicted class", fontsize=8)
        ax.set_ylabel("forced value", fontsize=8)
        ax.set_xticks(range(NUM_CLASSES))
        labels = result["factors"][name]["value_labels"]
        short = [lab if lab.isdigit() else (f"{i}" if "(" in lab else f"{i} {lab}") for i, lab in enumerate(labels)]
        ax.set_yticks(range(len(labels)), short, fontsize=7)
        ax.tick_params(axis="x", labelsize=7)
    axes.flat[-1].axis("off")
    fig.colorbar(im, ax=axes.flat[-1], fraction=0.5, label="share of predictions")
    fig.suptitle("Which forced value pulls predictions to which class (rows sum to 1; value k is class k's "
                 "aligned value)", fontsize=10)
    fig.tight_layout()
    p = out_dir / "value_class.png"
    atomic_write(p, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    paths.append(p)
    return paths


def run_dataset(rec: dict, data: str | os.PathLike | None) -> Path:
    """Where to find the dataset a run (its ``config.json`` record ``rec``) was trained on: without ``data``,
    the path the run recorded (relative paths from the current folder); with ``data``, that folder when it
    holds a dataset, else the ``bmnist-<settings hash>`` folder of the run's dataset settings inside it when
    there is one (``data`` is then a sweep's datasets root, as given to ``biasbench sweep --data``). Whether
    it is really the run's dataset is checked against the recipe afterwards."""
    if data is None:
        recorded = rec.get("dataset", {}).get("path") or rec.get("config", {}).get("data")
        if not recorded:
            raise BiasbenchError(f"run {rec.get('run_id')} records no dataset path; pass --data DIR")
        if not (Path(recorded) / "manifest.json").is_file():
            raise BiasbenchError(f"run {rec.get('run_id')} was trained on {recorded}, which holds no dataset "
                                 f"from here (recorded paths are relative to where training ran); pass --data DIR")
        return Path(recorded)
    data = Path(data)
    settings = rec.get("dataset", {}).get("settings")
    if not (data / "manifest.json").is_file() and settings:
        from ..config import DatasetSettings
        from ..sweep.trial import dataset_dir

        try:
            inside = dataset_dir(data, DatasetSettings.from_dict(settings))
        except BiasbenchError:
            return data
        if (inside / "manifest.json").is_file():
            return inside
    return data


def audit_run(run_dir: str | os.PathLike, data: str | os.PathLike | None = None, split: str = "test",
              samples: int | None = None, values: int | None = None, seed: int = 0, device: str = "auto",
              out: str | os.PathLike | None = None, progress: bool | None = None, track: bool = True,
              epoch: int | None = None) -> dict:
    """Audit a run's model (its last checkpoint, or its weights at evaluation epoch ``epoch``) on a split of its
    own dataset (``data``, found by :func:`run_dataset`); write ``audit.json``, ``flip_rates.png`` and
    ``value_class.png`` into ``out`` (default ``RUN/audit``, ``RUN/audit-epochNNN`` with ``epoch``) and log them
    to the run's MLflow record when it has one."""
    from ..data.recipe import dataset_identity, read_manifest
    from ..train.loop import resolve_device
    from ..utils import atomic_write_json

    run_dir = Path(run_dir)
    dev = resolve_device(device)
    model, rec = load_run_model(run_dir, dev, epoch)
    data = run_dataset(rec, data)
    manifest = read_manifest(data)
    trained_on = rec.get("dataset", {})
    if "recipe_sha256" not in trained_on or dataset_identity(manifest) != dataset_identity(trained_on):
        from ..config import DatasetSettings

        diff = DatasetSettings.from_dict(rec["dataset"]["settings"]).differences(
            DatasetSettings.from_dict(manifest["settings"])) if "settings" in rec.get("dataset", {}) else []
        raise BiasbenchError(f"{data} is not the dataset run {rec.get('run_id')} was trained on "
                             f"(run vs given: {'; '.join(diff) or 'different recipe'})")
    ds = BiasedMNIST(data, split=split, download=False)
    result = counterfactual_audit(model, ds, dev, samples, values, seed, progress=progress)
    result = {"run_id": rec.get("run_id"), "method": rec.get("config", {}).get("method"),
              "checkpoint_epoch": rec["checkpoint_epoch"], **result,
              "request": audit_request(split, samples, values, seed, epoch)}
    out_dir = Path(out) if out else audit_dir(run_dir, epoch)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "audit.json", result)
    figures = plot_audit(result, out_dir)
    result["files"] = [str(out_dir / "audit.json"), *map(str, figures)]
    if track:
        _log_to_tracker(run_dir, result, figures)
    return result


def audit_dir(run_dir: str | os.PathLike, epoch: int | None = None) -> Path:
    """Where a run's audit goes: ``RUN/audit`` (its last checkpoint), ``RUN/audit-epochNNN`` (``--epoch N``)."""
    return Path(run_dir) / ("audit" if epoch is None else f"audit-epoch{epoch:03d}")


def audit_request(split: str, samples: int | None, values: int | None, seed: int, epoch: int | None) -> dict:
    """What an audit was asked for, kept in its ``audit.json``: an audit of many runs skips a run already
    audited with the same request (the model, the images and the values drawn are then the same)."""
    return {"split": split, "samples": samples, "values": values, "seed": seed, "epoch": epoch}


def audit_runs(root: str | os.PathLike, data: str | os.PathLike | None = None, split: str = "test",
               samples: int | None = None, values: int | None = None, seed: int = 0, device: str = "auto",
               progress: bool | None = None, epoch: int | None = None, log=print) -> list[dict]:
    """Audit every finished run of a runs folder or a sweep folder (:func:`biasbench.report.summary.run_dirs`),
    each into its own ``audit`` folder, skipping runs already audited with the same request (their results
    are read back, marked ``skipped``). Runs that are not finished are left out with a line in ``log``."""
    from ..report.summary import finished_runs
    from ..utils import read_json_record

    want = audit_request(split, samples, values, seed, epoch)
    results = []
    for tag, run in finished_runs(root, "audit", log):
        try:
            done = read_json_record(audit_dir(run, epoch) / "audit.json", {})
        except BiasbenchError:  # a corrupt earlier audit: audited again
            done = {}
        if done.get("request") == want:
            log(f"{tag}: already audited with these settings")
            results.append({**done, "skipped": True})
            continue
        res = audit_run(run, data, split, samples, values, seed, device, progress=progress, epoch=epoch)
        log(f"{tag} ({res['method']}): mean flip rate "
            f"{sum(f['flip_rate'] for f in res['factors'].values()) / len(res['factors']):.3f}")
        results.append(res)
    return results


def _log_to_tracker(run_dir: Path, result: dict, figures: list[Path]) -> None:
    """Log the audit into the run's own tracker records (every backend the run used), if any."""
    from ..track import log_to_run_trackers

    split = result["split"]
    metrics = {}
    for name, r in result["factors"].items():
        metrics[f"audit_{split}/{name}/flip_rate"] = r["flip_rate"]
        metrics[f"audit_{split}/{name}/gap"] = r["gap"]
    log_to_run_trackers(run_dir, "audit", metrics, int(result["checkpoint_epoch"]),
                        [Path(result["files"][0]), *figures])
