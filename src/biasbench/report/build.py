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
from .records import load_sweeps, parse_rule, select
from .tables import (dataset_summary, fig5_data, iosm, iosm_markdown, mmd_points, p_bias_data, setting_variants,
                     table1, table1_csv, table1_latex, table1_markdown, tuning_sensitivity)

NOTES = {
    "table1": "Unbiased accuracy = accuracy on the p_bias = 0.1 test set (%). Explicit methods: mean over their "
              "single-explicit-variable runs of a seed (the paper averages 7), then mean ± sample std over seeds; "
              "runs that differ in a setting other than seed and tuned hyperparameters (dataset settings such as "
              "p_bias or jpeg_quality, the model, its arguments, the optimizer, the schedule) get one block of rows "
              "per variant.",
    "iosm": "IOSM (improvement over the standard model; the paper's exact definition could not be confirmed, "
            "this is ours): a method's test accuracy minus StdM's on the same seed and dataset, overall and on the "
            "majority and minority groups (mean over the seven factors), in points.",
}


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
    parse_rule(rule)
    sweep, records = load_sweeps(sweep_dirs, pool)
    dirs = sweep["sweeps"]
    if not records:
        raise BiasbenchError(f"sweep {' '.join(dirs)} has no finished evaluations yet; nothing to report")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    chosen = select(records, rule)
    t1 = table1(chosen)
    atomic_write_text(out / "table1.md", table1_markdown(t1) + "\n")
    atomic_write_text(out / "table1.csv", table1_csv(t1))
    atomic_write_text(out / "table1.tex", table1_latex(t1) + "\n")
    io_rows = iosm(chosen)
    atomic_write_text(out / "iosm.md", iosm_markdown(io_rows) + "\n")
    tuning = tuning_sensitivity(records)
    fig3 = fig3_per_variant(chosen, out)
    figs = {
        **{k: v for k, (_, v) in fig3.items()},
        "fig5": F.fig5(fig5_data(chosen), out / "fig5_scalability.png"),
        "tuning": F.tuning_figure(tuning, out / "tuning_distribution.png"),
        "p_bias": F.p_bias_figure(p_bias_data(chosen), out / "p_bias.png"),
    }
    audits = audit_table(chosen)
    if audits:
        atomic_write_text(out / "audit.md", audits + "\n")
    summary = {"sweep": sweep["name"], "scale": sweep["scale"], "rule": rule, "pooled": list(pool),
               "sweeps": dirs, "dataset": dataset_summary(chosen),
               "trials": sweep["trials"], "runs_with_records": len(records),
               "table1": t1, "iosm": io_rows, "tuning": {m: {str(a): v for a, v in d.items()} for m, d in tuning.items()},
               "figures": {k: (p.name if p else None) for k, p in figs.items()}}
    atomic_write_json(out / "report.json", _json_safe(summary))
    scale_note = ("" if sweep["scale"] == "full" else
                  f" This sweep ran at scale '{sweep['scale']}' (smaller images, fewer samples and epochs than "
                  f"the paper): its numbers are not comparable to the paper's column.")
    summary["scale_note"] = scale_note.strip()
    sections = [
        ("Table 1: unbiased accuracy", table1_markdown(t1), None),
        ("", NOTES["table1"] + scale_note, None),
        *[(title, None if path else "no data", path and path.name) for title, path in fig3.values()],
        ("Fig. 5: accuracy against the number of explicit variables",
         None if figs["fig5"] else "no runs with cumulative explicit sets (run the paper-fig5 preset)",
         figs["fig5"] and figs["fig5"].name),
        ("Tuning-distribution sensitivity", None if figs["tuning"] else "no data",
         figs["tuning"] and figs["tuning"].name),
        ("IOSM: improvement over the standard model", iosm_markdown(io_rows), None),
        ("", NOTES["iosm"], None),
    ]
    if figs["p_bias"]:
        sections.append(("Unbiased accuracy against p_bias", None, figs["p_bias"].name))
    if audits:
        sections.append(("Counterfactual audit: prediction flip rate per factor", audits, None))
        sections.append(("", "Share of single-factor changes that change the prediction (biasbench audit), mean "
                             "over the audited runs of each method; runs without an audit are left out.", None))
    folders = f" from {len(dirs)} sweep folders ({', '.join(dirs)})" if len(dirs) > 1 else ""
    pooled = f" Pooled over: {', '.join(pool)}." if pool else ""
    sections.append(("About", f"Sweep {sweep['name']} (scale {sweep['scale']}){folders}: "
                              f"{len(records)} of {sweep['trials']} trials have records. "
                              f"Dataset: {summary['dataset']}. Selection rule: {rule}.{pooled}", None))
    write_index(out / "index.html", f"biasbench report: {sweep['name']}", sections)
    summary["files"] = sorted(p.name for p in out.iterdir())
    if len(dirs) == 1:  # a report of several sweeps belongs to no one sweep's tracker run
        _log_to_sweep_tracker(Path(dirs[0]), out, figs)
    return summary


def fig3_per_variant(chosen, out: Path) -> dict:
    """Fig. 3a and 3b: ``{key: (section title, path or None)}``, keys ``fig3a`` and ``fig3b``; one pair per
    setting variant (``fig3a[jpeg_quality=95]``, files ``fig3a_mmd_per_factor_jpeg_quality_95.png``) when the
    sweep varies the dataset or another compared setting, so that MMDs of different settings do not share a
    box."""
    import re

    variants = setting_variants(chosen)
    figs = {}
    for label, runs in variants:
        pts = mmd_points(runs)
        key, slug, title = (f"[{label}]", "_" + re.sub(r"[^A-Za-z0-9.-]+", "_", label), f" ({label})") \
            if label else ("", "", "")
        figs[f"fig3a{key}"] = (f"Fig. 3a: MMD per factor{title}",
                               F.fig3a(pts, out / f"fig3a_mmd_per_factor{slug}.png", label))
        figs[f"fig3b{key}"] = (f"Fig. 3b: MMD per method{title}",
                               F.fig3b(pts, out / f"fig3b_mmd_per_method{slug}.png", label))
    return figs


def audit_table(chosen) -> str | None:
    """Markdown table of mean flip rates per method and factor from runs that have ``audit/audit.json``."""
    from statistics import mean

    from ..data.factors import FACTORS
    from .tables import METHOD_NAMES, METHOD_ORDER

    flips: dict = {}
    for run, _ in chosen:
        path = run.runs_dir / run.run_id / "audit" / "audit.json" if run.runs_dir else None
        if path is None or not path.is_file():
            continue
        try:
            res = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        for f in FACTORS:
            if f in res.get("factors", {}):
                flips.setdefault(run.method, {}).setdefault(f, []).append(res["factors"][f]["flip_rate"])
    if not flips:
        return None
    lines = ["| method | " + " | ".join(FACTORS) + " |", "|---" * (len(FACTORS) + 1) + "|"]
    for m in [m for m in METHOD_ORDER if m in flips]:
        cells = [f"{mean(flips[m][f]):.3f}" if f in flips[m] else "–" for f in FACTORS]
        lines.append(f"| {METHOD_NAMES[m]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


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
