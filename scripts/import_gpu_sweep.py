"""Bring a GPU call's sweep records home: the counterpart of ``benchmarks/gpu.py --archive``.

    python3 scripts/import_gpu_sweep.py ARCHIVE.tgz DEST_SWEEP [--dry-run]

``ARCHIVE`` is a ``sweep.tgz`` that came back from a GPU call (``sweep/sweep.json``, ``sweep/runs/<id>/*.json``,
checkpoints of unfinished runs, maybe ``report/``), or a check's archive whose one top-level folder (for example
``lnl-check/``) holds the sweep.json; ``DEST_SWEEP`` is a sweep folder to commit, such as
``docs/reproduction/paper-table1-seed2/sweep``, new or holding earlier calls' runs. The archive is unpacked into
a fresh temporary folder (never into a folder that may hold another call's runs: the sixth GPU session's first
copy picked up a stale folder's runs that way), then:

- each *finished* run's JSON records (config, metrics, status, summary) are copied to ``DEST/runs/<id>/``; no
  checkpoints, predictions or weights. A run that DEST already holds finished is left as it is;
- unfinished runs are left out (they resume from the archive's checkpoints on a GPU, not here);
- ``sweep.json``'s trials become the union of DEST's and the archive's, by trial id, DEST's order first: a call
  that ran a subset of the preset (``gpu.py --first ... --trials 14`` writes a sweep.json of those 14 only)
  adds its runs to the whole preset's record without shrinking it.

Prints what it did, one line; ``--dry-run`` prints it and writes nothing. Exit code 2 with one line for a
missing or unreadable archive, or one without ``sweep/sweep.json`` (or a single other folder holding one).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

RECORDS = ("config.json", "metrics.json", "status.json", "summary.json")


def _state(run: Path) -> str | None:
    try:
        return json.loads((run / "status.json").read_text()).get("state")
    except (OSError, json.JSONDecodeError):
        return None


def _sweep_folder(root: Path) -> Path:
    """The archive's sweep folder under ``root``: ``sweep/`` (``gpu.py --archive``), else the one top-level
    folder that holds a sweep.json (``scripts/gpu_session.sh``'s checks pack ``lnl-check/`` and the like)."""
    if (root / "sweep").is_dir():
        return root / "sweep"
    found = sorted(d for d in root.iterdir() if (d / "sweep.json").is_file())
    return found[0] if len(found) == 1 else root / "sweep"


def import_archive(archive: str | Path, dest: str | Path, dry_run: bool = False) -> dict:
    """Merge ``archive``'s finished runs and trials into the sweep folder ``dest`` (module docstring). Returns
    counts: ``added``, ``kept`` (finished in DEST already), ``unfinished`` (left out), ``trials`` (in the merged
    sweep.json), ``new_trials``."""
    archive, dest = Path(archive), Path(dest)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                tar.extractall(tmp, filter="data")  # no absolute paths, links out of tmp, or device files
        except (OSError, tarfile.TarError) as exc:
            raise ValueError(f"cannot read {archive}: {exc}") from None
        src = _sweep_folder(Path(tmp))
        try:
            theirs = json.loads((src / "sweep.json").read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{archive} holds no readable {src.name}/sweep.json ({exc})") from None
        counts = {"added": 0, "kept": 0, "unfinished": 0}
        for run in sorted((src / "runs").glob("*")) if (src / "runs").is_dir() else []:
            if _state(run) != "finished":
                counts["unfinished"] += 1
                continue
            if _state(dest / "runs" / run.name) == "finished":
                counts["kept"] += 1
                continue
            counts["added"] += 1
            if not dry_run:
                (dest / "runs" / run.name).mkdir(parents=True, exist_ok=True)
                for name in RECORDS:
                    if (run / name).is_file():
                        shutil.copyfile(run / name, dest / "runs" / run.name / name)
        ours = json.loads((dest / "sweep.json").read_text()) if (dest / "sweep.json").is_file() else None
        merged = dict(ours or theirs)
        trials = {t["trial_id"]: t for t in (ours or {}).get("trials", [])}
        new = [t for t in theirs.get("trials", []) if t["trial_id"] not in trials]
        for t in theirs.get("trials", []):  # a run id the archive knows and DEST's record does not
            if t["trial_id"] in trials and t.get("run_id") and not trials[t["trial_id"]].get("run_id"):
                trials[t["trial_id"]] = {**trials[t["trial_id"]], "run_id": t["run_id"]}
        merged["trials"] = [*trials.values(), *new]
        if not dry_run:
            dest.mkdir(parents=True, exist_ok=True)
            (dest / "sweep.json").write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")  # as sweeps write it
        return {**counts, "trials": len(merged["trials"]), "new_trials": len(new) if ours else 0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("archive", help="a sweep.tgz from benchmarks/gpu.py --archive")
    ap.add_argument("dest", help="the sweep folder to merge it into (created if missing)")
    ap.add_argument("--dry-run", action="store_true", help="say what would change, write nothing")
    args = ap.parse_args(argv)
    try:
        c = import_archive(args.archive, args.dest, args.dry_run)
    except ValueError as exc:
        print(f"import_gpu_sweep: error: {exc}", file=sys.stderr)
        return 2
    print(f"{'would add' if args.dry_run else 'added'} {c['added']} finished runs to {args.dest} ({c['kept']} "
          f"there already, {c['unfinished']} unfinished left out); sweep.json: {c['trials']} trials "
          f"({c['new_trials']} new)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
