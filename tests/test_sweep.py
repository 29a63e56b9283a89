import csv
import html
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from biasbench.cli import main
from biasbench.errors import BiasbenchError
from biasbench.report.build import build_report
from biasbench.sweep import runners
from biasbench.sweep.runners import run_sweep
from biasbench.sweep.spec import expand, load_spec, presets, select_trials

MICRO = """
name: micro
scale: tiny
base: {epochs: 1, eval_epochs: [1], batch_size: 128}
dataset: {n_train: 300, n_val: 60, n_test: 100}
grid:
  method: [stdm, upweight]
  seed: [0, 1]
"""


def _write(tmp_path, text, name="sweep.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_presets_expand_to_the_papers_protocols():
    t1 = expand(presets()["paper-table1"], "tiny")
    methods = [t.config["method"] for t in t1]
    assert len(t1) == 38  # StdM, LfF, SD once; five explicit methods x seven single factors
    assert methods.count("lff") == 1 and methods.count("upweight") == 7
    assert {tuple(t.config["explicit"]) for t in t1 if t.config["method"] == "irm"} == {
        (f,) for f in ["digit_color", "background_color", "digit_position", "distractor_shape",
                       "distractor_color", "texture", "texture_color"]}
    f5 = expand(presets()["paper-fig5"], "tiny")
    sizes = sorted(len(t.config["explicit"]) for t in f5 if t.config["method"] == "rubi")
    assert sizes == [1, 2, 3, 4, 5, 6, 7]
    more = [t.config["method"] for t in expand(presets()["more-methods"], "tiny")]
    assert len(more) == 55 and all(more.count(m) == 1 for m in ("cvar_dro", "focal", "jtt", "mixup", "rebias"))
    assert all(more.count(m) == 7 for m in ("coral", "dfr", "fish", "learned_mixin", "lisa", "resample", "vrex"))
    pb = expand(presets()["p-bias"], "tiny")
    assert sorted({next(iter(set(t.dataset.p_bias.values()))) for t in pb}) == [0.1, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]
    sb = expand(presets()["single-bias"], "full")
    assert len(sb) == 4 * 10  # four rho; StdM, LfF, SD, ReBias and the six explicit methods once each
    assert {(t.dataset.p_bias["background_color"], t.config["method"]) for t in sb} == {
        (rho, m) for rho in (0.99, 0.995, 0.997, 0.999) for m in
        ("stdm", "lff", "sd", "rebias", "upweight", "group_dro", "rubi", "lnl", "irm", "learned_mixin")}
    assert all(set(t.dataset.p_bias.values()) == {0.1, t.dataset.p_bias["background_color"]} for t in sb)
    assert {tuple(t.config["explicit"]) for t in sb} == {(), ("background_color",)}
    full = expand(presets()["paper-table1"], "full", seeds=[0, 1, 2])
    assert len(full) == 3 * 38 and full[0].dataset.cell_size == 32 and full[0].config["epochs"] == 30
    ref, plain = (expand(presets()[p], "full", seeds=[0]) for p in ("paper-table1-reference", "paper-table1"))
    assert [t.config for t in ref] == [t.config for t in plain]  # the same trials, on the reference's images
    assert {(t.dataset.drawing, t.dataset.jpeg_quality) for t in ref} == {("reference", 95)}
    assert not {t.trial_id for t in ref} & {t.trial_id for t in full}


def test_seeds_override_included_trials_without_adding_a_point():
    """--seeds on an include-only sweep: each included trial once per seed, and no default (stdm) point;
    the trial ids equal the preset's, so such a file can reorder or cut a preset's trials."""
    table1 = expand(presets()["paper-table1"], "tiny", seeds=[0])
    picked = [t for t in table1 if t.config["method"] in ("lnl", "lff")][::-1]
    spec = {"name": "paper-table1",
            "include": [{k: t.config[k] for k in ("method", "explicit", "seed")} for t in picked]}
    got = expand(spec, "tiny", seeds=[0])
    assert [t.trial_id for t in got] == [t.trial_id for t in picked]
    assert [t.config["seed"] for t in expand(spec, "tiny", seeds=[3, 4])] == [3, 4] * len(picked)


def test_only_selects_trials_by_axis_values():
    """--only KEY=VALUE[,VALUE]: values within a filter are alternatives, filters all apply; explicit sets are
    matched whole, hyperparameters against the method's defaults, p_bias against any factor's."""
    table1 = expand(presets()["paper-table1"], "tiny", seeds=[0, 1])

    def methods(only):
        return sorted(t.config["method"] for t in select_trials(table1, only))
    assert select_trials(table1, []) == table1
    assert methods(["method=lff,stdm"]) == ["lff", "lff", "stdm", "stdm"]
    assert methods(["explicit=texture", "seed=1"]) == ["group_dro", "irm", "lnl", "rubi", "upweight"]
    assert methods(["explicit=none", "seed=0"]) == ["lff", "sd", "stdm"]
    assert methods(["explicit=none", "seed=0", "method!=lff,sd"]) == ["stdm"]
    assert len(select_trials(table1, ["method!=lff"])) == 74
    picked = select_trials(table1, ["method=group_dro", "hparams.step_size=0.001", "explicit=digit_color"])
    assert [t.config["explicit"] for t in picked] == [["digit_color"]] * 2  # the default step size, 1e-3
    with pytest.raises(BiasbenchError, match="values of hparams.step_size here: 0.001"):
        select_trials(table1, ["method=group_dro", "hparams.step_size=1e-2"])
    tid = table1[5].trial_id
    assert select_trials(table1, [f"trial={tid[:6]}"]) == [table1[5]]
    fig5 = expand(presets()["paper-fig5"], "tiny")
    two = select_trials(fig5, ["method=rubi", "explicit=texture+distractor_shape"])
    assert [sorted(t.config["explicit"]) for t in two] == [["distractor_shape", "texture"]]
    single = expand(presets()["single-bias"], "tiny")
    rho = select_trials(single, ["dataset.p_bias=0.997"])
    assert len(rho) == 10 and {t.dataset.p_bias["background_color"] for t in rho} == {0.997}


@pytest.mark.parametrize("only, message", [
    ("method", "--only takes KEY=VALUE[,VALUE] or KEY!=VALUE[,VALUE], got 'method'"),
    ("method=lff,", "--only takes KEY=VALUE[,VALUE]"),
    ("colour=red", "--only colour=red: unknown sweep axis 'colour'"),
    ("method=lf", "--only method=lf: no trial of the 38 left has that value (values of method here: group_dro, irm,"),
    ("method!=rebais", "--only method!=rebais: no trial of the 38 left has that value (values of method here:"),
    ("seed!=0", "--only seed!=0 leaves none of the 38 trials (values of seed here: 0)"),
    ("seed=3", "(values of seed here: 0)"),
])
def test_only_rejects_bad_filters(only, message):
    table1 = expand(presets()["paper-table1"], "tiny")
    with pytest.raises(BiasbenchError) as info:
        select_trials(table1, [only])
    assert message in str(info.value)


def test_only_runs_a_subset_and_the_sweep_lists_every_trial(tmp_path, capsys):
    """A sweep with --only trains the selected trials alone; sweep.json still lists the whole sweep, so a later
    run of the rest skips them and the report finds every run."""
    path = _write(tmp_path, MICRO)
    common = ["--data", str(tmp_path / "data"), "--out", str(tmp_path / "s")]
    assert main(["sweep", path, *common, "--only", "method=upweight", "--only", "seed=1", "--dry-run"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 2 and "upweight" in out[0] and "seed=1" in out[0]
    assert out[-1] == "1 trials (--only: 1 of 4) in 1 units of work"
    assert main(["sweep", path, *common, "--only", "method=upweight", "--only", "seed=1"]) == 0
    assert "1 trials: 1 trained, 0 already finished" in capsys.readouterr().out
    listed = json.loads((tmp_path / "s" / "sweep.json").read_text())["trials"]
    assert len(listed) == 4 and sum(t["run_id"] is not None for t in listed) == 1
    assert len(list((tmp_path / "s" / "runs").glob("*/metrics.json"))) == 1
    assert main(["sweep", path, *common]) == 0
    assert "4 trials: 3 trained, 1 already finished" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "s"), "--out", str(tmp_path / "rep")]) == 0
    chosen = list(csv.DictReader((tmp_path / "rep" / "selected.csv").open()))
    assert sorted((r["method"], r["seed"]) for r in chosen) == [("stdm", "0"), ("stdm", "1"), ("upweight", "0"),
                                                                ("upweight", "1")]
    gaps = (tmp_path / "rep" / "gaps.md").read_text()  # recorded by training, per factor, on the test set
    assert "Equalized-odds gap per factor (test)" in gaps and "| UpWt | " in gaps and "| StdM | " in gaps
    assert "Area between the probability CDFs (ABCC) per factor (test)" in gaps  # from the logits
    for r in chosen:  # the weights each number was computed with, kept by the run at its chosen epoch
        assert r["epoch"] == "1" and r["weights"] == str(tmp_path / "s" / "runs" / r["run_id"] / "weights" /
                                                          "epoch001.pt") and Path(r["weights"]).is_file()
    assert main(["sweep", path, *common, "--only", "method=stdm,upweight", "--only", "seed=9"]) == 2
    assert "--only seed=9: no trial of the 4 left has that value (values of seed here: 0, 1)" in capsys.readouterr().err
    assert len(json.loads((tmp_path / "s" / "sweep.json").read_text())["trials"]) == 4  # untouched by the error


def test_precision_and_layout_overrides_reach_every_trial_as_new_trials(tmp_path, capsys):
    """--precision and --channels-last set every trial's setting (the CPU's opt-ins: bf16 autocast, channels-last):
    the trained run records them, and they are other trials than the sweep's own (other ids)."""
    path = _write(tmp_path, MICRO)
    common = ["--data", str(tmp_path / "data"), "--out", str(tmp_path / "s"), "--only", "method=stdm", "--only",
              "seed=0"]
    assert main(["sweep", path, *common, "--precision", "bf16", "--channels-last", "on"]) == 0
    assert "1 trials: 1 trained, 0 already finished" in capsys.readouterr().out
    (cfg,) = [json.loads(p.read_text())["config"] for p in (tmp_path / "s" / "runs").glob("*/config.json")]
    assert cfg["precision"] == "bf16" and cfg["channels_last"] == "on" and cfg["method"] == "stdm"
    listed = {t["trial_id"] for t in json.loads((tmp_path / "s" / "sweep.json").read_text())["trials"]}
    assert len(listed) == 4 and not listed & {t.trial_id for t in expand(load_spec(path))}
    with pytest.raises(SystemExit) as exc:
        main(["sweep", path, *common, "--channels-last", "sideways"])
    assert exc.value.code == 2 and "invalid choice: 'sideways'" in capsys.readouterr().err


def test_model_kwarg_reaches_every_trial_merged_over_the_sweeps(tmp_path, capsys):
    """--model-kwarg merges into every trial's model_kwargs (the grid's too, key by key): the run records it, the
    trial ids are those of a sweep file with the same options in its base (as benchmarks/gpu.py writes it), and a
    bad option is one line and exit 2 with nothing written."""
    spec = {"grid": {"method": ["stdm"], "model_kwargs": [{}, {"fold_input_bn": True, "conv1_pad_to": 4}]}}
    merged = expand(spec, "tiny", [0], {"fold_input_bn": "normalized"})
    assert [t.config["model_kwargs"] for t in merged] == [{"fold_input_bn": "normalized"},
                                                          {"fold_input_bn": "normalized", "conv1_pad_to": 4}]
    based = expand({"base": {"model_kwargs": {"fold_input_bn": "normalized"}}, "grid": {"method": ["stdm"]}},
                   "tiny", [0])
    assert [t.trial_id for t in expand({"grid": {"method": ["stdm"]}}, "tiny", [0],
                                       {"fold_input_bn": "normalized"})] == [t.trial_id for t in based]
    path = _write(tmp_path, MICRO)
    common = ["--data", str(tmp_path / "data"), "--out", str(tmp_path / "s"), "--only", "method=stdm", "--only",
              "seed=0"]
    assert main(["sweep", path, *common, "--model-kwarg", "fold_input_bn=normalized"]) == 0
    assert "1 trials: 1 trained, 0 already finished" in capsys.readouterr().out
    (cfg,) = [json.loads(p.read_text())["config"] for p in (tmp_path / "s" / "runs").glob("*/config.json")]
    assert cfg["model_kwargs"] == {"fold_input_bn": "normalized"}
    assert main(["sweep", path, *common[:2], "--out", str(tmp_path / "bad"), *common[4:],
                 "--model-kwarg", "bogus=1"]) == 2
    assert "bad options for model 'paper_cnn'" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_random_search_draws_settings_shared_across_the_grid():
    """search: {samples: N}: every point of the list axes crossed with N draws; draw i is the same setting for
    every seed (so the report can compare a setting over seeds), within its distribution, stable across
    expansions and changed by the search seed."""
    spec = {"search": {"samples": 5, "seed": 3},
            "grid": {"method": ["group_dro"], "explicit": [["texture"]], "seed": [0, 1],
                     "hparams.step_size": {"log_uniform": ["1e-4", 0.1]}, "lr": {"choice": [1e-3, 1e-4]},
                     "hparams.sampler": ["balanced"], "epochs": {"int_uniform": [2, 4]},
                     "weight_decay": {"uniform": [0, 1e-4]}}}
    trials = expand(spec, "tiny")
    assert len(trials) == 2 * 5 and [t.trial_id for t in expand(spec, "tiny")] == [t.trial_id for t in trials]

    def setting(t):
        c = t.config
        return c["method_hparams"]["step_size"], c["lr"], c["epochs"], c["weight_decay"]
    by_seed = {s: [setting(t) for t in trials if t.config["seed"] == s] for s in (0, 1)}
    assert by_seed[0] == by_seed[1] and len(set(by_seed[0])) == 5
    for step, lr, epochs, wd in by_seed[0]:
        assert 1e-4 <= step <= 0.1 and lr in (1e-3, 1e-4) and epochs in (2, 3, 4) and 0 <= wd <= 1e-4
        assert float(f"{step:.4g}") == step
    other = expand({**spec, "search": {"samples": 5, "seed": 4}}, "tiny")
    assert {setting(t) for t in other}.isdisjoint(set(by_seed[0]))
    assert len(expand({**spec, "search": {"samples": 5}}, "tiny")) == 10  # seed 0 by default
    more = {t.trial_id for t in expand({**spec, "search": {"samples": 7, "seed": 3}}, "tiny")}
    assert len(more) == 14 and {t.trial_id for t in trials} < more  # more samples add to the first ones


@pytest.mark.parametrize("change, message", [
    ({"search": None}, "grid axis 'lr' is a distribution: add search: {samples: N}"),
    ({"grid": {"method": ["stdm"], "lr": [1e-3]}}, "search: no grid axis is a distribution"),
    ({"search": {"samples": 0}}, "samples must be a positive integer"),
    ({"search": {"samples": 2, "rounds": 1}}, "search takes samples (and seed)"),
    ({"grid": {"method": ["stdm"], "lr": {"normal": [0, 1]}}}, "a distribution is one of uniform, log_uniform,"),
    ({"grid": {"method": ["stdm"], "lr": {"uniform": [1, 0]}}}, "uniform takes [lo, hi] with lo <= hi"),
    ({"grid": {"method": ["stdm"], "lr": {"log_uniform": [0, 1]}}}, "log_uniform needs lo > 0"),
    ({"grid": {"method": ["stdm"], "epochs": {"int_uniform": [1, 2.5]}}}, "int_uniform takes integer bounds"),
    ({"grid": {"method": ["stdm"], "lr": {"choice": []}}}, "choice takes a non-empty list"),
])
def test_bad_random_searches(change, message):
    spec = {"search": {"samples": 2}, "grid": {"method": ["stdm"], "lr": {"log_uniform": [1e-4, 1e-2]}}, **change}
    spec = {k: v for k, v in spec.items() if v is not None}
    with pytest.raises(BiasbenchError) as info:
        expand(spec, "tiny")
    assert message in str(info.value)


def test_random_search_runs_and_the_report_chooses_a_sample(tmp_path, capsys):
    """A random search over StdM's learning rate runs from a YAML file, the dry run names each draw's lr, and the
    report picks one sample per seed (one run averaged)."""
    path = _write(tmp_path, MICRO.replace("grid:\n  method: [stdm, upweight]\n  seed: [0, 1]",
                                          "search: {samples: 2, seed: 1}\ngrid:\n  method: [stdm]\n  seed: [0]\n"
                                          "  lr: {log_uniform: [1e-4, 1e-2]}"))
    common = ["--data", str(tmp_path / "data"), "--out", str(tmp_path / "s")]
    assert main(["sweep", path, *common, "--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == "2 trials in 2 units of work" and all(" lr=0.0" in line for line in lines[:2])
    assert main(["sweep", path, *common]) == 0
    assert main(["report", str(tmp_path / "s"), "--out", str(tmp_path / "r")]) == 0
    assert "| StdM | " in capsys.readouterr().out
    chosen = list(csv.DictReader((tmp_path / "r" / "selected.csv").open()))
    runs = {p.parent.name for p in (tmp_path / "s" / "runs").glob("*/metrics.json")}
    assert len(chosen) == 1 and len(runs) == 2 and chosen[0]["run_id"] in runs


def test_trial_ids_are_stable(tmp_path):
    a = [t.trial_id for t in expand(load_spec(_write(tmp_path, MICRO)))]
    reordered = MICRO.replace("  method: [stdm, upweight]\n  seed: [0, 1]", "  seed: [0, 1]\n  method: [stdm, upweight]")
    b = [t.trial_id for t in expand(load_spec(_write(tmp_path, reordered, "b.yaml")))]
    assert len(a) == 4 and sorted(a) == sorted(b)
    assert a == [t.trial_id for t in expand(load_spec(_write(tmp_path, MICRO, "c.yaml")))]


@pytest.mark.parametrize("text, message", [
    ("grid: {method: [stdm], colour: [1]}", "unknown sweep axis 'colour'"),
    ("grid: {method: [magic]}", "unknown method 'magic'"),
    ("grid: {method: [rubi], explicit: [[shape]]}", "unknown factor 'shape' in explicit"),
    ("grid: {}", "the sweep's grid is empty"),
    ("grid: {method: []}", "must be a non-empty list"),
    ("grid: {dataset.colour: [1]}", "unknown dataset axis"),
    ("grids: {method: [stdm]}", "unknown sweep key(s): grids"),
    ("grid: [unclosed", "not valid YAML"),
    ("search: {samples: 2}\ngrid: {method: [stdm], lr: {normal: [0, 1]}}", "a distribution is one of uniform"),
])
def test_bad_sweep_files(tmp_path, capsys, text, message):
    path = _write(tmp_path, text)
    code = main(["sweep", path, "--data", str(tmp_path / "d"), "--out", str(tmp_path / "s"), "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_dry_run_lists_model_options_and_hyperparameters(tmp_path, capsys):
    """A model_kwargs or hparams axis makes trials that differ only in model options or method hyperparameters;
    the listing tells them apart (the hyperparameters that differ from the method's defaults)."""
    path = _write(tmp_path, "grid: {method: [lnl], explicit: [[texture]], model_kwargs: [{}, {fold_input_bn: true}], "
                            "hparams.zero_grad: [zeros, none]}")
    code = main(["sweep", path, "--data", str(tmp_path / "d"), "--out", str(tmp_path / "s"), "--dry-run"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and lines[-1] == "4 trials in 4 units of work"
    assert "model=paper_cnn opt=" in lines[0] and "model=paper_cnn(fold_input_bn=True) opt=" in lines[2]
    assert lines[0].endswith("hparams=defaults") and lines[1].endswith("hparams=zero_grad=none")
    assert not (tmp_path / "s").exists()


def test_rerun_skips_finished_trials_and_report_renders(tmp_path, capsys, monkeypatch):
    path = _write(tmp_path, MICRO)
    trials = expand(load_spec(path))
    first = run_sweep(trials, "micro", "tiny", str(tmp_path / "data"), str(tmp_path / "sw"), log=lambda s: None)
    assert [r["status"] for r in first] == ["finished"] * 4
    again = run_sweep(trials, "micro", "tiny", str(tmp_path / "data"), str(tmp_path / "sw"), tracker="tensorboard",
                      log=lambda s: None)
    assert [r["status"] for r in again] == ["skipped"] * 4
    # the sweep-level summary run beside the trials
    ids = json.loads((tmp_path / "sw" / "sweep_tracker.json").read_text())
    assert ids == {"tensorboard": "sweep-micro"} and (tmp_path / "sw" / "runs" / "tensorboard" / "sweep-micro").is_dir()
    # an audited run shows up in the report
    run_dir = next(p.parent for p in (tmp_path / "sw" / "runs").glob("*/config.json"))
    data_dir = next((tmp_path / "data").glob("bmnist-*"))
    assert main(["audit", str(run_dir), "--data", str(data_dir), "--samples", "20", "--values", "1",
                 "--no-progress"]) == 0
    capsys.readouterr()
    assert len(list((tmp_path / "sw" / "runs").glob("*/config.json"))) == 4
    assert len(list((tmp_path / "data").glob("bmnist-*"))) == 1  # one dataset for the whole sweep
    assert main(["runs", str(tmp_path / "sw"), "--json"]) == 0  # a sweep folder lists its runs
    assert len(json.loads(capsys.readouterr().out)) == 4
    # a sweep folder audits every run, skipping the one audited above with the same request
    assert main(["audit", str(tmp_path / "sw"), "--samples", "20", "--values", "1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "audited 3 runs, 1 already audited" in out and out.count("already audited with these settings") == 1
    assert len(list((tmp_path / "sw" / "runs").glob("*/audit/audit.json"))) == 4
    (run_dir / "audit" / "audit.json").write_text("{not json")  # a corrupt audit is made again, not fatal
    assert main(["audit", str(tmp_path / "sw"), "--samples", "20", "--values", "1", "--no-progress"]) == 0
    assert "audited 1 runs, 3 already audited" in capsys.readouterr().out
    # every run evaluated on the same recipe in the reference's drawing: one line each, then a table of the report
    from biasbench.config import DatasetSettings
    from biasbench.data.biased_mnist import generate
    from biasbench.data.recipe import read_manifest

    generate(tmp_path / "ref-data", DatasetSettings.from_dict({**read_manifest(data_dir)["settings"],
                                                               "drawing": "reference"}))
    from biasbench.data.biased_mnist import BiasedMNIST

    renders, real_render = [], BiasedMNIST.render
    monkeypatch.setattr(BiasedMNIST, "render", lambda self, *a, **k: renders.append(self.split) or real_render(
        self, *a, **k))
    assert main(["evaluate", str(tmp_path / "sw"), "--data", str(tmp_path / "ref-data"), "--no-progress"]) == 0
    assert renders == ["test"]  # the four runs share one rendering of the split
    rows = capsys.readouterr().out.splitlines()
    assert len(rows) == 1 + 4 and rows[0].split()[:4] == ["run_id", "method", "explicit", "seed"]
    code = main(["report", str(tmp_path / "sw"), "--out", str(tmp_path / "rep")])
    out = capsys.readouterr().out
    assert code == 0 and "| StdM |" in out and "| LfF | –" in out  # LfF not in this sweep: missing cell
    html = (tmp_path / "rep" / "index.html").read_text()
    assert "Table 1" in html and "fig3a_mmd_per_factor.png" in html and "Counterfactual audit" in html
    assert "Dataset: 24x24 px, p_bias 0.7, mode paper, our drawing, lossless." in html
    assert len((tmp_path / "rep" / "audit.md").read_text().splitlines()) == 2 + 2  # StdM and UpWt, all audited
    assert (tmp_path / "rep" / "fig3a_mmd_per_factor.png").stat().st_size > 5000
    shift = (tmp_path / "rep" / "shift.md").read_text().split("\n\n")
    assert shift[0] == "Accuracy on other test sets (biasbench evaluate)"
    acc = shift[1].splitlines()
    assert acc[0] == "| method | recorded test | drawing biasbench vs reference |" and len(acc) == 2 + 2
    t1 = {r["method"]: r["mean"] for r in json.loads((tmp_path / "rep" / "report.json").read_text())["table1"]}
    stdm = acc[2].split(" | ")
    assert stdm[0] == "| StdM" and float(stdm[1]) == pytest.approx(t1["stdm"], abs=0.05)  # the same runs' accuracy
    # then each factor's MMD, recorded and on the reference's drawing, from the records and the evaluations
    assert shift[2].endswith("drawing biasbench vs reference: recorded (their own test set)")
    assert shift[4].endswith("drawing biasbench vs reference: on that test set")
    runs = {p.parent.name: p.parent for p in (tmp_path / "sw" / "runs").glob("*/config.json")}
    stdm_runs = [r for r in runs.values() if json.loads((r / "config.json").read_text())["config"]["method"] == "stdm"]
    there = [json.loads(next((r / "evaluations").glob("*-test-epoch001.json")).read_text())["metrics"]["factors"]
             for r in stdm_runs]
    cells = shift[5].splitlines()[2].split(" | ")  # StdM's row
    assert float(cells[-1].rstrip(" |")) == pytest.approx(np.mean([f["texture_color"]["mmd"] for f in there]), abs=0.05)
    assert "Accuracy on other test sets" in html and "MMD per factor of the runs evaluated on" in html


def test_sweep_kill_and_resume(tmp_path):
    path = _write(tmp_path, MICRO.replace("epochs: 1, eval_epochs: [1]", "epochs: 3, eval_epochs: [3]"))
    ref = tmp_path / "ref"
    cmd = [sys.executable, "-m", "biasbench.cli", "sweep", path, "--data", str(tmp_path / "data")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    assert subprocess.run(cmd + ["--out", str(ref)], capture_output=True, env=env).returncode == 0
    out = tmp_path / "killed"
    proc = subprocess.Popen(cmd + ["--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill once the first trial finished and the second is training
        states = [json.loads(p.read_text())["state"] for p in (out / "runs").glob("*/status.json")
                  if p.stat().st_size]
        if states.count("finished") >= 1 and len(states) >= 2:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    states = [json.loads(p.read_text())["state"] for p in (out / "runs").glob("*/status.json")]
    assert "running" in states or len(states) < 4
    assert subprocess.run(cmd + ["--out", str(out)], capture_output=True, env=env).returncode == 0
    runs = sorted(p.parent.name for p in (out / "runs").glob("*/config.json"))
    assert runs == sorted(p.parent.name for p in (ref / "runs").glob("*/config.json")) and len(runs) == 4
    for run in runs:
        a = json.loads((ref / "runs" / run / "metrics.json").read_text())["history"]
        b = json.loads((out / "runs" / run / "metrics.json").read_text())["history"]
        assert [h.get("metrics") for h in a] == [h.get("metrics") for h in b]


def _fake_sweep(root: Path, runs: list[dict], name: str = "fake") -> None:
    """A sweep folder written by hand: one record per run with a chosen test accuracy and MMDs (``config``:
    more training settings; ``run_id``, ``val``, ``epoch``: the run's id, validation accuracy, last epoch)."""
    from biasbench.data.factors import FACTORS

    trials = []
    for i, r in enumerate(runs):
        run_id = r.get("run_id", f"{name}-run{i:03d}")
        cfg = {"method": r["method"], "explicit": r.get("explicit", []), "seed": r["seed"], "method_hparams": {},
               **r.get("config", {})}
        trials.append({"trial_id": r.get("trial_id", f"{name}-t{i}"),
                       "dataset": {"p_bias": {f: 0.7 for f in FACTORS}, **r.get("dataset", {})},
                       "config": cfg, "run_id": run_id})
        factors = {f: {"majority": r["acc"] + 20, "minority": r["acc"], "mmd": r.get("mmd", 20.0),
                       **({"dp_gap": r["dp"][f]} if f in r.get("dp", {}) else {}),
                       **({"abcc": r["abcc"][f]} if f in r.get("abcc", {}) else {})} for f in FACTORS}
        test = {"accuracy": r["acc"], "factors": factors}
        ep = r.get("epoch", 2)
        hist = [{"epoch": ep, "split": "test", "metrics": test},
                {"epoch": ep, "split": "val", "metrics": {"accuracy": r.get("val", 90.0)}},
                {"epoch": ep, "split": "tuning",
                 "metrics": {"alpha": {"-1.0": 1.0, "0.0": 2.0, "1.0": 3.0, "2.0": 4.0}}}]
        (root / "runs" / run_id).mkdir(parents=True, exist_ok=True)  # trials may share a run (one recipe)
        (root / "runs" / run_id / "metrics.json").write_text(json.dumps({"history": hist}))
    (root / "sweep.json").write_text(json.dumps({"name": name, "scale": "full", "trials": trials}))


def test_report_gap_tables(tmp_path):
    """gaps.md: the test-set DP gap per method and factor, the mean over the selected runs that recorded it
    (older records without it are left out, a factor without any value is a dash); no file when no run has one."""
    _fake_sweep(tmp_path / "sw", [
        {"method": "stdm", "seed": 0, "acc": 40.0, "dp": {"texture": 60.0, "digit_color": 10.0}},
        {"method": "stdm", "seed": 1, "acc": 40.0, "dp": {"texture": 80.0, "digit_color": float("nan")}},
        {"method": "stdm", "seed": 2, "acc": 40.0},
        {"method": "rubi", "seed": 0, "explicit": ["texture"], "acc": 40.0, "dp": {"texture": 5.0},
         "abcc": {"texture": 12.5}}])
    build_report(str(tmp_path / "sw"), tmp_path / "rep")
    lines = (tmp_path / "rep" / "gaps.md").read_text().splitlines()
    assert lines[0] == "Demographic-parity gap per factor (test)" and "Equalized-odds" not in "".join(lines)
    assert lines[4] == "| StdM | 10.0 | – | – | – | – | 70.0 | – |"
    assert lines[5] == "| RUBi | – | – | – | – | – | 5.0 | – |"
    assert lines[7] == "Area between the probability CDFs (ABCC) per factor (test)"
    assert lines[-1] == "| RUBi | – | – | – | – | – | 12.5 | – |" and "| StdM |" not in "".join(lines[7:])
    assert "Demographic-parity gap per factor" in (tmp_path / "rep" / "index.html").read_text()
    _fake_sweep(tmp_path / "old", [{"method": "stdm", "seed": 0, "acc": 40.0}])
    build_report(str(tmp_path / "old"), tmp_path / "rep-old")
    assert not (tmp_path / "rep-old" / "gaps.md").exists()
    # a report rebuilt into the same folder removes what the earlier one wrote and this one does not (no stale
    # gaps.md beside records without gaps), and keeps files no report wrote
    (tmp_path / "rep" / "notes.txt").write_text("mine")
    rep = build_report(str(tmp_path / "old"), tmp_path / "rep")
    left = sorted(p.name for p in (tmp_path / "rep").iterdir())
    assert "gaps.md" not in left and "notes.txt" in left and rep["files"] == [n for n in left if n != "notes.txt"]
    assert json.loads((tmp_path / "rep" / "report.json").read_text())["files"] == rep["files"]
    build_report(str(tmp_path / "sw"), tmp_path / "rep2")  # a report from before the files were recorded
    record = json.loads((tmp_path / "rep2" / "report.json").read_text())
    (tmp_path / "rep2" / "report.json").write_text(json.dumps({k: v for k, v in record.items() if k != "files"}))
    build_report(str(tmp_path / "old"), tmp_path / "rep2")
    assert (tmp_path / "rep2" / "gaps.md").exists()  # not known to be a report's: left alone


def test_report_table_values_are_exact(tmp_path):
    singles = ["digit_color", "background_color", "digit_position", "distractor_shape", "distractor_color",
               "texture", "texture_color"]
    runs = [{"method": "stdm", "seed": 0, "acc": 40.0}, {"method": "stdm", "seed": 1, "acc": 44.0}]
    runs += [{"method": "upweight", "seed": 0, "explicit": [f], "acc": 10.0 * (k + 1)} for k, f in enumerate(singles)]
    runs += [{"method": "upweight", "seed": 1, "explicit": [f], "acc": 20.0} for f in singles]
    runs += [{"method": "upweight", "seed": 0, "explicit": singles[:2], "acc": 99.0}]  # Fig. 5 only, not Table 1
    runs += [{"method": "sd", "seed": 0, "acc": 41.0}]  # one seed: no spread to show
    _fake_sweep(tmp_path / "sw", runs)
    rep = build_report(tmp_path / "sw", tmp_path / "rep")
    rows = {r["method"]: r for r in rep["table1"]}
    assert rows["stdm"]["mean"] == pytest.approx(42.0) and rows["stdm"]["std"] == pytest.approx(2 ** 0.5 * 2)
    assert rows["upweight"]["mean"] == pytest.approx((40.0 + 20.0) / 2)  # seed means 40 and 20
    assert rows["upweight"]["runs_per_seed"] == 7 and rows["upweight"]["seeds"] == 2
    assert rows["lff"]["seeds"] == 0
    md = (tmp_path / "rep" / "table1.md").read_text()
    assert "| StdM | 42.0 ± 2.8 | 2 | 1 | 42.0 | +0.0 |" in md and "| LfF | – |" in md
    assert "| SD | 41.0 | 1 | 1 | 41.3 | -0.3 |" in md
    csv = (tmp_path / "rep" / "table1.csv").read_text()
    assert "UpWt,30.00,14.14,2,7,30.1" in csv and "SD,41.00,–,1,1,41.3" in csv
    tex = (tmp_path / "rep" / "table1.tex").read_text()
    assert "\\begin{tabular}" in tex and "SD & 41.0 & 41.3" in tex
    strict = json.loads((tmp_path / "rep" / "report.json").read_text(),
                        parse_constant=lambda c: pytest.fail(f"report.json holds {c}"))
    sd_row = next(r for r in strict["table1"] if r["method"] == "sd")
    lff_row = next(r for r in strict["table1"] if r["method"] == "lff")
    assert sd_row["std"] is None and lff_row["mean"] is None
    iosm = {r["method"]: r for r in rep["iosm"]}
    # upweight seed 0 runs vs StdM seed 0 (40): mean over 8 runs of (acc - 40); seed 1: (20 - 44) x 7
    diffs = [10.0 * (k + 1) - 40 for k in range(7)] + [99.0 - 40] + [20.0 - 44] * 7
    assert iosm["upweight"]["overall"] == pytest.approx(sum(diffs) / len(diffs))
    assert iosm["upweight"]["minority"] == pytest.approx(sum(diffs) / len(diffs))
    assert rep["figures"]["fig5"] == "fig5_scalability.png"


def test_report_selection_rule_from_the_command_line(tmp_path, capsys):
    """Two learning rates of StdM: the paper's rule takes the better validation accuracy, the oracle the better
    test accuracy, and the report says which rule chose."""
    _fake_sweep(tmp_path / "sw", [{"method": "stdm", "seed": 0, "acc": 40.0, "val": 90.0, "config": {"lr": 1e-3}},
                                  {"method": "stdm", "seed": 0, "acc": 50.0, "val": 80.0, "config": {"lr": 1e-4}}])
    for rule, acc, says in (("final", "40.0", "hyperparameters by validation accuracy there (the paper's)"),
                            ("oracle", "50.0", "an oracle that looks at the test set")):
        assert main(["report", str(tmp_path / "sw"), "--out", str(tmp_path / rule), "--select", rule]) == 0
        out = capsys.readouterr().out
        assert f"| StdM | {acc} | 1 | 1 | 42.0 |" in out and f"Selection ({rule}): " in out and says in out
        assert says in html.unescape((tmp_path / rule / "index.html").read_text())
        assert json.loads((tmp_path / rule / "report.json").read_text())["rule"] == rule
        chosen = list(csv.DictReader((tmp_path / rule / "selected.csv").open()))  # the model behind the number
        assert [(r["method"], r["test_accuracy"], r["epoch"]) for r in chosen] == [("stdm", acc + "0", "2")]
        assert chosen[0]["score"] == {"final": "90.00", "oracle": "50.00"}[rule] and chosen[0]["weights"] == ""
    rules = (tmp_path / "final" / "selection.md").read_text().splitlines()  # every rule side by side
    assert rules[0] == ("| method | final | alpha=0 | worst_group | worst_group=balanced_val | worst_class | oracle "
                        "| paper (Table 1) |")
    assert rules[2].startswith("| StdM | 40.0 | ") and rules[2].endswith(" | 50.0 | 42.0 |")
    assert main(["report", str(tmp_path / "sw"), "--out", str(tmp_path / "bad"), "--select", "best"]) == 2
    err = capsys.readouterr().err
    assert "unknown selection rule 'best'" in err and not (tmp_path / "bad").exists()


def test_report_lists_methods_beyond_the_paper(tmp_path):
    """Methods beyond the paper get rows after the paper's eight, with their display names and no paper value;
    an explicit one averages its single-factor runs and draws a Fig. 5 line, one without bias labels is a flat
    Fig. 5 reference, and both are compared with StdM in the IOSM table."""
    from biasbench.report.tables import fig5_data
    from biasbench.report.records import load_sweep, select

    runs = [{"method": "stdm", "seed": 0, "acc": 40.0}, {"method": "cvar_dro", "seed": 0, "acc": 45.0},
            {"method": "vrex", "seed": 0, "explicit": ["texture"], "acc": 50.0},
            {"method": "vrex", "seed": 0, "explicit": ["distractor_shape"], "acc": 60.0},
            {"method": "vrex", "seed": 0, "explicit": ["distractor_shape", "texture"], "acc": 99.0}]
    _fake_sweep(tmp_path / "sw", runs)
    rep = build_report(tmp_path / "sw", tmp_path / "rep")
    names = [r["name"] for r in rep["table1"]]
    assert names[:8] == ["StdM", "UpWt", "GDRO", "RUBi", "LNL", "IRMv1", "LfF", "SD"]
    assert names[8:] == ["CVaR-DRO", "VREx"]
    rows = {r["method"]: r for r in rep["table1"]}
    assert rows["vrex"]["mean"] == pytest.approx(55.0) and rows["vrex"]["runs_per_seed"] == 2
    md = (tmp_path / "rep" / "table1.md").read_text()
    assert "| CVaR-DRO | 45.0 | 1 | 1 | – |" in md and "| VREx | 55.0 | 1 | 2 | – |" in md
    iosm = {r["method"]: r for r in rep["iosm"]}
    assert iosm["cvar_dro"]["overall"] == pytest.approx(5.0) and iosm["vrex"]["runs"] == 3
    fig5 = fig5_data(select(load_sweep(tmp_path / "sw")[1], "final"))
    assert fig5["cvar_dro"] == {0: 45.0} and fig5["vrex"][2] == 99.0 and fig5["vrex"][1] == 60.0
    assert (tmp_path / "rep" / "fig3b_mmd_per_method.png").exists()


def test_report_keeps_dataset_variants_apart(tmp_path, monkeypatch):
    """Runs on the reference's JPEG images and on lossless ones (or at two p_bias) are two Table-1 blocks and
    two Fig. 3 pairs, never one average or one box; records from before jpeg_quality existed count as lossless."""
    from biasbench.data.factors import FACTORS
    from biasbench.report import figures

    runs = [{"method": "stdm", "seed": s, "acc": 40.0 + s, "mmd": 30.0} for s in (0, 1)]  # lossless: no key
    runs += [{"method": "stdm", "seed": s, "acc": 30.0 + s, "mmd": 10.0, "dataset": {"jpeg_quality": 95}}
             for s in (0, 1)]
    runs += [{"method": "sd", "seed": 0, "acc": 20.0, "mmd": 10.0, "dataset": {"jpeg_quality": 95}}]
    _fake_sweep(tmp_path / "sw", runs)
    drawn = {}
    real_fig3a = figures.fig3a
    monkeypatch.setattr(figures, "fig3a", lambda pts, path, variant="": drawn.setdefault(variant, pts) and
                        real_fig3a(pts, path, variant))
    rep = build_report(tmp_path / "sw", tmp_path / "rep")
    assert {d: sorted({p["mmd"] for p in pts}) for d, pts in drawn.items()} == \
        {"jpeg_quality=0": [30.0], "jpeg_quality=95": [10.0]}
    assert rep["figures"]["fig3a[jpeg_quality=95]"] == "fig3a_mmd_per_factor_jpeg_quality_95.png"
    assert rep["dataset"] == "2 datasets, one block of Table 1 rows each (the variant column)"
    assert (tmp_path / "rep" / "fig3b_mmd_per_method_jpeg_quality_0.png").stat().st_size > 10_000
    assert "fig3a" not in rep["figures"]  # no pooled figure
    assert "Fig. 3a: MMD per factor (jpeg_quality=95)" in (tmp_path / "rep" / "index.html").read_text()
    rows = {(r["variant"], r["method"]): r for r in rep["table1"]}
    assert [r["variant"] for r in rep["table1"] if r["method"] == "stdm"] == ["jpeg_quality=0", "jpeg_quality=95"]
    assert rows["jpeg_quality=0", "stdm"]["mean"] == pytest.approx(40.5)
    assert rows["jpeg_quality=95", "stdm"]["mean"] == pytest.approx(30.5)
    assert rows["jpeg_quality=95", "sd"]["mean"] == pytest.approx(20.0) and rows["jpeg_quality=0", "sd"]["seeds"] == 0
    assert {m for _, m in rows} == {"stdm", "sd"}  # methods without runs in any variant are left out
    md = (tmp_path / "rep" / "table1.md").read_text()
    assert md.startswith("| variant | method |")
    assert "| jpeg_quality=95 | StdM | 30.5 ± 0.7 | 2 | 1 | 42.0 | -11.5 |" in md
    assert "jpeg_quality=0,StdM,40.50" in (tmp_path / "rep" / "table1.csv").read_text()
    assert "jpeg\\_quality=95 & StdM & 30.5" in (tmp_path / "rep" / "table1.tex").read_text()
    # the sweep-level tracker run keeps one metric per variant (names trackers accept)
    from biasbench.sweep.runners import summary_metric_name
    assert summary_metric_name(rows["jpeg_quality=95", "stdm"]) == "table1/jpeg_quality:95/stdm/mean"
    assert summary_metric_name({"method": "sd", "variant": ""}) == "table1/sd/mean"
    assert summary_metric_name({"method": "sd", "variant": "fixed={texture=0}"}) == "table1/fixed:_texture:0_/sd/mean"
    # two p_bias: labelled by p_bias alone, in numeric order
    runs = [{"method": "stdm", "seed": 0, "acc": a, "dataset": {"p_bias": {f: p for f in FACTORS}}}
            for a, p in ((50.0, 0.95), (60.0, 0.5))]
    _fake_sweep(tmp_path / "pb", runs)
    rep = build_report(tmp_path / "pb", tmp_path / "rep_pb")
    assert [(r["variant"], r["mean"]) for r in rep["table1"] if r["method"] == "stdm"] == \
        [("p_bias=0.5", 60.0), ("p_bias=0.95", 50.0)]
    # the paper's column only beside Table 1's own dataset (p_bias 0.7)
    assert "| p_bias=0.5 | StdM | 60.0 | 1 | 1 | – | – |" in (tmp_path / "rep_pb" / "table1.md").read_text()
    # the p_bias curve takes every p_bias at once (not one figure per p_bias), and splits by anything else
    assert rep["figures"]["p_bias"] == "p_bias.png"
    runs += [{"method": "stdm", "seed": 0, "acc": a - 10, "dataset": {"p_bias": {f: p for f in FACTORS}},
              "config": {"model": "resnet18"}} for a, p in ((50.0, 0.95), (60.0, 0.5))]
    _fake_sweep(tmp_path / "pb2", runs)
    rep = build_report(tmp_path / "pb2", tmp_path / "rep_pb2")
    assert rep["figures"]["p_bias[model=resnet18]"] == "p_bias_model_resnet18.png" and "p_bias" not in rep["figures"]
    assert rep["figures"]["tuning[p_bias=0.5 model=paper_cnn]"] == "tuning_distribution_p_bias_0.5_model_paper_cnn.png"
    assert set(rep["tuning"]) == {f"p_bias={p} model={m}" for p in (0.5, 0.95) for m in ("paper_cnn", "resnet18")}



def test_report_of_a_single_factor_p_bias_grid(tmp_path):
    """The single-bias preset's grid (one factor's p varies, the others stay at 0.1): Table 1 blocks labelled by
    that factor's p alone, in numeric order, and the p_bias curve and table against it."""
    from biasbench.data.factors import FACTORS

    def p_bias(rho):
        return {**{f: 0.1 for f in FACTORS}, "background_color": rho}

    runs = [{"method": m, "seed": 0, "acc": a, "dataset": {"p_bias": p_bias(rho)},
             "explicit": ["background_color"] if m == "rubi" else []}
            for m, accs in (("stdm", (89.0, 72.0)), ("rubi", (93.5, 90.0, 43.0)))
            for rho, a in zip((0.99, 0.995, 0.997), accs)]
    # two rho that drew one recipe (no image's draw between them) share StdM's run: both trials count
    shared = [{"method": "stdm", "seed": 0, "acc": 33.0, "dataset": {"p_bias": p_bias(rho)}, "run_id": "shared"}
              for rho in (0.997, 0.999)]
    _fake_sweep(tmp_path / "sb", runs[::-1] + shared)  # the records' order does not set the blocks' order
    rep = build_report(tmp_path / "sb", tmp_path / "rep")
    assert rep["runs_with_records"] == rep["trials"] == 7
    assert [(r["variant"], r["mean"]) for r in rep["table1"] if r["method"] == "stdm"] == [
        ("p_bias=background_color=0.99 (others 0.1)", 89.0), ("p_bias=background_color=0.995 (others 0.1)", 72.0),
        ("p_bias=background_color=0.997 (others 0.1)", 33.0), ("p_bias=background_color=0.999 (others 0.1)", 33.0)]
    assert rep["figures"]["p_bias"] == "p_bias.png" and (tmp_path / "rep" / "p_bias.png").stat().st_size > 10_000
    table = (tmp_path / "rep" / "p_bias.md").read_text().splitlines()
    assert table[0] == ("| method | p_bias of background_color 0.99 | p_bias of background_color 0.995 "
                        "| p_bias of background_color 0.997 | p_bias of background_color 0.999 |")
    assert table[2:] == ["| StdM | 89.0 | 72.0 | 33.0 | 33.0 |", "| RUBi | 93.5 | 90.0 | 43.0 | – |"]
    assert "p_bias of background_color 0.995" in (tmp_path / "rep" / "index.html").read_text()
    # two factors varying at once: no curve (nothing to put on one axis), Table 1 blocks as ever
    runs.append({"method": "stdm", "seed": 0, "acc": 50.0, "dataset": {"p_bias": {**p_bias(0.99), "texture": 0.9}}})
    _fake_sweep(tmp_path / "two", runs)
    rep = build_report(tmp_path / "two", tmp_path / "rep2")
    assert rep["figures"]["p_bias"] is None and not (tmp_path / "rep2" / "p_bias.md").exists()
    assert "p_bias=background_color=0.99,texture=0.9 (others 0.1)" in {r["variant"] for r in rep["table1"]}


def test_report_keeps_training_variants_apart_and_pools_on_request(tmp_path, capsys):
    """Runs that differ in the model (or its arguments, optimizer, schedule) are different experiments: before,
    the selection rule chose between a ResNet and the paper's CNN of one seed as if they were hyperparameter
    variants, and Table 1 showed one of them. Now each is a block of rows, IOSM pairs each with the StdM of its
    own model, and ``--pool`` treats a setting as tuned again."""
    runs = [{"method": "stdm", "seed": 0, "acc": 40.0, "val": 80.0},
            {"method": "stdm", "seed": 0, "acc": 20.0, "val": 95.0, "config": {"model": "resnet18"}},
            {"method": "lff", "seed": 0, "acc": 50.0},
            {"method": "lff", "seed": 0, "acc": 24.0, "config": {"model": "resnet18"}},
            {"method": "stdm", "seed": 0, "acc": 42.0, "val": 70.0, "config": {"lr": 0.01}}]  # a tuned variant
    _fake_sweep(tmp_path / "sw", runs)
    rep = build_report(tmp_path / "sw", tmp_path / "rep")
    got = {(r["variant"], r["method"]): r["mean"] for r in rep["table1"] if r["seeds"]}
    assert got == {("model=paper_cnn", "stdm"): 40.0, ("model=paper_cnn", "lff"): 50.0,
                   ("model=resnet18", "stdm"): 20.0, ("model=resnet18", "lff"): 24.0}
    assert [r["variant"] for r in rep["table1"]][:1] == ["model=paper_cnn"]  # as the runs first show them
    assert {r["method"]: r["overall"] for r in rep["iosm"] if r["runs"]} == {"lff": pytest.approx(7.0)}  # (10 + 4) / 2
    assert rep["dataset"].startswith("96x96 px, p_bias 0.7")  # one dataset: described, not "2 datasets"
    assert {"fig3a[model=resnet18]", "fig3b[model=paper_cnn]"} <= set(rep["figures"])
    # the audit table: a block per variant, each run's audit of its selected epoch (here 2, the final one)
    for i, rate in ((0, 0.1), (1, 0.3)):
        audit = tmp_path / "sw" / "runs" / f"fake-run{i:03d}" / "audit-epoch002"
        audit.mkdir()
        (audit / "audit.json").write_text(json.dumps({"checkpoint_epoch": 2, "factors": {"texture": {"flip_rate": rate}}}))
    rep = build_report(tmp_path / "sw", tmp_path / "rep")
    assert (tmp_path / "rep" / "audit.md").read_text().splitlines()[2:] == [
        "| model=paper_cnn | StdM | – | – | – | – | – | 0.100 | – |",
        "| model=resnet18 | StdM | – | – | – | – | – | 0.300 | – |"]
    # pooled over the model: the best validation accuracy of the seed's StdM runs (95: the ResNet's)
    assert main(["report", str(tmp_path / "sw"), "--out", str(tmp_path / "pooled"), "--pool", "model"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| method |") and "| StdM | 20.0 | 1 | 1 | 42.0 | -22.0 |" in out
    assert "Pooled over: model." in (tmp_path / "pooled" / "index.html").read_text()
    # a setting that is not compared (or unknown) cannot be pooled: one line, exit 2, nothing written
    for bad in ("lr", "modl"):
        assert main(["report", str(tmp_path / "sw"), "--out", str(tmp_path / "bad"), "--pool", bad]) == 2
        assert f"cannot pool over {bad!r}" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_report_of_several_sweeps(tmp_path, capsys):
    """Seeds run in separate sweep folders give one Table 1 (mean ± std over seeds); a run found in two folders
    counts once, from the folder where it went furthest; a partial seed's fewer explicit runs show as a range;
    audits are found in each run's own folder."""
    singles = ["digit_color", "background_color", "digit_position", "distractor_shape", "distractor_color",
               "texture", "texture_color"]
    s0 = [{"method": "stdm", "seed": 0, "acc": 40.0, "run_id": "std0", "trial_id": "t0", "epoch": 1},
          *[{"method": "upweight", "seed": 0, "explicit": [f], "acc": 30.0} for f in singles]]
    s1 = [{"method": "stdm", "seed": 1, "acc": 44.0},
          *[{"method": "upweight", "seed": 1, "explicit": [f], "acc": 20.0} for f in singles[:2]]]
    s0b = [{"method": "stdm", "seed": 0, "acc": 38.0, "run_id": "std0", "trial_id": "t0", "epoch": 2}]  # resumed
    _fake_sweep(tmp_path / "a", s0, "seed0")
    _fake_sweep(tmp_path / "b", s1, "seed1")
    _fake_sweep(tmp_path / "c", s0b, "seed0-resumed")
    audit = tmp_path / "b" / "runs" / "seed1-run000" / "audit"
    audit.mkdir()
    (audit / "audit.json").write_text(json.dumps({"checkpoint_epoch": 2, "factors": {"texture": {"flip_rate": 0.25}}}))
    stale = tmp_path / "b" / "runs" / "seed1-run001" / "audit"  # an audit of another epoch than the selected one
    stale.mkdir()
    (stale / "audit.json").write_text(json.dumps({"checkpoint_epoch": 9, "factors": {"texture": {"flip_rate": 0.5}}}))
    dirs = [str(tmp_path / d) for d in "abc"]
    assert main(["report", *dirs, str(tmp_path / "a"), "--out", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert "| StdM | 41.0 ± 4.2 | 2 | 1 | 42.0 | -1.0 |" in out  # seeds 38 (epoch 2 beats epoch 1) and 44
    assert "| UpWt | 25.0 ± 7.1 | 2 | 2–7 | 30.1 | -5.1 |" in out
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert rep["sweep"] == "seed0 + seed1 + seed0-resumed" and rep["sweeps"] == dirs
    assert rep["runs_with_records"] == 11 and rep["trials"] == 11
    assert "UpWt,25.00,7.07,2,7,30.1,2" in (tmp_path / "rep" / "table1.csv").read_text()
    assert (tmp_path / "rep" / "audit.md").read_text().splitlines()[2:] == ["| StdM | – | – | – | – | – | 0.250 | – |"]
    assert "from 3 sweep folders" in (tmp_path / "rep" / "index.html").read_text()


def test_selection_rules(tmp_path):
    from biasbench.report.records import RunRecord, select

    evals = {15: {"val": {"accuracy": 80.0, "worst_group": 20.0}, "tuning": {"alpha": {"0.0": 50.0}},
                  "test": {"accuracy": 31.0}},
             30: {"val": {"accuracy": 70.0, "worst_group": 35.0}, "tuning": {"alpha": {"0.0": 40.0}},
                  "test": {"accuracy": 30.0}}}
    a = RunRecord("a", "t", "group_dro", ("texture",), 0, {"step_size": 0.01}, {}, evals)
    b = RunRecord("b", "t", "group_dro", ("texture",), 0, {"step_size": 0.1},
                  {}, {15: {"val": {"accuracy": 60.0, "worst_group": 30.0}, "tuning": {"alpha": {"0.0": 55.0}},
                            "test": {"accuracy": 40.0}},
                       30: {"val": {"accuracy": 75.0, "worst_group": 10.0}, "tuning": {"alpha": {"0.0": 30.0}},
                            "test": {"accuracy": 29.0}}})
    assert select([a, b], "final") == [(b, 30)]  # last epoch; variant by val accuracy there (75 > 70)
    assert select([a, b], "alpha=0") == [(b, 15)]  # best alpha-0 score over all epochs and variants
    assert select([a, b], "worst_group") == [(a, 30)]  # best val worst group: a@30 35 > b@15 30
    assert select([a, b], "worst_group=val") == [(a, 30)]
    a.evals[15]["balanced_val"] = {"worst_group": 25.0}
    b.evals[30]["balanced_val"] = {"worst_group": 24.0}
    assert select([a, b], "worst_group=balanced_val") == [(a, 15)]  # the balanced split's cells decide
    b.evals[15]["val"]["worst_class"] = 50.0
    a.evals[30]["val"]["worst_class"] = 45.0
    assert select([a, b], "worst_class") == [(b, 15)]  # no bias labels: the worst class on val
    assert select([a, b], "oracle") == [(b, 15)]  # best test accuracy: b@15 40
    assert select([b, a], "oracle") == [(b, 15)]  # the records' order does not matter
    # a record without the rule's score (older records, a split not evaluated) ranks below every scored one,
    # and a tie goes to the later epoch
    old = RunRecord("c", "t", "group_dro", ("texture",), 0, {"step_size": 1.0}, {},
                    {15: {"val": {"accuracy": 99.0}}, 30: {"val": {"accuracy": 99.0, "worst_group": float("nan")}}})
    assert select([old, a], "worst_group") == [(a, 30)]
    assert select([old], "worst_group") == [(old, 30)]
    with pytest.raises(BiasbenchError, match=r"unknown selection rule 'best'; expected one of: final, alpha=A, "
                                             r"worst_group\[=val\|balanced_val\], worst_class, oracle"):
        select([a], "best")
    for bad in ("alpha=", "alpha=x", "alpha=nan", "alpha=inf", "worst_group=test", "worst_group="):
        with pytest.raises(BiasbenchError, match="unknown selection rule"):
            select([a], bad)


def _assert_same_records(a: list[dict], b: list[dict]) -> None:
    """The metric records of a run trained in this process (``a``) and in another (``b``: a worker process, a Ray
    task). Another process may run torch with another number of threads (Ray sets OMP_NUM_THREADS per task;
    pytest-xdist's workers take a share of the cores), which sums the evaluation's convolutions in another order:
    the logits differ in their last bits. So ECE, a continuous function of the logits, agrees to float noise (2e-8
    relative measured), and every metric of the predicted classes is equal."""
    ece_a, ece_b = ([h["metrics"].pop("ece") for h in hist if "ece" in h.get("metrics", {})] for hist in (a, b))
    assert len(ece_a) == len(ece_b) > 0 and ece_b == pytest.approx(ece_a, rel=1e-6)
    assert [h.get("metrics") for h in a] == [h.get("metrics") for h in b]


def test_parallel_local_workers_match_sequential(tmp_path):
    path = _write(tmp_path, MICRO.replace("method: [stdm, upweight]", "method: [stdm]"))
    trials = expand(load_spec(path))
    run_sweep(trials, "micro", "tiny", str(tmp_path / "data"), str(tmp_path / "seq"), log=lambda s: None)
    lines = []
    res = run_sweep(trials, "micro", "tiny", str(tmp_path / "data"), str(tmp_path / "par"), workers=2,
                    log=lines.append)
    assert sorted(r["status"] for r in res) == ["finished", "finished"]
    assert any("[2/2 done, 0 left, units running: 0" in line for line in lines)
    # each worker process ran with its share of this process's torch threads (not every core each)
    share = max(1, torch.get_num_threads() // 2)
    assert {json.loads(p.read_text())["torch_threads"] for p in (tmp_path / "par" / "runs").glob("*/config.json")} \
        == {share}
    for cfg in (tmp_path / "seq" / "runs").glob("*/config.json"):
        run = cfg.parent.name
        a = json.loads((tmp_path / "seq" / "runs" / run / "metrics.json").read_text())["history"]
        b = json.loads((tmp_path / "par" / "runs" / run / "metrics.json").read_text())["history"]
        _assert_same_records(a, b)


def test_local_workers_spread_over_the_gpus(monkeypatch):
    """On a machine with several GPUs each local worker sees one (CUDA_VISIBLE_DEVICES, round-robin): before,
    every worker trained on the first GPU. Checked with a faked GPU count; no multi-GPU machine ran it."""
    import multiprocessing as mp

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert runners.worker_gpus("auto", 4) == runners.worker_gpus("cuda", 2) == ["0", "1", "2"]
    assert runners.worker_gpus("auto", 1) is None  # one worker: the machine as it is
    assert runners.worker_gpus("cuda:1", 4) is None and runners.worker_gpus("cpu", 4) is None  # the user's choice
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4, 6,7")  # the ids the machine exposes, not 0..n-1
    assert runners.worker_gpus("auto", 2) == ["4", "6", "7"]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert runners.worker_gpus("auto", 4) is None
    counter, seen = mp.get_context("spawn").Value("i", 0), []
    threads = torch.get_num_threads()
    try:
        for _ in range(4):  # what four workers' initializers do as they start
            runners._init_worker(1, ["4", "6", "7"], counter)
            seen.append(os.environ["CUDA_VISIBLE_DEVICES"])
        assert seen == ["4", "6", "7", "4"] and torch.get_num_threads() == 1
        runners._init_worker(1, None, counter)  # no GPUs to spread: the variable is left alone
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "4"
    finally:
        torch.set_num_threads(threads)


def _histories(sweep: Path) -> dict[str, list]:
    """Per run: every record of its history but the timings (losses and evaluation metrics)."""
    out = {}
    for f in (sweep / "runs").glob("*/metrics.json"):
        hist = json.loads(f.read_text())["history"]
        out[f.parent.name] = [{k: v for k, v in h.items() if k not in ("seconds", "images_per_s")} for h in hist]
    return out


def test_stream_threads_match_sequential(tmp_path):
    """--streams 2: four trials (two methods, two seeds) in two threads of one process give exactly the records
    of one trial after another (losses and every evaluation metric)."""
    trials = expand(load_spec(_write(tmp_path, MICRO)))
    run_sweep(trials, "micro", "tiny", str(tmp_path / "data"), str(tmp_path / "seq"), log=lambda s: None)
    lines = []
    res = run_sweep(trials, "micro", "tiny", str(tmp_path / "data"), str(tmp_path / "thr"), streams=2,
                    log=lines.append)
    assert sorted(r["status"] for r in res) == ["finished"] * 4
    assert [r["trial_id"] for r in res] == [t.trial_id for t in trials]
    assert "runner local, 2 streams" in lines[0] and any("[4/4 done, 0 left" in line for line in lines)
    seq, thr = _histories(tmp_path / "seq"), _histories(tmp_path / "thr")
    assert len(seq) == 4 and seq == thr
    again = run_sweep(trials, "micro", "tiny", str(tmp_path / "data"), str(tmp_path / "thr"), streams=2,
                      log=lambda s: None)
    assert [r["status"] for r in again] == ["skipped"] * 4


def test_stream_threads_run_costly_units_beside_cheap_ones(monkeypatch):
    """BalancedUnits: two-network trials (LfF, LNL: step_cost 2) are handed out beside cheap ones, at most
    slots // 2 at a time while cheap ones are left, each kind in its given order; in run_threads two LfF trials
    never run at once with two threads."""
    import time

    from biasbench.config import DatasetSettings
    from biasbench.sweep.spec import Trial

    def unit(method, i=0):
        return [Trial(f"{method}-{i}", DatasetSettings(), {"method": method})]

    units = [unit("lff"), unit("lnl", 1), unit("lnl", 2), unit("stdm"), unit("sd"), unit("upweight")]
    assert [runners.unit_cost(u) for u in units] == [2, 2, 2, 1, 1, 1]
    jobs = runners.BalancedUnits(units, slots=4)
    taken = [jobs.take() for _ in range(4)]
    assert [(u[0].trial_id, costly) for u, costly in taken] == [
        ("lff-0", True), ("lnl-1", True), ("stdm-0", False), ("sd-0", False)]
    jobs.done(False)
    assert jobs.take()[0][0].trial_id == "upweight-0"  # two costly still run: a cheap one while any is left
    assert jobs.take()[0][0].trial_id == "lnl-2"  # no cheap one left: the costly one rather than an idle thread
    assert jobs.take() is None

    spans = []

    def fake_run_unit(unit, *args):
        t0 = time.perf_counter()
        time.sleep(0.05)
        spans.append((unit[0]["config"]["method"], t0, time.perf_counter()))
        return [{"trial_id": unit[0]["trial_id"], "run_id": "r", "status": "finished", "test_accuracy": 0.0}]

    monkeypatch.setattr(runners, "run_unit", fake_run_unit)
    monkeypatch.setattr(runners, "ensure_dataset", lambda *a: None)
    work = [unit("lff", 0), unit("lff", 1), unit("stdm", 0), unit("stdm", 1)]
    res = runners.run_threads(work, "d", "o", "none", "cpu", 2, lambda s: None)
    assert len(res) == 4
    (_, a0, a1), (_, b0, b1) = [s for s in spans if s[0] == "lff"]
    assert a1 <= b0 or b1 <= a0  # the two LfF trials ran one after the other, each beside a StdM one


def test_streams_auto_is_four_threads_on_cuda_where_they_can_run(tmp_path, capsys):
    """--streams auto (the default): 4 on a CUDA device with the local runner, one worker, no --compile, no
    dropout and the paper CNN, else 1; on this CPU a default sweep runs one unit at a time; a bad value is one line, exit 2."""
    trials = expand(load_spec(_write(tmp_path, MICRO)))
    assert runners.resolve_streams("auto", "cuda", trials=trials) == runners.STREAMS_AUTO_CUDA == 4
    assert runners.resolve_streams("auto", "cuda:1", trials=trials) == 4
    assert runners.resolve_streams("auto", "cpu", trials=trials) == 1
    assert runners.resolve_streams("auto", "cuda", "ray", trials=trials) == 1
    assert runners.resolve_streams("auto", "cuda", workers=2, trials=trials) == 1
    assert runners.resolve_streams("auto", "cuda", compile_model="default", trials=trials) == 1
    drop = expand(load_spec(_write(tmp_path, MICRO.replace("base: {", "base: {model_kwargs: {drop_rate: 0.2}, "))))
    assert runners.resolve_streams("auto", "cuda", trials=drop) == 1
    resnet = expand(load_spec(_write(tmp_path, MICRO.replace("base: {", "base: {model: resnet18, "))))
    assert runners.resolve_streams("auto", "cuda", trials=resnet) == 1  # only the measured model threads by default
    assert runners.resolve_streams("3", "cpu") == 3  # a number as it is: run_sweep checks it
    with pytest.raises(BiasbenchError, match="--streams must be a positive integer or auto, got 'many'"):
        runners.resolve_streams("many", "cuda")
    common = ["sweep", _write(tmp_path, MICRO), "--data", str(tmp_path / "data"), "--only", "method=stdm",
              "--only", "seed=0", "--device", "cpu"]
    assert main([*common, "--out", str(tmp_path / "s")]) == 0
    assert "runner local, workers 1 ->" in capsys.readouterr().err  # the default on a CPU: one unit at a time
    assert main([*common, "--out", str(tmp_path / "bad"), "--streams", "many"]) == 2
    assert "--streams must be a positive integer or auto" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_stream_threads_refuse_what_they_cannot_run(tmp_path):
    trials = expand(load_spec(_write(tmp_path, MICRO)))
    with pytest.raises(BiasbenchError, match="--workers 1"):
        run_sweep(trials, "micro", "tiny", str(tmp_path / "data"), str(tmp_path / "o"), streams=2, workers=2)
    with pytest.raises(BiasbenchError, match="not safe to run in several threads"):
        run_sweep(trials, "micro", "tiny", str(tmp_path / "data"), str(tmp_path / "o"), streams=2,
                  compile_model="default")
    with pytest.raises(BiasbenchError, match="--streams must be between 1 and 16"):
        run_sweep(trials, "micro", "tiny", str(tmp_path / "data"), str(tmp_path / "o"), streams=0)
    drop = expand(load_spec(_write(tmp_path, MICRO.replace("base: {", "base: {model_kwargs: {drop_rate: 0.2}, "))))
    with pytest.raises(BiasbenchError, match="dropout"):
        run_sweep(drop, "micro", "tiny", str(tmp_path / "data"), str(tmp_path / "o"), streams=2)
    bad = expand(load_spec(_write(tmp_path, MICRO.replace("base: {", "base: {model_kwargs: {conv1_pad_to: 2}, "))))
    with pytest.raises(BiasbenchError, match="conv1_pad_to must be 0"):
        run_sweep(bad, "micro", "tiny", str(tmp_path / "data"), str(tmp_path / "o"))
    assert not (tmp_path / "o").exists()  # refused before anything was written
    rc = main(["sweep", _write(tmp_path, MICRO), "--data", str(tmp_path / "data"), "--out", str(tmp_path / "c"),
               "--streams", "2", "--runner", "ray"])
    assert rc == 2 and not (tmp_path / "c").exists()


def test_ray_runner_matches_local(tmp_path):
    pytest.importorskip("ray", reason="the [ray] extra is not installed")
    path = _write(tmp_path, MICRO.replace("method: [stdm, upweight]", "method: [stdm]"))
    trials = expand(load_spec(path))
    run_sweep(trials, "micro", "tiny", str(tmp_path / "data"), str(tmp_path / "local"), log=lambda s: None)
    res = run_sweep(trials, "micro", "tiny", str(tmp_path / "data"), str(tmp_path / "ray"), runner="ray",
                    workers=2, log=lambda s: None)
    assert sorted(r["status"] for r in res) == ["finished", "finished"]
    for cfg in (tmp_path / "local" / "runs").glob("*/config.json"):
        run = cfg.parent.name
        a = json.loads((tmp_path / "local" / "runs" / run / "metrics.json").read_text())["history"]
        b = json.loads((tmp_path / "ray" / "runs" / run / "metrics.json").read_text())["history"]
        _assert_same_records(a, b)


def test_slurm_runner_matches_local(tmp_path, capsys):
    """--runner slurm through submitit, its jobs run as subprocesses of this machine (--slurm-cluster local):
    the records of the local runner, submitit's files under SWEEP/slurm/, a rerun skips, a failed job is one
    error naming it. No Slurm cluster ran it (none here): submission with sbatch, job arrays on a cluster and
    requeueing are not tested."""
    pytest.importorskip("submitit", reason="the [slurm] extra is not installed")
    path = _write(tmp_path, MICRO.replace("method: [stdm, upweight]", "method: [stdm]"))
    trials = expand(load_spec(path))
    run_sweep(trials, "micro", "tiny", str(tmp_path / "data"), str(tmp_path / "local"), log=lambda s: None)
    lines = []
    res = run_sweep(trials, "micro", "tiny", str(tmp_path / "data"), str(tmp_path / "sl"), runner="slurm",
                    workers=2, log=lines.append, slurm={"cluster": "local", "timeout_min": 10})
    assert sorted(r["status"] for r in res) == ["finished", "finished"]
    assert any("[2/2 done, 0 left" in line for line in lines)
    assert len(list((tmp_path / "sl" / "slurm").glob("*_result.pkl"))) == 2  # one job per unit
    for cfg in (tmp_path / "local" / "runs").glob("*/config.json"):
        run = cfg.parent.name
        a = json.loads((tmp_path / "local" / "runs" / run / "metrics.json").read_text())["history"]
        b = json.loads((tmp_path / "sl" / "runs" / run / "metrics.json").read_text())["history"]
        _assert_same_records(a, b)
    sweep = json.loads((tmp_path / "sl" / "sweep.json").read_text())
    assert all(t["run_id"] for t in sweep["trials"])
    # from the command line, a rerun: every trial skipped in its job
    assert main(["sweep", path, "--data", str(tmp_path / "data"), "--out", str(tmp_path / "sl"), "--runner", "slurm",
                 "--slurm-cluster", "local", "--slurm-param", "partition=gpu", "--slurm-timeout", "5"]) == 0
    assert "2 trials: 0 trained, 2 already finished" in capsys.readouterr().out
    # a job that fails (its datasets root is a file) fails the sweep with one error, after the others ended
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(BiasbenchError, match=r"2 of 2 Slurm jobs failed \(first: job .*log .*slurm"):
        run_sweep(trials, "micro", "tiny", str(tmp_path / "file"), str(tmp_path / "bad"), runner="slurm",
                  log=lambda s: None, slurm={"cluster": "local"})


def test_slurm_runner_options_fail_before_anything_is_written(tmp_path, capsys):
    pytest.importorskip("submitit", reason="the [slurm] extra is not installed")
    from biasbench.sweep.slurm import UnitJob, parse_params

    path = _write(tmp_path, MICRO)
    out = tmp_path / "o"
    base = ["sweep", path, "--data", str(tmp_path / "data"), "--out", str(out)]
    for extra, message in ((["--runner", "slurm"], "no Slurm cluster here"),
                           (["--runner", "slurm", "--slurm-cluster", "local", "--slurm-param", "colour=red"],
                            "bad Slurm parameter: Unknown argument 'colour'"),
                           (["--runner", "slurm", "--slurm-cluster", "local", "--slurm-param", "partition"],
                            "bad --slurm-param 'partition'; expected KEY=VALUE"),
                           (["--runner", "slurm", "--slurm-cluster", "local", "--slurm-timeout", "0"],
                            "--slurm-timeout must be at least 1 minute"),
                           (["--slurm-param", "partition=gpu"], "are for --runner slurm")):
        assert main(base + extra) == 2
        assert message in capsys.readouterr().err
        assert not out.exists()
    assert parse_params(["partition=gpu", "cpus_per_task=8", "mem_gb=31.5"]) == {
        "slurm_partition": "gpu", "slurm_cpus_per_task": 8, "slurm_mem_gb": 31.5}
    # preempted or out of time, a job is resubmitted as the same call (its runs resume from their checkpoints)
    again = UnitJob().checkpoint([{"trial_id": "t"}], "data", "out", "none", "cpu", False, False)
    assert isinstance(again.function, UnitJob) and again.args == ([{"trial_id": "t"}], "data", "out", "none", "cpu",
                                                                  False, False)


def test_fused_sweep_gives_the_unfused_runs(tmp_path):
    """--fuse 2: stdm seeds 0+1 and upweight seeds 0+1 train as two fused units; the same runs come out."""
    from biasbench.sweep.trial import plan_units

    trials = expand(load_spec(_write(tmp_path, MICRO)))
    units = plan_units(trials, 2)
    assert sorted(sorted(t.config["seed"] for t in u) for u in units) == [[0, 1], [0, 1]]
    assert all(len({t.config["method"] for t in u}) == 1 for u in units)
    assert len(plan_units(trials, 1)) == 4
    plain = run_sweep(trials, "micro", "tiny", str(tmp_path / "data"), str(tmp_path / "plain"), log=lambda s: None)
    lines = []
    fused = run_sweep(trials, "micro", "tiny", str(tmp_path / "data"), str(tmp_path / "fused"), fuse=2,
                      log=lines.append)
    assert any("2 units (up to 2 trials fused)" in line for line in lines)
    assert [r["run_id"] for r in fused] == [r["run_id"] for r in plain]
    assert all(r["fused"] == 2 and r["status"] == "finished" for r in fused)
    for a, b in zip(plain, fused):
        assert abs(a["test_accuracy"] - b["test_accuracy"]) <= 1.0
    again = run_sweep(trials, "micro", "tiny", str(tmp_path / "data"), str(tmp_path / "fused"), fuse=2,
                      log=lambda s: None)
    assert [r["status"] for r in again] == ["skipped"] * 4
    assert main(["sweep", _write(tmp_path, MICRO), "--data", "d", "--out", "o", "--fuse", "0"]) == 2


def test_progress_counts_a_fused_unit_at_once():
    """A fused unit's trials arrive together: every line of the unit shows the unit's whole count, and the
    ETA is wall time per trained trial (skipped trials do not make it look fast)."""
    from biasbench.sweep.runners import Progress

    lines = []
    p = Progress([3, 1, 2], lines.append, slots=1)
    res = lambda i, status="finished": {"trial_id": f"t{i}", "run_id": f"r{i}", "status": status,  # noqa: E731
                                        "test_accuracy": 50.0}
    p.finished([res(0, "skipped")])
    assert "[1/6 done, 5 left, units running: 1, ETA -]" in lines[-1]
    p.finished([res(i) for i in (1, 2, 3)])
    assert len(lines) == 4 and all("[4/6 done, 2 left, units running: 1, ETA " in line for line in lines[1:])
    p.finished([res(4), res(5)])
    assert "[6/6 done, 0 left, units running: 0, ETA 0 s]" in lines[-1]


def test_fuse_auto_fuses_only_compiled_cuda_sweeps():
    from biasbench.sweep.runners import resolve_fuse

    assert resolve_fuse("auto", "cuda") == 1 and resolve_fuse("auto", "cpu", compile_model=True) == 1
    assert resolve_fuse("auto", "cuda:0", compile_model=True) == 8
    assert resolve_fuse("3", "cpu") == 3
