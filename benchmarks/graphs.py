"""CUDA graphs per method: every method trained eagerly and with captured steps, same seed and data.

    python benchmarks/graphs.py [--device cuda] [--cell-size 32] [--n-train 8192] [--epochs 2]
                                [--methods all] [--fused 0] [--explicit texture]

For each method (bias-label methods with ``--explicit``): the final training loss, test accuracy and
training images/s (last epoch, from the run's records) of an eager run and of the same run with
``cuda_graphs`` on, and their ratio. With ``--fused R``, also R runs (seeds 0..R-1) fused, eager and
captured. A captured run takes the same steps as the eager one; on a GPU the two differ only by
floating-point details (bf16, kernel choice), so their losses and accuracies should be close: the
``same`` column says whether the loss is within 5 % and the accuracy within 5 points. The last line,
``graphs: ok`` or ``graphs: FAILED (...)``, is what ``benchmarks/gpu.py --cuda-graphs measured`` reads.
On the CPU it runs the eager rows only (a CPU cannot capture).
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from biasbench.config import DatasetSettings, TrainConfig
from biasbench.data.biased_mnist import generate
from biasbench.methods import get_method_class, list_methods
from biasbench.train.fused import fusable, train_fused
from biasbench.train.loop import Trainer
from common import device_name, pick_device  # benchmarks/common.py (scripts run from benchmarks/)


def last_epoch(result: dict) -> tuple[float, float, float]:
    """(training loss, test accuracy, training images/s) of a finished run's last epoch."""
    hist = json.loads((Path(result["run_dir"]) / "metrics.json").read_text())["history"]
    tl = [h for h in hist if h["split"] == "train_loss"][-1]
    return tl["loss"], result["final"]["test"]["accuracy"], tl["images_per_s"] * tl.get("fused_runs", 1)


def train(cfgs: list[TrainConfig], out: str, dev: str, graphs: bool) -> tuple[float, float, float]:
    """Loss and accuracy of the first run, images/s of all runs together."""
    if len(cfgs) == 1:
        res = [Trainer(cfgs[0], out, tracker="none", device=dev, progress=False, cuda_graphs=graphs).run()]
    else:
        res = train_fused(cfgs, out, tracker="none", device=dev, progress=False, cuda_graphs=graphs)
    loss, acc, speed = last_epoch(res[0])
    return loss, acc, speed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--cell-size", type=int, default=32)
    ap.add_argument("--n-train", type=int, default=8192)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--methods", default="all", help="comma-separated method names, or all")
    ap.add_argument("--fused", type=int, default=0, help="also R fused runs per method (0: none)")
    ap.add_argument("--explicit", default="texture", help="the explicit factor of bias-label methods")
    args = ap.parse_args()
    dev = pick_device(args.device)
    cuda = dev.startswith("cuda")
    methods = list_methods() if args.methods == "all" else args.methods.split(",")
    name = device_name(dev)
    print(f"device: {dev} ({name}), torch {torch.__version__}, image {3 * args.cell_size}px, {args.n_train} "
          f"training images, {args.epochs} epochs, batch 128, bf16 on CUDA")
    print(f"{'method':10s}{'runs':>5s}  {'eager loss':>10s}{'graph loss':>11s}{'eager acc':>10s}{'graph acc':>10s}"
          f"{'eager img/s':>12s}{'graph img/s':>12s}{'x':>6s}  same")
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        root = f"{tmp}/ds"
        generate(root, DatasetSettings(cell_size=args.cell_size, n_train=args.n_train, n_val=512, n_test=2048))
        for method in methods:
            explicit = (args.explicit,) if get_method_class(method).uses_bias_labels else ()
            fuse = args.fused > 1 and fusable(TrainConfig(data=root, method=method, explicit=explicit)) is None
            for runs in [1] + ([args.fused] if fuse else []):  # JTT is never fused
                cfgs = [TrainConfig(data=root, method=method, explicit=explicit, epochs=args.epochs, seed=s,
                                    eval_epochs=(args.epochs,)) for s in range(runs)]
                el, ea, es = train(cfgs, f"{tmp}/eager-{runs}", dev, False)
                row = f"{method:10s}{runs:5d}  {el:10.4f}"
                if not cuda:
                    print(f"{row}{'-':>11s}{ea:10.2f}{'-':>10s}{es:12,.0f}{'-':>12s}{'-':>6s}  -", flush=True)
                    continue
                try:
                    gl, ga, gs = train(cfgs, f"{tmp}/graph-{runs}", dev, True)
                except Exception as exc:  # report and go on: one method failing must not hide the others
                    first = str(exc).splitlines()[0] if str(exc) else ""
                    failures.append(f"{method} x{runs}: {type(exc).__name__}: {first}")
                    print(f"{row}  captured run failed: {type(exc).__name__}: {first}", flush=True)
                    continue
                same = abs(gl - el) <= 0.05 * max(abs(el), 1e-3) and abs(ga - ea) <= 5.0
                if not same:
                    failures.append(f"{method} x{runs}: loss {el:.4f} vs {gl:.4f}, accuracy {ea:.2f} vs {ga:.2f}")
                print(f"{row}{gl:11.4f}{ea:10.2f}{ga:10.2f}{es:12,.0f}{gs:12,.0f}{gs / es:6.2f}  "
                      f"{'yes' if same else 'NO'}", flush=True)
    if cuda:
        print("graphs: ok" if not failures else f"graphs: FAILED ({'; '.join(failures)})", flush=True)


if __name__ == "__main__":
    main()
