"""Sweep specifications: a grid over methods, explicit bias sets, seeds, hyperparameters and dataset
settings, expanded into trials with stable ids.

A sweep file (YAML)::

    name: my-sweep
    scale: tiny            # optional default scale: tiny | small | full (see SCALES)
    base:                  # TrainConfig fields shared by every trial
      epochs: 30
    dataset:               # DatasetSettings shared by every trial (on top of the scale's)
      p_bias: 0.7
    grid:                  # axes; the trials are their cross product
      method: [stdm, upweight]
      seed: [0, 1]
      explicit: [[distractor_shape], [texture]]
      hparams.step_size: [0.01, 0.001]     # method hyperparameters: hparams.NAME
      dataset.p_bias: [0.5, 0.7]           # dataset settings: dataset.NAME
    include:               # optional extra trials (same keys as one grid point; --seeds runs each per seed)
      - {method: lff, seed: 0}
    tracker: mlflow        # optional: tracker(s) for every trial (the CLI's --tracker wins)

Random search (DomainBed's): an axis may give a distribution instead of a list, and ``search`` says how many
samples to draw::

    search: {samples: 8, seed: 0}
    grid:
      method: [group_dro]
      seed: [0, 1, 2]
      hparams.step_size: {log_uniform: [1.0e-4, 1.0e-1]}
      lr: {choice: [1.0e-3, 1.0e-4]}

Every point of the list axes is crossed with the ``samples`` draws. Draw i of an axis depends only on the
search seed, i and the axis name (:func:`draw`), so sample i is one hyperparameter setting shared by every
seed, method and explicit set of the grid (the report chooses among samples per seed, as among grid values).
Distributions: ``uniform: [lo, hi]``, ``log_uniform: [lo, hi]`` (lo > 0), ``int_uniform: [lo, hi]`` (both
ends included) and ``choice: [a, b, ...]``; floats are kept to 4 significant digits.

A trial is (dataset settings, train configuration). Methods without bias labels drop their explicit set
(:class:`TrainConfig` normalises it), so such duplicates collapse into one trial. ``trial_id`` is a stable
hash of the trial; the run folder is keyed by the run id of its configuration and dataset.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..config import DatasetSettings, TrainConfig
from ..data.factors import FACTORS
from ..errors import BiasbenchError
from ..utils import stable_hash

SCALES: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": {"dataset": {"cell_size": 8, "n_train": 1000, "n_val": 200, "n_test": 300},
             "train": {"epochs": 2, "eval_epochs": [1, 2]}},
    "small": {"dataset": {"cell_size": 16, "n_train": 10_000, "n_val": 2000, "n_test": 2000},
              "train": {"epochs": 10, "eval_epochs": [5, 10]}},
    "full": {"dataset": {"cell_size": 32, "n_train": 50_000, "n_val": 10_000, "n_test": 10_000},
             "train": {"epochs": 30, "eval_epochs": [15, 30]}},
}
"""``--scale``: the same preset in seconds on a CPU (tiny), minutes (small), or at the paper's size (full)."""

TRAIN_KEYS = {"method", "model", "model_kwargs", "optimizer", "lr", "weight_decay", "momentum", "batch_size",
              "epochs", "eval_epochs", "seed", "precision", "channels_last", "explicit", "grouping", "progressive"}
DATASET_KEYS = {f.name for f in fields(DatasetSettings)}
TOP_KEYS = {"name", "scale", "base", "dataset", "grid", "include", "description", "tracker", "search"}
DISTRIBUTIONS = ("uniform", "log_uniform", "int_uniform", "choice")
"""Random-search distributions of an axis (module docstring)."""

PAPER_ORDER = ("distractor_shape", "texture", "digit_color", "background_color", "texture_color",
               "distractor_color", "digit_position")
"""The paper's order for growing the explicit set (Fig. 5)."""
EXPLICIT_METHODS = ("upweight", "group_dro", "rubi", "lnl", "irm")
IMPLICIT_METHODS = ("stdm", "lff", "sd")
"""The paper's methods with and without bias labels (its presets' grids)."""
MORE_METHODS = ("coral", "cvar_dro", "dfr", "fish", "focal", "jtt", "learned_mixin", "lisa", "mixup", "rebias",
                "resample", "vrex")
"""Methods beyond the paper (``more-methods``): CVaR-DRO, Focal, JTT, Mixup and ReBias without bias labels, ReSample,
VREx, CORAL, DFR, Fish, LearnedMixin and LISA with them."""

SINGLE_BIAS_FACTOR = "background_color"
SINGLE_BIAS_RHOS = (0.99, 0.995, 0.997, 0.999)
"""``single-bias``: the factor and its p_bias (rho) grid, as in ReBias's Biased MNIST (Bahng et al., 2020)."""


@dataclass(frozen=True)
class Trial:
    trial_id: str
    dataset: DatasetSettings
    config: dict  # TrainConfig fields without ``data``

    def train_config(self, data: str) -> TrainConfig:
        return TrainConfig.from_dict({**self.config, "data": data})

    def to_dict(self) -> dict:
        return {"trial_id": self.trial_id, "dataset": self.dataset.to_dict(), "config": self.config}

    @classmethod
    def from_dict(cls, d: dict) -> "Trial":
        return cls(d["trial_id"], DatasetSettings.from_dict(d["dataset"]), d["config"])


def presets() -> dict[str, dict]:
    """Built-in sweep specifications (before scaling)."""
    single = [[f] for f in FACTORS]
    cumulative = [list(PAPER_ORDER[:k]) for k in range(1, len(PAPER_ORDER) + 1)]
    table1 = {"method": list(IMPLICIT_METHODS + EXPLICIT_METHODS), "explicit": single, "seed": [0]}
    return {
        "paper-table1": {
            "name": "paper-table1",
            "description": "Table 1: StdM, LfF, SD once per seed; each explicit method once per single explicit "
                           "factor (7 runs, averaged as the paper does).",
            "grid": dict(table1),
        },
        "paper-table1-reference": {
            "name": "paper-table1-reference",
            "description": "paper-table1 on the reference generator's own images (drawing reference: its "
                           "OpenCV shapes, glyphs and digits; jpeg_quality 95: its JPEG files).",
            "dataset": {"drawing": "reference", "jpeg_quality": 95},
            "grid": dict(table1),
        },
        "paper-fig5": {
            "name": "paper-fig5",
            "description": "Fig. 5: explicit set grown cumulatively in the paper's order; implicit methods as "
                           "flat references.",
            "grid": {"method": list(IMPLICIT_METHODS + EXPLICIT_METHODS), "explicit": cumulative, "seed": [0]},
        },
        "more-methods": {
            "name": "more-methods",
            "description": "Methods beyond the paper beside StdM on Table 1's protocol: CVaR-DRO, Focal, JTT, "
                           "Mixup and ReBias once per seed; CORAL, DFR, Fish, LearnedMixin, LISA, ReSample and VREx "
                           "once per single explicit factor (7 runs, averaged as Table 1 does).",
            "grid": {"method": ["stdm", *MORE_METHODS], "explicit": single, "seed": [0]},
        },
        "single-bias": {
            "name": "single-bias",
            "description": "The single-bias regime of earlier benchmarks (ReBias's Biased MNIST: background colour "
                           "aligned with the class at rho 0.99, 0.995, 0.997, 0.999) on this generator's images: "
                           "background colour at rho, the six other factors uniform (p 0.1); the paper's methods, "
                           "ReBias and LearnedMixin (ReBias's baselines), the explicit ones with background colour "
                           "explicit.",
            "grid": {"method": list(IMPLICIT_METHODS) + ["rebias"] + list(EXPLICIT_METHODS) + ["learned_mixin"],
                     "explicit": [[SINGLE_BIAS_FACTOR]], "seed": [0],
                     "dataset.p_bias": [{**{f: 0.1 for f in FACTORS}, SINGLE_BIAS_FACTOR: rho}
                                        for rho in SINGLE_BIAS_RHOS]},
        },
        "p-bias": {
            "name": "p-bias",
            "description": "StdM and LfF as p_bias goes from 0.1 (unbiased) to 0.99.",
            "grid": {"method": ["stdm", "lff"], "seed": [0],
                     "dataset.p_bias": [0.1, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]},
        },
    }


def load_spec(source: str) -> dict:
    """A preset name or a YAML file."""
    table = presets()
    if source in table:
        return table[source]
    path = Path(source)
    if not path.is_file():
        raise BiasbenchError(f"{source!r} is neither a preset ({', '.join(table)}) nor a sweep file")
    import yaml

    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise BiasbenchError(f"sweep file {path} is not valid YAML{where}: "
                             f"{getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(spec, dict):
        raise BiasbenchError(f"sweep file {path} must be a mapping with a 'grid'")
    spec.setdefault("name", path.stem)
    return spec


def _axis_values(name: str, values: Any) -> list:
    if not isinstance(values, list) or not values:
        raise BiasbenchError(f"grid axis {name!r} must be a non-empty list or a distribution "
                             f"({', '.join(DISTRIBUTIONS)}), got {values!r}")
    return values


def _check_distribution(name: str, dist: Any) -> tuple[str, list]:
    """``{kind: args}`` of a random-search axis, checked."""
    if not isinstance(dist, dict) or len(dist) != 1 or next(iter(dist)) not in DISTRIBUTIONS:
        raise BiasbenchError(f"grid axis {name!r}: a distribution is one of {', '.join(DISTRIBUTIONS)} with its "
                             f"arguments, e.g. {{log_uniform: [1.0e-4, 1.0e-1]}}; got {dist!r}")
    kind, args = next(iter(dist.items()))
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise BiasbenchError(f"grid axis {name!r}: choice takes a non-empty list, got {args!r}")
        return kind, args
    if isinstance(args, list):  # YAML reads 1e-4 (no dot) as a string
        args = [_number(v) for v in args]
    ok = isinstance(args, list) and len(args) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf") for v in args)
    if not ok or args[0] > args[1]:
        raise BiasbenchError(f"grid axis {name!r}: {kind} takes [lo, hi] with lo <= hi, got {args!r}")
    if kind == "log_uniform" and args[0] <= 0:
        raise BiasbenchError(f"grid axis {name!r}: log_uniform needs lo > 0, got {args!r}")
    if kind == "int_uniform" and not all(float(v).is_integer() for v in args):
        raise BiasbenchError(f"grid axis {name!r}: int_uniform takes integer bounds, got {args!r}")
    return kind, args


def _number(v: Any) -> Any:
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return v


def draw(name: str, dist: tuple[str, list], search_seed: int, sample: int) -> Any:
    """Sample ``sample`` of axis ``name`` under ``search_seed``: a function of these three alone (a generator
    seeded by their hash), so every grid point gets the same setting for a sample and the trial ids are stable.
    Floats are rounded to 4 significant digits (readable, and exactly reproducible through JSON)."""
    import numpy as np

    kind, args = dist
    rng = np.random.default_rng(int(stable_hash(["search", search_seed, sample, name], 16), 16))
    if kind == "choice":
        return args[int(rng.integers(len(args)))]
    if kind == "int_uniform":
        return int(rng.integers(int(args[0]), int(args[1]) + 1))
    lo, hi = float(args[0]), float(args[1])
    v = float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) if kind == "log_uniform" else float(rng.uniform(lo, hi))
    return float(f"{min(max(v, lo), hi):.4g}")


def _search(spec: dict, grid: dict) -> tuple[dict, list[dict]]:
    """Split ``grid`` into its list axes and the random-search samples (one dict of drawn values per sample;
    ``[{}]`` without a search)."""
    dists = {k: v for k, v in grid.items() if isinstance(v, dict)}
    search = spec.get("search")
    if search is None:
        if dists:
            raise BiasbenchError(f"grid axis {next(iter(dists))!r} is a distribution: add search: {{samples: N}} "
                                 f"to draw N settings from it")
        return grid, [{}]
    if not isinstance(search, dict) or set(search) - {"samples", "seed"}:
        raise BiasbenchError(f"search takes samples (and seed), e.g. search: {{samples: 8, seed: 0}}; got {search!r}")
    n, seed = search.get("samples"), search.get("seed", 0)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1 or not isinstance(seed, int) or isinstance(seed, bool):
        raise BiasbenchError(f"search: samples must be a positive integer and seed an integer, got {search!r}")
    if not dists:
        raise BiasbenchError("search: no grid axis is a distribution (e.g. hparams.step_size: {log_uniform: "
                             "[1.0e-4, 1.0e-1]})")
    checked = {k: _check_distribution(k, v) for k, v in dists.items()}
    samples = [{k: draw(k, d, seed, i) for k, d in checked.items()} for i in range(n)]
    return {k: v for k, v in grid.items() if k not in dists}, samples


def expand(spec: dict, scale: str | None = None, seeds: list[int] | None = None,
           model_kwargs: dict | None = None) -> list[Trial]:
    """Expand a sweep specification into trials (deduplicated, in a stable order).

    ``seeds`` replace every point's seed; ``model_kwargs`` are merged into every trial's ``model_kwargs`` (over
    the base's and the grid's, which they override key by key), so they are part of the trial ids."""
    unknown = set(spec) - TOP_KEYS
    if unknown:
        raise BiasbenchError(f"unknown sweep key(s): {', '.join(sorted(unknown))}; expected: {', '.join(sorted(TOP_KEYS))}")
    scale = scale or spec.get("scale") or "full"
    if scale not in SCALES:
        raise BiasbenchError(f"unknown scale {scale!r}; expected one of: {', '.join(SCALES)}")
    grid = dict(spec.get("grid") or {})
    include = [dict(p) for p in spec.get("include") or []]
    if seeds is not None:
        # the seeds replace every point's seed: the grid's seed axis, and each included trial's seed (an
        # include-only sweep gets no extra grid point from them)
        if grid or not include:
            grid["seed"] = list(seeds)
        include = [{**p, "seed": s} for p in include for s in seeds]
    for key in grid:
        _check_axis(key)
    grid, samples = _search(spec, grid)
    axes = [(k, _axis_values(k, v)) for k, v in grid.items()]
    points = [{**dict(zip([k for k, _ in axes], combo)), **sample}
              for combo in itertools.product(*[v for _, v in axes]) for sample in samples] \
        if axes or samples != [{}] else []
    points += include
    if not points or (not axes and samples == [{}] and not spec.get("include")):
        raise BiasbenchError("the sweep's grid is empty: give at least one axis with values")
    base_train = {**SCALES[scale]["train"], **(spec.get("base") or {})}
    base_data = {**SCALES[scale]["dataset"], **(spec.get("dataset") or {})}
    for k in base_train:
        if k not in TRAIN_KEYS:
            raise BiasbenchError(f"unknown training setting {k!r} in base; expected: {', '.join(sorted(TRAIN_KEYS))}")
    for k in base_data:
        if k not in DATASET_KEYS:
            raise BiasbenchError(f"unknown dataset setting {k!r}; expected: {', '.join(sorted(DATASET_KEYS))}")
    trials: dict[str, Trial] = {}
    for point in points:
        train, data, hparams = dict(base_train), dict(base_data), {}
        for key, value in point.items():
            _check_axis(key)
            if key.startswith("hparams."):
                hparams[key.split(".", 1)[1]] = value
            elif key.startswith("dataset."):
                data[key.split(".", 1)[1]] = value
            else:
                train[key] = value
        if hparams:
            train["method_hparams"] = {**train.get("method_hparams", {}), **hparams}
        if model_kwargs:
            train["model_kwargs"] = {**(train.get("model_kwargs") or {}), **model_kwargs}
        settings = DatasetSettings(**data)
        cfg = TrainConfig(data="", **{k: (tuple(v) if k in ("explicit", "eval_epochs") else v)
                                      for k, v in train.items()})
        config = cfg.to_dict()
        config.pop("data")
        tid = stable_hash({"dataset": settings.to_dict(), "config": config}, 12)
        trials.setdefault(tid, Trial(tid, settings, config))
    return list(trials.values())


ONLY_HELP = ("KEY=VALUE[,VALUE]: run only the trials that match, e.g. method=lff,stdm, seed=0, explicit=texture, "
             "explicit=none, hparams.step_size=0.01, dataset.p_bias=0.99 or trial=ID (a prefix of an id from "
             "--dry-run); KEY!=VALUE[,VALUE]: leave those out, e.g. method!=rebias; repeatable, every filter must "
             "match")


def select_trials(trials: list[Trial], only: list[str]) -> list[Trial]:
    """The trials that match every filter of ``only`` (``KEY=VALUE[,VALUE]``: a trial matches a filter when its
    value for KEY is one of the VALUEs; ``KEY!=VALUE[,VALUE]``: when it is none of them), in their order; ``only``
    empty: all of them.

    KEY is a sweep axis (``method``, ``seed``, ``explicit``, ``model``, ... ``hparams.NAME``, ``dataset.NAME``)
    or ``trial`` (VALUE a prefix of the trial id). VALUEs are read as numbers where they are numbers
    (``0.01`` and ``1e-2`` are one number), ``true``/``false`` as booleans. ``explicit`` takes the factors
    of one explicit set joined by ``+`` (``texture+digit_color``, in any order) or ``none`` for the empty
    set; ``hparams.NAME`` compares the method's default when the trial leaves NAME unset; ``dataset.p_bias=P``
    matches trials in which some factor has p_bias P (``single-bias``'s rho, or every factor's p in ``p-bias``).

    Raises :class:`BiasbenchError` for a malformed filter, an unknown key, a VALUE no trial has (a typo, also
    after ``!=``), or filters that leave no trial (naming the values this sweep has for the key).
    """
    selected = list(trials)
    for item in only:
        key, sep, raw = item.partition("=")
        key = key.strip()
        exclude = key.endswith("!")
        key = key.rstrip("!").strip()
        values = [v.strip() for v in raw.split(",")]
        if not sep or not key or not all(values):
            raise BiasbenchError(f"--only takes KEY=VALUE[,VALUE] or KEY!=VALUE[,VALUE], got {item!r}")
        if key != "trial":
            try:
                _check_axis(key)
            except BiasbenchError as exc:
                raise BiasbenchError(f"--only {item}: {exc}, or trial") from None
        wanted = [v if key in ("trial", "explicit") else _scalar(v) for v in values]
        have = [_trial_values(t, key) for t in selected]
        hit = [any(_matches(key, w, vals) for w in wanted) for vals in have]
        seen = sorted({str(v) for vals in have for v in vals})
        shown = ", ".join(seen[:12]) + (", ..." if len(seen) > 12 else "")
        values_here = f" (values of {key} here: {shown})" if key != "trial" else ""
        if not any(hit):  # a typo, whether it was to keep or to leave out
            raise BiasbenchError(f"--only {item}: no trial of the {len(selected)} left has "
                                 f"{'that value' if len(values) == 1 else 'those values'}{values_here}")
        keep = [t for t, h in zip(selected, hit) if h != exclude]
        if not keep:
            raise BiasbenchError(f"--only {item} leaves none of the {len(selected)} trials{values_here}")
        selected = keep
    return selected


def _scalar(text: str) -> Any:
    """A filter value as a sweep file would read it: an int, a float (``1e-3`` too), a bool, or the text."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def _trial_values(t: Trial, key: str) -> list:
    """A trial's values for a filter key (several for ``dataset.p_bias``: one per factor)."""
    if key == "trial":
        return [t.trial_id]
    if key == "explicit":
        return ["+".join(sorted(t.config.get("explicit") or ())) or "none"]
    if key.startswith("hparams."):
        from ..methods import get_method_class

        name = key.split(".", 1)[1]
        hp = {**get_method_class(t.config["method"]).default_hparams, **(t.config.get("method_hparams") or {})}
        return [hp[name]] if name in hp else []
    if key.startswith("dataset."):
        value = getattr(t.dataset, key.split(".", 1)[1])
        return sorted(set(value.values())) if isinstance(value, dict) else [value]
    return [t.config.get(key)]


def _matches(key: str, wanted: Any, values: list) -> bool:
    if key == "trial":
        return any(v.startswith(wanted) for v in values)
    if key == "explicit":
        given = "+".join(sorted(f.strip() for f in wanted.split("+"))) if wanted != "none" else "none"
        return given in values

    def norm(v):
        return tuple(norm(x) for x in v) if isinstance(v, (list, tuple)) else v
    return any(norm(wanted) == norm(v) for v in values)


def _check_axis(key: str) -> None:
    if key.startswith("hparams.") and len(key) > len("hparams."):
        return
    if key.startswith("dataset."):
        if key.split(".", 1)[1] not in DATASET_KEYS:
            raise BiasbenchError(f"unknown dataset axis {key!r}; expected dataset.NAME with NAME in: "
                                 f"{', '.join(sorted(DATASET_KEYS))}")
        return
    if key not in TRAIN_KEYS:
        raise BiasbenchError(f"unknown sweep axis {key!r}; expected one of: {', '.join(sorted(TRAIN_KEYS))}, "
                             f"hparams.NAME or dataset.NAME")
