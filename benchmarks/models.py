"""Parameters, multiply-adds and training speed per model at 96 px.

    python benchmarks/models.py [--device auto] [--size 96] [--batch-size 32] [--steps 5] [--models a,b]

Multiply-adds (what papers call FLOPs) are counted with torch.utils.flop_counter for one forward pass of
one image; training images/s is a forward/backward/Adam step on a fixed batch.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from biasbench.models import count_parameters, create_model, list_models
from common import device_name, pick_device  # benchmarks/common.py (scripts run from benchmarks/)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--models", default=None)
    args = ap.parse_args()
    dev = torch.device(pick_device(args.device))
    names = args.models.split(",") if args.models else list_models()
    name = device_name(dev)
    print(f"device: {dev} ({name}), torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.size} px, batch {args.batch_size}")
    print(f"{'model':22s}{'params':>12s}{'MACs/image':>14s}{'train img/s':>13s}")
    for n in names:
        kwargs = {"small_stem": False} if n == "resnet18" else {}
        torch.manual_seed(0)
        model = create_model(n, **kwargs).to(dev)
        x1 = torch.rand(1, 3, args.size, args.size, device=dev) * 255
        model.eval()
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            model(x1)
        macs = fc.get_total_flops() / 2
        if args.steps == 0:  # parameters and multiply-adds only
            print(f"{n:22s}{count_parameters(model) / 1e6:10.3f} M{macs / 1e6:12.1f} M{'-':>13s}")
            continue
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        x = torch.rand(args.batch_size, 3, args.size, args.size, device=dev) * 255
        y = torch.randint(0, 10, (args.batch_size,), device=dev)

        def step():
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

        step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(args.steps):
            step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        ips = args.steps * args.batch_size / (time.perf_counter() - t)
        print(f"{n:22s}{count_parameters(model) / 1e6:10.3f} M{macs / 1e6:12.1f} M{ips:13,.0f}")


if __name__ == "__main__":
    main()
