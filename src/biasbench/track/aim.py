"""Aim backend: an Aim repository in ``RUNS/.aim`` (experiment ``biasbench``).

Params go to ``run["hparams"]`` (nested), tags to ``run["tags"]`` and ``run.add_tag``; metrics are
buffered and tracked at ``flush`` with the split as context (``test/accuracy`` -> name ``accuracy``,
context ``{"subset": "test"}``); PNG artifacts are tracked as ``aim.Image``, text artifacts as
``aim.Text``. System-resource tracking is off. Needs ``aim`` (``biasbench[aim]``, Python < 3.13).
Aim indexes runs lazily (its UI does it in the background); :func:`read_run` indexes and reads one back.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from .base import Tracker, check_writable, missing_extra

EXPERIMENT = "biasbench"


def _split(tag: str) -> tuple[str, dict]:
    """``test/texture/mmd`` -> (``texture/mmd``, {"subset": "test"}); tags without a split keep no context."""
    head, _, rest = tag.partition("/")
    return (rest, {"subset": head}) if rest else (tag, {})


class AimTracker(Tracker):
    name = "aim"

    def __init__(self, out_dir: str):
        try:
            import aim  # noqa: F401
        except ImportError as exc:
            raise missing_extra("aim", exc) from None
        self.repo_path = str(Path(out_dir).resolve())
        check_writable(self.repo_path)
        self.run = None
        self._buffer: list[tuple[str, float, int]] = []

    def prepare(self) -> None:
        import aim

        aim.Repo.from_path(self.repo_path, init=True)

    def start(self, run_name: str, resume_ids=None) -> dict[str, str]:
        import aim

        run_hash = (resume_ids or {}).get(self.name)
        kwargs = dict(repo=self.repo_path, experiment=EXPERIMENT, system_tracking_interval=None,
                      log_system_params=False, capture_terminal_logs=False)
        self.run = aim.Run(run_hash=run_hash, **kwargs) if run_hash else aim.Run(**kwargs)
        self.run.name = run_name
        return {self.name: self.run.hash}

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.run["hparams"] = {k: (v if isinstance(v, (int, float, str, bool)) or v is None else str(v))
                               for k, v in params.items()}

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self._buffer.extend((k, float(v), int(step)) for k, v in metrics.items() if v == v)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.run["tags"] = {k: str(v) for k, v in tags.items()}
        for k, v in tags.items():
            self.run.add_tag(f"{k}={v}")

    def log_artifact(self, path: str) -> None:
        import aim

        p = Path(path)
        if p.suffix.lower() == ".png":
            from PIL import Image

            with Image.open(p) as im:
                self.run.track(aim.Image(im.convert("RGB")), name=f"figures/{p.stem}")
        else:
            self.run.track(aim.Text(p.read_text()[:100_000]), name=f"artifacts/{p.name}")

    def flush(self) -> None:
        for tag, value, step in self._buffer:
            name, context = _split(tag)
            self.run.track(value, name=name, step=step, context=context)
        self._buffer = []

    def finish(self, status: str = "FINISHED") -> None:
        if self.run is None:
            return
        self.flush()
        self.run["status"] = status
        self.run.close()
        self.run = None


def read_run(repo_path: str, run_hash: str):
    """Index run ``run_hash`` of the Aim repository at ``repo_path`` and return it (read-only)."""
    import aim
    from aim.sdk.index_manager import RepoIndexManager

    repo = aim.Repo.from_path(repo_path)
    RepoIndexManager.get_index_manager(repo).index(run_hash)
    return aim.Repo.from_path(repo_path).get_run(run_hash)
