"""The ``Tracker`` interface: what a training run reports to experiment trackers.

Contract: ``start(run_name, resume_ids) -> ids`` opens (or, with ``resume_ids`` = {backend: id} from an
earlier start, reopens) the tracker runs and returns {backend: id}, which the run folder stores in
``tracker.json``; ``log_params`` takes a flat dict; ``log_metrics(dict, step)`` only buffers, ``flush``
sends the buffer in one batch per backend (the trainer flushes once per epoch); ``set_tags``;
``log_artifact(path)`` (JSON/text files and PNG figures); ``finish(status)`` flushes and closes.
A tracker never changes training.

Backends: ``mlflow`` (default; SQLite store ``RUNS/mlflow.db``), ``tensorboard`` (event files in
``RUNS/tensorboard/<run>``), ``aim`` (an Aim repository in ``RUNS/.aim``), ``none``; any combination as a
comma-separated list (``mlflow,tensorboard``), fanned out by :class:`MultiTracker`.
"""
from __future__ import annotations

from typing import Any, Mapping

from ..errors import BiasbenchError

BACKENDS = ("mlflow", "tensorboard", "aim", "none")
EXTRAS = {"mlflow": "biasbench (mlflow-skinny, sqlalchemy, alembic)", "tensorboard": "biasbench[tensorboard]",
          "aim": "biasbench[aim] (Python < 3.13)"}


class Tracker:
    """No-op tracker (``--tracker none``) and the base class of real backends."""

    name = "none"

    def prepare(self) -> None:
        """Create the store now (one process), so that parallel trials only open it."""

    def start(self, run_name: str, resume_ids: Mapping[str, str] | None = None) -> dict[str, str]:
        return {}

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def set_tags(self, tags: Mapping[str, str]) -> None:
        pass

    def log_artifact(self, path: str) -> None:
        pass

    def flush(self) -> None:
        pass

    def finish(self, status: str = "FINISHED") -> None:
        pass


class MultiTracker(Tracker):
    """Fans every call out to several backends."""

    name = "multi"

    def __init__(self, trackers: list[Tracker]):
        self.trackers = trackers

    def prepare(self):
        for t in self.trackers:
            t.prepare()

    def start(self, run_name, resume_ids=None):
        ids: dict[str, str] = {}
        for t in self.trackers:
            ids.update(t.start(run_name, resume_ids))
        return ids

    def log_params(self, params):
        for t in self.trackers:
            t.log_params(params)

    def log_metrics(self, metrics, step):
        for t in self.trackers:
            t.log_metrics(metrics, step)

    def set_tags(self, tags):
        for t in self.trackers:
            t.set_tags(tags)

    def log_artifact(self, path):
        for t in self.trackers:
            t.log_artifact(path)

    def flush(self):
        for t in self.trackers:
            t.flush()

    def finish(self, status="FINISHED"):
        for t in self.trackers:
            t.finish(status)


def flatten(d: Mapping[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """Nested dict -> flat dict with dotted keys (lists become strings)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{sep}{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(flatten(v, key, sep))
        else:
            out[key] = v
    return out


def parse_tracker_names(spec: str) -> list[str]:
    """``"mlflow,tensorboard"`` -> ["mlflow", "tensorboard"]; unknown names are an error."""
    names = [n.strip() for n in str(spec).split(",") if n.strip()]
    if not names:
        raise BiasbenchError(f"no tracker given; expected one or more of: {', '.join(BACKENDS)}")
    bad = [n for n in names if n not in BACKENDS]
    if bad:
        raise BiasbenchError(f"unknown tracker {bad[0]!r}; expected one or more of: {', '.join(BACKENDS)} "
                             f"(comma-separated)")
    if "none" in names and len(names) > 1:
        raise BiasbenchError("tracker 'none' cannot be combined with other trackers")
    return list(dict.fromkeys(names))


def check_writable(folder) -> None:
    """Create ``folder`` if needed and check that files can be written in it (clear error otherwise)."""
    from pathlib import Path

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".biasbench-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise BiasbenchError(f"cannot write the tracking store in {folder}: {exc.strerror or exc}") from None


def make_tracker(spec: str, out_dir: str) -> Tracker:
    """Build the tracker(s) named in ``spec`` for a runs folder ``out_dir``; checks that each backend is
    installed and its store writable before anything is trained."""
    names = parse_tracker_names(spec)
    if names == ["none"]:
        return Tracker()
    check_writable(out_dir)
    trackers: list[Tracker] = []
    for name in names:
        if name == "mlflow":
            from .mlflow import MlflowTracker as cls
        elif name == "tensorboard":
            from .tensorboard import TensorboardTracker as cls
        else:
            from .aim import AimTracker as cls
        trackers.append(cls(out_dir))
    return trackers[0] if len(trackers) == 1 else MultiTracker(trackers)


def missing_extra(name: str, exc: Exception) -> BiasbenchError:
    return BiasbenchError(f"the {name} tracker is not installed ({exc}); install it with: "
                          f"pip install '{EXTRAS[name].split(' ')[0]}'")


def log_to_run_trackers(run_dir, name: str, metrics: dict[str, float], step: int, artifacts=()) -> bool:
    """Add ``metrics`` (at ``step``) and ``artifacts`` (file paths) to a finished run's own tracker records, in
    every backend the run used (its ``tracker.json``), as a later session ``name`` of the same tracker run: how
    an audit or an evaluation joins the run it examined in the tracker's UI. False when the run has no records
    in any tracker."""
    import json
    from pathlib import Path

    run_dir = Path(run_dir)
    try:
        ids = json.loads((run_dir / "tracker.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    names = [n for n in ids if n in BACKENDS and n != "none"] if isinstance(ids, dict) else []
    if not names:
        return False
    tracker = make_tracker(",".join(names), str(run_dir.parent))
    tracker.start(name, resume_ids=ids)
    tracker.log_metrics(metrics, step=step)
    for path in artifacts:
        tracker.log_artifact(str(path))
    tracker.finish("FINISHED")
    return True

