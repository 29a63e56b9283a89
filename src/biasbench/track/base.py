"""The ``Tracker`` interface: what a training run reports to an experiment tracker.

Contract: ``start(run_name, resume_id=None) -> id`` opens (or reopens, for a resumed run) a tracker run
and returns an id that the run folder stores; ``log_params`` takes a flat dict; ``log_metrics(dict,
step)`` is buffered (nothing is sent per call) and ``flush`` sends the buffer in one batch; ``set_tags``,
``log_artifact(path)``; ``finish(status)`` flushes and closes. A tracker never changes training.
"""
from __future__ import annotations

from typing import Any, Mapping

from ..errors import BiasbenchError

TRACKERS = ("mlflow", "none")


class Tracker:
    """No-op tracker (``--tracker none``) and the base class of real backends."""

    name = "none"

    def start(self, run_name: str, resume_id: str | None = None) -> str | None:
        return None

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


def make_tracker(name: str, out_dir: str) -> Tracker:
    """Build a tracker by name; ``mlflow`` stores runs in ``<out_dir>/mlflow.db`` (SQLite)."""
    if name == "none":
        return Tracker()
    if name == "mlflow":
        from .mlflow import MlflowTracker

        return MlflowTracker(out_dir)
    raise BiasbenchError(f"unknown tracker {name!r}; expected one of: {', '.join(TRACKERS)}")
