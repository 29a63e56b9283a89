"""``biasbench report SWEEP --out DIR``: tables, figures and index.html from a sweep's records.

Works on a partial sweep: whatever runs have evaluation records are used; missing cells are "–".
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import BiasbenchError
from ..utils import atomic_write_json, atomic_write_text
from . import figures as F
from .html import write_index
from .records import load_sweep, parse_rule, select
from .tables import (fig5_data, iosm, iosm_markdown, mmd_points, p_bias_data, table1, table1_csv, table1_latex,
                     table1_markdown, tuning_sensitivity)

NOTES = {
    "table1": "Unbiased accuracy = accuracy on the p_bias = 0.1 test set (%). Explicit methods: mean over their "
              "single-explicit-variable runs of a seed (the paper averages 7), then mean ± sample std over seeds.",
    "iosm": "IOSM (improvement over the standard model; the paper's exact definition could not be confirmed, "
            "this is ours): a method's test accuracy minus StdM's on the same seed and dataset, overall and on the "
            "majority and minority groups (mean over the seven factors), in points.",
}


def build_report(sweep_dir: str | os.PathLike, out: str | os.PathLike, rule: str = "final") -> dict:
    parse_rule(rule)
    sweep, records = load_sweep(sweep_dir)
    if not records:
        raise BiasbenchError(f"sweep {sweep_dir} has no finished evaluations yet; nothing to report")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    chosen = select(records, rule)
    t1 = table1(chosen)
    atomic_write_text(out / "table1.md", table1_markdown(t1) + "\n")
    atomic_write_text(out / "table1.csv", table1_csv(t1))
    atomic_write_text(out / "table1.tex", table1_latex(t1) + "\n")
    io_rows = iosm(chosen)
    atomic_write_text(out / "iosm.md", iosm_markdown(io_rows) + "\n")
    pts = mmd_points(chosen)
    tuning = tuning_sensitivity(records)
    figs = {
        "fig3a": F.fig3a(pts, out / "fig3a_mmd_per_factor.png"),
        "fig3b": F.fig3b(pts, out / "fig3b_mmd_per_method.png"),
        "fig5": F.fig5(fig5_data(chosen), out / "fig5_scalability.png"),
        "tuning": F.tuning_figure(tuning, out / "tuning_distribution.png"),
        "p_bias": F.p_bias_figure(p_bias_data(chosen), out / "p_bias.png"),
    }
    summary = {"sweep": sweep.get("name"), "scale": sweep.get("scale"), "rule": rule,
               "trials": len(sweep.get("trials", [])), "runs_with_records": len(records),
               "table1": t1, "iosm": io_rows, "tuning": {m: {str(a): v for a, v in d.items()} for m, d in tuning.items()},
               "figures": {k: (p.name if p else None) for k, p in figs.items()}}
    atomic_write_json(out / "report.json", summary)
    scale_note = ("" if sweep.get("scale") == "full" else
                  f" This sweep ran at scale '{sweep.get('scale')}' (smaller images, fewer samples and epochs than "
                  f"the paper): its numbers are not comparable to the paper's column.")
    summary["scale_note"] = scale_note.strip()
    sections = [
        ("Table 1: unbiased accuracy", table1_markdown(t1), None),
        ("", NOTES["table1"] + scale_note, None),
        ("Fig. 3a: MMD per factor", None if figs["fig3a"] else "no data", figs["fig3a"] and figs["fig3a"].name),
        ("Fig. 3b: MMD per method", None if figs["fig3b"] else "no data", figs["fig3b"] and figs["fig3b"].name),
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
    sections.append(("About", f"Sweep {sweep.get('name')} (scale {sweep.get('scale')}): "
                              f"{len(records)} of {len(sweep.get('trials', []))} trials have records. "
                              f"Selection rule: {rule}.", None))
    write_index(out / "index.html", f"biasbench report: {sweep.get('name')}", sections)
    summary["files"] = sorted(p.name for p in out.iterdir())
    return summary
