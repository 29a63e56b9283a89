"""``biasbench evaluate``'s two costs: rendering the split it evaluates on (per drawing and JPEG setting) and the
model's forward pass (per precision and layout), in images/s and seconds per 10,000-image test split.

    python benchmarks/evaluate.py [--device auto] [--cell-size 32] [--n 2048]

Uses an untrained paper CNN (speed does not depend on the weights). A sweep's runs share one rendering of the
split (``evaluate SWEEP``), so a sweep of R runs costs one rendering plus R forward passes.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch

from biasbench.config import DatasetSettings
from biasbench.data.biased_mnist import BiasedMNIST, generate
from biasbench.eval.shift import model_logits
from biasbench.models import create_model
from biasbench.train.loop import resolve_device
from common import device_name  # benchmarks/common.py (scripts run from benchmarks/)


def timed(fn, dev: torch.device) -> float:
    fn()  # warm-up: kernels chosen, caches filled
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t = time.perf_counter()
    fn()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--cell-size", type=int, default=32)
    ap.add_argument("--n", type=int, default=2048, help="images per measurement (default 2048)")
    args = ap.parse_args()
    dev = resolve_device(args.device)
    size = 3 * args.cell_size
    print(f"biasbench evaluate costs on {device_name(dev)} ({dev}), {size}x{size} images, {args.n} per measurement")
    print(f"{'step':44s}{'images/s':>12s}{'s per 10,000':>14s}")
    with tempfile.TemporaryDirectory() as root:
        for label, kw in (("render: biasbench drawing, lossless", {}),
                          ("render: reference drawing, lossless", {"drawing": "reference"}),
                          ("render: reference drawing, JPEG 95", {"drawing": "reference", "jpeg_quality": 95})):
            folder = f"{root}/{len(kw)}"
            generate(folder, DatasetSettings(cell_size=args.cell_size, n_train=100, n_val=100, n_test=args.n, **kw))
            ds = BiasedMNIST(folder, split="test")
            dt = timed(lambda: ds.render(device=dev), dev)
            print(f"{label:44s}{args.n / dt:12,.0f}{10_000 * dt / args.n:14.2f}")
        images = ds.render(device=dev)
    model = create_model("paper_cnn", num_classes=10).to(dev)
    for label, amp, cl in (("forward: paper CNN, fp32", False, False),
                           ("forward: paper CNN, fp32 channels-last", False, True),
                           ("forward: paper CNN, bf16 channels-last", True, True)):
        dt = timed(lambda: model_logits(model, images, amp, cl), dev)
        print(f"{label:44s}{args.n / dt:12,.0f}{10_000 * dt / args.n:14.2f}")


if __name__ == "__main__":
    main()
