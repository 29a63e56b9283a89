"""Sweep records and post-hoc selection, computed from run folders without retraining.

Selection rules (``--select``; :func:`parse_rule`):

- ``final`` (default, the paper's): the last evaluated epoch; when a sweep varies hyperparameters, the
  variant with the best validation accuracy (``val``, the training distribution) at that epoch;
- ``alpha=A``: the evaluated epoch, and the hyperparameter variant, with the best accuracy under tuning
  distribution alpha = A (``tuning/alpha`` in the records: val and balanced_val weighted by
  p_train(g)^A, see :func:`biasbench.eval.metrics.alpha_weighted_accuracy`);
- ``worst_group``: the evaluated epoch and variant with the best worst-group accuracy on ``val`` (the minimum,
  over factors, of the accuracy per (class, factor value) cell: SubpopBench's selection with validation
  attributes, which needs the bias labels of the validation set, of every factor); ``worst_group=balanced_val``
  the same on ``balanced_val``, the held-out draw with every factor uniform, whose cells are all about equally
  full (at p_bias 0.7, ``val``'s smallest cells hold a dozen or two images);
- ``worst_class``: the evaluated epoch and variant with the best worst-class accuracy on ``val`` (the minimum
  over the ten classes: SubpopBench's selection without attributes, which needs no bias labels);
- ``oracle``: the evaluated epoch and variant with the best unbiased test accuracy (DomainBed's test-domain
  oracle). It looks at the test set, so its numbers are an upper bound on what selection can reach, not a
  result of a fair protocol.

Ties go to the later epoch, then to the larger run id, so a choice never depends on the order of the records.

What is chosen among and what is compared: a run's settings are its dataset settings and training
configuration. The selection rule chooses among runs that differ only in :data:`TUNED` settings (method
hyperparameters, learning rate, weight decay, momentum: what the paper tunes). Runs that differ in any other
setting (:func:`compared_settings`: the dataset's but its seed, the model and its arguments, the optimizer, the
batch size, the epochs, ...) are different experiments: the report never chooses between them nor averages
them together, it gives each its own block of Table 1 rows (:func:`biasbench.report.tables.setting_variants`).
``pool`` names compared settings to treat as tuned instead, for example ``model_kwargs`` to pool runs trained
with the paper CNN's speed options with plain ones.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from ..config import DatasetSettings, TrainConfig
from ..errors import BiasbenchError
from ..utils import read_json_record

TUNED = ("method_hparams", "lr", "weight_decay", "momentum")
"""Training settings the selection rule chooses among."""
NOT_COMPARED = ("data", "eval_epochs", "channels_last")
"""Training settings that change neither the experiment nor its final numbers' meaning (where the data lives,
which epochs are evaluated besides the last, the memory layout)."""
IDENTITY = ("method", "explicit", "seed")
"""What a run is within one setting: its method, explicit set and training seed."""


def compared_settings() -> tuple[str, ...]:
    """The settings that tell experiments apart: every dataset setting but its seed (dataset draws pool like
    training seeds), then every training setting that is not identity, tuned or not compared."""
    ds = [f.name for f in fields(DatasetSettings) if f.name != "seed"]
    skip = set(TUNED) | set(NOT_COMPARED) | set(IDENTITY)
    return tuple(ds + [f.name for f in fields(TrainConfig) if f.name not in skip])


def _train_defaults() -> dict:
    return {f.name: (f.default_factory() if f.default_factory is not MISSING else f.default)
            for f in fields(TrainConfig) if f.name != "data"}


def check_pool(pool) -> tuple[str, ...]:
    """``pool`` as a tuple of compared setting names; an unknown name is an error naming the choices."""
    names = compared_settings()
    for k in pool:
        if k not in names:
            raise BiasbenchError(f"cannot pool over {k!r}: not a compared setting; expected one of: "
                                 f"{', '.join(names)}")
    return tuple(pool)


def run_settings(config: dict, dataset: dict, pool=()) -> dict:
    """A run's compared settings (:func:`compared_settings` minus ``pool``), missing ones at their defaults
    (records from before a setting existed ran with its default): dataset settings as
    :class:`DatasetSettings` reads them, training settings as JSON values."""
    try:
        ds = asdict(DatasetSettings.from_dict(dataset))
    except (BiasbenchError, TypeError):  # not a readable settings record: as written
        ds = dict(dataset)
    defaults = _train_defaults()
    values = {**ds, **{k: config.get(k, defaults.get(k)) for k in defaults}}
    out = {}
    for k in compared_settings():
        if k in pool:
            continue
        v = values.get(k)
        out[k] = json.loads(json.dumps(v, default=str))  # tuples as lists: records read back compare equal
    return out


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
    settings: dict = field(default_factory=dict)  # compared settings (:func:`run_settings`)
    runs_dir: Path | None = None  # the sweep's runs folder holding this run

    @property
    def pairing_key(self) -> tuple:
        """Runs of one setting and seed share this key (IOSM compares a method with StdM under it)."""
        return (self.seed, self.dataset.get("seed"), json.dumps(self.settings, sort_keys=True))

    @property
    def group_key(self) -> tuple:
        """Runs that differ only in tuned settings (and pooled ones) share this key."""
        return (self.method, self.explicit) + self.pairing_key


def load_sweep(sweep_dir: str | os.PathLike, pool=()) -> tuple[dict, list[RunRecord]]:
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
                                 int(cfg.get("seed", 0)), dict(cfg.get("method_hparams") or {}), t["dataset"], evals,
                                 run_settings(cfg, t["dataset"], pool), runs_dir))
    return sweep, records


def load_sweeps(sweep_dirs, pool=()) -> tuple[dict, list[RunRecord]]:
    """Several sweeps reported as one (seeds run apart, on other machines, or by other presets): their runs
    pooled, a run found in two folders (the same run id: the same configuration and dataset) counted once,
    from the folder where it has the most evaluated epochs (the first given on a tie). The returned record:
    ``name`` (the names joined by " + "), ``scale`` (theirs, or "mixed (...)"), ``trials`` (distinct trial
    ids), ``sweeps`` (the folders)."""
    pool = check_pool(pool)
    dirs = list(dict.fromkeys(str(Path(d)) for d in ([sweep_dirs] if isinstance(sweep_dirs, (str, os.PathLike))
                                                      else sweep_dirs)))
    if not dirs:
        raise BiasbenchError("no sweep folder given")
    sweeps, by_run, trial_ids = [], {}, set()
    for d in dirs:
        sweep, records = load_sweep(d, pool)
        sweeps.append(sweep)
        trial_ids |= {t.get("trial_id") for t in sweep["trials"]}
        for r in records:
            key = (r.run_id, r.trial_id)  # two trials of one run (their settings drew one recipe) count apart
            if key not in by_run or max(r.evals) > max(by_run[key].evals):
                by_run[key] = r
    names = list(dict.fromkeys(str(s.get("name")) for s in sweeps))
    scales = list(dict.fromkeys(str(s.get("scale")) for s in sweeps))
    info = {"name": " + ".join(names), "scale": scales[0] if len(scales) == 1 else f"mixed ({', '.join(scales)})",
            "trials": len(trial_ids), "sweeps": dirs}
    return info, list(by_run.values())


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


RULES = ("final", "alpha=A", "worst_group[=val|balanced_val]", "worst_class", "oracle")
"""The selection rules' spellings, for messages and ``--help``."""


@dataclass(frozen=True)
class SelectionRule:
    """A parsed selection rule: ``path`` leads from one epoch's records (split -> metrics) to the score that
    ranks (run, epoch) pairs; ``last_epoch`` keeps each run's last evaluated epoch and ranks only variants."""
    name: str
    path: tuple[str, ...]
    last_epoch: bool = False
    note: str = ""  # how the report states the rule

    def score(self, evals: dict, epoch: int) -> float:
        """The rule's score of ``epoch`` in a run's ``evals``; -inf where the record lacks it (older records,
        a split not evaluated), so such an epoch is chosen only when nothing else is there."""
        v = evals[epoch]
        for k in self.path:
            if not isinstance(v, dict) or k not in v:
                return float("-inf")
            v = v[k]
        try:
            v = float(v)
        except (TypeError, ValueError):
            return float("-inf")
        return v if v == v else float("-inf")  # NaN (a cell-less split) ranks last


def parse_rule(rule: str) -> SelectionRule:
    """``final``, ``alpha=A``, ``worst_group[=SPLIT]``, ``worst_class`` or ``oracle`` (module docstring) as a
    :class:`SelectionRule`."""
    fixed = {"final": SelectionRule("final", ("val", "accuracy"), last_epoch=True,
                                    note="the last evaluated epoch; hyperparameters by validation accuracy there "
                                         "(the paper's)"),
             "worst_group": SelectionRule("worst_group", ("val", "worst_group"),
                                          note="epoch and hyperparameters by worst-group validation accuracy (uses "
                                               "the validation set's bias labels)"),
             "worst_class": SelectionRule("worst_class", ("val", "worst_class"),
                                          note="epoch and hyperparameters by worst-class validation accuracy (no "
                                               "bias labels needed)"),
             "oracle": SelectionRule("oracle", ("test", "accuracy"),
                                     note="epoch and hyperparameters by unbiased test accuracy: an oracle that looks "
                                          "at the test set, an upper bound rather than a fair result")}
    if rule in fixed:
        return fixed[rule]
    if rule == "worst_group=val":
        return fixed["worst_group"]
    if rule == "worst_group=balanced_val":
        return SelectionRule(rule, ("balanced_val", "worst_group"),
                             note="epoch and hyperparameters by worst-group accuracy on balanced_val (uses the "
                                  "bias labels of the held-out draw with every factor uniform)")
    if rule.startswith("alpha="):
        try:
            a = float(rule.split("=", 1)[1])
        except ValueError:
            a = None
        if a is not None and math.isfinite(a):
            return SelectionRule(rule, ("tuning", "alpha", str(a)),
                                 note=f"epoch and hyperparameters by accuracy under tuning distribution alpha = {a:g}")
    raise BiasbenchError(f"unknown selection rule {rule!r}; expected one of: {', '.join(RULES)} "
                         f"(e.g. alpha=0, worst_group=balanced_val)")


def select_epoch(run: RunRecord, rule: SelectionRule) -> int:
    """The epoch of ``run`` that ``rule`` chooses: the last, or the best-scoring (the later one on a tie)."""
    epochs = sorted(run.evals)
    if rule.last_epoch:
        return epochs[-1]
    return max(epochs, key=lambda e: (rule.score(run.evals, e), e))


def select(records: list[RunRecord], rule: str = "final") -> list[tuple[RunRecord, int]]:
    """One (run, epoch) per group of hyperparameter variants (:attr:`RunRecord.group_key`), chosen by ``rule``."""
    rule_ = parse_rule(rule)
    groups: dict = {}
    for r in records:
        groups.setdefault(r.group_key, []).append(r)
    chosen = []
    for runs in groups.values():
        best = max(((r, select_epoch(r, rule_)) for r in runs),
                   key=lambda re: (rule_.score(re[0].evals, re[1]), re[1], re[0].run_id))
        chosen.append(best)
    return chosen
