"""MLflow backend: SQLite store at ``<out>/mlflow.db``, artifacts in ``<out>/mlartifacts``.

Metrics are buffered and sent with one ``log_batch`` call per flush (one per epoch), since single
``log_metric`` calls cost about 9 ms each on a 2-core machine. Only ``mlflow-skinny`` + SQLAlchemy +
alembic are needed; the web UI (``mlflow ui``) needs the full ``mlflow`` package (extra ``[ui]``).
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Mapping

from .base import Tracker, check_writable, missing_extra

EXPERIMENT = "biasbench"
_MAX_BATCH = 1000  # MLflow's log_batch limit on metrics per call


class MlflowTracker(Tracker):
    name = "mlflow"

    def __init__(self, out_dir: str):
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # no schema-migration chatter on a new store
        import logging

        logging.getLogger("alembic").setLevel(logging.WARNING)
        try:
            import mlflow  # noqa: F401
            import sqlalchemy  # noqa: F401
            from mlflow.tracking import MlflowClient
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise missing_extra("mlflow", exc) from None
        out = Path(out_dir).resolve()
        check_writable(out)
        self.tracking_uri = f"sqlite:///{out / 'mlflow.db'}"
        self.artifact_root = (out / "mlartifacts").as_uri()
        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        self.run_id: str | None = None
        self._buffer: list = []

    def prepare(self) -> None:
        self._experiment_id()  # creates the SQLite schema (alembic migrations) and the experiment

    def _experiment_id(self) -> str:
        exp = self.client.get_experiment_by_name(EXPERIMENT)
        if exp is not None:
            return exp.experiment_id
        return self.client.create_experiment(EXPERIMENT, artifact_location=self.artifact_root)

    def start(self, run_name: str, resume_ids=None) -> dict[str, str]:
        resume_id = (resume_ids or {}).get(self.name)
        if resume_id:
            try:
                self.client.get_run(resume_id)
                self.run_id = resume_id
                self.client.update_run(resume_id, status="RUNNING")
                return {self.name: resume_id}
            except Exception:
                pass  # the store was deleted or moved: start a new tracker run
        run = self.client.create_run(self._experiment_id(), run_name=run_name)
        self.run_id = run.info.run_id
        return {self.name: self.run_id}

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        existing = self.client.get_run(self.run_id).data.params
        items = [p for p in items if p.key not in existing]  # params are write-once in MLflow
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self._buffer.extend(Metric(k, float(v), ts, int(step)) for k, v in metrics.items() if v == v)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: str) -> None:
        self.client.log_artifact(self.run_id, path)

    def flush(self) -> None:
        while self._buffer:
            batch, self._buffer = self._buffer[:_MAX_BATCH], self._buffer[_MAX_BATCH:]
            self.client.log_batch(self.run_id, metrics=batch)

    def finish(self, status: str = "FINISHED") -> None:
        if self.run_id is None:
            return
        self.flush()
        self.client.set_terminated(self.run_id, status=status)
