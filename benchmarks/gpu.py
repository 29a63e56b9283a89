"""Everything the fast-path work needs measured, in one call on a GPU machine (issue: full Table-1 protocol
in at most 10 minutes on one H100-class GPU):

1. benchmarks (``--benchmarks``, default all): rendering speed (generate.py), every method eager and with
   CUDA graphs (graphs.py: same results? how much faster?), training throughput, bare step and full loop,
   fp32 eager / bf16 + channels_last / + CUDA graphs / compiled (train.py --compile; ``--train-only`` picks
   configurations), fused groups against one plain run, eager and captured (fused.py; ``--fused-runs``,
   compiled for the largest group only unless ``--no-bench-compile``), several captured runs on separate CUDA
   streams, from one thread or one thread each, against one after another (streams.py), where a StdM step's
   device time goes, per operator and kernel (anatomy.py), the first block's forms and layouts
   (firstblock.py), counterfactual audit (audit.py);
2. the end-to-end wall time of ``biasbench sweep paper-table1 --scale full --seeds S`` (``--seed``, default 0)
   with ``--fuse F`` (default auto: up to 8 runs per fused unit with ``--compile``, else unfused), the paper
   CNN options of ``--model-kwarg`` (or those ``--model-options measured`` picks from this call's train.py
   ``--options`` and firstblock.py runs),
   ``--cuda-graphs G``, W units at a time in processes (``--workers``) or N in threads, one CUDA stream each
   (``--streams``), on the one GPU (local runner), then its report (Table 1 against the paper). Should the
   sweep fail with measured model options, it is run again without them (into SWEEP-plain); should it fail
   with several streams, again with one unit at a time; and should it fail with CUDA graphs on, again with
   them off, for the time left.

    python benchmarks/gpu.py --out DIR [--benchmarks fused,train] [--fused-runs 1,8] [--bench-limit S]
                             [--workers 1] [--streams 1|measured|N] [--fuse auto|measured|N]
                             [--cuda-graphs auto|measured|on|off]
                             [--compile [MODE]] [--no-bench-compile] [--train-only WORDS] [--train-options O]
                             [--scale full]
                             [--seed S] [--trials N] [--model-kwarg KEY=VALUE] [--model-options measured]
                             [--options-file F] [--first rubi,lnl] [--sweep-dir D] [--data D] [--deadline S] [--archive]
                             [--no-report] [--skip-benchmarks] [--skip-sweep]

A device lease is short (15 minutes in all, 10 per call, at most 8 files back): ``--deadline S`` stops the
sweep so that the whole script ends within S seconds of its start (an interrupted fused unit resumes from its
per-epoch checkpoints when the same command runs again on the same machine with the same ``--sweep-dir``);
``--first`` runs the named methods' trials first, so that a sweep cut short holds the trials that matter
most; ``--archive`` packs the sweep's records (no predictions, no checkpoints of finished runs) and the report
into DIR/sweep.tgz, one file. Every line of a sub-command's output is echoed with the seconds since the script
started. ``--scale tiny --trials 4 --device cpu`` checks the script on a CPU in a minute.
Results: DIR/*.txt, DIR/summary.txt, DIR/sweep.tgz (with --archive), the report in DIR/report (or inside the
archive).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
T0 = time.perf_counter()
BENCHMARKS = ("generate", "graphs", "train", "fused", "streams", "anatomy", "firstblock", "audit")


def elapsed() -> float:
    return time.perf_counter() - T0


def run(cmd: list[str], log: Path, limit: float | None = None) -> tuple[float, bool, int]:
    """Run ``cmd`` in its own process group, echoing each output line with the elapsed seconds and writing it
    to ``log``; after ``limit`` seconds the whole group gets SIGTERM (then SIGKILL). Returns (seconds, whether
    it was stopped, exit code)."""
    print(f"[{elapsed():6.0f}s] $ " + " ".join(cmd) + (f"   (limit {limit:.0f} s)" if limit else ""), flush=True)
    t = time.perf_counter()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    stopped = False
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                start_new_session=True)

        def stop(*_):
            nonlocal stopped
            stopped = True
            for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
                try:
                    os.killpg(proc.pid, sig)
                    proc.wait(wait)
                    return
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    continue

        if limit is not None:
            signal.signal(signal.SIGALRM, stop)
            signal.setitimer(signal.ITIMER_REAL, max(limit, 1.0))
        for line in proc.stdout:
            fh.write(line)
            print(f"[{elapsed():6.0f}s] {line}", end="", flush=True)
        proc.wait()
        signal.setitimer(signal.ITIMER_REAL, 0)
    dt = time.perf_counter() - t
    if stopped:
        print(f"[{elapsed():6.0f}s] (stopped after {dt:.0f} s)", flush=True)
    elif proc.returncode:
        print(f"[{elapsed():6.0f}s] (exit {proc.returncode})", flush=True)
    return dt, stopped, proc.returncode


def planned_trials(path: Path | None, args) -> list[dict]:
    """The trial records of the sweep a call runs (``path`` from :func:`sweep_file`, else the preset)."""
    from biasbench.sweep.spec import expand, load_spec

    return [t.to_dict() for t in expand(load_spec(str(path or "paper-table1")), args.scale, [args.seed])]


def sweep_file(args, out: Path) -> Path | None:
    """A sweep file holding the preset's trials reordered (``--first``), cut (``--trials``) and/or with model
    options for every trial (``--model-kwarg``: other configurations, so other run ids)."""
    if not (args.trials or args.first or args.model_kwarg):
        return None
    import yaml

    from biasbench.sweep.spec import expand, presets

    trials = expand(presets()["paper-table1"], args.scale, [args.seed])
    first = [m for m in (args.first or "").split(",") if m]
    trials.sort(key=lambda t: first.index(t.config["method"]) if t.config["method"] in first else len(first))
    trials = trials[: args.trials] if args.trials else trials
    spec = {"name": "paper-table1", "scale": args.scale,
            "include": [{k: t.config[k] for k in ("method", "explicit", "seed")} for t in trials]}
    if args.model_kwarg:
        from biasbench.cli import parse_hparams

        spec["base"] = {"model_kwargs": parse_hparams(args.model_kwarg, "--model-kwarg")}
    path = out / "sweep-trials.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def table_rows(path: Path) -> list[tuple[str, list[str]]]:
    """Rows of a benchmark's printed table: (label, the numeric cells at the end), thousands separators kept;
    the label is empty in a row of numbers only (streams.py's)."""
    rows = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        parts = line.split()
        nums = []
        while parts and re.fullmatch(r"[0-9][0-9,]*(\.[0-9]+)?%?|-", parts[-1]):
            nums.insert(0, parts.pop())
        if nums:
            rows.append((" ".join(parts), nums))
    return rows


def fuse_from_benchmark(path: Path, graphs: bool, gain: float = 1.1) -> str:
    """``--fuse measured``: 8 when fused.py's largest uncompiled group (captured if ``graphs``, else eager)
    trained at least ``gain`` x one plain run's images/s (captured likewise), else 1 (unfused)."""
    rows = []
    for label, nums in table_rows(path):
        words = label.split()
        if words and words[0].isdigit() and "compile" not in label and ("graphs" in label) == graphs \
                and len(nums) == 3 and nums[2] != "-":
            rows.append((int(words[0]), float(nums[2])))
    kind = "captured" if graphs else "eager"
    if not rows:
        print(f"--fuse measured: no {kind} row in fused.txt; unfused", flush=True)
        return "1"
    runs, x_plain = max(rows)
    choice = "8" if runs > 1 and x_plain >= gain else "1"
    print(f"--fuse measured: {runs} fused {kind} runs at {x_plain:.2f}x one plain run -> --fuse {choice}", flush=True)
    return choice


def graphs_from_benchmark(out: Path, gain: float = 1.05) -> str:
    """``--cuda-graphs measured``: on when graphs.py ended with ``graphs: ok`` (every method captured, with
    eager-like results) and train.py's captured loop was at least ``gain`` x the eager one, else off."""
    check = (out / "graphs.txt").read_text().strip().splitlines()[-1:] if (out / "graphs.txt").is_file() else []
    loops = {label: nums for label, nums in table_rows(out / "train.txt") if len(nums) == 3}
    eager, graphed = loops.get("bf16 + channels_last"), loops.get("bf16 + channels_last + graphs")
    check = [c for c in check if c.startswith("graphs:")]
    ok = bool(check) and check[0] == "graphs: ok"
    ratio = float(graphed[1].replace(",", "")) / float(eager[1].replace(",", "")) if eager and graphed else None
    choice = "on" if ok and ratio is not None and ratio >= gain else "off"
    print(f"--cuda-graphs measured: check {'ok' if ok else (check[0] if check else 'missing')}, captured loop "
          f"{'%.2fx' % ratio if ratio else 'not measured'} eager -> --cuda-graphs {choice}", flush=True)
    return choice


def streams_from_benchmark(path: Path, gain: float = 1.15) -> str:
    """``--streams measured``: the number of runs R whose threads, one stream each (streams.py's last column,
    what ``sweep --streams R`` does), trained at the highest images/s over one run alone, if that is at least
    ``gain`` x; else 1."""
    best = (1, 1.0)
    for label, cells in table_rows(path):  # a row: runs, then three (images/s, x) pairs
        if not label and len(cells) == 7 and cells[0].isdigit() and cells[6] != "-" and float(cells[6]) > best[1]:
            best = (int(cells[0]), float(cells[6]))
    choice = str(best[0]) if best[1] >= gain else "1"
    print(f"--streams measured: best {best[0]} threaded runs at {best[1]:.2f}x one run -> --streams {choice}",
          flush=True)
    return choice


def triton_pool_checked(path: Path) -> bool:
    """Whether firstblock.py's check lines say the Triton max-pool gave PyTorch's numbers bit for bit on this
    device: every comparison "equal" (alone, with the bias, with the bias and the ReLU; a zero's sign is
    reported, not counted), and in the network step as many gradients equal to the default pool's as
    the default pool's two runs had between themselves (cuDNN's own run-to-run differences aside)."""
    lines = path.read_text().splitlines() if path.is_file() else []
    pool = [line for line in lines if line.startswith("triton pool")]
    net = [line for line in lines if line.startswith("paper CNN step")]
    if len(pool) != 3 or len(net) != 1 or any("DIFFERENT" in line or "not usable" in line for line in pool):
        return False
    counts = [int(n) for n in re.findall(r"(\d+) of \d+ gradients equal", net[0])]
    return len(counts) == 2 and counts[1] >= counts[0] and net[0].count("logits equal") == 2


def check_passed(path: Path, start: str) -> bool:
    """Whether firstblock.py's check line beginning ``start`` ends in "(ok)" (the fused conv backward's: "fused conv
    backward"; the Triton conv1 forward's: "triton conv1 forward")."""
    lines = path.read_text().splitlines() if path.is_file() else []
    return any(line.startswith(start) and line.rstrip().endswith("(ok)") for line in lines)


def options_from_benchmark(out: Path, gain: float = 1.03) -> list[str]:
    """``--model-options measured``: the paper CNN options (train.py ``--options`` words) whose captured loop in
    this call's train.py was fastest, as ``--model-kwarg`` items, if at least ``gain`` x the captured loop
    without options; options with the Triton pool only if firstblock.py's check passed (:func:`triton_pool_checked`),
    with ``tconv`` only if the fused backward's check passed too, with ``tfwd`` only if the Triton forward's did,
    with ``ksum`` only if the kernel-summed gradient's did, with ``twg`` only if the Triton weight gradient's did
    (:func:`check_passed`); ``pool_kernel=torch`` added
    when the Triton pool's check did not pass (the default takes that pool on CUDA). None (an empty list)
    otherwise."""
    from train import option_kwargs  # benchmarks/train.py

    base = "bf16 + channels_last + graphs"
    loops = {label: float(nums[1].replace(",", "")) for label, nums in table_rows(out / "train.txt")
             if len(nums) == 3 and label.startswith(base)}
    triton_ok = triton_pool_checked(out / "firstblock.txt")
    passed = {"triton": triton_ok,
              "tconv": triton_ok and check_passed(out / "firstblock.txt", "fused conv backward"),
              "tfwd": triton_ok and check_passed(out / "firstblock.txt", "triton conv1 forward"),
              "ksum": triton_ok and check_passed(out / "firstblock.txt", "pool gradient summed in the kernel"),
              "twg": triton_ok and check_passed(out / "firstblock.txt", "triton conv1 weight gradient")}

    def checked(opt: str) -> bool:
        return all(passed.get(word, True) for word in opt.split("+"))

    options = {label[len(base) + 3:]: rate for label, rate in loops.items()
               if label.startswith(base + " + ") and checked(label[len(base) + 3:])}
    # without options the model takes the Triton pool on CUDA (pool_kernel="auto"): not verified here unless the
    # check passed, so then PyTorch's pool
    unverified = [] if triton_ok else ["pool_kernel=torch"]
    if base not in loops or not options:
        print(f"--model-options measured: {'no options measured' if base in loops else 'no ' + base + ' row'} "
              f"(triton pool check {'passed' if triton_ok else 'failed or missing'}); "
              f"{' '.join(unverified) or 'none'}", flush=True)
        return unverified
    best = max(options, key=options.get)
    ratio = options[best] / loops[base]
    chosen = [f"{k}={v if isinstance(v, str) else json.dumps(v)}"
              for k, v in option_kwargs(best).items()] if ratio >= gain else []
    if not any(kv.startswith("pool_kernel=") for kv in chosen):
        chosen += unverified
    print(f"--model-options measured: checks passed: triton pool {triton_ok}, fused conv backward {passed['tconv']}, "
          f"triton conv1 forward {passed['tfwd']}, kernel-summed pool gradient {passed['ksum']}, triton conv1 "
          f"weight gradient {passed['twg']}; best "
          f"{best} at {ratio:.2f}x the captured loop without options -> {' '.join(chosen) or 'none'}", flush=True)
    return chosen


def count_finished(sweep: Path, trials: list[dict] | None = None) -> tuple[int, int]:
    """(finished trials, trials) of the sweep in ``sweep`` (its ``sweep.json``), or of ``trials`` (trial records,
    e.g. those a call is about to run, when the folder's ``sweep.json`` lists another selection): only the runs of
    those trials count (a folder may also hold runs of another sweep, e.g. records copied in from an earlier
    session)."""
    from biasbench.report.records import find_run

    if trials is None:
        try:
            trials = json.loads((sweep / "sweep.json").read_text())["trials"]
        except (OSError, ValueError, KeyError):
            return 0, 0
    done = 0
    for t in trials:
        run_id = t.get("run_id") or find_run(sweep / "runs", t)
        status = sweep / "runs" / str(run_id) / "status.json"
        done += bool(run_id) and status.is_file() and json.loads(status.read_text()).get("state") == "finished"
    return done, len(trials)


def archive(sweep: Path, report: Path, dest: Path) -> None:
    """Records needed to rebuild the report and to skip finished trials on a rerun: sweep.json and each run's
    JSON files; the checkpoint only of runs that did not finish (so they can resume); no predictions."""
    with tarfile.open(dest, "w:gz") as tar:
        if (sweep / "sweep.json").is_file():
            tar.add(sweep / "sweep.json", "sweep/sweep.json")
        for run in sorted((sweep / "runs").glob("*")):
            finished = (run / "status.json").is_file() and \
                json.loads((run / "status.json").read_text()).get("state") == "finished"
            for f in sorted(run.iterdir()):
                if f.suffix == ".json" or (f.name == "checkpoint.pt" and not finished):
                    tar.add(f, f"sweep/runs/{run.name}/{f.name}")
        if report.is_dir():
            tar.add(report, "report")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--benchmarks", default=",".join(BENCHMARKS), help=f"comma-separated subset of {BENCHMARKS}")
    ap.add_argument("--fused-runs", default=None, help="fused.py --runs (default 1,2,4,8 on CUDA)")
    ap.add_argument("--bench-limit", type=float, default=None, help="seconds each benchmark may run")
    ap.add_argument("--workers", type=int, default=1, help="units of work at a time on the GPU (processes)")
    ap.add_argument("--streams", default="1",
                    help="the sweep's --streams N (units at a time in threads, one CUDA stream each); measured: the "
                         "best R of this call's streams benchmark if its threads gave at least 1.15x, else 1")
    ap.add_argument("--fuse", default="auto",
                    help="the sweep's --fuse (auto: 8 on CUDA with --compile, else 1); measured: 8 if this call's "
                         "fused benchmark found 8 eager fused runs at least 1.1x one plain run, else 1")
    ap.add_argument("--compile", nargs="?", const="default", default=None, metavar="MODE",
                    help="the sweep's --compile [MODE]; a MODE other than default is also benchmarked")
    ap.add_argument("--cuda-graphs", default="auto", choices=("auto", "measured", "on", "off"),
                    help="the sweep's --cuda-graphs; measured: on if this call's graphs.py check passed and "
                         "train.py's captured loop was at least 1.05x the eager one; the benchmarks measure "
                         "captured steps unless off")
    ap.add_argument("--no-bench-compile", action="store_true", help="benchmarks: no compiled configurations")
    ap.add_argument("--train-only", default=None, help="train.py --only (e.g. channels_last)")
    ap.add_argument("--train-options", default=None,
                    help="train.py --options (e.g. fold,triton,fold+triton): paper CNN options to measure too")
    ap.add_argument("--skip-sweep", action="store_true")
    ap.add_argument("--skip-benchmarks", action="store_true")
    ap.add_argument("--scale", default="full")
    ap.add_argument("--seed", type=int, default=0, help="the sweep's seed (default 0)")
    ap.add_argument("--trials", type=int, default=None, help="only the first N trials (to check the script)")
    ap.add_argument("--first", default=None, help="comma-separated methods whose trials run first")
    ap.add_argument("--model-kwarg", action="append", default=[], metavar="KEY=VALUE",
                    help="a model option for every trial of the sweep (e.g. pool_kernel=triton); repeatable")
    ap.add_argument("--model-options", default=None, choices=("measured",),
                    help="measured: add the --train-options combination whose captured loop was fastest in this "
                         "call's train benchmark (at least 1.03x none; the Triton kernels only if firstblock's "
                         "checks passed) to --model-kwarg; anatomy, if asked for, then profiles the step with them")
    ap.add_argument("--options-file", default=None, metavar="PATH",
                    help="write the sweep's model options (--model-kwarg, with those --model-options measured "
                         "picked), one KEY=VALUE per line, to PATH, for a later call to pass on")
    ap.add_argument("--sweep-dir", default=None, help="the sweep folder (default OUT/sweep)")
    ap.add_argument("--data", default=None, help="the datasets folder (default OUT/data)")
    ap.add_argument("--deadline", type=float, default=None, help="end the script within this many seconds")
    ap.add_argument("--archive", action="store_true", help="pack records and report into OUT/sweep.tgz")
    ap.add_argument("--no-report", action="store_true")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    benches = [] if args.skip_benchmarks else [b for b in args.benchmarks.split(",") if b]
    unknown = set(benches) - set(BENCHMARKS)
    if unknown:
        sys.exit(f"error: unknown benchmarks {sorted(unknown)}; expected some of {BENCHMARKS}")
    from train import option_error  # benchmarks/train.py: a bad word fails here, not minutes into a GPU call

    for opt in [o for o in (args.train_options or "").split(",") if o]:
        if option_error(opt):
            sys.exit(f"error: --train-options: {option_error(opt)}")
    dev = ["--device", "cuda" if args.device == "auto" else args.device]
    small = [] if "cuda" in dev[1] else ["--cell-size", "8"]
    comp = [] if args.no_bench_compile else ["--compile"]
    cmds = {"generate": [py, str(HERE / "generate.py"), *dev],
            "graphs": [py, str(HERE / "graphs.py"), *dev, *small],
            "train": [py, str(HERE / "train.py"), *comp, *dev, *small]
            + (["--compile-modes", f"default,{args.compile}"] if comp and args.compile not in (None, "default") else [])
            + (["--only", args.train_only] if args.train_only else [])
            + (["--options", args.train_options] if args.train_options else []),
            "fused": [py, str(HERE / "fused.py"), *comp, *dev, *small]
            + (["--compile-mode", args.compile] if comp and args.compile else [])
            + (["--runs", args.fused_runs] if args.fused_runs else [])
            + (["--cuda-graphs", "off,on"] if args.cuda_graphs != "off" and "cuda" in dev[1] else []),
            "streams": [py, str(HERE / "streams.py"), *dev, *small],
            "anatomy": [py, str(HERE / "anatomy.py"), *dev, *small, "--top", "25"],
            "firstblock": [py, str(HERE / "firstblock.py"), *dev, *small, *comp],
            "audit": [py, str(HERE / "audit.py"), *dev, "--samples", "1000"]}
    # anatomy profiles the step with the sweep's model options (--model-kwarg, and the measured ones once chosen)
    deferred = ["anatomy"] if "anatomy" in benches else []
    for b in benches:
        if b not in deferred:
            run(cmds[b], out / f"{b}.txt", args.bench_limit)
    measured = options_from_benchmark(out) if args.model_options == "measured" else []
    args.model_kwarg += measured
    if args.options_file:
        Path(args.options_file).parent.mkdir(parents=True, exist_ok=True)
        Path(args.options_file).write_text("".join(kv + "\n" for kv in args.model_kwarg))
    for b in deferred:
        run(cmds[b] + [a for kv in args.model_kwarg for a in ("--model-kwarg", kv)], out / f"{b}.txt",
            args.bench_limit)
    if args.skip_sweep:
        return
    if args.cuda_graphs == "measured":
        args.cuda_graphs = graphs_from_benchmark(out)
    if args.streams == "measured":
        args.streams = streams_from_benchmark(out / "streams.txt")
    if args.fuse == "measured":
        args.fuse = fuse_from_benchmark(out / "fused.txt", args.cuda_graphs == "on")
    sweep = Path(args.sweep_dir) if args.sweep_dir else out / "sweep"
    report = sweep / "report" if args.archive else out / "report"
    path = sweep_file(args, out)
    cmd = [py, "-m", "biasbench.cli", "sweep", str(path or "paper-table1"), "--scale", args.scale,
           "--seeds", str(args.seed),
           "--data", args.data or str(out / "data"), "--out", str(sweep), "--workers", str(args.workers),
           "--device", args.device, "--fuse", args.fuse, "--streams", args.streams] \
        + (["--compile", args.compile] if args.compile else [])
    before, _ = count_finished(sweep, planned_trials(path, args))  # the folder's sweep.json may list others
    tail = 0 if args.no_report else 30  # seconds kept for the report and the archive

    def limit():
        return None if args.deadline is None else args.deadline - elapsed() - tail - 10

    seconds, stopped, rc = run(cmd + ["--cuda-graphs", args.cuda_graphs], out / "sweep.txt", limit())
    if rc and not stopped and measured and (limit() is None or limit() > 60):
        # new kernels are the likeliest cause: the same sweep without them, in a folder of its own (other run ids)
        args.model_kwarg = [kv for kv in args.model_kwarg if kv not in measured]
        path = sweep_file(args, out)
        sweep = sweep.with_name(sweep.name + "-plain")
        report = sweep / "report" if args.archive else out / "report"
        print(f"[{elapsed():6.0f}s] the sweep failed with the measured options {' '.join(measured)}: again without "
              f"them, into {sweep}", flush=True)
        cmd[4] = str(path or "paper-table1")
        cmd[cmd.index("--out") + 1] = str(sweep)
        before, _ = count_finished(sweep, planned_trials(path, args))
        more, stopped, rc = run(cmd + ["--cuda-graphs", args.cuda_graphs], out / "sweep-plain.txt", limit())
        seconds += more
    if rc and not stopped and args.streams != "1" and (limit() is None or limit() > 60):
        print(f"[{elapsed():6.0f}s] the sweep failed with --streams {args.streams}: again with one unit at a time",
              flush=True)
        args.streams = "1"
        cmd[cmd.index("--streams") + 1] = "1"
        more, stopped, rc = run(cmd + ["--cuda-graphs", args.cuda_graphs], out / "sweep-one.txt", limit())
        seconds += more
    if rc and not stopped and args.cuda_graphs != "off" and (limit() is None or limit() > 60):
        print(f"[{elapsed():6.0f}s] the sweep failed with --cuda-graphs {args.cuda_graphs}: again with them off",
              flush=True)
        args.cuda_graphs = "off"
        more, stopped, rc = run(cmd + ["--cuda-graphs", "off"], out / "sweep-eager.txt", limit())
        seconds += more
    done, total = count_finished(sweep)
    if not args.no_report:
        run([py, "-m", "biasbench.cli", "report", str(sweep), "--out", str(report)], out / "report.txt")
    summary = (f"paper-table1 ({args.scale}, seed {args.seed}, --fuse {args.fuse}, --cuda-graphs {args.cuda_graphs}"
               f"{''.join(' --model-kwarg ' + kv for kv in args.model_kwarg)}"
               f"{' --compile ' + args.compile if args.compile else ''}, "
               f"{args.workers} processes, {args.streams} streams): {seconds / 60:.1f} min wall time this call; "
               f"{done} of {total} trials finished ({done - before} in this call)"
               + ("; stopped at the deadline" if stopped else ""))
    (out / "summary.txt").write_text(summary + "\n")
    print(summary, flush=True)
    if args.archive:
        archive(sweep, report, out / "sweep.tgz")
        print(f"[{elapsed():6.0f}s] wrote {out / 'sweep.tgz'} ({(out / 'sweep.tgz').stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
