"""Everything the fast-path work needs measured, in one call on a GPU machine (issue: full Table-1 protocol
in at most 10 minutes on one H100-class GPU):

1. rendering speed (benchmarks/generate.py) and counterfactual-audit speed (benchmarks/audit.py);
2. training throughput, bare step and full loop, for fp32 eager, bf16 + channels_last, and compiled
   (benchmarks/train.py --compile), and fused groups of 1, 2, 4, 8 runs against one plain run
   (benchmarks/fused.py; compiled for the largest group only);
3. the end-to-end wall time of ``biasbench sweep paper-table1 --scale full --seeds 0`` with ``--fuse F``
   (default auto: up to 8 runs per fused unit) and W units at a time on the one GPU (local runner, W
   processes), then its report (Table 1 against the paper).

    python benchmarks/gpu.py --out DIR [--workers 2] [--fuse auto] [--compile] [--scale full] [--trials N]
                             [--skip-benchmarks] [--skip-sweep]

A device call is limited to 10 minutes: run the benchmarks (``--skip-sweep``) and the sweep
(``--skip-benchmarks``) as two calls on the same warm machine. ``--scale tiny --trials 4 --device cpu``
checks the script itself on a CPU in a minute. Results: DIR/*.txt, DIR/report/.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(cmd: list[str], log: Path) -> float:
    print("$ " + " ".join(cmd), flush=True)
    t = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, text=True)
    dt = time.perf_counter() - t
    print(log.read_text()[-3000:], flush=True)
    if proc.returncode:
        print(f"(exit {proc.returncode})", flush=True)
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--workers", type=int, default=2, help="units of work at a time on the GPU")
    ap.add_argument("--fuse", default="auto", help="the sweep's --fuse (auto: 8 on CUDA)")
    ap.add_argument("--compile", action="store_true", help="the sweep's --compile")
    ap.add_argument("--skip-sweep", action="store_true")
    ap.add_argument("--scale", default="full")
    ap.add_argument("--trials", type=int, default=None, help="only the first N trials (to check the script)")
    ap.add_argument("--skip-benchmarks", action="store_true")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    if not args.skip_benchmarks:
        dev = ["--device", "cuda"] if args.device == "auto" else ["--device", args.device]
        run([py, str(HERE / "generate.py"), *dev], out / "generate.txt")
        run([py, str(HERE / "train.py"), "--compile", *dev] + ([] if "cuda" in dev[1] else ["--cell-size", "8"]),
            out / "train.txt")
        run([py, str(HERE / "fused.py"), "--compile", *dev] + ([] if "cuda" in dev[1] else ["--cell-size", "8"]),
            out / "fused.txt")
        run([py, str(HERE / "audit.py"), *dev, "--samples", "1000"], out / "audit.txt")
    if args.skip_sweep:
        return
    sweep = out / "sweep"
    cmd = [py, "-m", "biasbench.cli", "sweep", "paper-table1", "--scale", args.scale, "--seeds", "0",
           "--data", str(out / "data"), "--out", str(sweep), "--workers", str(args.workers), "--device", args.device,
           "--fuse", args.fuse] + (["--compile"] if args.compile else [])
    if args.trials:
        # a sweep file holding the first N trials of the preset, for a quick check of this script
        import yaml

        from biasbench.sweep.spec import expand, presets

        trials = expand(presets()["paper-table1"], args.scale, [0])[: args.trials]
        spec = {"name": "paper-table1-first", "scale": args.scale,
                "include": [{k: t.config[k] for k in ("method", "explicit", "seed")} for t in trials]}
        path = out / "first-trials.yaml"
        path.write_text(yaml.safe_dump(spec))
        cmd[4] = str(path)
    seconds = run(cmd, out / "sweep.txt")
    run([py, "-m", "biasbench.cli", "report", str(sweep), "--out", str(out / "report")], out / "report.txt")
    summary = (f"paper-table1 ({args.scale}, seed 0, --fuse {args.fuse}{' --compile' if args.compile else ''}, "
               f"{args.workers} units at a time): {seconds / 60:.1f} min wall time")
    (out / "summary.txt").write_text(summary + "\n")
    print(summary)


if __name__ == "__main__":
    main()
