"""scripts/import_gpu_sweep.py: a GPU call's archive (benchmarks/gpu.py's ``archive``) merged into a committed
sweep folder: finished runs' JSON only, nothing of unfinished runs, DEST's finished runs untouched, and the
trials of a partial call added to the whole preset's record without shrinking it."""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "scripts"))
import gpu  # noqa: E402  (benchmarks/gpu.py)
import import_gpu_sweep as imp  # noqa: E402  (scripts/import_gpu_sweep.py)


def _sweep(root: Path, trials: list[dict], runs: dict[str, str]) -> Path:
    """A sweep folder: ``runs`` maps run ids to their state; every run has records, a checkpoint and weights."""
    (root / "runs").mkdir(parents=True)
    (root / "sweep.json").write_text(json.dumps({"name": "paper-table1", "scale": "full", "trials": trials}))
    for run_id, state in runs.items():
        run = root / "runs" / run_id
        (run / "weights").mkdir(parents=True)
        for name in ("config.json", "metrics.json", "summary.json"):
            (run / name).write_text(json.dumps({"run_id": run_id, "from": root.name}))
        (run / "status.json").write_text(json.dumps({"state": state}))
        (run / "checkpoint.pt").write_bytes(b"ckpt")
        (run / "weights" / "epoch015.pt").write_bytes(b"w")
    return root


def test_import_merges_finished_runs_and_trials(tmp_path, capsys):
    trials = [{"trial_id": f"t{i}", "run_id": None, "config": {}, "dataset": {}} for i in range(6)]
    dest = _sweep(tmp_path / "dest", trials, {"r0": "finished", "r1": "running"})
    call = _sweep(tmp_path / "call", [{**t, "run_id": f"r{i}"} for i, t in enumerate(trials[:3])] +
                  [{"trial_id": "t9", "run_id": "r9", "config": {}, "dataset": {}}],
                  {"r0": "finished", "r1": "finished", "r2": "running", "r9": "finished"})
    gpu.archive(call, call / "report", tmp_path / "sweep.tgz")
    before = (dest / "sweep.json").read_text()
    assert imp.main([str(tmp_path / "sweep.tgz"), str(dest), "--dry-run"]) == 0
    assert "would add 2 finished runs" in capsys.readouterr().out and (dest / "sweep.json").read_text() == before
    assert imp.main([str(tmp_path / "sweep.tgz"), str(dest)]) == 0
    assert capsys.readouterr().out.startswith(
        f"added 2 finished runs to {dest} (1 there already, 1 unfinished left out); sweep.json: 7 trials (1 new)")
    # DEST's own finished run untouched; r1 (running in DEST, finished in the call) replaced by the call's records
    assert json.loads((dest / "runs" / "r0" / "config.json").read_text())["from"] == "dest"
    assert json.loads((dest / "runs" / "r1" / "status.json").read_text())["state"] == "finished"
    assert json.loads((dest / "runs" / "r1" / "metrics.json").read_text())["from"] == "call"
    assert sorted(p.name for p in (dest / "runs" / "r9").iterdir()) == \
        ["config.json", "metrics.json", "status.json", "summary.json"]  # JSON only: no checkpoint, no weights
    assert not (dest / "runs" / "r2").exists()  # unfinished: resumes on a GPU, not committed
    merged = json.loads((dest / "sweep.json").read_text())
    assert [t["trial_id"] for t in merged["trials"]] == ["t0", "t1", "t2", "t3", "t4", "t5", "t9"]
    assert [t["run_id"] for t in merged["trials"][:4]] == ["r0", "r1", "r2", None]  # run ids the call learnt
    # a second import changes nothing
    assert imp.main([str(tmp_path / "sweep.tgz"), str(dest)]) == 0
    assert "added 0 finished runs" in capsys.readouterr().out
    # into a new folder: the archive's sweep.json as it is
    assert imp.main([str(tmp_path / "sweep.tgz"), str(tmp_path / "new")]) == 0
    assert len(json.loads((tmp_path / "new" / "sweep.json").read_text())["trials"]) == 4
    # not an archive: one line, exit 2, nothing written
    (tmp_path / "bad.tgz").write_bytes(b"not a tar")
    assert imp.main([str(tmp_path / "bad.tgz"), str(tmp_path / "none")]) == 2
    assert "cannot read" in capsys.readouterr().err and not (tmp_path / "none").exists()


def test_import_reads_a_check_archive(tmp_path, capsys):
    """gpu_session.sh's checks pack their sweep as ``lnl-check/...`` (JSON only): that folder is the sweep."""
    import tarfile
    _sweep(tmp_path / "lnl-check", [{"trial_id": "t0", "run_id": "r0", "config": {}, "dataset": {}}],
           {"r0": "finished"})
    with tarfile.open(tmp_path / "check.tgz", "w:gz") as tar:
        tar.add(tmp_path / "lnl-check", arcname="lnl-check")
    assert imp.main([str(tmp_path / "check.tgz"), str(tmp_path / "dest")]) == 0
    assert capsys.readouterr().out.startswith("added 1 finished runs")
    assert (tmp_path / "dest" / "runs" / "r0" / "summary.json").is_file()
    # two candidate folders and no sweep/: refused with one line, nothing written
    _sweep(tmp_path / "zg-check", [], {})
    with tarfile.open(tmp_path / "two.tgz", "w:gz") as tar:
        tar.add(tmp_path / "lnl-check", arcname="lnl-check")
        tar.add(tmp_path / "zg-check", arcname="zg-check")
    assert imp.main([str(tmp_path / "two.tgz"), str(tmp_path / "other")]) == 2
    assert "holds no readable sweep/sweep.json" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()
