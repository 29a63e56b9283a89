"""Sweep records and post-hoc selection, computed from run folders without retraining.

Selection rules (``--select``):

- ``final`` (default, the paper's): the last evaluated epoch; when a sweep varies hyperparameters, the
  variant with the best validation accuracy (``val``, the training distribution) at that epoch;
- ``alpha=A``: the evaluated epoch, and the hyperparameter variant, with the best accuracy under tuning
  distribution alpha = A (``tuning/alpha`` in the records: val and balanced_val weighted by
  p_train(g)^A, see :func:`biasbench.eval.metrics.alpha_weighted_accuracy`).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BiasbenchError
from ..utils import read_json_record


@dataclass
class RunRecord:
    run_id: str
    trial_id: str
    method: str
    explicit: tuple
    seed: int
    hparams: dict
    dataset: dict
    evals: dict = field(default_factory=dict)  # epoch -> {split: metrics}

    @property
    def group_key(self) -> tuple:
        """Runs that differ only in hyperparameters share this key."""
        return (self.method, self.explicit, self.seed, json.dumps(self.dataset, sort_keys=True))

    @property
    def setting_key(self) -> tuple:
        """Runs that differ only in seed (and hyperparameters) share this key."""
        return (self.method, self.explicit, json.dumps(self.dataset, sort_keys=True))


def load_sweep(sweep_dir: str | os.PathLike) -> tuple[dict, list[RunRecord]]:
    """The sweep record and every run of it that has evaluation records (partial sweeps included)."""
    sweep_dir = Path(sweep_dir)
    path = sweep_dir / "sweep.json"
    if not path.is_file():
        raise BiasbenchError(f"{sweep_dir} holds no sweep (no sweep.json); run 'biasbench sweep' first")
    sweep = read_json_record(path, key="trials")
    trials = sweep["trials"]
    runs_dir = sweep_dir / "runs"
    records = []
    for t in trials:
        run_id = t.get("run_id") or find_run(runs_dir, t)
        if not run_id:
            continue
        mpath = runs_dir / run_id / "metrics.json"
        if not mpath.is_file():
            continue
        hist = read_json_record(mpath).get("history", [])
        evals: dict = {}
        for h in hist:
            if "metrics" in h:
                evals.setdefault(int(h["epoch"]), {})[h["split"]] = h["metrics"]
        if not evals:
            continue
        cfg = t["config"]
        records.append(RunRecord(run_id, t["trial_id"], cfg["method"], tuple(cfg.get("explicit") or ()),
                                 int(cfg.get("seed", 0)), dict(cfg.get("method_hparams") or {}), t["dataset"], evals))
    return sweep, records


def find_run(runs_dir: Path, trial: dict) -> str | None:
    """Run id of a trial whose sweep record was written before it finished (interrupted sweeps)."""
    if not runs_dir.is_dir():
        return None
    want = {k: v for k, v in trial["config"].items()}
    for cfg_path in runs_dir.glob("*/config.json"):
        try:
            rec = json.loads(cfg_path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        cfg = {k: v for k, v in rec.get("config", {}).items() if k != "data"}
        if cfg == want and rec.get("dataset", {}).get("settings") == trial["dataset"]:
            return rec.get("run_id")
    return None


def parse_rule(rule: str) -> float | None:
    """``final`` -> None; ``alpha=A`` -> A."""
    if rule == "final":
        return None
    if rule.startswith("alpha="):
        try:
            return float(rule.split("=", 1)[1])
        except ValueError:
            pass
    raise BiasbenchError(f"unknown selection rule {rule!r}; expected final or alpha=A (e.g. alpha=0)")


def _score(evals: dict, epoch: int, alpha: float | None) -> float:
    e = evals[epoch]
    if alpha is None:
        return e.get("val", {}).get("accuracy", float("-inf"))
    return e.get("tuning", {}).get("alpha", {}).get(str(float(alpha)), float("-inf"))


def select_epoch(run: RunRecord, alpha: float | None) -> int:
    epochs = sorted(run.evals)
    if alpha is None:
        return epochs[-1]
    return max(epochs, key=lambda e: (_score(run.evals, e, alpha), e))


def select(records: list[RunRecord], rule: str = "final") -> list[tuple[RunRecord, int]]:
    """One (run, epoch) per group of hyperparameter variants, chosen by the rule."""
    alpha = parse_rule(rule)
    groups: dict = {}
    for r in records:
        groups.setdefault(r.group_key, []).append(r)
    chosen = []
    for runs in groups.values():
        best = max(((r, select_epoch(r, alpha)) for r in runs),
                   key=lambda re: (_score(re[0].evals, re[1], alpha), re[0].run_id))
        chosen.append(best)
    return chosen
