"""How far bf16 training steps of the paper CNN are from float64, unfolded and with the input batch norm folded.

    python benchmarks/fold_precision.py [--device auto] [--cell-size 16] [--batch-size 128]
                                        [--measure-at 0,400,1500] [--batches 16] [--model-kwarg KEY=VALUE]

``fold_input_bn`` (``docs/models.md``) is exact in real arithmetic but rounds differently. With the raw input
(``fold_input_bn=true``) conv1 convolves the 0-255 pixel values with the weight scaled by the batch norm, and a
border term ``conv(pad(c), W)`` with ``c = beta - a * mean`` cancels part of the result: the terms that bf16 rounds
are larger than their sum, so their rounding is a larger part of it. ``fold_input_bn=normalized`` convolves the
normalised input with ``W * gamma`` and adds ``conv(pad(beta), W)``: nothing large cancels. This measures what
that means for a training step on real Biased MNIST images: per batch, the first block's output
(``relu(pool(conv1(bn(x))))``), the logits and each parameter's gradient under bf16 autocast (the CUDA default; on
the CPU with its bf16 kernels) against the same step in float64 without the fold, as the relative error
``||g - g64|| / ||g64||``, median over batches. It measures at each of ``--measure-at``'s points of one float32
training run (Adam, lr 1e-3), so that the batch norm's gamma and beta have left 1 and 0 and the gradients are
those of a network that has learnt something.

It answers whether the fold's rounding could make a run diverge where the unfolded network would not (issue 9:
LNL at seed 1 with the raw fold), and whether the normalised fold removes the difference.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import tempfile

import torch
import torch.nn.functional as F

from biasbench.cli import parse_hparams
from biasbench.config import DatasetSettings
from biasbench.data.biased_mnist import generate
from biasbench.models import create_model
from biasbench.train.loop import load_splits, prep_images
from common import device_name, pick_device  # benchmarks/common.py (scripts run from benchmarks/)

FOLDS = (("unfolded", False), ("fold, raw input", True), ("fold, normalized input", "normalized"))
GROUPS = (("input_bn.weight", "bn gamma"), ("input_bn.bias", "bn beta"), ("conv1.weight", "conv1 W"),
          ("conv1.bias", "conv1 b"), ("conv2.weight", "conv2 W"), ("fc.weight", "fc W"))
COLUMNS = ["block 1", "logits"] + [g for _, g in GROUPS]


def rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return ((a.double() - ref).norm() / ref.norm().clamp_min(1e-300)).item()


def step_outputs(model, x: torch.Tensor, y: torch.Tensor, amp: bool) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The first block's output, the logits and the parameter gradients of one training step (on a copy, whose
    batch norm statistics the step updates)."""
    model = copy.deepcopy(model)
    with torch.no_grad(), torch.autocast(x.device.type, torch.bfloat16, enabled=amp):
        block = model._first_block(x)  # in training mode the step below normalises with the batch's own statistics
    with torch.autocast(x.device.type, torch.bfloat16, enabled=amp):
        logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
    loss.backward()
    return block, logits.detach(), {n: p.grad.detach() for n, p in model.named_parameters()}


def measure(model, batches, dev, extra: dict) -> dict:
    """{fold label: {column: [relative error per batch]}} of bf16 steps against the float64 unfolded step."""
    cl = dev.type == "cuda"
    ref_model = create_model("paper_cnn", pool_kernel="torch").to(dev).double()
    ref_model.load_state_dict(model.state_dict())
    models = {}
    for label, fold in FOLDS:
        m = create_model("paper_cnn", fold_input_bn=fold, **extra).to(dev)
        m.load_state_dict(model.state_dict())
        models[label] = m.to(memory_format=torch.channels_last) if cl else m
    if cl:
        ref_model = ref_model.to(memory_format=torch.channels_last)
    errors = {label: {key: [] for key in COLUMNS} for label, _ in FOLDS}
    for x, y in batches:
        ref_block, ref_logits, ref_grads = step_outputs(ref_model, x.double(), y, amp=False)
        for label, m in models.items():
            block, logits, grads = step_outputs(m, x, y, amp=True)
            errors[label]["block 1"].append(rel(block, ref_block))
            errors[label]["logits"].append(rel(logits, ref_logits))
            for name, key in GROUPS:
                errors[label][key].append(rel(grads[name], ref_grads[name]))
    return errors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="auto (CUDA if there is a GPU), cpu, cuda, ...")
    ap.add_argument("--cell-size", type=int, default=16, help="image size / 3 (16: 48 px; 32: the paper's 96 px)")
    ap.add_argument("--batch-size", type=int, default=128, help="images per step (the paper's 128)")
    ap.add_argument("--measure-at", default="0,400,1500",
                    help="comma-separated float32 Adam steps (lr 1e-3) after which to measure")
    ap.add_argument("--batches", type=int, default=16, help="batches measured each time (median reported)")
    ap.add_argument("--model-kwarg", action="append", default=[], metavar="KEY=VALUE",
                    help="further paper CNN options for the bf16 steps (e.g. pool_kernel=triton on CUDA)")
    ap.add_argument("--seed", type=int, default=0, help="the dataset's and the initial weights' seed")
    args = ap.parse_args()
    dev = torch.device(pick_device(args.device))
    extra = parse_hparams(args.model_kwarg, "--model-kwarg")
    points = sorted({int(v) for v in args.measure_at.split(",")})
    cl = dev.type == "cuda"
    n = min(args.batch_size * (points[-1] + args.batches), 50_000)  # warm-up epochs go round again
    print(f"device: {dev} ({device_name(dev)}), torch {torch.__version__}, image {3 * args.cell_size}px, "
          f"batch {args.batch_size}, {args.batches} batches measured after {', '.join(map(str, points))} "
          f"float32 steps")
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        generate(f"{tmp}/ds", DatasetSettings(cell_size=args.cell_size, n_train=n, n_val=100, n_test=100,
                                              seed=args.seed))
        train = load_splits(f"{tmp}/ds", dev)["train"]
    starts = range(0, n - args.batch_size + 1, args.batch_size)
    batches = [(prep_images(train.images[i:i + args.batch_size], cl), train.labels[i:i + args.batch_size])
               for i in starts]
    model = create_model("paper_cnn").to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    step = 0
    for point in points:
        for step in range(step, point):
            x, y = batches[step % len(batches)]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
        step = point
        errors = measure(model, batches[-args.batches:], dev, extra)
        bn = model.input_bn
        print(f"\nafter {point} steps: gamma {[round(v, 3) for v in bn.weight.tolist()]}, beta "
              f"{[round(v, 3) for v in bn.bias.tolist()]}; relative error against the float64 unfolded step, "
              f"median over batches:")
        print(f"{'bf16 step':24s}" + "".join(f"{k:>10s}" for k in COLUMNS))
        for label, _ in FOLDS:
            print(f"{label:24s}" + "".join(f"{statistics.median(errors[label][k]):10.2e}" for k in COLUMNS),
                  flush=True)


if __name__ == "__main__":
    main()
