"""Terminal summaries of runs, computed from the run folders' records."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..data.factors import FACTORS
from ..eval.metrics import GAP_METRICS
from ..errors import BiasbenchError
from ..utils import read_json_record


def _num(v, width: int = 8) -> str:
    """A metric in a fixed-width column; ``-`` when it is missing (older records) or NaN (no images to measure
    it on, such as the minority of a factor held fixed)."""
    return f"{v:{width}.2f}" if isinstance(v, (int, float)) and v == v else f"{'-':>{width}s}"


def split_lines(rows: list[tuple[str, dict]], label_width: int = 16, first: str = "split") -> list[str]:
    """A header and one line per ``(label, split metrics)``: accuracy, MPA, worst group, ECE."""
    return [f"{first:{label_width}s}{'accuracy':>10s}{'MPA':>8s}{'worst group':>13s}{'ECE':>8s}"] + [
        f"{label:{label_width}s}{_num(m['accuracy'], 10)}{_num(m['mpa'])}{_num(m['worst_group'], 13)}"
        f"{_num(m.get('ece'))}" for label, m in rows]


def factor_lines(factors: dict) -> list[str]:
    """A header and one line per factor of a split's ``factors`` record: majority, minority, MMD and the gaps."""
    return [f"{'factor':18s}{'majority':>10s}{'minority':>10s}{'MMD':>8s}{'DP gap':>8s}{'EO gap':>8s}{'ABCC':>8s}"] + [
        f"{f:18s}{_num(factors[f]['majority'], 10)}{_num(factors[f]['minority'], 10)}{_num(factors[f]['mmd'])}"
        + "".join(_num(factors[f].get(k)) for k in GAP_METRICS) for f in FACTORS]


def format_run_summary(result: dict) -> str:
    """The summary table ``biasbench train`` prints: accuracies per split, then per-factor bias on test."""
    cfg = result.get("config", {})
    final = result["final"]
    lines = [f"run {result['run_id']} ({result['status']})  {cfg.get('method')} / {cfg.get('model')}  "
             f"seed {cfg.get('seed')}  epoch {result['epoch']}  -> {result['run_dir']}", ""]
    lines += split_lines([("test (unbiased)" if split == "test" else split, final[split])
                          for split in ("train", "val", "balanced_val", "test") if split in final])
    if "tuning" in final:
        a = final["tuning"]["alpha"]
        lines.append("tuning-distribution accuracy (val + balanced_val): "
                     + ", ".join(f"alpha={float(k):g}: {v:.2f}" for k, v in a.items()))
    test = final.get("test")
    if test:
        lines += ["", "bias on the unbiased test set, in points: MMD = majority - minority accuracy; DP and EO gap = "
                      "how far the",
                  "predicted classes' distribution moves across the factor's values, ABCC = the same for the "
                  "probabilities",
                  "(0: not at all, 100: they follow the factor; noisy with few images)",
                  *factor_lines(test["factors"])]
    return "\n".join(lines)


def run_dirs(root: str | os.PathLike) -> list[Path]:
    """The run folders in ``root`` (the ``--out`` of ``train``), or in ``root/runs`` when ``root`` is a sweep
    folder (it holds ``sweep.json``), in name order."""
    root = Path(root)
    if not root.is_dir():
        raise BiasbenchError(f"{root} is not a folder of runs")
    if (root / "sweep.json").is_file() and (root / "runs").is_dir():
        root = root / "runs"
    return [cfg_path.parent for cfg_path in sorted(root.glob("*/config.json"))]


def finished_runs(root: str | os.PathLike, verb: str, log) -> list[tuple[str, Path]]:
    """``(tag, run folder)`` for each finished run of :func:`run_dirs`, ``tag`` = ``[i/n] <run_id>`` (its place
    among all the runs, for progress lines); each unfinished run gets a line ``tag: state, not <verb>ed`` in
    ``log``. No run at all is an error ("holds no runs to <verb>")."""
    runs = run_dirs(root)
    if not runs:
        raise BiasbenchError(f"{root} holds no runs to {verb}")
    done = verb + ("d" if verb.endswith("e") else "ed")
    out = []
    for i, run in enumerate(runs, 1):
        tag = f"[{i}/{len(runs)}] {run.name}"
        state = read_json_record(run / "status.json", {}).get("state")
        if state == "finished":
            out.append((tag, run))
        else:
            log(f"{tag}: {state or 'no status'}, not {done}")
    return out


def collect_runs(root: str | os.PathLike) -> list[dict]:
    """One row per run folder of :func:`run_dirs`."""
    rows = []
    for run in run_dirs(root):
        cfg_path = run / "config.json"
        rec = read_json_record(cfg_path)
        status = read_json_record(run / "status.json", {})
        metrics = read_json_record(run / "metrics.json", {})
        cfg = rec.get("config", {})
        evals = [h for h in metrics.get("history", []) if h.get("split") == "test"]
        test = evals[-1]["metrics"] if evals else None
        rows.append({
            "run_id": rec.get("run_id", run.name), "method": cfg.get("method"), "model": cfg.get("model"),
            "explicit": ",".join(cfg.get("explicit") or []) or "-",
            "seed": cfg.get("seed"), "epochs": cfg.get("epochs"), "state": status.get("state", "unknown"),
            "epoch": status.get("epoch", 0),
            "test_accuracy": test["accuracy"] if test else None,
            "worst_group": test["worst_group"] if test else None,
            "mean_mmd": float(np.mean([test["factors"][f]["mmd"] for f in FACTORS])) if test else None,
        })
    return rows


def format_runs(rows: list[dict]) -> str:
    if not rows:
        return "no runs"
    head = f"{'run_id':14s}{'method':10s}{'model':16s}{'explicit':20s}{'seed':>5s}{'state':>10s}{'epoch':>8s}" \
           f"{'test acc':>10s}{'worst grp':>11s}{'mean MMD':>10s}"
    lines = [head]
    for r in rows:
        def f(v):
            return f"{v:.2f}" if v is not None else "-"
        explicit = r["explicit"] if len(r["explicit"]) <= 19 else r["explicit"][:16] + "..."
        lines.append(f"{r['run_id']:14s}{r['method']:10s}{r['model']:16s}{explicit:20s}{r['seed']:>5d}{r['state']:>10s}"
                     f"{str(r['epoch']) + '/' + str(r['epochs']):>8s}{f(r['test_accuracy']):>10s}"
                     f"{f(r['worst_group']):>11s}{f(r['mean_mmd']):>10s}")
    return "\n".join(lines)
