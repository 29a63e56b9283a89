"""Counterfactual-audit throughput: counterfactual images rendered and classified per second.

    python benchmarks/audit.py [--device auto] [--cell-size 32] [--samples 200]

Uses an untrained paper CNN (speed does not depend on the weights). A full audit of the 10,000 test
images is 7 factors x 9 alternative values (8 for the position) = 620,000 counterfactual images.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch

from biasbench.config import DatasetSettings
from biasbench.data.biased_mnist import BiasedMNIST, generate
from biasbench.eval.audit import counterfactual_audit
from biasbench.models import create_model
from biasbench.train.loop import resolve_device
from common import device_name  # benchmarks/common.py (scripts run from benchmarks/)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--cell-size", type=int, default=32)
    ap.add_argument("--samples", type=int, default=200)
    args = ap.parse_args()
    dev = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        generate(tmp + "/ds", DatasetSettings(cell_size=args.cell_size, n_train=100, n_val=10,
                                              n_test=max(args.samples, 10)))
        ds = BiasedMNIST(tmp + "/ds", split="test")
        model = create_model("paper_cnn").to(dev).eval()
        counterfactual_audit(model, ds, dev, samples=min(20, args.samples), progress=False)  # warm-up
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        res = counterfactual_audit(model, ds, dev, samples=args.samples, progress=False)
        dt = time.perf_counter() - t
    n = sum(r["n_pairs"] for r in res["factors"].values()) + res["n_images"]
    name = device_name(dev)
    print(f"device: {dev} ({name}), torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'image':>8s}{'images audited':>16s}{'counterfactuals':>17s}{'seconds':>9s}{'images/s':>11s}"
          f"{'full test audit (est.)':>24s}")
    full = 620_000 + 10_000
    print(f"{3 * args.cell_size:>6d}px{args.samples:16d}{n:17d}{dt:9.2f}{n / dt:11,.0f}{full / (n / dt):22.0f} s")


if __name__ == "__main__":
    main()
