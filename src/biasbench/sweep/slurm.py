"""Sweeps on a Slurm cluster through submitit (``biasbench sweep --runner slurm``; extra ``biasbench[slurm]``).

Each unit of work (a trial, or a fused group of trials: :func:`biasbench.sweep.trial.plan_units`) is one job of
one Slurm job array, at most ``--workers`` running at a time (``slurm_array_parallelism``). A job calls the same
:func:`biasbench.sweep.trial.run_unit` as the local and Ray runners, so it writes the same records into
``SWEEP/runs/``; this process waits for the jobs and collects their results into ``SWEEP/sweep.json``.

Contracts:

- **Shared folders.** ``--out`` and ``--data`` must be on a filesystem the compute nodes share (not ``/tmp``);
  the jobs run with this process's Python, which must be installed there too. submitit's own files (the
  pickled calls, each job's stdout and stderr, named by job id) go to ``SWEEP/slurm/``.
- **Preemption and time limits.** A job that is preempted or reaches ``--slurm-timeout`` is requeued by
  submitit (:class:`UnitJob` is checkpointable: the same call again, at most 3 times) and resumes where the
  runs' per-epoch checkpoints left it: finished trials of the unit are skipped, the interrupted one continues
  from its last epoch, as an interrupted local sweep does.
- **Whole GPUs.** Slurm allocates GPUs whole: ``--gpus-per-trial`` rounds up (0.25 asks one GPU per job).
- **Failures.** A failed job does not stop the others; once all have ended, the sweep raises one error naming
  the failed units and their logs. Ctrl-C in this process cancels the jobs not yet finished (rerunning the
  sweep then skips the finished trials and resumes the others).
- ``--slurm-cluster local`` runs the same jobs as subprocesses of this machine, ``--workers`` at a time: a check
  of the set-up without a cluster (the tests use it).
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import submitit

from ..errors import BiasbenchError

CLUSTERS = ("slurm", "local")
"""``--slurm-cluster``: a Slurm cluster (``sbatch``/``srun`` must be there), or this machine's subprocesses."""
DEFAULT_TIMEOUT_MIN = 240
"""``--slurm-timeout``: a job's time limit in minutes; a full-scale unit takes minutes on a GPU, hours on a CPU,
and a job that reaches the limit is requeued and resumes, so the limit bounds one stay in the queue, not a trial."""


class UnitJob(submitit.helpers.Checkpointable):
    """One unit of work as a submitit job. On preemption or timeout submitit calls the inherited ``checkpoint``,
    which resubmits the same call: :func:`run_unit` skips the unit's finished trials and resumes the interrupted
    one from its checkpoint."""

    def __call__(self, unit: list[dict], data_root: str, out: str, tracker: str, device: str,
                 compile_model: bool | str, cuda_graphs: bool | str) -> list[dict]:
        from .trial import run_unit

        return run_unit(unit, data_root, out, tracker, device, compile_model, cuda_graphs)


def parse_params(items) -> dict:
    """``--slurm-param KEY=VALUE`` items as submitit's ``slurm_KEY`` parameters (``account=lab``,
    ``constraint=a100``, ``cpus_per_task=8``, ``mem_gb=32``); numbers become numbers. A bad item is an error."""
    out = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise BiasbenchError(f"bad --slurm-param {item!r}; expected KEY=VALUE, e.g. partition=gpu")
        for cast in (int, float):
            try:
                value = cast(value)
                break
            except ValueError:
                continue
        out["slurm_" + key.strip()] = value
    return out


def make_executor(out: str, cluster: str, workers: int, gpus_per_trial: float,
                  timeout_min: int = DEFAULT_TIMEOUT_MIN, params=()) -> submitit.AutoExecutor:
    """The submitit executor of a sweep: jobs named ``biasbench``, ``timeout_min``, whole GPUs, the array's
    parallelism, and ``params`` (:func:`parse_params`). No cluster, a bad parameter: one clear error."""
    if cluster not in CLUSTERS:
        raise BiasbenchError(f"unknown --slurm-cluster {cluster!r}; expected one of: {', '.join(CLUSTERS)}")
    if timeout_min < 1:
        raise BiasbenchError(f"--slurm-timeout must be at least 1 minute, got {timeout_min}")
    extra = parse_params(params)
    try:
        executor = submitit.AutoExecutor(folder=Path(out).resolve() / "slurm", cluster=cluster)
    except RuntimeError as exc:  # no srun on this machine
        raise BiasbenchError(f"no Slurm cluster here ({exc}); use --runner local, or --slurm-cluster local to try "
                             f"the jobs on this machine") from None
    generic = {"name": "biasbench", "timeout_min": int(timeout_min), "slurm_array_parallelism": workers}
    if gpus_per_trial > 0:
        generic["gpus_per_node"] = math.ceil(gpus_per_trial)
    try:
        executor.update_parameters(**generic, **extra)
    except (NameError, ValueError, TypeError) as exc:
        raise BiasbenchError(f"bad Slurm parameter: {str(exc).splitlines()[0]}") from None
    return executor


def check_options(workers: int, gpus_per_trial: float, cluster: str = "slurm",
                  timeout_min: int = DEFAULT_TIMEOUT_MIN, params=()) -> None:
    """Fail early, writing nothing under the sweep folder: the cluster is there and submitit takes the
    parameters (an executor made in a temporary folder and dropped)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        make_executor(tmp, cluster, workers, gpus_per_trial, timeout_min, params)


def run_slurm(units: list[list[dict]], data_root: str, out: str, tracker: str, device: str, workers: int,
              gpus_per_trial: float, log: Callable[[str], None], on_finished: Callable[[list[dict]], None],
              compile_model: bool | str = False, cuda_graphs: bool | str = False, cluster: str = "slurm",
              timeout_min: int = DEFAULT_TIMEOUT_MIN, params=(), poll_s: float | None = None) -> list[dict]:
    """Run ``units`` (trial dicts) as submitit jobs and return their results in completion order, calling
    ``on_finished`` with each unit's results as it ends. Slurm: one job array; ``local``: at most ``workers``
    subprocesses at a time."""
    data_root, out = str(Path(data_root).resolve()), str(Path(out).resolve())
    executor = make_executor(out, cluster, workers, gpus_per_trial, timeout_min, params)
    args = (data_root, out, tracker, device, compile_model, cuda_graphs)
    poll_s = poll_s if poll_s is not None else (30.0 if cluster == "slurm" else 0.5)
    job_fn = UnitJob()

    def submit(batch: list[list[dict]]) -> list:
        try:
            return executor.map_array(job_fn, batch, *[[a] * len(batch) for a in args])
        except Exception as exc:  # sbatch refused (partition, account, limits): say so in one line
            raise BiasbenchError(f"submitting to {cluster} failed: {str(exc).strip().splitlines()[-1]}") from None

    pending = list(units)
    running: list[tuple[object, list[dict]]] = []
    if cluster == "slurm":
        running = list(zip(submit(pending), pending))
        pending = []
        log(f"submitted job array {str(running[0][0].job_id).split('_')[0]}: {len(running)} jobs, at most "
            f"{workers} at a time; logs in {out}/slurm/")
    results, failed = [], []
    try:
        while pending or running:
            free = workers - len(running)
            if pending and free > 0:  # local subprocesses: keep ``workers`` of them busy
                batch, pending = pending[:free], pending[free:]
                running += list(zip(submit(batch), batch))
            ended = [(job, unit) for job, unit in running if job.done()]
            for job, unit in ended:
                running.remove((job, unit))
                try:
                    rs = job.result()
                except (submitit.core.utils.UncompletedJobError, submitit.core.utils.FailedJobError) as exc:
                    failed.append((job, unit, str(exc).strip().splitlines()[-1] if str(exc).strip() else "failed"))
                    log(f"job {job.job_id} (trial {unit[0]['trial_id']}{' ...' if len(unit) > 1 else ''}) failed; "
                        f"its log: {job.paths.stderr}")
                    continue
                results += rs
                on_finished(rs)
            if not ended:
                time.sleep(poll_s)
    except KeyboardInterrupt:
        for job, _ in running:
            job.cancel(check=False)
        log(f"cancelled {len(running)} unfinished jobs; run the sweep again to resume")
        raise
    if failed:
        first = failed[0]
        raise BiasbenchError(f"{len(failed)} of {len(units)} Slurm jobs failed (first: job {first[0].job_id}, "
                             f"trial {first[1][0]['trial_id']}: {first[2]}; log {first[0].paths.stderr})")
    return results
