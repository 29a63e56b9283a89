"""``biasbench report SWEEP [SWEEP ...] --out DIR``: tables, figures and index.html from sweeps' records.

Works on a partial sweep: whatever runs have evaluation records are used; missing cells are "–". Several
sweep folders are reported as one (:func:`biasbench.report.records.load_sweeps`): seeds run apart, on other
machines or in other sessions, give one Table 1 with their mean ± std over seeds.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from ..errors import BiasbenchError
from ..utils import atomic_write_json, atomic_write_text
from . import figures as F
from .html import write_index
from .records import compared_settings, load_sweeps, parse_rule, select
from .tables import (dataset_summary, fig5_data, iosm, iosm_markdown, mmd_points, p_bias_data, p_bias_markdown,
                     rules_markdown, rules_table, selected_csv, selected_rows, setting_variants, table1, table1_csv,
                     table1_latex, table1_markdown, tuning_sensitivity)

NOTES = {
    "table1": "Unbiased accuracy = accuracy on the p_bias = 0.1 test set (%). Explicit methods: mean over their "
              "single-explicit-variable runs of a seed (the paper averages 7), then mean ± sample std over seeds; "
              "runs that differ in a setting other than seed and tuned hyperparameters (dataset settings such as "
              "p_bias or jpeg_quality, the model, its arguments, the optimizer, the schedule) get one block of rows "
              "per variant.",
    "iosm": "IOSM (improvement over the standard model; the paper's exact definition could not be confirmed, "
            "this is ours): a method's test accuracy minus StdM's on the same seed and setting, overall and on the "
            "majority and minority groups (mean over the seven factors), in points.",
    "rules": "Mean unbiased test accuracy (%) when the epoch and hyperparameters are chosen by: final (the "
             "paper's: last epoch, validation accuracy), alpha=0 (accuracy on the balanced tuning distribution), "
             "worst_group (worst (class, factor value) cell on val: bias labels), worst_group=balanced_val (the same "
             "on the balanced split), worst_class (worst class on val: no bias labels), oracle (test accuracy: an "
             "upper bound, not a fair protocol). A rule whose score a record lacks (older records) chooses the last "
             "epoch.",
    "gaps": "Distribution gaps of the test predictions across each factor's values (FFB's fairness gaps for ten "
            "classes and a many-valued attribute b; 0: the predictions do not depend on the factor, 100: they "
            "follow it; in points): DP = mean over predicted classes k of the range over b of P(pred = k | b); "
            "EO = the same for P(pred = k | y, b), averaged over true classes y; ABCC = mean over classes k of the "
            "largest area between the CDFs of the predicted probability of k over two values of b (it sees "
            "confidence that follows b where the predicted class does not). Mean over each method's selected "
            "runs at their selected epoch; estimates from finite cells, so small cells add a few points of noise.",
    "shift": "Test accuracy (%) of each method's selected runs on other datasets' test splits (biasbench evaluate "
             "SWEEP --data DIR or --shift KEY=VALUE, at the run's selected epoch), beside the same runs' recorded "
             "unbiased test accuracy; a column per evaluated dataset, named by the settings that differ (trained vs "
             "evaluated); then each factor's MMD (majority - minority accuracy, points), recorded and on each such "
             "test set, over the runs evaluated there. Mean over the runs that have that evaluation; runs without "
             "one are left out.",
}
GAP_TITLES = {"dp_gap": "Demographic-parity gap per factor (test)", "eo_gap": "Equalized-odds gap per factor (test)",
              "abcc": "Area between the probability CDFs (ABCC) per factor (test)"}


def _json_safe(obj):
    """NaN (a missing cell, the spread of one seed) as null: strict JSON has no NaN."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def build_report(sweep_dirs, out: str | os.PathLike, rule: str = "final", pool=()) -> dict:
    """Write the report of one sweep folder or several (a path or a list of paths) to ``out``; ``pool`` names
    compared settings whose variants are pooled (:mod:`biasbench.report.records`). Returns ``report.json``'s
    content plus ``files`` and ``scale_note``."""
    rule_ = parse_rule(rule)
    sweep, records = load_sweeps(sweep_dirs, pool)
    dirs = sweep["sweeps"]
    if not records:
        raise BiasbenchError(f"sweep {' '.join(dirs)} has no finished evaluations yet; nothing to report")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    before, earlier = _snapshot(out), _earlier_files(out)
    chosen = select(records, rule)
    t1 = table1(chosen)
    atomic_write_text(out / "table1.md", table1_markdown(t1) + "\n")
    atomic_write_text(out / "table1.csv", table1_csv(t1))
    atomic_write_text(out / "table1.tex", table1_latex(t1) + "\n")
    picked = selected_rows(chosen, rule_)
    atomic_write_text(out / "selected.csv", selected_csv(picked))
    by_rule = rules_table(records)
    atomic_write_text(out / "selection.md", rules_markdown(by_rule) + "\n")
    io_rows = iosm(chosen)
    atomic_write_text(out / "iosm.md", iosm_markdown(io_rows) + "\n")
    variants = setting_variants(chosen)
    record_variants = [(label, [r for r, _ in runs]) for label, runs in setting_variants([(r, 0) for r in records])]
    tuning = {label: tuning_sensitivity(runs) for label, runs in record_variants}
    but_p_bias = [k for k in compared_settings() if k != "p_bias"]  # the p_bias curve needs every p_bias at once
    p_variants = setting_variants(chosen, but_p_bias)
    p_data = {label: p_bias_data(runs) for label, runs in p_variants}
    p_tables = [(label, d) for label, d in p_data.items() if d]
    if p_tables:
        atomic_write_text(out / "p_bias.md", "\n\n".join((f"{label}\n\n" if label else "") + p_bias_markdown(d)
                                                          for label, d in p_tables) + "\n")
    no_data, no_fig5 = "no data", "no runs with cumulative explicit sets (run the paper-fig5 preset)"
    sections_of = {  # key: (title, what to say when no variant has data, {key[variant]: (title, path)})
        "fig3a": per_variant(variants, out, "fig3a", "Fig. 3a: MMD per factor", "fig3a_mmd_per_factor", no_data,
                             lambda runs, path, label: F.fig3a(mmd_points(runs), path, label)),
        "fig3b": per_variant(variants, out, "fig3b", "Fig. 3b: MMD per method", "fig3b_mmd_per_method", no_data,
                             lambda runs, path, label: F.fig3b(mmd_points(runs), path, label)),
        "fig5": per_variant(variants, out, "fig5", "Fig. 5: accuracy against the number of explicit variables",
                            "fig5_scalability", no_fig5,
                            lambda runs, path, label: F.fig5(fig5_data(runs), path, label)),
        "tuning": per_variant(record_variants, out, "tuning", "Tuning-distribution sensitivity",
                              "tuning_distribution", no_data,
                              lambda runs, path, label: F.tuning_figure(tuning[label], path, label)),
        "p_bias": per_variant(p_variants, out, "p_bias",
                              "Unbiased accuracy against p_bias", "p_bias", None,
                              lambda runs, path, label: F.p_bias_figure(p_data[label], path, label)),
    }
    figs = {k: path for _, _, fig in sections_of.values() for k, (_, path) in fig.items()}
    audits = audit_table(chosen)
    if audits:
        atomic_write_text(out / "audit.md", audits + "\n")
    shifts = shift_tables(chosen)
    if shifts:
        atomic_write_text(out / "shift.md", "\n\n".join(f"{t}\n\n{table}" for t, table in shifts) + "\n")
    gaps = {key: gap_table(chosen, key) for key in GAP_TITLES}
    if any(gaps.values()):
        atomic_write_text(out / "gaps.md", "\n\n".join(f"{GAP_TITLES[k]}\n\n{t}" for k, t in gaps.items() if t) + "\n")
    summary = {"sweep": sweep["name"], "scale": sweep["scale"], "rule": rule, "selection": rule_.note,
               "pooled": list(pool), "sweeps": dirs, "dataset": dataset_summary(chosen),
               "trials": sweep["trials"], "runs_with_records": len(records),
               "table1": t1, "selected": picked, "selection_rules": by_rule, "iosm": io_rows,
               "tuning": {label: {m: {str(a): v for a, v in d.items()} for m, d in t.items()}
                          for label, t in tuning.items()},
               "figures": {k: (p.name if p else None) for k, p in figs.items()}}
    if len(tuning) == 1:  # one setting: method -> alpha -> numbers, as before variants existed
        summary["tuning"] = next(iter(summary["tuning"].values()))
    atomic_write_json(out / "report.json", _json_safe(summary))
    scale_note = ("" if sweep["scale"] == "full" else
                  f" This sweep ran at scale '{sweep['scale']}' (smaller images, fewer samples and epochs than "
                  f"the paper): its numbers are not comparable to the paper's column.")
    summary["scale_note"] = scale_note.strip()
    sections = [
        ("Table 1: unbiased accuracy", table1_markdown(t1), None),
        ("", NOTES["table1"] + f" Selection ({rule}): {rule_.note}. The chosen run and epoch of each number, "
             f"with its score and the path of its weights: selected.csv." + scale_note, None),
        ("Table 1 under each selection rule", rules_markdown(by_rule), None),
        ("", NOTES["rules"], None),
        *figure_sections(sections_of["fig3a"]),
        *figure_sections(sections_of["fig3b"]),
        *figure_sections(sections_of["fig5"]),
        *figure_sections(sections_of["tuning"]),
        ("IOSM: improvement over the standard model", iosm_markdown(io_rows), None),
        ("", NOTES["iosm"], None),
        *figure_sections(sections_of["p_bias"]),
        *[("Unbiased accuracy against p_bias, the table" + (f" ({label})" if label else ""), p_bias_markdown(d), None)
          for label, d in p_tables],
    ]
    if audits:
        sections.append(("Counterfactual audit: prediction flip rate per factor", audits, None))
        sections.append(("", "Share of single-factor changes that change the prediction (biasbench audit), mean "
                             "over the audited runs of each method, each audited at its selected epoch; runs "
                             "without such an audit are left out.", None))
    if shifts:
        sections += [(title, table, None) for title, table in shifts]
        sections.append(("", NOTES["shift"], None))
    for key, table in gaps.items():
        if table:
            sections.append((GAP_TITLES[key], table, None))
    if any(gaps.values()):
        sections.append(("", NOTES["gaps"], None))
    folders = f" from {len(dirs)} sweep folders ({', '.join(dirs)})" if len(dirs) > 1 else ""
    pooled = f" Pooled over: {', '.join(pool)}." if pool else ""
    sections.append(("About", f"Sweep {sweep['name']} (scale {sweep['scale']}){folders}: "
                              f"{len(records)} of {sweep['trials']} trials have records. "
                              f"Dataset: {summary['dataset']}. Selection rule: {rule}.{pooled}", None))
    write_index(out / "index.html", f"biasbench report: {sweep['name']}", sections)
    after = _snapshot(out)
    written = sorted({name for name, sig in after.items() if before.get(name) != sig} | {"report.json"})
    for name in earlier - set(written):  # an earlier report's file this one did not write: stale
        (out / name).unlink(missing_ok=True)
    atomic_write_json(out / "report.json", _json_safe({**summary, "files": written}))
    summary["files"] = written
    if len(dirs) == 1:  # a report of several sweeps belongs to no one sweep's tracker run
        _log_to_sweep_tracker(Path(dirs[0]), out, figs)
    return summary


def _snapshot(out: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime) of each file in ``out``: a file this build writes (atomically, or in place) changes one."""
    return {p.name: (st.st_ino, st.st_mtime_ns) for p in out.iterdir() if p.is_file() for st in [p.stat()]}


def _earlier_files(out: Path) -> set[str]:
    """The files an earlier report wrote into ``out`` (its ``report.json``'s ``files``): those this build does
    not write again are stale and removed (a figure of a variant that is gone, an audit table of runs no longer
    audited), while files the reports did not write (a user's) stay. Empty for a report made before ``files``
    was recorded, or an unreadable one."""
    try:
        files = json.loads((out / "report.json").read_text()).get("files")
    except (OSError, ValueError, AttributeError):
        return set()
    return {f for f in files if isinstance(f, str) and "/" not in f and f not in ("", ".", "..")} \
        if isinstance(files, list) else set()


def per_variant(variants, out: Path, key: str, title: str, stem: str, missing: str | None, draw) -> tuple:
    """One figure per setting variant (:func:`setting_variants`), so that runs of different settings never share
    a box or a line: ``(title, missing, {key: (section title, path or None)})``, the key ``fig3a`` for a report
    of one setting, ``fig3a[jpeg_quality=95]`` per variant (file ``fig3a_mmd_per_factor_jpeg_quality_95.png``,
    the label in the section title and the figure's). ``draw(runs, path, label)`` draws one and returns its
    path, or None when those runs hold no data for it; ``missing`` is what the index says when none was drawn
    (None: no section)."""
    import re

    figs = {}
    for label, runs in variants:
        slug = "_" + re.sub(r"[^A-Za-z0-9.-]+", "_", label).strip("_")
        k, slug, t = (f"{key}[{label}]", slug, f"{title} ({label})") if label else (key, "", title)
        figs[k] = (t, draw(runs, out / f"{stem}{slug}.png", label))
    return title, missing, figs


def figure_sections(entry: tuple) -> list[tuple[str, str | None, str | None]]:
    """index.html sections of a :func:`per_variant` entry: the figures drawn, or one section saying why there
    is none."""
    title, missing, figs = entry
    drawn = [(t, None, path.name) for t, path in figs.values() if path]
    return drawn or ([] if missing is None else [(title, missing, None)])


def run_audit(run, epoch: int) -> dict | None:
    """The audit of ``run``'s model at ``epoch`` (the selected epoch): ``audit-epochNNN/audit.json`` (``biasbench
    audit --epoch N``), else ``audit/audit.json`` when it audited that epoch's checkpoint; None without one."""
    from ..eval.audit import audit_dir

    if run.runs_dir is None:
        return None
    folder = run.runs_dir / run.run_id
    for path in (audit_dir(folder, epoch) / "audit.json", audit_dir(folder) / "audit.json"):
        try:
            res = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if res.get("checkpoint_epoch") == epoch:
            return res
    return None


def audit_table(chosen) -> str | None:
    """Markdown table of mean flip rates per method and factor (a block of rows per setting variant) over the
    selected runs that have an audit of their selected epoch (:func:`run_audit`)."""
    def flips(run, ep):
        res = run_audit(run, ep)
        return {f: v["flip_rate"] for f, v in (res or {}).get("factors", {}).items()}
    return factor_table(chosen, flips, "{:.3f}")


def gap_table(chosen, key: str) -> str | None:
    """Markdown table of a test-set metric per factor (``dp_gap`` or ``eo_gap``,
    :func:`biasbench.eval.metrics.prediction_gaps`; ``abcc``, :func:`biasbench.eval.metrics.probability_gap`),
    mean per method over the selected runs at their selected epoch; runs whose records predate the metric are
    left out."""
    def gaps(run, ep):
        factors = run.evals[ep].get("test", {}).get("factors", {})
        return {f: v[key] for f, v in factors.items() if isinstance(v, dict) and v.get(key) is not None}
    return factor_table(chosen, gaps, "{:.1f}")


def factor_table(chosen, values, fmt: str) -> str | None:
    """Markdown table, method x factor, of the mean of ``values(run, epoch)`` (factor -> number; NaN left out)
    over each method's selected runs (a block of rows per setting variant); None when no run has a value."""
    from ..data.factors import FACTORS

    return method_table(chosen, values, FACTORS, fmt)


def method_table(chosen, values, columns, fmt: str) -> str | None:
    """Markdown table, method x ``columns``, of the mean of ``values(run, epoch)`` (column -> number; NaN and other
    keys left out) over each method's selected runs (a block of rows per setting variant); None when no run has a
    value."""
    from statistics import mean

    from ..methods.registry import method_name, method_order

    variants = setting_variants(chosen)
    lead = len(variants) > 1
    lines = [("| variant " if lead else "") + "| method | " + " | ".join(columns) + " |",
             "|---" * (len(columns) + 1 + lead) + "|"]
    for label, runs in variants:
        got: dict = {}
        for run, ep in runs:
            for f, v in values(run, ep).items():
                if f in columns and v == v:
                    got.setdefault(run.method, {}).setdefault(f, []).append(v)
        for m in method_order(got):
            cells = [fmt.format(mean(got[m][f])) if f in got[m] else "–" for f in columns]
            lines.append((f"| {label} " if lead else "") + f"| {method_name(m)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) if len(lines) > 2 else None


RECORDED_TEST = "recorded test"
"""The shift table's first column: the runs' own unbiased test accuracy."""


def run_evaluations(run, epoch: int) -> dict[str, dict]:
    """Test metrics of ``run``'s model at ``epoch`` on other datasets (``biasbench evaluate``'s results in
    ``RUN/evaluations/``), keyed by how each dataset differs from the run's (:func:`biasbench.eval.shift.shift_label`);
    the run's own dataset left out."""
    from ..eval.shift import shift_label

    if run.runs_dir is None:
        return {}
    out = {}
    for path in sorted((run.runs_dir / run.run_id / "evaluations").glob(f"*-test-epoch{epoch:03d}.json")):
        try:
            res = json.loads(path.read_text())
            if not res.get("trained_on_this_dataset") and isinstance(res["metrics"]["accuracy"], (int, float)):
                out[shift_label(res)] = res["metrics"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out


def shift_tables(chosen) -> list[tuple[str, str]]:
    """``(title, markdown table)`` of the selected runs evaluated on other datasets at their selected epoch (empty
    when no run has such an evaluation): method x evaluated dataset, the mean test accuracy beside the same runs'
    recorded one; then, per evaluated dataset, method x factor, the mean MMD of the runs evaluated there, recorded
    and there."""
    evaluated = {(run.run_id, ep): run_evaluations(run, ep) for run, ep in chosen}  # each run's files read once
    labels = sorted({label for got in evaluated.values() for label in got})
    if not labels:
        return []

    def accuracies(run, ep):
        got = evaluated[run.run_id, ep]
        test = run.evals[ep].get("test", {}).get("accuracy")
        return {RECORDED_TEST: test, **{k: m["accuracy"] for k, m in got.items()}} if got and test is not None else {}

    def mmds(label, recorded):
        def values(run, ep):
            got = evaluated[run.run_id, ep]
            if label not in got:
                return {}
            metrics = run.evals[ep].get("test", {}) if recorded else got[label]
            return {f: v["mmd"] for f, v in metrics.get("factors", {}).items() if isinstance(v, dict) and "mmd" in v}
        return values
    out = [("Accuracy on other test sets (biasbench evaluate)",
            method_table(chosen, accuracies, [RECORDED_TEST, *labels], "{:.1f}"))]
    for label in labels:
        for recorded in (True, False):
            table = factor_table(chosen, mmds(label, recorded), "{:.1f}")
            if table:
                out.append((f"MMD per factor of the runs evaluated on {label}: "
                            + ("recorded (their own test set)" if recorded else "on that test set"), table))
    return [(t, table) for t, table in out if table]


def _log_to_sweep_tracker(sweep_dir: Path, out: Path, figs: dict) -> None:
    """Attach the report's tables and figures to the sweep-level tracker run, when the sweep had one."""
    path = sweep_dir / "sweep_tracker.json"
    if not path.is_file():
        return
    from ..track import BACKENDS, make_tracker

    ids = json.loads(path.read_text())
    names = [n for n in ids if n in BACKENDS]
    if not names:
        return
    t = make_tracker(",".join(names), str(sweep_dir / "runs"))
    t.start("report", resume_ids=ids)
    for p in [out / "table1.md", out / "iosm.md", *[f for f in figs.values() if f]]:
        if p.exists():
            t.log_artifact(str(p))
    t.finish("FINISHED")
