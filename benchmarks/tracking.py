"""Tracking overhead per backend: the tracker calls of one run with the real payloads of a paper-size run
(30 epochs, evaluation at 15 and 30 with every split's metrics, params, tags, 4 artifacts), timed alone.

    python benchmarks/tracking.py [--epochs 30] [--runs 3]

Reports the first run in a new runs folder (which pays the one-time store set-up: MLflow's SQLite
migrations, Aim's repository) and the mean of later runs, and that per-run cost as a share of a full-scale
StdM run (45 s end to end on an H100, docs/reproduction.md).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from biasbench.config import DatasetSettings, TrainConfig
from biasbench.data.biased_mnist import generate
from biasbench.track import make_tracker
from biasbench.train.loop import Trainer, _tracker_metrics

GPU_RUN_SECONDS = 45.0  # StdM, full scale, 30 epochs, H100 (docs/reproduction.md)


def payload(tmp: Path, epochs: int):
    """A real run's records: train a 2-epoch tiny run once and stretch its history to ``epochs``."""
    generate(tmp / "ds", DatasetSettings(cell_size=8, n_train=300, n_val=50, n_test=50))
    cfg = TrainConfig(data=str(tmp / "ds"), epochs=2, eval_epochs=(1, 2))
    res = Trainer(cfg, tmp / "src", tracker="none", progress=False).run()
    run_dir = Path(res["run_dir"])
    hist = json.loads((run_dir / "metrics.json").read_text())["history"]
    per_epoch = {e: _tracker_metrics(hist, e) for e in (1, 2)}
    evals = {epochs // 2, epochs}
    metrics = [per_epoch[1] if e in evals else {k: v for k, v in per_epoch[2].items() if k.startswith("train/")}
               for e in range(1, epochs + 1)]
    from biasbench.data.biased_mnist import BiasedMNIST
    from biasbench.data.export import sample_grid, save_png

    save_png(sample_grid(BiasedMNIST(tmp / "ds", split="train"), per_side=3), run_dir / "samples.png")
    params = {f"config.{k}": v for k, v in cfg.to_dict().items()}
    artifacts = [run_dir / n for n in ("config.json", "metrics.json", "summary.json", "samples.png")]
    return params, metrics, artifacts


def one_run(spec: str, out: Path, name: str, params, metrics, artifacts) -> float:
    t = time.perf_counter()
    tr = make_tracker(spec, str(out))
    tr.start(name)
    tr.log_params(params)
    tr.set_tags({"biasbench.version": "x", "device": "cpu", "git_commit": "abc"})
    tr.log_artifact(str(artifacts[-1]))
    for epoch, m in enumerate(metrics, 1):
        tr.log_metrics(m, epoch)
        tr.flush()
    for a in artifacts[:3]:
        tr.log_artifact(str(a))
    tr.finish()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        params, metrics, artifacts = payload(tmp, args.epochs)
        n_values = sum(len(m) for m in metrics)
        print(f"one run: {len(params)} params, {n_values} metric values over {args.epochs} epochs, "
              f"{len(artifacts)} artifacts")
        print(f"{'backend':28s}{'first run (set-up)':>20s}{'later runs':>12s}{'share of 45 s GPU run':>24s}")
        for spec in ("mlflow", "tensorboard", "aim", "mlflow,tensorboard,aim"):
            out = tmp / spec.replace(",", "_")
            first = one_run(spec, out, "r0", params, metrics, artifacts)
            later = [one_run(spec, out, f"r{i}", params, metrics, artifacts) for i in range(1, args.runs + 1)]
            mean = sum(later) / len(later)
            print(f"{spec:28s}{first:18.2f} s{mean:10.2f} s{100 * mean / GPU_RUN_SECONDS:22.2f} %")


if __name__ == "__main__":
    main()
