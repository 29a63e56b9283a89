"""One trainer per run folder at a time, across threads, processes and machines that share the folder.

Two processes that train the same run at once (the same sweep started twice, two sweeps over one folder with
trials in common, a requeued Slurm job beside the job it replaces, two trials of one sweep that draw the same
recipe on two workers) would each write the run's checkpoint and records from their own state, and each would
resume from whatever the other last wrote. :func:`hold_runs` makes the later one wait instead: it takes an
exclusive ``flock`` on ``RUN/.train.lock`` and, once the holder is done, finds the run finished and skips it (or
resumes it, when the holder was stopped).

The lock belongs to an open file, so the kernel drops it when its holder exits, however it exits: there are no
stale locks to clean up. Several runs are locked in the order of their folder names, so two units that share
runs (fused groups) cannot wait on each other in a circle. A thread of the same process waits like another
process does (each call opens its own file). On network filesystems the lock is as good as the filesystem's
``flock`` (NFSv4, and Lustre or GPFS mounted with locking, support it). Without ``fcntl`` (not POSIX) nothing is
locked.
"""
from __future__ import annotations

import errno
import os
import socket
import sys
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None

LOCK_NAME = ".train.lock"
"""The lock file in each run folder; it holds its last holder's pid, host and start time."""


@contextmanager
def hold_run(run_dir: str | os.PathLike, log: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the exclusive training lock of ``run_dir`` (created if missing) for the ``with`` block, waiting
    for another holder first; ``log`` (default: standard error, which ``train --json`` keeps apart from its
    output) is told once, naming the holder, when it waits."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        fd = None  # a folder no one can write to: nothing to guard (a finished run's summary still reads)
    if fd is None:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            (log or _stderr)(f"run {run_dir.name} is being trained by {holder}: waiting for it")
            fcntl.flock(fd, fcntl.LOCK_EX)  # Ctrl-C still interrupts the wait
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
                      .encode(), 0)
        yield
    finally:
        os.close(fd)  # drops the lock


@contextmanager
def hold_runs(run_dirs: Iterable[str | os.PathLike], log: Callable[[str], None] | None = None) -> Iterator[None]:
    """:func:`hold_run` for several run folders, taken in the order of their paths (no circular waits)."""
    with ExitStack() as stack:
        for d in sorted({str(Path(d)) for d in run_dirs}):
            stack.enter_context(hold_run(d, log))
        yield


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
