"""Fused training throughput: R runs as one fused network against R separate runs.

    python benchmarks/fused.py [--device auto] [--cell-size 32] [--runs 1,2,4,8] [--method stdm] [--compile]
                               [--compile-mode default|reduce-overhead|...] [--cuda-graphs off,on]

For each R: images/s summed over the R runs, for the bare fused step (``FusedMethods.update`` on one
fixed batch per run; R = 1 is one run through the vmap path) and for the full loop (``train_fused``: an epoch of index gathers, method update,
loss accumulation; the second epoch is timed), next to one plain (unfused) run's full loop. "x plain" is
the fused loop's total throughput over the plain loop's: the speed-up of the sweep's fused units over
running the same trials one at a time. On CUDA: bf16 autocast (the default), plus compiled with
``--compile`` (largest group only); on the CPU: fp32. ``--cuda-graphs off,on`` measures every row eagerly
and with each step captured as a CUDA graph (``+ graphs``; "x plain" then compares with a plain run that is
captured too).
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from biasbench.config import COMPILE_MODES, DatasetSettings, TrainConfig
from biasbench.data.biased_mnist import generate
from biasbench.train.fused import FusedMethods, fused_layout, train_fused
from biasbench.train.graphs import step_runner
from biasbench.train.loop import Trainer, load_splits
from train import steps_per_second  # benchmarks/train.py (this folder is on sys.path when run as a script)
from common import device_name, pick_device  # benchmarks/common.py (scripts run from benchmarks/)


def bare(cfgs: list[TrainConfig], dev: torch.device, steps: int, compiled: bool | str, graphs: bool = False) -> float:
    """Total images/s of the fused step on a fixed batch per run."""
    trainers = [Trainer(c, "/nonexistent", tracker="none", device=str(dev), cuda_graphs=graphs) for c in cfgs]
    train = load_splits(cfgs[0].data, dev)["train"]
    fused = FusedMethods([t.build_method(train) for t in trainers], compile_steps=compiled)
    bs = cfgs[0].batch_size
    idx = torch.stack([torch.randperm(len(train.labels), device=dev)[:bs] for _ in cfgs])
    # laid out as the fused loop lays it out (channels-last on CUDA, unless a layer fails with it under vmap)
    x, y, f = fused_layout(train.images[idx], trainers[0].channels_last), train.labels[idx], train.factors[idx]
    if trainers[0].channels_last:
        with trainers[0]._autocast():
            error = fused.layout_error(x)
        if error:
            print(f"channels-last fails under vmap ({error}): default layout")
            x = fused_layout(train.images[idx], False)

    runner = step_runner(lambda _idx: fused.update(x, y, f, idx), fused.tensors, list(fused.tensors),
                         fused.optimizers, lambda: (fused.params, fused.buffers, fused.optimizers, fused.tensors),
                         graphs, print)

    def step():
        with trainers[0]._autocast():
            runner(idx)

    return steps_per_second(step, steps, dev, 5 if compiled or graphs else 3) * bs * len(cfgs)


def loop(cfgs: list[TrainConfig], out: str, dev: torch.device, compiled: bool | str, graphs: bool = False) -> float:
    """Total images/s of the second training epoch (records of ``train_fused`` or of a plain Trainer)."""
    if len(cfgs) == 1:
        res = [Trainer(cfgs[0], out, tracker="none", device=str(dev), progress=False, compile_model=compiled,
                       cuda_graphs=graphs).run()]
    else:
        res = train_fused(cfgs, out, tracker="none", device=str(dev), progress=False, compile_model=compiled,
                          cuda_graphs=graphs)
    total = 0.0
    for r in res:
        hist = json.loads((Path(r["run_dir"]) / "metrics.json").read_text())["history"]
        total += next(h["images_per_s"] for h in hist if h["split"] == "train_loss" and h["epoch"] == 2)
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--cell-size", type=int, default=32)
    ap.add_argument("--runs", default=None, help="fused group sizes (default 1,2,4,8 on CUDA, 1,2,4 on the CPU)")
    ap.add_argument("--method", default="stdm")
    ap.add_argument("--n-train", type=int, default=None, help="training images per run (default 20000 CUDA, 1024 CPU)")
    ap.add_argument("--steps", type=int, default=None, help="bare steps per measurement (default 100 CUDA, 5 CPU)")
    ap.add_argument("--compile", action="store_true",
                    help="also measure compiled fused steps, for the largest group (compiling takes a while)")
    ap.add_argument("--compile-mode", default="default", choices=COMPILE_MODES,
                    help="torch.compile mode with --compile (reduce-overhead adds CUDA graphs)")
    ap.add_argument("--cuda-graphs", default="off", help="comma-separated: off (eager), on (captured steps), or both")
    args = ap.parse_args()
    graph_settings = [{"off": False, "on": True}[g] for g in args.cuda_graphs.split(",")]
    dev = torch.device(pick_device(args.device))
    cuda = dev.type == "cuda"
    runs = [int(r) for r in (args.runs or ("1,2,4,8" if cuda else "1,2,4")).split(",")]
    n_train = args.n_train or (20_000 if cuda else 1024)
    steps = args.steps or (100 if cuda else 5)
    name = device_name(dev)
    print(f"device: {dev} ({name}), torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
          f"image {3 * args.cell_size}px, method {args.method}, batch 128 per run, {n_train} images per run")
    print(f"{'runs':>5s} {'configuration':30s}{'bare img/s':>12s}{'loop img/s':>12s}{'x plain':>9s}")
    precision = "bf16" if cuda else "fp32"
    with tempfile.TemporaryDirectory() as tmp:
        root = f"{tmp}/ds"
        generate(root, DatasetSettings(cell_size=args.cell_size, n_train=n_train, n_val=100, n_test=100))
        for graphs in graph_settings:
            plain = None
            for compiled in ([False, args.compile_mode] if args.compile else [False]):
                for r in (runs[-1:] if compiled else runs):
                    cfgs = [TrainConfig(data=root, method=args.method, epochs=2, eval_epochs=(2,),
                                        precision=precision, seed=s) for s in range(r)]
                    label = precision + (" + compile" if compiled else "") + \
                        (f" {compiled}" if compiled and compiled != "default" else "") + (" + graphs" if graphs else "")
                    try:
                        b = bare(cfgs, dev, steps, compiled, graphs)
                        lp = loop(cfgs, f"{tmp}/runs-{r}-{compiled}-{graphs}", dev, compiled, graphs)
                    except Exception as exc:  # keep the other rows
                        print(f"{r:5d} {label:30s} failed: {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}", flush=True)
                        continue
                    if r == 1 and not compiled:
                        plain = lp
                    x_plain = f"{lp / plain:9.2f}" if plain else f"{'-':>9s}"
                    print(f"{r:5d} {label:30s}{b:12,.0f}{lp:12,.0f}{x_plain}", flush=True)


if __name__ == "__main__":
    main()
