"""TensorBoard backend: event files in ``RUNS/tensorboard/<run name>`` (one folder per run).

Scalars are buffered and written at ``flush`` (once per epoch); params go in as a JSON text summary
(``params``) and as an HParams-plugin session, tags as a text summary (``tags``); PNG artifacts become
images, JSON/text artifacts text summaries. Needs the ``tensorboard`` package (``biasbench[tensorboard]``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from .base import Tracker, check_writable, missing_extra


class TensorboardTracker(Tracker):
    name = "tensorboard"

    def __init__(self, out_dir: str):
        try:
            import tensorboard  # noqa: F401
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise missing_extra("tensorboard", exc) from None
        self._writer_cls = SummaryWriter
        self.root = Path(out_dir).resolve() / "tensorboard"
        check_writable(self.root)
        self.writer = None
        self._buffer: list[tuple[str, float, int]] = []
        self._params: dict[str, Any] = {}

    def start(self, run_name: str, resume_ids=None) -> dict[str, str]:
        name = (resume_ids or {}).get(self.name) or run_name
        self.writer = self._writer_cls(log_dir=str(self.root / name))
        return {self.name: name}

    def log_params(self, params: Mapping[str, Any]) -> None:
        from torch.utils.tensorboard.summary import hparams

        self._params = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in params.items()}
        self.writer.add_text("params", json.dumps(self._params, sort_keys=True))
        exp, ssi, _ = hparams(self._params, {})
        self.writer.file_writer.add_summary(exp)
        self.writer.file_writer.add_summary(ssi)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self._buffer.extend((k, float(v), int(step)) for k, v in metrics.items() if v == v)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.writer.add_text("tags", json.dumps({k: str(v) for k, v in tags.items()}, sort_keys=True))

    def log_artifact(self, path: str) -> None:
        p = Path(path)
        if p.suffix.lower() == ".png":
            import numpy as np
            from PIL import Image

            with Image.open(p) as im:
                self.writer.add_image(f"figures/{p.stem}", np.asarray(im.convert("RGB")), dataformats="HWC")
        else:
            self.writer.add_text(f"artifacts/{p.name}", p.read_text()[:100_000])

    def flush(self) -> None:
        for tag, value, step in self._buffer:
            self.writer.add_scalar(tag, value, step)
        self._buffer = []
        self.writer.flush()

    def finish(self, status: str = "FINISHED") -> None:
        if self.writer is None:
            return
        from torch.utils.tensorboard.summary import hparams

        self.flush()
        if self._params:
            _, _, sei = hparams(self._params, {})
            self.writer.file_writer.add_summary(sei)
        self.writer.add_text("status", status)
        self.writer.close()
        self.writer = None
