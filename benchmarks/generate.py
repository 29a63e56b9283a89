"""Render the full default Biased MNIST (train, val, balanced_val, test: 80,000 images at 96x96).

Prints images/s per split and overall, and the peak resident memory of the process. The rendered
images are kept (as a training run keeps them resident), so peak memory includes the 2.2 GB of pixels.

    python benchmarks/generate.py [--cell-size 32] [--threads 2] [--device cpu] [--batch-size 2048]
                                  [--jpeg-quality 95]   # with the reference's JPEG round trip
                                  [--drawing reference] # the reference's shapes, glyphs, float32 digits
"""
from __future__ import annotations

import argparse
import platform
import resource
import tempfile
import time

import torch

from biasbench.config import DatasetSettings
from biasbench.data.biased_mnist import BiasedMNIST, generate
from biasbench.data.recipe import SPLITS
from biasbench.data.stamps import DRAWINGS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cell-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--jpeg-quality", type=int, default=0, help="dataset setting jpeg_quality (default 0: lossless)")
    ap.add_argument("--drawing", default="biasbench", choices=DRAWINGS, help="dataset setting drawing")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as root:
        t0 = time.perf_counter()
        generate(root, DatasetSettings(cell_size=args.cell_size, jpeg_quality=args.jpeg_quality, drawing=args.drawing))
        t_recipe = time.perf_counter() - t0
        rows, kept, total_n, total_t = [], [], 0, 0.0
        for split in SPLITS:
            ds = BiasedMNIST(root, split=split, download=False)
            ds.digits()  # MNIST read + checksum outside the timed region
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            t = time.perf_counter()
            images = ds.render(device=args.device, batch_size=args.batch_size)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            dt = time.perf_counter() - t
            kept.append(images)
            rows.append((split, len(ds), dt, len(ds) / dt))
            total_n += len(ds)
            total_t += dt
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}, device {args.device}, jpeg_quality {args.jpeg_quality}, drawing {args.drawing}")
    print(f"recipe (MNIST read + checksum + sampling, all splits): {t_recipe:.2f} s")
    print(f"{'split':14s}{'images':>8s}{'seconds':>10s}{'images/s':>12s}")
    for split, n, dt, ips in rows:
        print(f"{split:14s}{n:8d}{dt:10.2f}{ips:12,.0f}")
    print(f"{'total':14s}{total_n:8d}{total_t:10.2f}{total_n / total_t:12,.0f}")
    print(f"peak resident memory: {peak_gb:.2f} GB (images kept: {sum(k.numel() for k in kept) / 1e9:.2f} GB)")


if __name__ == "__main__":
    main()
