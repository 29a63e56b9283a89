"""Runners: the same trial function (:func:`run_trial`) sequentially, in N local processes, or on Ray.

Progress is printed as trials end: done / running / left and an ETA from the mean trial time.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Callable

from ..errors import BiasbenchError
from ..utils import atomic_write_json
from .spec import Trial
from .trial import run_trial

RUNNERS = ("local", "ray")


class Progress:
    """Trials done / running / waiting and an ETA (mean wall time per finished trial x trials left / slots)."""

    def __init__(self, total: int, log: Callable[[str], None], slots: int = 1):
        self.total, self.done, self.log, self.t0, self.slots = total, 0, log, time.perf_counter(), slots

    def finished(self, result: dict):
        self.done += 1
        left = self.total - self.done
        running = min(self.slots, left)
        el = time.perf_counter() - self.t0
        eta = el / self.done * left
        self.log(f"[{self.done}/{self.total} done, {running} running, {left - running} waiting, "
                 f"ETA {_fmt(eta)}] trial {result['trial_id']} -> run {result['run_id']} {result['status']}, "
                 f"test accuracy {result['test_accuracy']:.2f}")


def _fmt(s: float) -> str:
    return f"{s / 60:.1f} min" if s >= 90 else f"{s:.0f} s"


def write_sweep_record(out: Path, name: str, scale: str, trials: list[Trial], results: list[dict]) -> None:
    by_trial = {r["trial_id"]: r for r in results}
    atomic_write_json(out / "sweep.json", {
        "name": name, "scale": scale,
        "trials": [{**t.to_dict(), "run_id": by_trial.get(t.trial_id, {}).get("run_id")} for t in trials],
    })


def run_local(trials: list[Trial], data_root: str, out: str, tracker: str, device: str, workers: int,
              log: Callable[[str], None]) -> list[dict]:
    progress = Progress(len(trials), log, workers)
    payload = [t.to_dict() for t in trials]
    if workers <= 1:
        results = []
        for t in payload:
            results.append(run_trial(t, data_root, out, tracker, device))
            progress.finished(results[-1])
        return results
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    results = []
    ctx = mp.get_context("spawn")  # torch and threads: never fork a process that has run torch
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = [pool.submit(run_trial, t, data_root, out, tracker, device) for t in payload]
        for fut in as_completed(futures):
            results.append(fut.result())
            progress.finished(results[-1])
    return results


def run_ray(trials: list[Trial], data_root: str, out: str, tracker: str, device: str, workers: int,
            address: str | None, gpus_per_trial: float, log: Callable[[str], None]) -> list[dict]:
    """Ray Tune over the trials (``grid_search``), each trial with 1 CPU and ``gpus_per_trial`` GPUs, so
    several small trials share one GPU; ``address="auto"`` joins a running cluster (records then need a
    folder every node can reach)."""
    try:
        import ray
        from ray import tune
    except ImportError as exc:
        raise BiasbenchError(f"the Ray runner needs Ray: pip install 'biasbench[ray]' ({exc})") from None
    data_root, out = str(Path(data_root).resolve()), str(Path(out).resolve())

    def trainable(config):
        result = run_trial(config["trial"], data_root, out, tracker, device)
        return {"result_json": json.dumps(result)}

    started_here = not ray.is_initialized()
    if started_here:
        kwargs = {"address": address} if address else {"num_cpus": max(1, workers), "include_dashboard": False}
        ray.init(log_to_driver=False, configure_logging=False, **kwargs)
    try:
        tuner = tune.Tuner(
            tune.with_resources(trainable, {"cpu": 1, "gpu": gpus_per_trial}),
            param_space={"trial": tune.grid_search([t.to_dict() for t in trials])},
            tune_config=tune.TuneConfig(max_concurrent_trials=max(1, workers) if not address else None),
            run_config=tune.RunConfig(name="ray", storage_path=str(Path(out) / "ray_results"), verbose=0),
        )
        grid = tuner.fit()
    finally:
        if started_here:
            ray.shutdown()
    results = []
    progress = Progress(len(trials), log, workers)
    for res in grid:
        if res.error:
            raise BiasbenchError(f"a Ray trial failed: {res.error}")
        results.append(json.loads(res.metrics["result_json"]))
        progress.finished(results[-1])
    return results


def run_sweep(trials: list[Trial], name: str, scale: str, data_root: str, out: str, runner: str = "local",
              tracker: str = "none", device: str = "auto", workers: int = 1, address: str | None = None,
              gpus_per_trial: float = 0.0, log: Callable[[str], None] | None = None) -> list[dict]:
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    if runner not in RUNNERS:
        raise BiasbenchError(f"unknown runner {runner!r}; expected one of: {', '.join(RUNNERS)}")
    if workers < 1:
        raise BiasbenchError(f"--workers must be >= 1, got {workers}")
    if gpus_per_trial < 0:
        raise BiasbenchError(f"--gpus-per-trial must be >= 0, got {gpus_per_trial}")
    from ..track import make_tracker

    make_tracker(tracker, str(Path(out) / "runs")).prepare()  # bad tracker: fail before training
    outp = Path(out)
    outp.mkdir(parents=True, exist_ok=True)
    write_sweep_record(outp, name, scale, trials, [])
    log(f"sweep {name} ({scale}): {len(trials)} trials, runner {runner}, workers {workers} -> {out}")
    if runner == "local":
        results = run_local(trials, data_root, out, tracker, device, workers, log)
    else:
        results = run_ray(trials, data_root, out, tracker, device, workers, address, gpus_per_trial, log)
    write_sweep_record(outp, name, scale, trials, results)
    if tracker != "none":
        log_sweep_summary(outp, name, scale, tracker)
    return results


def log_sweep_summary(out: Path, name: str, scale: str, tracker: str) -> None:
    """One sweep-level tracker run beside the per-trial runs: the Table-1 numbers of the sweep."""
    import math

    from ..report.records import load_sweep, select
    from ..report.tables import table1
    from ..track import make_tracker

    _, records = load_sweep(out)
    rows = table1(select(records, "final"))
    t = make_tracker(tracker, str(out / "runs"))
    ids = t.start(f"sweep-{name}")
    t.log_params({"sweep.name": name, "sweep.scale": scale, "sweep.trials": len(records)})
    t.set_tags({"biasbench.kind": "sweep-summary"})
    t.log_metrics({f"table1/{r['method']}/mean": r["mean"] for r in rows if not math.isnan(r["mean"])}, step=0)
    t.finish("FINISHED")
    atomic_write_json(out / "sweep_tracker.json", ids)
