"""Report tables computed from selected runs: Table 1, IOSM, tuning-distribution sensitivity, Fig. 5 data.

Conventions (stated in the report): accuracies in percent on the unbiased (p = 0.1) test set;
explicit methods are first averaged over their single-explicit-variable runs of one seed (as the paper's
Table 1 averages its seven runs), then mean +- sample std over seeds (the mean alone from one seed); missing
cells are "–".
"""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import fields
from statistics import mean, stdev

import numpy as np

from ..config import DatasetSettings
from ..data.factors import FACTORS
from ..errors import BiasbenchError
from ..methods.registry import METHOD_ORDER, method_name, method_order
from ..sweep.spec import PAPER_ORDER
from .records import RunRecord, select

PAPER_TABLE1 = {"stdm": 42.0, "upweight": 30.1, "group_dro": 27.2, "rubi": 38.9, "lnl": 40.6, "irm": 38.7,
                "lff": 56.6, "sd": 41.3}
MISSING = "–"
DATASET_SETTINGS = tuple(f.name for f in fields(DatasetSettings))


def _ms(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return mean(values), (stdev(values) if len(values) > 1 else math.nan)  # one seed: no spread to show


def test_metrics(run: RunRecord, epoch: int) -> dict:
    return run.evals[epoch].get("test", {})


def _setting(key: str, value):
    """A dataset setting as labelled and ordered: one p_bias for every factor as that number."""
    if key == "p_bias" and isinstance(value, dict) and len(set(value.values())) == 1:
        return next(iter(value.values()))
    return value


def _variant_value(key: str, value) -> str:
    value = _setting(key, value)
    if key == "p_bias" and isinstance(value, dict):  # the factors off the most common p, then "others P"
        ps = list(value.values())
        common = max(ps, key=ps.count)
        if ps.count(common) > 1:
            return ",".join(f"{k}={v}" for k, v in value.items() if v != common) + f" (others {common})"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}={v}" for k, v in value.items()) + "}"
    return str(value)


def setting_variants(selected: list[tuple[RunRecord, int]], keys=None) -> list[tuple[str, list[tuple[RunRecord, int]]]]:
    """The selected runs grouped by their compared settings (``run.settings``, :mod:`.records`; only ``keys``
    when given), labelled by the settings that differ between the groups, in the order of their values:
    ``[("jpeg_quality=0", runs), ("jpeg_quality=95", runs)]``, ``[("model=paper_cnn", ...), ("model=resnet18",
    ...)]``; ``[("", runs)]`` when all runs share one. The dataset seed and pooled settings do not split.
    Numbers in numeric order, other values in the order the runs first show them (the sweeps' order)."""
    def canon(value) -> str:
        return json.dumps(value, sort_keys=True, default=str)

    groups: dict = {}
    for run, ep in selected:
        full = {k: v for k, v in run.settings.items() if keys is None or k in keys}
        groups.setdefault(canon(full), (full, []))[1].append((run, ep))
    if len(groups) <= 1:
        return [("", [re for _, runs in groups.values() for re in runs])]
    dicts = [full for full, _ in groups.values()]
    names = dict.fromkeys(k for d in dicts for k in d)
    varying = [k for k in names if any(d.get(k) != dicts[0].get(k) for d in dicts)]
    first_seen: dict = {}
    for d in dicts:
        for k in varying:
            first_seen.setdefault((k, canon(d.get(k))), len(first_seen))

    def order(key: str, value) -> tuple:  # numbers by value (jpeg_quality 0 < 50 < 100), the rest as first seen
        if key == "p_bias" and isinstance(value, dict):  # by the factors' p in the factors' order
            return (0, tuple(value.get(f, math.inf) for f in FACTORS))
        if isinstance(_setting(key, value), (int, float)) and not isinstance(value, bool):
            return (0, _setting(key, value))
        return (1, first_seen[key, canon(value)])

    ordered = sorted(groups.values(), key=lambda g: [order(k, g[0].get(k)) for k in varying])
    return [(" ".join(f"{k}={_variant_value(k, full.get(k))}" for k in varying), runs) for full, runs in ordered]


def dataset_variants(selected: list[tuple[RunRecord, int]]) -> list[tuple[str, list[tuple[RunRecord, int]]]]:
    """:func:`setting_variants` over the dataset settings alone."""
    return setting_variants(selected, DATASET_SETTINGS)


def dataset_summary(selected: list[tuple[RunRecord, int]]) -> str:
    """What images the selected runs trained on, for the report's reader: for one dataset its image size,
    p_bias, mode, fixed factors, drawing and JPEG quality ("96x96 px, p_bias 0.7, mode paper, our drawing,
    lossless"); for several, a pointer to Table 1's variant column."""
    if not selected:
        return "no runs"
    variants = dataset_variants(selected)
    if len(variants) > 1:
        return f"{len(variants)} datasets, one block of Table 1 rows each (the variant column)"
    try:
        s = DatasetSettings.from_dict(selected[0][0].dataset)
    except (BiasbenchError, TypeError):
        return "not recorded in a readable form"
    p = _setting("p_bias", s.p_bias)
    parts = [f"{s.image_size}x{s.image_size} px", f"p_bias {_variant_value('p_bias', p)}", f"mode {s.mode}"]
    parts += [f"fixed {_variant_value('fixed', s.fixed)}"] if s.fixed else []
    parts.append("the reference generator's drawing" if s.drawing == "reference" else "our drawing")
    parts.append(f"JPEG quality {s.jpeg_quality}" if s.jpeg_quality else "lossless")
    return ", ".join(parts)


def table1(selected: list[tuple[RunRecord, int]]) -> list[dict]:
    """Rows: method, mean, std, seeds, runs per seed (``runs_per_seed`` the most, ``runs_per_seed_min`` the
    fewest: a partial seed averages fewer explicit runs), paper value, and ``variant``: one block of rows per
    setting variant (:func:`setting_variants`; "" when the runs share one setting), so runs on different
    datasets (the reference's JPEG files and lossless images, two p_bias) or with other models, optimizers,
    schedules are never averaged together. With several variants, methods that have no run in any of them
    are left out (a ``p-bias`` sweep of StdM and LfF would otherwise list six empty rows per p_bias)."""
    variants = setting_variants(selected)
    rows = [{**row, "variant": label} for label, runs in variants for row in _table1_rows(runs)]
    if len(variants) > 1:
        present = {r["method"] for r in rows if r["seeds"]}
        rows = [r for r in rows if r["method"] in present]
    return rows


def _paper_setting(dataset: dict) -> bool:
    """Whether a run's dataset is Table 1's: p_bias 0.7 for every factor, no factor held fixed (scale and
    encoding aside: the report notes the scale, and both encodings are the paper's dataset)."""
    p = (dataset.get("p_bias") or {}).values()
    return bool(p) and all(v == 0.7 for v in p) and not dataset.get("fixed")


def _table1_rows(selected: list[tuple[RunRecord, int]]) -> list[dict]:
    """Table 1's rows for runs of one setting; the paper's value only where their dataset is Table 1's."""
    paper = bool(selected) and _paper_setting(selected[0][0].dataset)
    per_method: dict = {}
    for run, ep in selected:
        if len(run.explicit) > 1:
            continue  # Table 1 averages single-explicit-variable runs (methods without bias labels have none)
        acc = test_metrics(run, ep).get("accuracy")
        if acc is None:
            continue
        per_method.setdefault(run.method, {}).setdefault(run.seed, []).append(acc)
    rows = []
    for m in METHOD_ORDER + sorted(set(per_method) - set(METHOD_ORDER)):
        seeds = per_method.get(m, {})
        per_seed = [mean(v) for v in seeds.values()]
        mu, sd = _ms(per_seed)
        rows.append({"method": m, "name": method_name(m), "mean": mu, "std": sd, "seeds": len(per_seed),
                     "runs_per_seed": max((len(v) for v in seeds.values()), default=0),
                     "runs_per_seed_min": min((len(v) for v in seeds.values()), default=0),
                     "paper": PAPER_TABLE1.get(m, math.nan) if paper else math.nan})
    return rows


def _fmt(v: float, digits: int = 1) -> str:
    return MISSING if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _mean_std(r: dict, pm: str) -> str | None:
    """``mean pm std``, the mean alone from one seed, None when the method has no runs."""
    if math.isnan(r["mean"]):
        return None
    return f"{r['mean']:.1f}" if math.isnan(r["std"]) else f"{r['mean']:.1f} {pm} {r['std']:.1f}"


def _has_variants(rows: list[dict]) -> bool:
    return any(r.get("variant") for r in rows)


def _runs_per_seed(r: dict) -> str:
    """``7``, or ``2–7`` when seeds averaged different numbers of runs (a partial seed)."""
    lo, hi = r.get("runs_per_seed_min", r["runs_per_seed"]), r["runs_per_seed"]
    return MISSING if not hi else (f"{hi}" if lo == hi else f"{lo}–{hi}")


def table1_markdown(rows: list[dict]) -> str:
    lead = "| variant " if _has_variants(rows) else ""
    head = "| method | unbiased acc. (mean ± std) | seeds | runs averaged per seed | paper (Table 1) | difference |"
    lines = [lead + head, ("|---" if lead else "") + "|---|---|---|---|---|---|"]
    for r in rows:
        val = _mean_std(r, "±") or MISSING
        diff = MISSING if math.isnan(r["mean"]) or math.isnan(r["paper"]) else f"{r['mean'] - r['paper']:+.1f}"
        lines.append((f"| {r['variant']} " if lead else "") +
                     f"| {r['name']} | {val} | {r['seeds'] or MISSING} | {_runs_per_seed(r)} | "
                     f"{_fmt(r['paper'])} | {diff} |")
    return "\n".join(lines)


def table1_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    lead = ["variant"] if _has_variants(rows) else []
    w.writerow(lead + ["method", "mean", "std", "seeds", "runs_per_seed", "paper", "runs_per_seed_min"])
    for r in rows:
        w.writerow(([r["variant"]] if lead else []) +
                   [r["name"], _fmt(r["mean"], 2), _fmt(r["std"], 2), r["seeds"], r["runs_per_seed"],
                    _fmt(r["paper"]), r.get("runs_per_seed_min", r["runs_per_seed"])])
    return buf.getvalue()


RULES_COMPARED = ("final", "alpha=0", "worst_group", "worst_group=balanced_val", "worst_class", "oracle")
"""The selection rules side by side in ``selection.md``: the paper's, the balanced tuning distribution, with and
without bias labels, and the test-set oracle (:mod:`.records`)."""


def rules_table(records: list[RunRecord], rules=RULES_COMPARED) -> list[dict]:
    """Table 1's mean per method (and variant) under each selection rule: rows ``{variant, method, name,
    paper, means: {rule: mean}}``, in Table 1's order. How far the numbers move with the protocol is how much of a
    comparison the protocol decides (the peers' "cannot reproduce" threads are often this)."""
    tables = {rule: table1(select(records, rule)) for rule in rules}
    rows: dict = {}
    for rule, t in tables.items():
        for r in t:
            row = rows.setdefault((r["variant"], r["method"]), {k: r[k] for k in ("variant", "method", "name", "paper")}
                                  | {"means": {}})
            row["means"][rule] = r["mean"]
    return list(rows.values())


def rules_markdown(rows: list[dict], rules=RULES_COMPARED) -> str:
    lead = "| variant " if _has_variants(rows) else ""
    lines = [lead + "| method | " + " | ".join(rules) + " | paper (Table 1) |",
             ("|---" if lead else "") + "|---" * (len(rules) + 2) + "|"]
    for r in rows:
        cells = [_fmt(r["means"].get(rule, float("nan"))) for rule in rules]
        lines.append((f"| {r['variant']} " if lead else "") + f"| {r['name']} | " + " | ".join(cells)
                     + f" | {_fmt(r['paper'])} |")
    return "\n".join(lines)


SELECTED_COLUMNS = ("variant", "method", "explicit", "seed", "run_id", "epoch", "score", "test_accuracy",
                    "test_worst_group", "hparams", "weights")


def selected_rows(selected: list[tuple[RunRecord, int]], rule) -> list[dict]:
    """One row per chosen (run, epoch), the model each Table-1 number comes from: its variant, method, explicit
    set, seed, run id, the chosen epoch, the rule's ``score`` there (``rule``: a
    :class:`~biasbench.report.records.SelectionRule`), the unbiased test accuracy and worst group, the method
    hyperparameters, and ``weights``: the path of the weights kept at that epoch (``RUNS/<run_id>/weights/
    epochNNN.pt``, which ``biasbench audit --epoch N`` and ``torch.load`` read), "" when the folder does not hold
    them (records copied without their weights). Ordered by variant, method (the report's order), explicit set,
    seed."""
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    rows = []
    variants = setting_variants(selected)
    variant_at = {label: i for i, (label, _) in enumerate(variants)}
    for label, runs in variants:
        for run, ep in runs:
            test = test_metrics(run, ep)
            weights = run.runs_dir / run.run_id / "weights" / f"epoch{ep:03d}.pt" if run.runs_dir else None
            score = rule.score(run.evals, ep)
            rows.append({"variant": label, "method": run.method, "explicit": "+".join(run.explicit),
                         "seed": run.seed, "run_id": run.run_id, "epoch": ep,
                         "score": score if math.isfinite(score) else None,
                         "test_accuracy": test.get("accuracy"), "test_worst_group": test.get("worst_group"),
                         "hparams": json.dumps(run.hparams, sort_keys=True),
                         "weights": str(weights) if weights is not None and weights.is_file() else ""})
    rows.sort(key=lambda r: (variant_at[r["variant"]], order.get(r["method"], len(order)), r["method"],
                             r["explicit"], r["seed"]))
    return rows


def selected_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(SELECTED_COLUMNS)
    for r in rows:
        w.writerow([_fmt(r[k], 2) if k in ("score", "test_accuracy", "test_worst_group") else r[k]
                    for k in SELECTED_COLUMNS])
    return buf.getvalue()


def table1_latex(rows: list[dict]) -> str:
    lead = _has_variants(rows)
    lines = [r"\begin{tabular}{" + ("l" if lead else "") + "lrr}", r"\toprule",
             ("Variant & " if lead else "") + r"Method & Unbiased acc. (ours) & Paper \\", r"\midrule"]
    for r in rows:
        val = _mean_std(r, "$\\pm$") or "--"
        cell = r["variant"].replace("_", r"\_") + " & " if lead else ""
        lines.append(f"{cell}{r['name']} & {val} & {_fmt(r['paper']).replace(MISSING, '--')} \\\\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines)


def mmd_points(selected: list[tuple[RunRecord, int]]) -> list[dict]:
    """One point per (run, factor): MMD on test, and whether the factor was explicit for that run."""
    pts = []
    for run, ep in selected:
        fm = test_metrics(run, ep).get("factors", {})
        for f in FACTORS:
            if f in fm:
                pts.append({"method": run.method, "factor": f, "mmd": fm[f]["mmd"],
                            "kind": "explicit" if f in run.explicit else "implicit"})
    return pts


def majority_minority(run: RunRecord, epoch: int) -> tuple[float, float]:
    """Mean over the seven factors of test majority and minority accuracy."""
    fm = test_metrics(run, epoch).get("factors", {})
    maj = [fm[f]["majority"] for f in FACTORS if f in fm and not math.isnan(fm[f]["majority"])]
    mino = [fm[f]["minority"] for f in FACTORS if f in fm and not math.isnan(fm[f]["minority"])]
    return (mean(maj) if maj else math.nan), (mean(mino) if mino else math.nan)


def iosm(selected: list[tuple[RunRecord, int]]) -> list[dict]:
    """Improvement over the standard model, per method: accuracy minus StdM's on the same seed and setting,
    overall and for the majority and minority groups (mean over the seven factors), in points. The same
    setting means the same compared settings (``RunRecord.pairing_key``): a ResNet's LfF against a ResNet's StdM."""
    std = {r.pairing_key: (r, ep) for r, ep in selected if r.method == "stdm"}
    diffs: dict = {}
    for run, ep in selected:
        ref = std.get(run.pairing_key)
        if ref is None or run.method == "stdm":
            continue
        maj, mino = majority_minority(run, ep)
        rmaj, rmin = majority_minority(*ref)
        acc = test_metrics(run, ep).get("accuracy", math.nan) - test_metrics(*ref).get("accuracy", math.nan)
        diffs.setdefault(run.method, []).append((acc, maj - rmaj, mino - rmin))
    rows = []
    for m in method_order(set(METHOD_ORDER) | set(diffs)):
        if m == "stdm":
            continue
        d = diffs.get(m, [])
        col = list(zip(*d)) if d else [[], [], []]
        rows.append({"method": m, "name": method_name(m), "runs": len(d),
                     "overall": mean(col[0]) if d else math.nan,
                     "majority": mean(col[1]) if d else math.nan, "minority": mean(col[2]) if d else math.nan})
    return rows


def iosm_markdown(rows: list[dict]) -> str:
    lines = ["| method | IOSM overall | IOSM majority | IOSM minority | runs |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {_fmt(r['overall'], 2)} | {_fmt(r['majority'], 2)} | {_fmt(r['minority'], 2)} "
                     f"| {r['runs'] or MISSING} |")
    return "\n".join(lines)


ALPHAS = (-1.0, 0.0, 1.0, 2.0)


def tuning_sensitivity(records: list[RunRecord]) -> dict:
    """Per method and alpha: mean test majority / minority accuracy of the runs selected under alpha."""
    out: dict = {}
    for a in ALPHAS:
        chosen = select(records, f"alpha={a}")
        per: dict = {}
        for run, ep in chosen:
            maj, mino = majority_minority(run, ep)
            per.setdefault(run.method, []).append((maj, mino, test_metrics(run, ep).get("accuracy", math.nan)))
        for m, vals in per.items():
            arr = np.array(vals, dtype=float)
            out.setdefault(m, {})[a] = {"majority": float(np.nanmean(arr[:, 0])),
                                        "minority": float(np.nanmean(arr[:, 1])),
                                        "accuracy": float(np.nanmean(arr[:, 2]))}
    return out


def fig5_data(selected: list[tuple[RunRecord, int]]) -> dict:
    """method -> {k: mean unbiased accuracy over seeds} for explicit sets = the first k of the paper's order;
    implicit methods -> {0: accuracy} (drawn as flat lines)."""
    prefixes = {tuple(sorted(PAPER_ORDER[:k])): k for k in range(1, len(PAPER_ORDER) + 1)}
    acc: dict = {}
    for run, ep in selected:
        a = test_metrics(run, ep).get("accuracy")
        if a is None:
            continue
        if not run.explicit:  # a method without bias labels: a flat reference line
            acc.setdefault(run.method, {}).setdefault(0, []).append(a)
            continue
        k = prefixes.get(tuple(sorted(run.explicit)))
        if k is not None:
            acc.setdefault(run.method, {}).setdefault(k, []).append(a)
    return {m: {k: mean(v) for k, v in d.items()} for m, d in acc.items()}


def _p_vector(run: RunRecord) -> tuple[float, ...]:
    from ..config import parse_p_bias

    try:
        p = parse_p_bias(run.dataset.get("p_bias", 0.7))
    except BiasbenchError:
        return ()
    return tuple(p[f] for f in FACTORS)


def p_bias_axis(runs: list[RunRecord]) -> str | None:
    """What the runs' p_bias varies in: ``"all"`` when each run has one p for every factor (the ``p-bias``
    preset), a factor's name when only that factor's p differs between the runs (``single-bias``: the others
    constant), None when neither (or nothing varies)."""
    vectors = {_p_vector(r) for r in runs} - {()}
    if len(vectors) < 2:
        return None
    if all(len(set(v)) == 1 for v in vectors):
        return "all"
    varying = [f for i, f in enumerate(FACTORS) if len({v[i] for v in vectors}) > 1]
    return varying[0] if len(varying) == 1 else None


def p_bias_data(selected: list[tuple[RunRecord, int]]) -> dict:
    """``{"axis": AXIS, "others": P or None, "methods": {method: {p: mean unbiased accuracy}}}`` when the runs
    vary one p_bias (:func:`p_bias_axis`: a p shared by every factor, or one factor's p with the others
    constant, ``others`` then their p when they share one), else ``{}``; mean over the runs of a method at one p
    (seeds, explicit sets)."""
    axis = p_bias_axis([r for r, _ in selected])
    if axis is None:
        return {}
    col = 0 if axis == "all" else FACTORS.index(axis)
    out: dict = {}
    rest: set = set()
    for run, ep in selected:
        v = _p_vector(run)
        a = test_metrics(run, ep).get("accuracy")
        if v and a is not None:
            out.setdefault(run.method, {}).setdefault(v[col], []).append(a)
            rest |= {p for i, p in enumerate(v) if i != col}
    data = {m: {p: mean(v) for p, v in sorted(d.items())} for m, d in out.items()}
    if not any(len(d) > 1 for d in data.values()):
        return {}
    others = rest.pop() if axis != "all" and len(rest) == 1 else None
    return {"axis": axis, "others": others, "methods": data}


def p_bias_markdown(data: dict) -> str:
    """:func:`p_bias_data` as a table: one row per method, one column per p (ReBias's Table 1 layout)."""
    ps = sorted({p for d in data["methods"].values() for p in d})
    what = "p_bias" if data["axis"] == "all" else f"p_bias of {data['axis']}"
    lines = ["| method | " + " | ".join(f"{what} {p:g}" for p in ps) + " |", "|---" * (len(ps) + 1) + "|"]
    for m in method_order(data["methods"]):
        d = data["methods"][m]
        lines.append(f"| {method_name(m)} | " + " | ".join(_fmt(d.get(p, math.nan)) for p in ps) + " |")
    return "\n".join(lines)
