"""Where a training step's time goes: the profiler's per-operator and per-kernel device time of one method's step.

    python benchmarks/anatomy.py [--device cuda] [--cell-size 32] [--method stdm] [--steps 20] [--top 15]
                                 [--model-kwarg KEY=VALUE ...]

Builds a run as ``biasbench train`` would (bf16 autocast + channels_last on CUDA, fp32 on the CPU; explicit
variable texture for bias-label methods; ``--model-kwarg``: paper CNN options such as
``pool_kernel=triton_conv``), takes a few eager steps, then profiles ``--steps`` eager steps with
``torch.profiler`` and prints

1. the step's wall time eagerly and captured as a CUDA graph (:mod:`biasbench.train.graphs`), and the device
   time of its kernels summed: a captured step that takes about its kernels' sum is bound by the kernels,
   and only less kernel time (fewer bytes moved, better kernels) makes it faster;
2. the operators with the most self device time per step, split by input shape (so conv1's backward is a row
   apart from conv2's), with their share of the step's kernel time;
3. the kernels with the most device time per step.

The question it answers (docs/benchmarks.md, fast path): which layers and passes the 2.6 ms of a captured
StdM step at batch 128 on an H100 go to. On the CPU the same tables show CPU time, to check the script.
"""
from __future__ import annotations

import argparse
import tempfile

import torch
from torch.profiler import ProfilerActivity, profile

from biasbench.config import DatasetSettings, TrainConfig
from biasbench.data.biased_mnist import generate
from biasbench.methods import Batch, get_method_class
from biasbench.train.graphs import step_runner
from biasbench.train.loop import Trainer, load_splits
from common import device_name, pick_device  # benchmarks/common.py (scripts run from benchmarks/)
from train import steps_per_second  # benchmarks/train.py


def device_time(evt, cuda: bool) -> float:
    """Self time in microseconds on the device (CUDA) or the CPU, across torch versions' attribute names."""
    if not cuda:
        return float(evt.self_cpu_time_total)
    for name in ("self_device_time_total", "self_cuda_time_total"):
        if hasattr(evt, name):
            return float(getattr(evt, name))
    return 0.0


def short_shapes(shapes) -> str:
    """'128x32x48x48, 32x32x3x3' from the profiler's input shapes (empty ones and scalars dropped)."""
    parts = ["x".join(str(d) for d in s) for s in (shapes or []) if isinstance(s, (list, tuple)) and s]
    text = ", ".join(parts[:3])
    return text if len(text) <= 44 else text[:41] + "..."


def build(root: str, method: str, dev: str, model_kwargs: dict | None = None):
    """(trainer, method, update(idx), train split) for one run of ``method`` on the dataset at ``root``."""
    train = load_splits(root, torch.device(dev))["train"]
    explicit = ("texture",) if get_method_class(method).uses_bias_labels else ()
    cfg = TrainConfig(data=root, method=method, seed=0, explicit=explicit, model_kwargs=model_kwargs or {})
    tr = Trainer(cfg, "/nonexistent", tracker="none", device=dev, cuda_graphs=dev.startswith("cuda"))
    m = tr.build_method(train)

    def update(i):
        return m.update(Batch(tr._prep(train.images[i]), train.labels[i], train.factors[i], i))

    return tr, m, update, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--cell-size", type=int, default=32)
    ap.add_argument("--method", default="stdm")
    ap.add_argument("--steps", type=int, default=None, help="profiled steps (default 20 CUDA, 3 CPU)")
    ap.add_argument("--top", type=int, default=15, help="rows per table")
    ap.add_argument("--model-kwarg", action="append", default=[], metavar="KEY=VALUE",
                    help="a model option (e.g. pool_kernel=triton_conv); repeatable")
    args = ap.parse_args()
    from biasbench.cli import parse_hparams

    model_kwargs = parse_hparams(args.model_kwarg, "--model-kwarg")
    dev = pick_device(args.device)
    cuda = dev.startswith("cuda")
    steps = args.steps or (20 if cuda else 3)
    name = device_name(dev)
    unit = "device" if cuda else "CPU"
    print(f"device: {dev} ({name}), torch {torch.__version__}, image {3 * args.cell_size}px, method {args.method}, "
          f"batch 128, {'bf16 + channels_last' if cuda else 'fp32'}, {steps} profiled steps"
          + (f", model options {model_kwargs}" if model_kwargs else ""))
    with tempfile.TemporaryDirectory() as tmp:
        root = f"{tmp}/ds"
        generate(root, DatasetSettings(cell_size=args.cell_size, n_train=2048, n_val=100, n_test=100))
        tr, m, update, train = build(root, args.method, dev, model_kwargs)
        idx = torch.randperm(len(train.labels), generator=torch.Generator().manual_seed(0))[:128].to(dev)
        with tr._autocast():
            for _ in range(3):
                update(idx)
            eager_s = 1 / steps_per_second(lambda: update(idx), steps, torch.device(dev), warmup=0)
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
            with profile(activities=activities, record_shapes=True) as prof:
                for _ in range(steps):
                    update(idx)
                if cuda:
                    torch.cuda.synchronize()
            graph_s = None
            if cuda:
                runner = step_runner(update, m, m.tensor_names, m.optimizers(),
                                     lambda: (m.modules(), m.optimizers(), m.tensors()), True, print)
                for _ in range(5):  # eager warm-up steps, then the capture
                    runner(idx)
                graph_s = 1 / steps_per_second(lambda: runner(idx), steps, torch.device(dev), warmup=0)

    events = prof.key_averages(group_by_input_shape=True)
    # the device-side spans of ranges (e.g. "Optimizer.step#Adam.step") are listed like kernels but span gaps and
    # the kernels inside them: left out, so that the total is the kernels' own time
    spans = {e.name for e in prof.events() if getattr(e, "is_user_annotation", False)}
    kernels = [e for e in prof.key_averages() if cuda and getattr(e, "device_type", None) is not None
               and "CUDA" in str(e.device_type) and e.key not in spans]
    ops = [e for e in events if not str(getattr(e, "device_type", "CPU")).endswith("CUDA")
           and device_time(e, cuda) > 0 and e.key.startswith("aten::")]
    total = sum(device_time(e, cuda) for e in (kernels if cuda else ops)) / steps
    graph = f"{graph_s * 1e3:.3f} ms ({128 / graph_s:,.0f} img/s)" if graph_s else "- (CPU)"
    print(f"step wall time: eager {eager_s * 1e3:.3f} ms ({128 / eager_s:,.0f} img/s), captured {graph}; "
          f"{unit} time of its {'kernels' if cuda else 'operators'}: {total / 1e3:.3f} ms per step")

    print(f"\noperators by self {unit} time per step")
    print(f"{'operator':34s}{'input shapes':46s}{'calls':>6s}{'us/step':>9s}{'%':>6s}")
    for e in sorted(ops, key=lambda e: -device_time(e, cuda))[:args.top]:
        t = device_time(e, cuda) / steps
        print(f"{e.key[:33]:34s}{short_shapes(e.input_shapes):46s}{e.count / steps:6.1f}{t:9.1f}"
              f"{100 * t / max(total, 1e-9):6.1f}")
    if cuda:
        print("\nkernels by device time per step")
        print(f"{'kernel':80s}{'calls':>6s}{'us/step':>9s}{'%':>6s}")
        ranked = sorted(kernels, key=lambda e: -device_time(e, cuda))
        for e in ranked[:args.top]:
            t = device_time(e, cuda) / steps
            print(f"{e.key[:79]:80s}{e.count / steps:6.1f}{t:9.1f}{100 * t / max(total, 1e-9):6.1f}")
        rest = ranked[args.top:]
        t = sum(device_time(e, cuda) for e in rest) / steps
        print(f"{f'the other {len(rest)} kernels':80s}{sum(e.count for e in rest) / steps:6.1f}{t:9.1f}"
              f"{100 * t / max(total, 1e-9):6.1f}")
        print(f"kernel launches per step: {sum(e.count for e in kernels) / steps:.0f}; ranges left out: "
              f"{', '.join(sorted(spans)[:6]) or 'none'}")


if __name__ == "__main__":
    main()
