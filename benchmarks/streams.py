"""Several captured runs on one GPU at once: do CUDA streams add throughput where fusing did not?

    python benchmarks/streams.py [--device cuda] [--cell-size 32] [--runs 1,2,4] [--steps 200] [--method stdm]

R independent runs of one method (seeds 0..R-1, each its own model, optimizer and batch), each step captured
as a CUDA graph (:class:`biasbench.train.graphs.GraphedStep`). Per R it times R x ``--steps`` steps replayed
one run after another on one stream; the same replays issued from one thread with run r on its own stream
r, so that the GPU may overlap one run's small kernels (the 12- and 24-px layers, the loss, the optimizer)
with another's; and run r replayed by its own thread on its own stream, as ``biasbench sweep --streams R``
trains trials. Prints images/s summed over the runs and the ratio to R = 1. A captured run is bound by the GPU's kernels
(about 49k images/s for StdM on an H100) and fusing R runs into grouped convolutions did not add throughput
(docs/benchmarks.md); if streams do, ``sweep --streams R`` trains R trials at a time this way. On the CPU
(no graphs, no streams) it times the sequential and the threaded eager steps, to check the script.
"""
from __future__ import annotations

import argparse
import tempfile
import threading
from contextlib import nullcontext

import torch

from biasbench.config import DatasetSettings, TrainConfig
from biasbench.data.biased_mnist import generate
from biasbench.methods import Batch
from biasbench.train.graphs import step_runner
from biasbench.train.loop import Trainer, load_splits
from common import device_name, pick_device  # benchmarks/common.py (scripts run from benchmarks/)
from train import steps_per_second  # benchmarks/train.py: one call of the whole loop, timed


def build_runs(root: str, method: str, runs: int, dev: str) -> list:
    """(trainer, method, step runner, fixed batch index) per run, each step captured on CUDA."""
    out = []
    cuda = dev.startswith("cuda")
    train = load_splits(root, torch.device(dev))["train"]
    for seed in range(runs):
        cfg = TrainConfig(data=root, method=method, seed=seed, explicit=("texture",) if method != "stdm" else ())
        tr = Trainer(cfg, "/nonexistent", tracker="none", device=dev, cuda_graphs=cuda)
        m = tr.build_method(train)
        idx = torch.randperm(len(train.labels), generator=torch.Generator().manual_seed(seed))[:128].to(dev)

        def update(i, tr=tr, m=m):
            return m.update(Batch(tr._prep(train.images[i]), train.labels[i], train.factors[i], i))

        runner = step_runner(update, m, m.tensor_names, m.optimizers(),
                             lambda m=m: (m.modules(), m.optimizers(), m.tensors()), cuda, print)
        out.append((tr, m, runner, idx))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--cell-size", type=int, default=32)
    ap.add_argument("--runs", default="1,2,4")
    ap.add_argument("--steps", type=int, default=None, help="steps per run (default 200 CUDA, 3 CPU)")
    ap.add_argument("--method", default="stdm")
    args = ap.parse_args()
    dev = pick_device(args.device)
    cuda = dev.startswith("cuda")
    steps = args.steps or (200 if cuda else 3)
    name = device_name(dev)
    print(f"device: {dev} ({name}), torch {torch.__version__}, image {3 * args.cell_size}px, method {args.method}, "
          f"batch 128 per run, {steps} steps per run, {'captured steps' if cuda else 'eager steps (CPU)'}")
    print(f"{'runs':>5s}{'one stream img/s':>18s}{'x':>6s}{'R streams img/s':>18s}{'x':>6s}"
          f"{'R threads img/s':>18s}{'x':>6s}")
    base = None
    with tempfile.TemporaryDirectory() as tmp:
        root = f"{tmp}/ds"
        generate(root, DatasetSettings(cell_size=args.cell_size, n_train=4096, n_val=100, n_test=100))
        for r in [int(x) for x in args.runs.split(",")]:
            runs = build_runs(root, args.method, r, dev)
            for tr, m, runner, idx in runs:  # warm-up and capture (GRAPH_WARMUP eager steps, then the capture)
                with tr._autocast():
                    for _ in range(5):
                        runner(idx)

            def sequential():
                for _ in range(steps):
                    for tr, m, runner, idx in runs:
                        with tr._autocast():
                            runner(idx)

            seq = r * steps * 128 * steps_per_second(sequential, 1, torch.device(dev), warmup=0)
            par = None
            if cuda:
                streams = [torch.cuda.Stream() for _ in runs]

                def parallel():
                    main_stream = torch.cuda.current_stream()
                    for s in streams:
                        s.wait_stream(main_stream)
                    for _ in range(steps):
                        for s, (tr, m, runner, idx) in zip(streams, runs):
                            with torch.cuda.stream(s), tr._autocast():
                                runner(idx)
                    for s in streams:
                        main_stream.wait_stream(s)

                par = r * steps * 128 * steps_per_second(parallel, 1, torch.device(dev), warmup=0)

            def threaded():
                def loop(tr, runner, idx):
                    with (torch.cuda.stream(torch.cuda.Stream()) if cuda else nullcontext()), tr._autocast():
                        for _ in range(steps):
                            runner(idx)
                        if cuda:
                            torch.cuda.current_stream().synchronize()

                threads = [threading.Thread(target=loop, args=(tr, runner, idx)) for tr, m, runner, idx in runs]
                for th in threads:
                    th.start()
                for th in threads:
                    th.join()

            thr = r * steps * 128 * steps_per_second(threaded, 1, torch.device(dev), warmup=0)
            base = base or seq
            par_cells = f"{par:18,.0f}{par / base:6.2f}" if par else f"{'-':>18s}{'-':>6s}"
            print(f"{r:5d}{seq:18,.0f}{seq / base:6.2f}{par_cells}{thr:18,.0f}{thr / base:6.2f}", flush=True)


if __name__ == "__main__":
    main()
