"""The ``biasbench`` command line: one entry point, one subcommand per job.

Bad input raises :class:`BiasbenchError`; ``main`` prints its message on one line and exits 2.
"""
from __future__ import annotations

import argparse
import json
import sys

from . import __version__
from .errors import BiasbenchError

CUDA_GRAPHS_HELP = ("capture each training step as a CUDA graph and replay it (the same updates, without the "
                    "per-kernel launch cost): auto (default) = on for CUDA devices unless --compile's mode makes "
                    "its own graphs, on, off (plain eager)")


def _add_data(sub: argparse._SubParsersAction) -> None:
    from .data.factors import FACTORS, MODES
    from .data.stamps import DRAWINGS

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
    gen.add_argument("--fixed", default="", metavar="NAME=INDEX,...",
                     help="hold factors at one value index in every image (not in the paper; for controlled "
                          "experiments), e.g. texture=0,distractor_shape=3")
    gen.add_argument("--jpeg-quality", default="0", metavar="Q",
                     help="0 (default): lossless images, as drawn; 1-100: every image gets the exact JPEG round "
                          "trip of cv2.imwrite at quality Q and cv2.imread; 95 reproduces the reference's JPEG "
                          "files (docs/dataset.md)")
    gen.add_argument("--drawing", default=DRAWINGS[0], choices=DRAWINGS,
                     help="how shapes, texture glyphs and digits are drawn: biasbench (default: our drawings) or "
                          "reference (the reference generator's OpenCV pixels; with --jpeg-quality 95 at cell size "
                          "32 its images, byte for byte; docs/dataset.md)")
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
                               n_train=args.n_train, n_val=args.n_val, n_test=args.n_test, fixed=args.fixed,
                               jpeg_quality=args.jpeg_quality, drawing=args.drawing)
    manifest = generate(args.out, settings, args.mnist, download=not args.no_download)
    sizes = ", ".join(f"{k} {v}" for k, v in manifest["splits"].items())
    drawn = " drawn as the reference drew them" if settings.drawing == "reference" else ""
    jpeg = f" after a JPEG round trip at quality {settings.jpeg_quality}" if settings.jpeg_quality else ""
    print(f"dataset in {args.out}: {sizes}; images {settings.image_size}x{settings.image_size}{drawn}{jpeg}; "
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


def _add_train(sub: argparse._SubParsersAction) -> None:
    from .config import COMPILE_MODES, OPTIMIZERS, PRECISIONS
    from .methods.registry import METHOD_ORDER, list_methods, method_order

    tr = sub.add_parser(
        "train", help="train one model with one method and report its bias",
        description="Train one run (paper defaults: Adam, lr 1e-3, weight decay 1e-5, batch 128, 30 epochs, "
                    "evaluation at epochs 15 and 30) into RUNS/<run_id>/. A finished run is skipped; an "
                    "interrupted one resumes from its last epoch.",
    )
    tr.add_argument("--data", required=True, help="dataset folder (biasbench data generate)")
    tr.add_argument("--out", required=True, metavar="RUNS", help="folder holding the runs")
    paper = [m for m in method_order(list_methods()) if m in METHOD_ORDER]
    more = [m for m in method_order(list_methods()) if m not in METHOD_ORDER]
    tr.add_argument("--method", default="stdm",
                    help=f"training method: the paper's {', '.join(paper)}; beyond it {', '.join(more)} "
                         f"(default stdm; docs/methods.md)")
    tr.add_argument("--explicit", default="distractor_shape", metavar="FACTOR,...",
                    help="bias factors whose labels the method sees (methods with bias labels only; "
                         "default distractor_shape, the paper's)")
    tr.add_argument("--grouping", default="unique", choices=("unique", "majority_minority"),
                    help="bias groups from exact values (default) or the majority/minority pattern")
    tr.add_argument("--hparam", action="append", default=[], metavar="KEY=VALUE",
                    help="method hyperparameter, repeatable (e.g. --hparam step_size=0.01); see docs/methods.md")
    tr.add_argument("--model", default="paper_cnn", help="model (paper_cnn, resnet18; default paper_cnn)")
    tr.add_argument("--small-stem", action="store_true", help="resnet18: 3x3 stride-1 stem, no max-pool")
    tr.add_argument("--model-kwarg", action="append", default=[], metavar="KEY=VALUE",
                    help="model option, repeatable (paper_cnn speed options: fold_input_bn=true or normalized, "
                         "pool_kernel=triton or triton_conv, conv1_kernel=triton, pool_grad_sum=kernel, "
                         "conv1_wgrad=triton, conv1_pad_to=4 or 8; "
                         "EfficientNetV2: channel_multiplier, "
                         "depth_multiplier, drop_rate, drop_path_rate, output_stride); see docs/models.md")
    tr.add_argument("--progressive", default=None, metavar="PRESET",
                    help="progressive learning with adaptive regularization: effnetv2-s, effnetv2-m, effnetv2-l "
                         "(docs/models.md); off by default")
    tr.add_argument("--compile", nargs="?", const="default", default=None, choices=COMPILE_MODES, metavar="MODE",
                    help="torch.compile the model (static shapes per stage); MODE: " + ", ".join(COMPILE_MODES)
                    + " (reduce-overhead adds CUDA graphs)")
    tr.add_argument("--cuda-graphs", default="auto", choices=("auto", "on", "off"),
                    help=CUDA_GRAPHS_HELP)
    tr.add_argument("--epochs", type=int, default=30)
    tr.add_argument("--batch-size", type=int, default=128)
    tr.add_argument("--lr", type=float, default=1e-3)
    tr.add_argument("--weight-decay", type=float, default=1e-5)
    tr.add_argument("--optimizer", default="adam", choices=OPTIMIZERS)
    tr.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--eval-epochs", default=None, metavar="E,E",
                    help="epochs to evaluate at (default: half-way and last, i.e. 15,30)")
    tr.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    tr.add_argument("--precision", default="auto", choices=PRECISIONS,
                    help="auto = bf16 autocast on CUDA, fp32 on the CPU (bf16 on a CPU with AMX or AVX512-BF16 "
                         "trains 1.3-1.6x faster, 2-2.4x with --channels-last on: docs/training.md)")
    tr.add_argument("--channels-last", default="auto", choices=("auto", "on", "off"),
                    help="the images' and convolutions' memory layout: auto = channels-last on CUDA, the default "
                         "layout on the CPU (on = channels-last there: 1.2-1.5x faster on an x86 CPU, but the "
                         "records depend more on the thread count; docs/training.md)")
    tr.add_argument("--tracker", default="mlflow",
                    help="mlflow (SQLite store RUNS/mlflow.db), tensorboard (RUNS/tensorboard), aim (RUNS/.aim), "
                         "none, or a comma-separated combination, e.g. mlflow,tensorboard (default mlflow)")
    tr.add_argument("--json", action="store_true", help="print the final metrics as JSON")
    tr.add_argument("--no-progress", action="store_true", help="no progress bar")
    tr.set_defaults(func=cmd_train)

    rn = sub.add_parser("runs", help="list runs with their key metrics",
                        description="One line per run in RUNS: method, model, seed, state, test accuracy, "
                                    "worst group, mean MMD.")
    rn.add_argument("dir", metavar="RUNS", help="a runs folder (train's --out) or a sweep folder")
    rn.add_argument("--json", action="store_true", help="print machine-readable JSON")
    rn.set_defaults(func=cmd_runs)


def cmd_train(args: argparse.Namespace) -> int:
    from .config import TrainConfig
    from .report.summary import format_run_summary
    from .track import parse_tracker_names
    from .train.loop import Trainer

    parse_tracker_names(args.tracker)  # unknown names fail before anything is written
    eval_epochs = None
    if args.eval_epochs:
        try:
            eval_epochs = tuple(int(e) for e in args.eval_epochs.split(","))
        except ValueError:
            raise BiasbenchError(f"--eval-epochs must be comma-separated integers, got {args.eval_epochs!r}") from None
    cfg = TrainConfig(data=args.data, method=args.method, model=args.model,
                      explicit=args.explicit, grouping=args.grouping, method_hparams=parse_hparams(args.hparam),
                      model_kwargs={**parse_hparams(args.model_kwarg, "--model-kwarg"),
                                    **({"small_stem": True} if args.small_stem else {})},
                      progressive=args.progressive,
                      optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay, momentum=args.momentum,
                      batch_size=args.batch_size, epochs=args.epochs, eval_epochs=eval_epochs, seed=args.seed,
                      precision=args.precision, channels_last=args.channels_last)
    log = (lambda s: None) if args.json else (lambda s: print(s, file=sys.stderr))
    trainer = Trainer(cfg, args.out, tracker=args.tracker, device=args.device,
                      progress=False if args.no_progress else None, log=log, compile_model=args.compile or False,
                      cuda_graphs=args.cuda_graphs)
    result = trainer.run()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_run_summary(result))
    return 0


def _add_audit(sub: argparse._SubParsersAction) -> None:
    au = sub.add_parser(
        "audit", help="counterfactual audit: how sensitive a trained model is to each factor",
        description="For each image and each of the seven factors, re-render the image with only that factor "
                    "changed (to every other value, or --values K of them), run the run's model, and report per "
                    "factor the prediction flip rate, the accuracy with the factor forced to the class-aligned vs "
                    "conflicting values, and the value x predicted-class matrix. Writes audit.json and two PNGs "
                    "to RUN/audit (or --out).",
    )
    au.add_argument("run", metavar="RUN", help="a run folder (RUNS/<run_id>), or a runs or sweep folder: every "
                                               "finished run in it, skipping those already audited alike")
    au.add_argument("--data", default=None, metavar="DIR",
                    help="the dataset the run was trained on, or a sweep's datasets root (the --data given to "
                         "sweep; the run's dataset is found inside). Default: the path the run recorded")
    au.add_argument("--split", default="test", help="split to audit (default test)")
    au.add_argument("--samples", type=int, default=None, help="audit N random images (default: all)")
    au.add_argument("--values", type=int, default=None, metavar="K",
                    help="K random alternative values per image and factor (default: all)")
    au.add_argument("--seed", type=int, default=0, help="seed for --samples and --values (default 0)")
    au.add_argument("--device", default="auto")
    au.add_argument("--epoch", type=int, default=None, metavar="N",
                    help="audit the model as it was at evaluation epoch N (the weights the run kept there, for "
                         "example the epoch that report --select alpha=A chose); default: the last checkpoint")
    au.add_argument("--out", default=None, help="output folder (default RUN/audit, RUN/audit-epochNNN with --epoch)")
    au.add_argument("--json", action="store_true", help="print the result as JSON")
    au.add_argument("--no-progress", action="store_true")
    au.set_defaults(func=cmd_audit)


def cmd_audit(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .eval.audit import audit_run, audit_runs, format_audit

    if not (Path(args.run) / "config.json").is_file() and Path(args.run).is_dir():  # a runs or sweep folder
        if args.out:
            raise BiasbenchError("--out names one run's output folder; auditing many runs writes each into its own")
        log = (lambda line: print(line, file=sys.stderr)) if args.json else print
        results = audit_runs(args.run, args.data, args.split, args.samples, args.values, args.seed, args.device,
                             progress=False if args.no_progress else None, epoch=args.epoch, log=log)
        if args.json:
            print(json.dumps(results, indent=2))
        else:
            skipped = sum(bool(r.get("skipped")) for r in results)
            hint = f"; the report's audit table: biasbench report {args.run} --out {args.run}/report" \
                if (Path(args.run) / "sweep.json").is_file() else ""
            print(f"audited {len(results) - skipped} runs, {skipped} already audited{hint}")
        return 0
    result = audit_run(args.run, args.data, args.split, args.samples, args.values, args.seed, args.device,
                       args.out, progress=False if args.no_progress else None, epoch=args.epoch)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_audit(result))
        print("wrote " + ", ".join(result["files"]))
    return 0


SHIFT_HELP = ("KEY=VALUE: evaluate each run on its own dataset's settings with KEY changed, generated on first "
              "use: drawing=reference, jpeg_quality=95, fixed=texture=3 (added to the run's fixed factors; "
              "fixed=none clears them), p_bias=0.9 (every factor) or p_bias=texture=0.9 (that factor; the val "
              "split follows p_bias, test stays unbiased), seed=1 (another draw), mode=corrected; repeatable")


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser(
        "evaluate", help="evaluate trained runs on another dataset (a shift of the factors or of the drawing)",
        description="Run the weights a run kept at an evaluation epoch on a split of another Biased MNIST dataset "
                    "of the same image size (other p_bias, a factor held fixed, the reference's drawing, another "
                    "seed) and print its accuracy beside the run's recorded test accuracy, and the bias per "
                    "factor, as train prints them. Writes RUN/evaluations/<dataset id>-<split>-epochNNN.json; an "
                    "evaluation already there is read back (docs/training.md).",
    )
    ev.add_argument("run", metavar="RUN", help="a run folder (RUNS/<run_id>), or a runs or sweep folder: every "
                                               "finished run in it")
    ev.add_argument("--data", default=None, metavar="DIR",
                    help="the dataset folder to evaluate on (biasbench data generate); with --shift, the folder "
                         "the shifted datasets go in (default: the one holding each run's dataset)")
    ev.add_argument("--shift", action="append", default=[], metavar="KEY=VALUE", help=SHIFT_HELP)
    ev.add_argument("--split", default="test", choices=("train", "val", "balanced_val", "test"),
                    help="split of DIR (default test)")
    ev.add_argument("--epoch", type=int, default=None, metavar="N",
                    help="the weights the run kept at evaluation epoch N; default its last evaluation epoch")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--json", action="store_true", help="print the result(s) as JSON")
    ev.add_argument("--no-progress", action="store_true")
    ev.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .eval.shift import evaluate_run, evaluate_runs, format_evaluation, format_evaluations, parse_shift

    progress = False if args.no_progress else None
    shift = parse_shift(args.shift)
    if not shift and args.data is None:
        raise BiasbenchError("give --data DIR (a dataset to evaluate on) or --shift KEY=VALUE (each run's own "
                             "dataset, shifted)")
    if not (Path(args.run) / "config.json").is_file() and Path(args.run).is_dir():  # a runs or sweep folder
        results = evaluate_runs(args.run, args.data, args.split, args.epoch, args.device, progress,
                                log=lambda line: print(line, file=sys.stderr), shift=shift)
        print(json.dumps(results, indent=2) if args.json else format_evaluations(results))
        return 0
    result = evaluate_run(args.run, args.data, args.split, args.epoch, args.device, progress, shift=shift)
    print(json.dumps(result, indent=2) if args.json else format_evaluation(result))
    return 0


def _add_ui(sub: argparse._SubParsersAction) -> None:
    ui = sub.add_parser("ui", help="start a tracker's web UI for a runs folder (127.0.0.1)",
                        description="Start the MLflow, TensorBoard or Aim UI on 127.0.0.1 for RUNS and print its URL.")
    ui.add_argument("runs", metavar="RUNS", help="the folder given as --out to train")
    ui.add_argument("--tracker", default="mlflow", choices=("mlflow", "tensorboard", "aim"))
    ui.add_argument("--port", type=int, default=None, help="default: mlflow 5000, tensorboard 6006, aim 43800")
    ui.set_defaults(func=cmd_ui)


def cmd_ui(args: argparse.Namespace) -> int:
    from .track.ui import serve

    return serve(args.tracker, args.runs, args.port)


def _add_sweep(sub: argparse._SubParsersAction) -> None:
    from .config import COMPILE_MODES, PRECISIONS
    from .sweep.spec import ONLY_HELP, SCALES, presets

    sw = sub.add_parser(
        "sweep", help="run a grid of trials (a preset or a YAML sweep file) locally, on Ray or on Slurm",
        description="Expand a sweep (preset or YAML file) into trials and run them. Finished trials are skipped, "
                    "interrupted ones resume from their checkpoints. Records: SWEEP/runs/<run_id>/, SWEEP/sweep.json.",
        epilog="Presets: " + "; ".join(f"{k}: {v['description']}" for k, v in presets().items()),
    )
    sw.add_argument("sweep", metavar="PRESET|FILE", help=f"one of {', '.join(presets())}, or a YAML file")
    sw.add_argument("--data", required=True, metavar="DIR",
                    help="datasets root: DIR itself if it holds the sweep's dataset, else DIR/bmnist-<hash> "
                         "(generated on demand)")
    sw.add_argument("--out", required=True, metavar="SWEEP", help="sweep folder")
    sw.add_argument("--scale", default=None, choices=tuple(SCALES),
                    help="tiny (24 px, 1000 images, 2 epochs: seconds on a CPU), small (48 px, 10000, 10 epochs), "
                         "full (the paper's: 96 px, 50000, 30 epochs; default)")
    sw.add_argument("--seeds", default=None, metavar="S,S", help="the seeds of every trial (the seed axis, and each included trial), e.g. 0,1,2")
    sw.add_argument("--runner", default="local", choices=("local", "ray", "slurm"),
                    help="local (this machine; default), ray (a Ray cluster or this machine, biasbench[ray]) or slurm "
                         "(one Slurm job array through submitit, biasbench[slurm]; --out and --data on a filesystem "
                         "the nodes share)")
    sw.add_argument("--workers", type=int, default=1,
                    help="units of work (a trial, or a fused group of trials) at a time: processes or Ray slots; "
                         "default 1")
    sw.add_argument("--streams", default="auto", metavar="N|auto",
                    help="local runner: N units of work at a time in threads of this one process, each on its own "
                         "CUDA stream, so that one trial's kernels can fill the GPU where another's leave it idle "
                         "(same records as one at a time; not with --workers, --compile or dropout); auto "
                         "(default): 4 on a CUDA device for the paper CNN where they can run, else 1")
    sw.add_argument("--ray-address", default=None, metavar="ADDR", help="join a Ray cluster (e.g. auto)")
    sw.add_argument("--gpus-per-trial", type=float, default=0.0,
                    help="Ray: GPU share per unit of work (a trial, or a fused group of trials), e.g. 0.25; Slurm: "
                         "GPUs per job, rounded up")
    sw.add_argument("--slurm-timeout", type=int, default=None, metavar="MIN",
                    help="Slurm: a job's time limit in minutes (default 240); a job that reaches it, or is "
                         "preempted, is requeued and resumes from its runs' checkpoints")
    sw.add_argument("--slurm-param", action="append", default=[], metavar="KEY=VALUE",
                    help="Slurm: an sbatch setting through submitit, repeatable: partition=gpu, account=lab, "
                         "qos=high, constraint=a100, cpus_per_task=8, mem_gb=32")
    sw.add_argument("--slurm-cluster", default="slurm", choices=("slurm", "local"),
                    help="Slurm: slurm (default) or local (the same jobs as subprocesses of this machine, "
                         "--workers at a time: a check of the set-up without a cluster)")
    sw.add_argument("--fuse", default="auto", metavar="N|auto",
                    help="train up to N trials that differ only in seed and explicit set as one fused network "
                         "(same results as separate runs, one GPU pass for all); auto (default): 8 on a CUDA "
                         "device with --compile, else 1 (off): uncompiled fused groups were not faster on an H100")
    sw.add_argument("--compile", nargs="?", const="default", default=None, choices=COMPILE_MODES, metavar="MODE",
                    help="torch.compile each run's (or fused group's) step; MODE: " + ", ".join(COMPILE_MODES)
                    + " (reduce-overhead adds CUDA graphs)")
    sw.add_argument("--cuda-graphs", default="auto", choices=("auto", "on", "off"), help=CUDA_GRAPHS_HELP)
    sw.add_argument("--precision", default=None, choices=PRECISIONS,
                    help="override every trial's precision (default: the sweep's, else auto = bf16 on CUDA); "
                         "fp32 with --fuse 1 and no --compile is the plain eager path")
    sw.add_argument("--channels-last", default=None, choices=("auto", "on", "off"),
                    help="override every trial's memory layout (default: the sweep's, else auto = channels-last "
                         "on CUDA only); on: 1.2-1.5x faster on an x86 CPU, but the records then depend on the "
                         "threads each trial gets (docs/training.md)")
    sw.add_argument("--model-kwarg", action="append", default=[], metavar="KEY=VALUE",
                    help="model option for every trial, repeatable, merged over the sweep's (part of the trial "
                         "ids); for example the paper CNN's fastest measured set on an H100/H200: "
                         "fold_input_bn=normalized pool_kernel=triton conv1_kernel=triton conv1_wgrad=triton "
                         "(docs/models.md, docs/benchmarks.md)")
    sw.add_argument("--tracker", default=None,
                    help="tracker(s) for every trial, e.g. mlflow or mlflow,tensorboard (default: the sweep file's "
                         "'tracker', else none)")
    sw.add_argument("--device", default="auto")
    sw.add_argument("--only", action="append", default=[], metavar="KEY=VALUE[,VALUE]", help=ONLY_HELP)
    sw.add_argument("--dry-run", action="store_true", help="list the trials and stop")
    sw.set_defaults(func=cmd_sweep)

    rp = sub.add_parser("report", help="tables, figures and index.html from a sweep's records",
                        description="Write Table 1 (md, csv, tex), Fig. 3a/3b, Fig. 5, tuning-distribution "
                                    "sensitivity, IOSM and index.html for a (possibly partial) sweep, or for "
                                    "several sweeps as one (for example seeds run apart). Runs that differ in a "
                                    "setting other than the seed and the tuned hyperparameters (a dataset "
                                    "setting, the model or its arguments, the optimizer, batch size, epochs, "
                                    "precision, grouping, progressive learning) get their own block of Table 1 "
                                    "rows and their own Fig. 3; --pool treats named settings as tuned instead.")
    rp.add_argument("sweep", metavar="SWEEP", nargs="+",
                    help="a sweep folder; several are reported as one (a run found in two counts once)")
    rp.add_argument("--out", required=True, help="report folder")
    rp.add_argument("--select", default="final", metavar="RULE",
                    help="final (the paper's: last epoch, hyperparameters by validation accuracy; default), "
                         "alpha=A (epoch and hyperparameters by accuracy under tuning distribution A, e.g. alpha=0), "
                         "worst_group (by validation worst-group accuracy: needs validation bias labels; "
                         "worst_group=balanced_val: on the balanced held-out split), worst_class (by validation "
                         "worst-class accuracy: no bias labels) or oracle "
                         "(by unbiased test accuracy: an upper bound, not a fair protocol)")
    rp.add_argument("--pool", default="", metavar="SETTING[,SETTING]",
                    help="settings whose variants are pooled rather than kept apart, for example model_kwargs "
                         "(the paper CNN's speed options); among a seed's runs that differ only in them the "
                         "selection rule chooses one, as among hyperparameters")
    rp.set_defaults(func=cmd_report)


def cmd_sweep(args: argparse.Namespace) -> int:
    from .sweep.runners import run_sweep
    from .sweep.spec import expand, load_spec, select_trials

    spec = load_spec(args.sweep)
    seeds = None
    if args.seeds:
        try:
            seeds = [int(s) for s in args.seeds.split(",")]
        except ValueError:
            raise BiasbenchError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    scale = args.scale or spec.get("scale") or "full"
    for key in ("precision", "channels_last"):  # overrides of every trial's setting (part of the trial ids)
        if getattr(args, key):
            spec = {**spec, "base": {**(spec.get("base") or {}), key: getattr(args, key)}}
    every = expand(spec, scale, seeds, parse_hparams(args.model_kwarg, "--model-kwarg"))
    trials = select_trials(every, args.only)
    if args.dry_run:
        from .config import TrainConfig
        from .data.stamps import DRAWINGS
        from .methods import get_method_class
        from .sweep.runners import resolve_fuse
        from .sweep.trial import plan_units

        TRAIN_DEFAULTS = TrainConfig(data="").to_dict()
        fuse = resolve_fuse(args.fuse, args.device, args.compile)
        unit_of = {t.trial_id: i for i, u in enumerate(plan_units(trials, fuse)) for t in u}
        for t in trials:
            c = t.config
            prog = (c.get("progressive") or {}).get("preset", "custom") if c.get("progressive") else "-"
            kw = ",".join(f"{k}={v}" for k, v in sorted((c.get("model_kwargs") or {}).items()))
            defaults = get_method_class(c["method"]).default_hparams
            hp = ",".join(f"{k}={v}" for k, v in sorted((c.get("method_hparams") or {}).items())
                          if v != defaults.get(k))
            opt = "".join(f" {k}={c[k]:g}" for k in ("lr", "weight_decay", "momentum")
                          if k in c and c[k] != TRAIN_DEFAULTS[k])
            print(f"{t.trial_id}  unit {unit_of[t.trial_id]:3d}  {c['method']:10s} explicit={','.join(c['explicit']) or '-':40s} seed={c['seed']} "
                  f"p_bias={sorted(set(t.dataset.p_bias.values()))}"
                  f"{' jpeg=' + str(t.dataset.jpeg_quality) if t.dataset.jpeg_quality else ''}"
                  f"{' drawing=' + t.dataset.drawing if t.dataset.drawing != DRAWINGS[0] else ''} "
                  f"model={c['model']}{'(' + kw + ')' if kw else ''} "
                  f"opt={c['optimizer']}{opt} progressive={prog} hparams={hp or 'defaults'}")
        picked = f" (--only: {len(trials)} of {len(every)})" if len(trials) < len(every) else ""
        print(f"{len(trials)} trials{picked} in {len(set(unit_of.values()))} units of work")
        return 0
    tracker = args.tracker or spec.get("tracker") or "none"
    results = run_sweep(trials, spec.get("name", "sweep"), scale, args.data, args.out, args.runner, tracker,
                        args.device, args.workers, args.ray_address, args.gpus_per_trial, fuse=args.fuse,
                        compile_model=args.compile or False, cuda_graphs=args.cuda_graphs, streams=args.streams,
                        slurm=_slurm_options(args), listed=every)
    done = sum(r["status"] == "finished" for r in results)
    print(f"{len(results)} trials: {done} trained, {len(results) - done} already finished; "
          f"report with: biasbench report {args.out} --out {args.out}/report")
    return 0


def _slurm_options(args: argparse.Namespace) -> dict | None:
    """The Slurm runner's options; given with another runner, an error (they would be ignored)."""
    given = args.slurm_timeout is not None or args.slurm_param or args.slurm_cluster != "slurm"
    if args.runner != "slurm":
        if given:
            raise BiasbenchError("--slurm-timeout, --slurm-param and --slurm-cluster are for --runner slurm")
        return None
    options = {"cluster": args.slurm_cluster, "params": list(args.slurm_param)}
    return options if args.slurm_timeout is None else {**options, "timeout_min": args.slurm_timeout}


def cmd_report(args: argparse.Namespace) -> int:
    from .report.build import build_report
    from .report.tables import table1_markdown

    pool = tuple(k.strip() for k in args.pool.split(",") if k.strip())
    summary = build_report(args.sweep, args.out, args.select, pool)
    print(table1_markdown(summary["table1"]))
    print(f"Selection ({summary['rule']}): {summary['selection']}.")
    if summary.get("scale_note"):
        print(summary["scale_note"])
    print(f"\n{summary['runs_with_records']} of {summary['trials']} trials have records; wrote "
          f"{', '.join(summary['files'])} to {args.out}")
    return 0


def parse_hparams(items: list[str], flag: str = "--hparam") -> dict:
    """``KEY=VALUE`` strings -> dict; values parsed as JSON where possible (numbers, true/false)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise BiasbenchError(f"bad {flag} {item!r}; expected KEY=VALUE, e.g. step_size=0.01")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


def cmd_runs(args: argparse.Namespace) -> int:
    from .report.summary import collect_runs, format_runs

    rows = collect_runs(args.dir)
    print(json.dumps(rows, indent=2) if args.json else format_runs(rows))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="biasbench",
        description="Measure and mitigate shortcut learning in image classifiers (Biased MNIST, WACV 2022).",
    )
    parser.add_argument("--version", action="version", version=f"biasbench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_data(sub)
    _add_train(sub)
    _add_audit(sub)
    _add_evaluate(sub)
    _add_ui(sub)
    _add_sweep(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BiasbenchError as exc:
        print("biasbench: error: " + " ".join(str(exc).split()), file=sys.stderr)  # always one line
        return 2
    except KeyboardInterrupt:
        print("biasbench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
