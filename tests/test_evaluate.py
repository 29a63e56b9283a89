"""``biasbench evaluate``: a run's kept weights on another dataset (biasbench.eval.shift)."""
import json
from pathlib import Path

import numpy as np
import pytest

from biasbench.cli import main
from biasbench.config import DatasetSettings, TrainConfig
from biasbench.data.biased_mnist import BiasedMNIST, generate
from biasbench.data.factors import FACTORS
from biasbench.data.recipe import read_manifest
from biasbench.errors import BiasbenchError
from biasbench.eval.audit import audit_run
from biasbench.eval.shift import evaluate_run, evaluate_runs, parse_shift, shifted_settings
from biasbench.train.loop import Trainer

SHORTCUT = "background_color"
OTHERS = {f: 0 for f in FACTORS if f != SHORTCUT}
SIZES = dict(cell_size=8, n_train=1000, n_val=300, n_test=300)


@pytest.fixture(scope="module")
def shortcut_run(tmp_path_factory):
    """StdM trained 3 epochs on data whose background colour names the class (p 1.0; the other factors held
    fixed): it learns the colour, so what it predicts follows the colour of whatever images it is given."""
    root = tmp_path_factory.mktemp("shift")
    data = root / "trained"
    generate(data, DatasetSettings(p_bias=f"{SHORTCUT}=1.0", fixed=OTHERS, seed=3, **SIZES))
    cfg = TrainConfig(data=str(data), method="stdm", epochs=3, eval_epochs=(2, 3), batch_size=64)
    result = Trainer(cfg, root / "runs", tracker="none", progress=False).run()
    return root, data, result


def test_a_run_on_its_own_dataset_gives_its_recorded_metrics_exactly(shortcut_run):
    """The kept weights of each evaluation epoch, run through training's evaluation path (same batches, layout
    and precision), reproduce the run's records bit for bit: every metric of every factor, ECE and ABCC."""
    _, data, result = shortcut_run
    history = json.loads((Path(result["run_dir"]) / "metrics.json").read_text())["history"]
    for epoch in (2, 3):
        got = evaluate_run(result["run_dir"], data, "test", epoch=epoch, device="cpu", progress=False)
        recorded = next(h["metrics"] for h in history if h.get("epoch") == epoch and h["split"] == "test")
        recorded = {k: v for k, v in recorded.items() if k != "alpha"}  # alpha needs the training split's patterns
        assert json.dumps(got["metrics"], sort_keys=True) == json.dumps(recorded, sort_keys=True)  # NaN == NaN
        assert got["trained_on_this_dataset"] and got["shift"] == [] and got["epoch"] == epoch
        assert got["recorded_test"]["accuracy"] == recorded["accuracy"]
    assert evaluate_run(result["run_dir"], data, device="cpu", progress=False)["epoch"] == 3  # default: the last


def test_a_shortcut_model_follows_the_factor_into_the_shifted_data(shortcut_run):
    """On its biased validation split the colour model is right (colour = class), on the unbiased test near
    chance; on a dataset whose test images all have one background colour it predicts that colour's class for
    nearly every image: the images evaluated are the given dataset's."""
    root, data, result = shortcut_run
    run = result["run_dir"]
    val = evaluate_run(run, data, "val", device="cpu", progress=False)["metrics"]
    test = evaluate_run(run, data, "test", device="cpu", progress=False)["metrics"]
    assert val["accuracy"] > 90 and test["accuracy"] < 30, (val["accuracy"], test["accuracy"])
    assert test["factors"][SHORTCUT]["mmd"] > 60 and test["factors"][SHORTCUT]["dp_gap"] > 60
    fixed = root / "fixed7"
    generate(fixed, DatasetSettings(fixed={**OTHERS, SHORTCUT: 7}, seed=5, **SIZES))
    got = evaluate_run(run, fixed, "test", device="cpu", progress=False)
    assert not got["trained_on_this_dataset"]
    assert any(s.startswith("fixed") for s in got["shift"]) and any(s.startswith("p_bias") for s in got["shift"])
    m = got["metrics"]
    # class 7's background everywhere: the model says 7, right on the sevens (the majority) and nowhere else
    bg = m["factors"][SHORTCUT]
    assert bg["majority"] > 90 and bg["minority"] < 5 and m["worst_class"] < 5 and 5 < m["accuracy"] < 20, m
    assert np.isnan(bg["dp_gap"])  # one value present: no gap across values to measure
    sevens = int((BiasedMNIST(fixed, split="test").labels == 7).sum())
    assert bg["n_majority"] == sevens and bg["n_minority"] == m["n"] - sevens


def test_evaluate_cli_writes_once_reads_back_and_rejects_bad_input(shortcut_run, tmp_path, capsys):
    root, data, result = shortcut_run
    run = result["run_dir"]
    assert main(["evaluate", run, "--data", str(data), "--split", "val", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "the run's own dataset" in out and "recorded test (unbiased)" in out and "this val" in out
    assert all(f in out for f in FACTORS)
    files = sorted((root / "runs").glob("*/evaluations/*-val-epoch003.json"))
    assert len(files) == 1
    before = files[0].stat().st_mtime_ns
    assert main(["evaluate", str(root / "runs"), "--data", str(data), "--split", "val", "--json"]) == 0
    captured = capsys.readouterr()
    got = json.loads(captured.out)
    assert len(got) == 1 and got[0]["reused"] and "(already evaluated)" in captured.err
    assert files[0].stat().st_mtime_ns == before  # read back, not written again
    # another image size, a missing dataset, an epoch without weights, a bad split: one line, exit 2
    big = tmp_path / "big"
    generate(big, DatasetSettings(cell_size=16, n_train=100, n_val=100, n_test=100))
    for args, message in (([run, "--data", str(big)], "was trained on 24x24 images; "),
                          ([run, "--data", str(tmp_path / "none")], "holds no Biased MNIST dataset"),
                          ([run, "--data", str(data), "--epoch", "1"], "kept no weights of epoch 1; kept: 2, 3")):
        assert main(["evaluate", *args, "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    for args, message in (([run, "--shift", "cell_size=16"], "--shift cell_size: a run's model takes the image size"),
                          ([run, "--shift", "colour=red"], "unknown dataset setting 'colour'; expected one of: p_bias"),
                          ([run, "--shift", "drawing"], "--shift takes KEY=VALUE, e.g. drawing=reference"),
                          ([run, "--shift", "p_bias=texture=2"], "p_bias for texture must be in [0, 1]"),
                          ([run], "give --data DIR (a dataset to evaluate on) or --shift KEY=VALUE")):
        assert main(["evaluate", *args, "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    with pytest.raises(SystemExit):
        main(["evaluate", run, "--data", str(data), "--split", "train2"])
    assert "invalid choice: 'train2'" in capsys.readouterr().err
    # a folder of runs: the run of another size is left out with a line, none left is an error
    with pytest.raises(BiasbenchError, match="no run of .* could be evaluated"):
        evaluate_runs(root / "runs", big, device="cpu", progress=False, log=lambda s: None)


def test_shift_evaluates_a_run_on_its_own_dataset_changed(shortcut_run):
    """--shift KEY=VALUE: the run's own dataset settings with KEY changed, generated on first use beside the
    run's dataset; p_bias and fixed pairs change the named factors and keep the others'."""
    root, data, result = shortcut_run
    base = DatasetSettings.from_dict(read_manifest(data)["settings"])
    assert shifted_settings(base, {"p_bias": "texture=0.9"}).p_bias == {**base.p_bias, "texture": 0.9}
    assert shifted_settings(base, {"fixed": f"{SHORTCUT}=7"}).fixed == {**OTHERS, SHORTCUT: 7}
    assert shifted_settings(base, {"fixed": "none", "seed": "4"}) == DatasetSettings(
        **{**base.__dict__, "fixed": {}, "seed": 4})
    got = evaluate_run(result["run_dir"], None, shift=parse_shift([f"fixed={SHORTCUT}=7"]), device="cpu",
                       progress=False)
    made = Path(got["dataset"]["path"])
    assert made.parent == root and made.name.startswith("bmnist-")  # beside the run's dataset
    assert got["shift"] == [f"fixed {','.join(f'{f}=0' for f in OTHERS)} vs "
                            f"{','.join(f'{f}={7 if f == SHORTCUT else 0}' for f in FACTORS)}"]
    bg = got["metrics"]["factors"][SHORTCUT]
    sevens = int((BiasedMNIST(made, split="test").labels == 7).sum())
    assert bg["majority"] > 90 and bg["minority"] < 5 and bg["n_majority"] == sevens  # the colour of class 7
    again = evaluate_run(result["run_dir"], None, shift={"fixed": f"{SHORTCUT}=7"}, device="cpu", progress=False)
    assert again["reused"] and len(list(root.glob("bmnist-*"))) == 1  # generated once


def test_a_dfr_run_is_evaluated_with_its_refit_last_layer(tmp_path):
    """DFR predicts with a last layer refit at each evaluation, not the trained classifier: the kept weights hold
    the refit layer, so evaluate reproduces DFR's records exactly too (its checkpoint's model, measured: 12.0 %
    against the recorded 15.0 %), and the audit's default model is the evaluated one as well."""
    data = tmp_path / "d"
    generate(data, DatasetSettings(cell_size=8, n_train=600, n_val=200, n_test=200))
    cfg = TrainConfig(data=str(data), method="dfr", epochs=2, eval_epochs=(2,), batch_size=64, explicit=("texture",))
    result = Trainer(cfg, tmp_path / "runs", tracker="none", progress=False).run()
    got = evaluate_run(result["run_dir"], data, device="cpu", progress=False)["metrics"]
    recorded = {k: v for k, v in result["final"]["test"].items() if k != "alpha"}
    assert json.dumps(got, sort_keys=True) == json.dumps(recorded, sort_keys=True)
    audit = audit_run(result["run_dir"], data, device="cpu", progress=False, track=False)
    assert audit["checkpoint_epoch"] == 2 and audit["original_accuracy"] == pytest.approx(recorded["accuracy"])
