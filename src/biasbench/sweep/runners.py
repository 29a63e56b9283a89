"""Runners: the same unit function (:func:`run_unit`: one trial, or several fused) sequentially, in N local
processes, in N threads of this process each on its own CUDA stream (``--streams``), or on Ray. Units come
from :func:`plan_units` (``--fuse``).

Progress is printed as trials end: done / running / left and an ETA from the mean trial time.
"""
from __future__ import annotations

import json
import queue
import sys
import threading
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

from ..errors import BiasbenchError
from ..utils import atomic_write_json
from .spec import Trial
from .trial import ensure_dataset, plan_units, run_unit

RUNNERS = ("local", "ray", "slurm")
MAX_STREAMS = 16
"""``--streams`` at most. Torch's stream pool has 32 streams per device and priority, handed out in turn, so
the threads' streams, taken one after another, are distinct; the cap keeps well inside the pool."""


class Progress:
    """Trials done / trials left / units running, and an ETA: wall time so far per trained trial x trials
    left (skipped, already finished trials do not count as trained; a fused unit reports all its trials at
    once, so the ETA is computed after the whole unit is counted)."""

    def __init__(self, units: list[int], log: Callable[[str], None], slots: int = 1):
        self.total, self.units, self.log, self.slots = sum(units), len(units), log, slots
        self.done = self.trained = self.units_done = 0
        self.t0 = time.perf_counter()

    def finished(self, results: list[dict]):
        """Count one unit's results and log a line per trial."""
        self.done += len(results)
        self.units_done += 1
        self.trained += sum(r["status"] == "finished" for r in results)
        left = self.total - self.done
        running = min(self.slots, self.units - self.units_done)
        el = time.perf_counter() - self.t0
        eta = _fmt(el / self.trained * left) if self.trained else ("0 s" if not left else "-")
        for r in results:
            self.log(f"[{self.done}/{self.total} done, {left} left, units running: {running}, ETA {eta}] "
                     f"trial {r['trial_id']} -> run {r['run_id']} {r['status']}, "
                     f"test accuracy {r['test_accuracy']:.2f}")


def _fmt(s: float) -> str:
    return f"{s / 60:.1f} min" if s >= 90 else f"{s:.0f} s"


def write_sweep_record(out: Path, name: str, scale: str, trials: list[Trial], results: list[dict]) -> None:
    by_trial = {r["trial_id"]: r for r in results}
    atomic_write_json(out / "sweep.json", {
        "name": name, "scale": scale,
        "trials": [{**t.to_dict(), "run_id": by_trial.get(t.trial_id, {}).get("run_id")} for t in trials],
    })


def worker_threads(threads: int, workers: int) -> int:
    """Torch threads of each of ``workers`` worker processes: this process's ``threads`` shared out, at least 1.
    Each spawned process would otherwise take torch's default, every core, and N workers would run N times as
    many threads as cores: on 2 cores `more-methods --scale tiny --workers 2` took 302 s so, 130-156 s with one
    thread each, and 150 s one trial at a time (``docs/benchmarks.md``)."""
    return max(1, threads // max(1, workers))


def worker_gpus(device: str, workers: int) -> list[str] | None:
    """The GPUs local workers are spread over, one each round-robin (:func:`_init_worker` sets the worker's
    ``CUDA_VISIBLE_DEVICES`` to one of them before it touches CUDA): this machine's visible GPUs (the ids in
    ``CUDA_VISIBLE_DEVICES`` when it is set), when the device is ``auto`` or ``cuda``, there are several GPUs and
    several workers; None otherwise (one GPU or none: nothing to spread; an explicit ``cuda:N``: the user's
    choice)."""
    if device not in ("auto", "cuda") or workers <= 1:
        return None
    import os

    import torch

    n = torch.cuda.device_count()
    if n < 2:
        return None
    visible = [g.strip() for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
    return (visible or [str(i) for i in range(n)])[:n]


def _init_worker(threads: int, gpus: list[str] | None, counter) -> None:
    """A spawned local worker's set-up: its share of the torch threads (:func:`worker_threads`) and, with
    ``gpus``, the next GPU round-robin (``counter`` numbers the workers as they start)."""
    import os

    import torch

    with counter.get_lock():
        index = counter.value
        counter.value += 1
    if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
    torch.set_num_threads(threads)


def run_local(units: list[list[Trial]], data_root: str, out: str, tracker: str, device: str, workers: int,
              log: Callable[[str], None], compile_model: bool | str = False,
              cuda_graphs: bool | str = False) -> list[dict]:
    """Units (lists of trials, see :func:`plan_units`) one after another, or ``workers`` at a time in
    spawned processes, each with its share of this process's torch threads (:func:`worker_threads`) and, on a
    machine with several GPUs, a GPU of its own round-robin (:func:`worker_gpus`)."""
    progress = Progress([len(u) for u in units], log, workers)
    payload = [[t.to_dict() for t in unit] for unit in units]
    results = []
    if workers <= 1:
        for unit in payload:
            rs = run_unit(unit, data_root, out, tracker, device, compile_model, cuda_graphs)
            results += rs
            progress.finished(rs)
        return results
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    import torch

    ctx = mp.get_context("spawn")  # torch and threads: never fork a process that has run torch
    threads = worker_threads(torch.get_num_threads(), workers)
    gpus = worker_gpus(device, workers)
    if gpus:
        log(f"{workers} workers over GPUs {', '.join(gpus)} (CUDA_VISIBLE_DEVICES, round-robin)")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(threads, gpus, ctx.Value("i", 0))) as pool:
        futures = [pool.submit(run_unit, unit, data_root, out, tracker, device, compile_model, cuda_graphs) for unit in payload]
        for fut in as_completed(futures):
            rs = fut.result()
            results += rs
            progress.finished(rs)
    return results


def shared_rng_users(trials: list[Trial]) -> list[str]:
    """Trials that draw random masks from torch's process-wide generator while they train
    (:meth:`TrainConfig.random_masks`); in threads their draws would depend on how the threads interleave."""
    return [t.trial_id for t in trials if t.train_config("-").random_masks()]


def check_models(trials: list[Trial]) -> None:
    """Build each distinct model and options of ``trials`` on the meta device (no memory, no weights drawn), so
    an unknown model or a bad option fails with its error before a sweep writes anything."""
    from ..models import check_model

    seen = set()
    for t in trials:
        cfg = t.train_config("-")
        key = (cfg.model, json.dumps(cfg.model_kwargs, sort_keys=True))
        if key not in seen:
            seen.add(key)
            check_model(cfg.model, **cfg.model_kwargs)


def unit_cost(unit: list[Trial]) -> float:
    """GPU time of one training step of ``unit`` relative to StdM's: its trials' methods' ``step_cost`` summed."""
    from ..methods import get_method_class

    return sum(get_method_class(t.train_config("-").method).step_cost for t in unit)


class BalancedUnits:
    """The units for :func:`run_threads`, handed out so that costly ones (cost above 1: two-network methods,
    fused groups) run beside cheap ones rather than beside each other: a thread takes a costly unit while fewer
    than ``max(1, slots // 2)`` run, else a cheap one, and whichever kind is left once the other runs out. Each
    kind keeps the given order. Why: on an H100 three threads running LfF, SD and StdM together reached 1.7x one
    captured network's images/s, while four alike trials reached 1.07-1.14x (``docs/benchmarks.md``)."""

    def __init__(self, units: list[list[Trial]], slots: int):
        self._queues = {True: [], False: []}
        for unit in units:
            self._queues[unit_cost(unit) > 1].append(unit)
        self._max_costly = max(1, slots // 2)
        self._costly_running = 0
        self._lock = threading.Lock()

    def take(self) -> tuple[list[Trial], bool] | None:
        """The next unit and whether it is costly (to hand back to :meth:`done`), or None when none are left."""
        with self._lock:
            costly = self._costly_running < self._max_costly
            if not self._queues[costly]:
                costly = not costly
            if not self._queues[costly]:
                return None
            self._costly_running += costly
            return self._queues[costly].pop(0), costly

    def done(self, costly: bool) -> None:
        with self._lock:
            self._costly_running -= costly


def run_threads(units: list[list[Trial]], data_root: str, out: str, tracker: str, device: str, streams: int,
                log: Callable[[str], None], compile_model: bool | str = False,
                cuda_graphs: bool | str = False) -> list[dict]:
    """Units ``streams`` at a time in this process, one thread each. On CUDA each thread issues its unit's
    work on its own stream, so the GPU may run one trial's kernels where another's leave it idle (a captured
    step costs the host only a replay call, so the threads do not wait on each other for the GIL). Records
    equal those of one trial after another: the one use of the process-wide generator, model initialisation,
    is serialised (:data:`biasbench.train.loop.GLOBAL_RNG_LOCK`) and everything else has its own generator;
    trials with random masks (dropout) are refused (:func:`shared_rng_users`). Units are handed out by
    :class:`BalancedUnits` (costly trials beside cheap ones). Datasets are made first, in
    this thread. A failing unit stops the hand-out of new ones; the units already running finish, then the
    error is raised. On a CPU the threads share the cores: no faster than one at a time (a check of the runner)."""
    import torch

    from ..train.loop import resolve_device

    dev = resolve_device(device)
    for ds in {json.dumps(t.dataset.to_dict(), sort_keys=True): t.dataset for u in units for t in u}.values():
        ensure_dataset(data_root, ds)  # before the threads: two trials must not render one dataset at once
    progress = Progress([len(u) for u in units], log, streams)
    n = min(streams, len(units))
    jobs = BalancedUnits(units, n)
    done: queue.Queue = queue.Queue()
    stop = threading.Event()

    # one stream per thread, taken here at once: torch hands out its pool's 32 streams in turn, so n <= MAX_STREAMS
    # consecutive ones are distinct (the threads' captures run on these too: graphs.GraphedStep._stream)
    own = [torch.cuda.Stream(dev) if dev.type == "cuda" else None for _ in range(n)]

    def worker(stream):
        with torch.cuda.stream(stream) if stream is not None else nullcontext():
            while not stop.is_set():
                job = jobs.take()
                if job is None:
                    return
                unit, costly = job
                try:
                    done.put((run_unit([t.to_dict() for t in unit], data_root, out, tracker, device, compile_model,
                                       cuda_graphs), None))
                except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which raises it
                    stop.set()
                    done.put((None, exc))
                finally:
                    jobs.done(costly)

    threads = [threading.Thread(target=worker, args=(own[i],), name=f"biasbench-stream-{i}", daemon=True)
               for i in range(n)]
    for th in threads:
        th.start()
    results, error = [], None
    while any(th.is_alive() for th in threads) or not done.empty():
        try:
            rs, exc = done.get(timeout=0.5)
        except queue.Empty:
            continue
        if exc is not None:
            error = error or exc
            continue
        results += rs
        progress.finished(rs)
    if error is not None:
        raise error
    return results


def run_ray(units: list[list[Trial]], data_root: str, out: str, tracker: str, device: str, workers: int,
            address: str | None, gpus_per_trial: float, log: Callable[[str], None],
            compile_model: bool | str = False, cuda_graphs: bool | str = False) -> list[dict]:
    """Ray Tune over the units (``grid_search``), each with 1 CPU and ``gpus_per_trial`` GPUs, so several
    small units share one GPU; ``address="auto"`` joins a running cluster (records then need a folder
    every node can reach)."""
    try:
        import ray
        from ray import tune
    except ImportError as exc:
        raise BiasbenchError(f"the Ray runner needs Ray: pip install 'biasbench[ray]' ({exc})") from None
    data_root, out = str(Path(data_root).resolve()), str(Path(out).resolve())

    def trainable(config):
        result = run_unit(config["unit"], data_root, out, tracker, device, compile_model, cuda_graphs)
        return {"result_json": json.dumps(result)}

    started_here = not ray.is_initialized()
    if started_here:
        kwargs = {"address": address} if address else {"num_cpus": max(1, workers), "include_dashboard": False}
        ray.init(log_to_driver=False, configure_logging=False, **kwargs)
    try:
        tuner = tune.Tuner(
            tune.with_resources(trainable, {"cpu": 1, "gpu": gpus_per_trial}),
            param_space={"unit": tune.grid_search([[t.to_dict() for t in unit] for unit in units])},
            tune_config=tune.TuneConfig(max_concurrent_trials=max(1, workers) if not address else None),
            run_config=tune.RunConfig(name="ray", storage_path=str(Path(out) / "ray_results"), verbose=0),
        )
        grid = tuner.fit()
    finally:
        if started_here:
            ray.shutdown()
    results = []
    progress = Progress([len(u) for u in units], log, workers)
    for res in grid:
        if res.error:
            raise BiasbenchError(f"a Ray trial failed: {res.error}")
        rs = json.loads(res.metrics["result_json"])
        results += rs
        progress.finished(rs)
    return results


def run_sweep(trials: list[Trial], name: str, scale: str, data_root: str, out: str, runner: str = "local",
              tracker: str = "none", device: str = "auto", workers: int = 1, address: str | None = None,
              gpus_per_trial: float = 0.0, log: Callable[[str], None] | None = None, fuse: int | str = 1,
              compile_model: bool | str = False, cuda_graphs: bool | str = False, streams: int | str = 1,
              slurm: dict | None = None, listed: list[Trial] | None = None) -> list[dict]:
    """Run ``trials``; ``listed``: the whole sweep's trials when ``trials`` are a subset of them (``--only``),
    so that ``sweep.json`` lists them all and the report finds runs trained before or after this subset;
    ``fuse``: at most this many fusable trials trained as one fused network (:mod:`biasbench.train.fused`);
    ``auto`` = 8 on a CUDA device with ``compile_model``, else 1 (off);
    ``cuda_graphs``: captured training steps (:func:`biasbench.train.loop.check_cuda_graphs`); ``streams``:
    local runner, this many units at a time in threads of this process (:func:`run_threads`; ``auto``:
    :func:`resolve_streams`); ``slurm``: the
    Slurm runner's ``cluster``, ``timeout_min`` and ``params`` (:func:`biasbench.sweep.slurm.run_slurm`)."""
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    if runner not in RUNNERS:
        raise BiasbenchError(f"unknown runner {runner!r}; expected one of: {', '.join(RUNNERS)}")
    if workers < 1:
        raise BiasbenchError(f"--workers must be >= 1, got {workers}")
    if gpus_per_trial < 0:
        raise BiasbenchError(f"--gpus-per-trial must be >= 0, got {gpus_per_trial}")
    streams = resolve_streams(streams, device, runner, workers, compile_model, trials)
    if not 1 <= streams <= MAX_STREAMS:
        raise BiasbenchError(f"--streams must be between 1 and {MAX_STREAMS}, got {streams}")
    if streams > 1 and (runner != "local" or workers > 1):
        raise BiasbenchError("--streams runs units in threads of one local process: use it with the local runner "
                             "and --workers 1")
    if streams > 1 and compile_model:
        raise BiasbenchError("--streams with --compile: torch.compile traces and compiles in the thread that first "
                             "calls a model, and is not safe to run in several threads at once; use one of them")
    dropout = shared_rng_users(trials) if streams > 1 else []
    if dropout:
        raise BiasbenchError(f"--streams: {len(dropout)} trial(s) use dropout (e.g. {dropout[0]}), whose draws come "
                             f"from the process's shared generator and would depend on thread timing; use --workers")
    if runner == "slurm":
        try:
            from . import slurm as slurm_runner
        except ImportError as exc:
            raise BiasbenchError(f"the Slurm runner needs submitit: pip install 'biasbench[slurm]' ({exc})") from None
        slurm_runner.check_options(workers, gpus_per_trial, **(slurm or {}))  # before anything is written
    from ..track import make_tracker
    from ..train.loop import check_cuda_graphs, resolve_device

    if runner != "slurm":  # bad combinations fail before training (Slurm's device is the compute nodes')
        check_cuda_graphs(cuda_graphs, resolve_device(device), compile_model)
    check_models(trials)
    units = plan_units(trials, resolve_fuse(fuse, device, compile_model))
    make_tracker(tracker, str(Path(out) / "runs")).prepare()  # bad tracker: fail before training
    outp = Path(out)
    outp.mkdir(parents=True, exist_ok=True)
    listed = trials if listed is None else listed
    write_sweep_record(outp, name, scale, listed, [])
    fused = f", {len(units)} units (up to {max(map(len, units))} trials fused)" if len(units) < len(trials) else ""
    slots = f"{streams} streams" if streams > 1 else f"workers {workers}"
    picked = f" (of {len(listed)})" if len(trials) < len(listed) else ""
    log(f"sweep {name} ({scale}): {len(trials)} trials{picked}{fused}, runner {runner}, {slots} -> {out}")
    if streams > 1:
        results = run_threads(units, data_root, out, tracker, device, streams, log, compile_model, cuda_graphs)
    elif runner == "local":
        results = run_local(units, data_root, out, tracker, device, workers, log, compile_model, cuda_graphs)
    elif runner == "ray":
        results = run_ray(units, data_root, out, tracker, device, workers, address, gpus_per_trial, log,
                          compile_model, cuda_graphs)
    else:
        progress = Progress([len(u) for u in units], log, workers)
        results = slurm_runner.run_slurm([[t.to_dict() for t in unit] for unit in units], data_root, out, tracker,
                                         device, workers, gpus_per_trial, log, progress.finished, compile_model,
                                         cuda_graphs, **(slurm or {}))
    order = {t.trial_id: i for i, t in enumerate(trials)}
    results.sort(key=lambda r: order[r["trial_id"]])
    write_sweep_record(outp, name, scale, listed, results)
    if tracker != "none":
        log_sweep_summary(outp, name, scale, tracker)
    return results


FUSE_AUTO_COMPILED = 8
"""``--fuse auto`` with ``--compile`` on a CUDA device: the paper-table1 preset has 7 explicit-factor runs per
method and seed. Without ``--compile`` auto is 1: on an H100 eager fused groups were no faster than separate
runs (8 runs: 0.96x), compiled ones 1.39x, with one compilation per unit instead of one per run
(``docs/benchmarks.md``)."""


def _names_cuda(device: str) -> bool:
    """Whether ``device`` (a ``--device`` string) means a CUDA GPU: ``cuda``/``cuda:N``, or ``auto`` on a machine
    with one. Unlike :func:`biasbench.train.loop.resolve_device` it does not check that the GPU is there (a Slurm
    sweep's device is the compute nodes')."""
    import torch

    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())


STREAMS_AUTO_CUDA = 4
"""``--streams auto`` on a CUDA device (local runner, one worker, no ``--compile``, no dropout, every trial a
:data:`STREAMS_AUTO_MODELS` model): one seed of paper-table1 took about 17 minutes in 4 threads against about
24 one trial at a time on an H100 (fourth session), and 7.6 minutes in 4 threads with the fastest model
options on an H200 (docs/benchmarks.md). The records are those of one trial after another (tested), so the
default changes the time only."""

STREAMS_AUTO_MODELS = frozenset({"paper_cnn"})
"""Models whose trials ``--streams auto`` runs in threads: the measured case. A larger network may fill the GPU
alone, and four of them hold four times the activations, so for other models auto stays 1 (a number still
sets it)."""


def resolve_streams(streams: int | str, device: str, runner: str = "local", workers: int = 1,
                    compile_model: bool | str = False, trials: list[Trial] | None = None) -> int:
    """``streams`` as a number: ``auto`` is :data:`STREAMS_AUTO_CUDA` where threads on CUDA streams can run and
    were measured to pay (a CUDA device, the local runner, one worker, no ``--compile``, no trial drawing dropout
    masks, every trial's model in :data:`STREAMS_AUTO_MODELS`), else 1 (a CPU's cores are better spent inside
    one trial's operators); a number or numeric string as it is (checked
    by :func:`run_sweep`)."""
    if streams != "auto":
        try:
            return int(streams)
        except (TypeError, ValueError):
            raise BiasbenchError(f"--streams must be a positive integer or auto, got {streams!r}") from None
    trials = trials or []
    if runner != "local" or workers > 1 or compile_model or shared_rng_users(trials) or \
            any(t.config.get("model", "paper_cnn") not in STREAMS_AUTO_MODELS for t in trials):
        return 1
    return STREAMS_AUTO_CUDA if _names_cuda(device) else 1


def resolve_fuse(fuse: int | str, device: str, compile_model: bool | str = False) -> int:
    if fuse == "auto":
        if not compile_model:
            return 1
        return FUSE_AUTO_COMPILED if _names_cuda(device) else 1
    try:
        n = int(fuse)
    except (TypeError, ValueError):
        raise BiasbenchError(f"--fuse must be a positive integer or auto, got {fuse!r}") from None
    if n < 1:
        raise BiasbenchError(f"--fuse must be a positive integer or auto, got {fuse!r}")
    return n


def summary_metric_name(row: dict) -> str:
    """``table1/METHOD/mean``, or ``table1/VARIANT/METHOD/mean`` for a sweep over datasets (a Table-1 row's
    ``variant``, with ``=`` as ``:`` and other characters trackers refuse in names as ``_``)."""
    import re

    variant = re.sub(r"[^\w\-. :/]", "_", row.get("variant", "").replace("=", ":"))
    return f"table1/{variant + '/' if variant else ''}{row['method']}/mean"


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
    t.log_metrics({summary_metric_name(r): r["mean"] for r in rows if not math.isnan(r["mean"])}, step=0)
    t.finish("FINISHED")
    atomic_write_json(out / "sweep_tracker.json", ids)
