"""Time DFR's last-layer refit (``biasbench.methods.dfr.fit_last_layer``) at the paper's validation size.

It runs on the CPU whatever device trains (scikit-learn's liblinear), once per evaluation of a DFR run. Synthetic
features stand in for a trained network's: ``--n`` samples of ``--dim`` features (the paper CNN's before-logits
width is 128), 10 classes, a bias factor aligned with the class with probability ``--p-bias`` (so the minority
(value, class) groups are small, as in Biased MNIST's biased validation split), one informative direction per
class. Prints a table: C, subsets, samples per subset, seconds per refit.

    python benchmarks/dfr_refit.py [--n 10000] [--dim 128] [--p-bias 0.7]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from biasbench.methods.dfr import fit_last_layer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--p-bias", type=float, default=0.7)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, args.n)
    bias = np.where(rng.random(args.n) < args.p_bias, y, rng.integers(0, 10, args.n))
    groups = np.unique(bias * 10 + y, return_inverse=True)[1].reshape(-1)
    f = rng.normal(size=(args.n, args.dim))
    f[np.arange(args.n), y] += 1.0  # the class
    f[np.arange(args.n), 10 + bias] += 3.0  # the bias, stronger
    print(f"{args.n} samples x {args.dim} features, {groups.max() + 1} (bias, class) groups, "
          f"smallest {np.bincount(groups).min()}")
    import sklearn.linear_model  # noqa: F401  (its import, about a second, is not a refit's)

    print(f"{'C':>6} {'subsets':>8} {'per subset':>11} {'s / refit':>10}")
    for c, subsets in ((1.0, 10), (0.1, 10), (1.0, 1)):
        t = time.perf_counter()
        _, _, n = fit_last_layer(f, y, groups, 10, c, subsets, torch.Generator().manual_seed(0))
        print(f"{c:>6} {subsets:>8} {n:>11} {time.perf_counter() - t:>10.2f}")


if __name__ == "__main__":
    main()
