"""The ``biasbench`` command line: one entry point, one subcommand per job.

Bad input raises :class:`BiasbenchError`; ``main`` prints its message on one line and exits 2.
"""
from __future__ import annotations

import argparse
import json
import sys

from . import __version__
from .errors import BiasbenchError


def _add_data(sub: argparse._SubParsersAction) -> None:
    from .data.factors import FACTORS, MODES

    data = sub.add_parser("data", help="generate, inspect and export Biased MNIST datasets",
                          description="Generate, inspect and export Biased MNIST datasets.")
    dsub = data.add_subparsers(dest="data_command", metavar="COMMAND", required=True)

    gen = dsub.add_parser(
        "generate", help="draw a dataset recipe and write it to a folder",
        description="Draw a Biased MNIST v1 dataset (train, val, balanced_val, test) and write its recipe "
                    "and manifest to --out. Images are rendered on demand from the recipe.",
        epilog=f"Factors: {', '.join(FACTORS)}.",
    )
    gen.add_argument("--out", required=True, help="dataset folder (must be new, empty, or hold the same dataset)")
    gen.add_argument("--p-bias", default="0.7", metavar="P|NAME=P,...",
                     help="probability that a factor takes its class-aligned value in train/val: one number "
                          "for all factors, or NAME=P pairs (others 0.7). Default 0.7 (the paper's)")
    gen.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    gen.add_argument("--cell-size", type=int, default=32,
                     help="grid cell size in px; images are 3x this (default 32 = 96x96; 8 = 24x24 for tests)")
    gen.add_argument("--mode", default="paper", choices=MODES,
                     help="paper: the reference's position quirks (default); corrected: see docs/dataset.md")
    gen.add_argument("--n-train", type=int, default=50_000, help="train images (default 50000)")
    gen.add_argument("--n-val", type=int, default=10_000, help="val / balanced_val images (default 10000)")
    gen.add_argument("--n-test", type=int, default=10_000, help="test images (default 10000, max 10000)")
    gen.add_argument("--mnist", default=None, metavar="DIR", help="folder with the four MNIST IDX files")
    gen.add_argument("--no-download", action="store_true", help="never download MNIST")
    gen.set_defaults(func=cmd_data_generate)

    st = dsub.add_parser("stats", help="per-split counts, factor alignment and group counts",
                         description="Print per split the image count, the fraction of images at the "
                                     "class-aligned value per factor, and (factor value, class) group counts.")
    st.add_argument("dir", help="dataset folder")
    st.add_argument("--json", action="store_true", help="print machine-readable JSON")
    st.set_defaults(func=cmd_data_stats)

    sh = dsub.add_parser("show", help="write a sample grid PNG (rows = classes)",
                         description="Write a PNG grid: one row per class, class-aligned examples on the "
                                     "left and minority examples on the right.")
    sh.add_argument("dir", help="dataset folder")
    sh.add_argument("--out", required=True, help="PNG file to write")
    sh.add_argument("--split", default="train", help="split to show (default train)")
    sh.add_argument("--per-side", type=int, default=4, help="examples per side and class (default 4)")
    sh.set_defaults(func=cmd_data_show)

    ex = dsub.add_parser("export", help="render a split and write it as npy or PNG files",
                         description="Render a split and write images (npy: one array in model channel "
                                     "order; png: one file per image in display RGB, with labels.csv).")
    ex.add_argument("dir", help="dataset folder")
    ex.add_argument("--split", required=True, help="train, val, balanced_val or test")
    ex.add_argument("--format", required=True, choices=("npy", "png"), help="output format")
    ex.add_argument("--out", required=True, help="output folder (must be new or empty)")
    ex.set_defaults(func=cmd_data_export)


def cmd_data_generate(args: argparse.Namespace) -> int:
    from .config import DatasetSettings
    from .data.biased_mnist import generate

    settings = DatasetSettings(p_bias=args.p_bias, seed=args.seed, cell_size=args.cell_size, mode=args.mode,
                               n_train=args.n_train, n_val=args.n_val, n_test=args.n_test)
    manifest = generate(args.out, settings, args.mnist, download=not args.no_download)
    sizes = ", ".join(f"{k} {v}" for k, v in manifest["splits"].items())
    print(f"dataset in {args.out}: {sizes}; images {settings.image_size}x{settings.image_size}; "
          f"recipe sha256 {manifest['recipe_sha256'][:12]}")
    return 0


def cmd_data_stats(args: argparse.Namespace) -> int:
    from .data.recipe import load_recipe, read_manifest
    from .data.stats import dataset_stats, format_stats

    manifest = read_manifest(args.dir)
    stats = dataset_stats(load_recipe(args.dir, manifest), manifest)
    print(json.dumps(stats, indent=2) if args.json else format_stats(stats))
    return 0


def _open(dir_: str, split: str):
    from .data.biased_mnist import BiasedMNIST

    return BiasedMNIST(dir_, split=split, download=False)


def cmd_data_show(args: argparse.Namespace) -> int:
    from .data.export import sample_grid, save_png

    if args.per_side < 1:
        raise BiasbenchError(f"--per-side must be >= 1, got {args.per_side}")
    if not args.out.lower().endswith(".png"):
        raise BiasbenchError(f"--out must name a .png file, got {args.out!r}")
    save_png(sample_grid(_open(args.dir, args.split), args.per_side), args.out)
    print(f"wrote {args.out}")
    return 0


def cmd_data_export(args: argparse.Namespace) -> int:
    from .data.export import export_split

    ds = _open(args.dir, args.split)
    out = export_split(ds, args.format, args.out, progress=sys.stderr.isatty())
    print(f"wrote {len(ds)} {args.split} images as {args.format} to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="biasbench",
        description="Measure and mitigate shortcut learning in image classifiers (Biased MNIST, WACV 2022).",
    )
    parser.add_argument("--version", action="version", version=f"biasbench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_data(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BiasbenchError as exc:
        print(f"biasbench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("biasbench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
