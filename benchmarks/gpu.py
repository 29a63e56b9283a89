"""Everything the fast-path work needs measured, in one call on a GPU machine (issue: full Table-1 protocol
in at most 10 minutes on one H100-class GPU):

1. rendering speed (benchmarks/generate.py) and counterfactual-audit speed (benchmarks/audit.py);
2. training throughput, bare step and full loop, for fp32 eager, bf16 + channels_last, and compiled
   (benchmarks/train.py --compile);
3. the end-to-end wall time of ``biasbench sweep paper-table1 --scale full --seeds 0`` with W trials at a
   time on the one GPU (local runner, W processes), then its report (Table 1 against the paper).

    python benchmarks/gpu.py --out DIR [--workers 4] [--scale full] [--trials N] [--skip-benchmarks]

``--scale tiny --trials 4`` checks the script itself on a CPU in a minute. Results: DIR/*.txt, DIR/report/.
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
    ap.add_argument("--workers", type=int, default=4)
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
        run([py, str(HERE / "audit.py"), *dev, "--samples", "1000"], out / "audit.txt")
    sweep = out / "sweep"
    cmd = [py, "-m", "biasbench.cli", "sweep", "paper-table1", "--scale", args.scale, "--seeds", "0",
           "--data", str(out / "data"), "--out", str(sweep), "--workers", str(args.workers), "--device", args.device]
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
    summary = f"paper-table1 ({args.scale}, seed 0, {args.workers} trials at a time): {seconds / 60:.1f} min wall time"
    (out / "summary.txt").write_text(summary + "\n")
    print(summary)


if __name__ == "__main__":
    main()
