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
from biasbench.config import DatasetSettings, TrainConfig
from biasbench.data.biased_mnist import generate
from biasbench.errors import BiasbenchError
from biasbench.eval.metrics import expected_calibration_error
from biasbench.train.loop import Trainer, load_splits


@pytest.fixture(scope="module")
def biased_root(tmp_path_factory):
    """Strongly biased tiny data: p_bias 0.9, 24x24 images."""
    root = tmp_path_factory.mktemp("biased") / "ds"
    generate(root, DatasetSettings(p_bias=0.9, cell_size=8, n_train=3000, n_val=500, n_test=1000, seed=3))
    return root


def _evals(history):
    return [(h["epoch"], h["split"], h.get("metrics"), h.get("loss")) for h in history]


def test_stdm_learns_the_bias(biased_root, tmp_path):
    cfg = TrainConfig(data=str(biased_root), epochs=6, eval_epochs=(1, 6), batch_size=64, seed=0)
    res = Trainer(cfg, tmp_path, tracker="none", progress=False).run()
    hist = json.loads((Path(res["run_dir"]) / "metrics.json").read_text())["history"]
    losses = [h["loss"] for h in hist if h["split"] == "train_loss"]
    assert losses[-1] < 0.8 * losses[0]
    val = res["final"]["val"]["accuracy"]
    assert val > 40  # chance is 10
    test = res["final"]["test"]
    # the bias shows: on the unbiased test set, majority samples beat minority samples for most factors
    mmds = [test["factors"][f]["mmd"] for f in test["factors"]]
    assert sum(m > 0 for m in mmds) >= 4 and sum(mmds) / len(mmds) > 5 and max(mmds) > 15
    assert test["accuracy"] < val
    # predictions saved for every split at every evaluation epoch
    preds = sorted(p.name for p in (Path(res["run_dir"]) / "predictions").iterdir())
    assert len(preds) == 8 and "epoch006_test.npz" in preds
    # calibration: confident on the unbiased test set where the bias misleads it, so worse calibrated there than
    # on the biased validation split; the record's ECE is that of the saved logits (float16 there)
    assert test["ece"] > res["final"]["val"]["ece"] + 5, (test["ece"], res["final"]["val"]["ece"])
    saved = np.load(Path(res["run_dir"]) / "predictions" / "epoch006_test.npz")
    labels = load_splits(str(biased_root), torch.device("cpu"))["test"].labels_np
    assert expected_calibration_error(saved["logits"], labels) == pytest.approx(test["ece"], abs=0.2)


@pytest.mark.parametrize("layout, expected", [("on", True), ("auto", False), ("off", False)])
def test_the_cpu_trains_channels_last_only_when_asked(mini_root, tmp_path, monkeypatch, layout, expected):
    """On the CPU ``channels_last="auto"`` is the default layout (channels-last there changes the records with
    the thread count: ``docs/training.md``); ``on`` trains and evaluates channels-last (1.2-1.5x faster on an
    x86 CPU): conv1 sees the layout asked for."""
    cfg = TrainConfig(data=str(mini_root), epochs=1, eval_epochs=(1,), channels_last=layout)
    tr = Trainer(cfg, tmp_path, tracker="none", progress=False)
    assert tr.channels_last is expected
    layouts = []  # per call of conv1 (3 input channels): (channels-last, default layout)
    real = torch.nn.Conv2d.forward

    def forward(conv, x):
        if conv.in_channels == 3:
            layouts.append((x.is_contiguous(memory_format=torch.channels_last), x.is_contiguous()))
        return real(conv, x)

    monkeypatch.setattr(torch.nn.Conv2d, "forward", forward)
    assert tr.run()["status"] == "finished"
    assert layouts and set(layouts) == {(expected, not expected)}  # training and evaluation alike


def test_finished_run_is_skipped_and_other_config_refused(tiny_root, tmp_path):
    cfg = TrainConfig(data=str(tiny_root), epochs=1, batch_size=256)
    first = Trainer(cfg, tmp_path, tracker="none", progress=False).run()
    again = Trainer(cfg, tmp_path, tracker="none", progress=False).run()
    assert first["status"] == "finished" and again["status"] == "skipped"
    assert again["final"]["test"]["accuracy"] == first["final"]["test"]["accuracy"]
    # tamper: the folder now claims another configuration
    cfg_path = Path(first["run_dir"]) / "config.json"
    rec = json.loads(cfg_path.read_text())
    rec["config"]["lr"] = 0.5
    cfg_path.write_text(json.dumps(rec))
    with pytest.raises(BiasbenchError, match="holds a different configuration"):
        Trainer(cfg, tmp_path, tracker="none", progress=False).run()


def test_a_run_at_another_image_size_is_another_run(tmp_path):
    """The same recipe rendered with 8- and 16-px cells: before, the run ids ignored the size, so a run at 48 px
    was skipped as the finished run at 24 px and reported its numbers."""
    small = dict(n_train=256, n_val=64, n_test=64, seed=0)
    runs = {}
    for cell in (8, 16):
        generate(tmp_path / f"cell{cell}", DatasetSettings(cell_size=cell, **small))
        cfg = TrainConfig(data=str(tmp_path / f"cell{cell}"), epochs=1, batch_size=128)
        runs[cell] = Trainer(cfg, tmp_path / "runs", tracker="none", progress=False).run()
    assert runs[8]["status"] == runs[16]["status"] == "finished"
    assert runs[8]["run_id"] != runs[16]["run_id"]
    rec = json.loads((Path(runs[16]["run_dir"]) / "config.json").read_text())
    assert rec["dataset"]["settings"]["cell_size"] == 16


def _train_cmd(data, out):
    return [sys.executable, "-m", "biasbench.cli", "train", "--data", str(data), "--out", str(out),
            "--epochs", "3", "--eval-epochs", "2,3", "--batch-size", "32", "--tracker", "none", "--no-progress",
            "--json"]


def test_sigkill_mid_epoch_then_resume_gives_identical_metrics(mini_root, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref = subprocess.run(_train_cmd(mini_root, tmp_path / "ref"), capture_output=True, text=True, env=env)
    assert ref.returncode == 0, ref.stderr
    ref_res = json.loads(ref.stdout)

    out = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(mini_root, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env)
    run_dir = out / ref_res["run_id"]
    deadline = time.time() + 120
    while time.time() < deadline:  # wait for the end of epoch 1, then kill during epoch 2
        try:
            if json.loads((run_dir / "status.json").read_text()).get("epoch", 0) >= 1:
                break
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.01)
    time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "running" and 1 <= status["epoch"] < 3

    resumed = subprocess.run(_train_cmd(mini_root, out), capture_output=True, text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr
    a = json.loads((tmp_path / "ref" / ref_res["run_id"] / "metrics.json").read_text())["history"]
    b = json.loads((run_dir / "metrics.json").read_text())["history"]
    assert _evals(a) == _evals(b)


def test_a_second_trainer_of_a_run_waits_for_the_first(mini_root, tmp_path):
    """While one process holds a run's lock, `train` of the same run in another process waits (saying who holds
    it on standard error, its --json output untouched) and writes nothing; once the lock is free it trains."""
    from biasbench.train.runlock import hold_run

    run_dir = Trainer(TrainConfig(data=str(mini_root), epochs=3, eval_epochs=(2, 3), batch_size=32), tmp_path,
                      tracker="none").run_dir
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with hold_run(run_dir):
        proc = subprocess.Popen(_train_cmd(mini_root, tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env)
        first = proc.stderr.readline()  # blocks until it says it waits
        assert f"run {run_dir.name} is being trained by pid {os.getpid()} on " in first, first
        time.sleep(1.0)
        assert proc.poll() is None and not (run_dir / "config.json").exists()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert json.loads(out)["status"] == "finished" and (run_dir / "summary.json").is_file()


def test_a_run_folder_no_one_can_write_holds_no_lock(tmp_path, monkeypatch):
    """A read-only run folder (a finished run on a read-only mount) is read without a lock; other errors of the
    lock file are errors."""
    import errno

    from biasbench.train import runlock

    def refuse(code):
        def open_(*args, **kwargs):
            raise OSError(code, os.strerror(code))
        return open_
    monkeypatch.setattr(runlock.os, "open", refuse(errno.EROFS))
    entered = []
    with runlock.hold_run(tmp_path / "run"):
        entered.append(True)
    assert entered and not (tmp_path / "run" / runlock.LOCK_NAME).exists()  # ran, no lock taken
    monkeypatch.setattr(runlock.os, "open", refuse(errno.ENOSPC))
    with pytest.raises(OSError):
        with runlock.hold_run(tmp_path / "run"):
            pass


def test_threads_training_one_run_train_it_once(tiny_root, tmp_path):
    """Two trainers of one run in two threads (two trials of a sweep that drew one recipe, under --streams):
    one trains, the other waits for its lock, then finds the run finished and skips it."""
    import threading

    cfg = TrainConfig(data=str(tiny_root), epochs=1, batch_size=256)
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        Trainer(cfg, tmp_path, tracker="none", progress=False).run()["status"])) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["finished", "skipped"]


def test_mlflow_records_read_back(tiny_root, tmp_path):
    from mlflow.tracking import MlflowClient

    cfg = TrainConfig(data=str(tiny_root), epochs=2, eval_epochs=(2,), batch_size=256)
    res = Trainer(cfg, tmp_path, tracker="mlflow", progress=False).run()
    run_id = json.loads((Path(res["run_dir"]) / "tracker.json").read_text())["mlflow"]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["config.method"] == "stdm" and run.data.params["config.epochs"] == "2"
    assert run.data.metrics["test/accuracy"] == pytest.approx(res["final"]["test"]["accuracy"])
    mmd = res["final"]["test"]["factors"]["texture"]["mmd"]
    assert run.data.metrics["test/texture/mmd"] == pytest.approx(mmd)
    losses = client.get_metric_history(run_id, "train/loss")
    assert [m.step for m in losses] == [1, 2]
    arts = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.json", "metrics.json", "summary.json"} <= arts


def test_cli_train_and_runs(tiny_root, tmp_path, capsys):
    code = main(["train", "--data", str(tiny_root), "--out", str(tmp_path), "--epochs", "1",
                 "--batch-size", "256", "--tracker", "none", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0 and "test (unbiased)" in out and "texture_color" in out and "MMD" in out and "ECE" in out
    code = main(["runs", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0 and "stdm" in out and "finished" in out
    code = main(["runs", str(tmp_path), "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["state"] == "finished" and rows[0]["test_accuracy"] is not None


@pytest.mark.parametrize("extra, message", [
    (["--model", "vgg"], "unknown model 'vgg'"),
    (["--method", "magic"], "unknown method 'magic'"),
    (["--epochs", "0"], "epochs must be >= 1"),
    (["--eval-epochs", "3,9"], "evaluation epochs [9] are outside the run"),
    (["--tracker", "wandb"], "unknown tracker 'wandb'"),
    (["--lr", "-1"], "learning rate must be > 0"),
    # a bad model option fails before the default tracker (MLflow) creates its database in --out
    (["--model-kwarg", "pool_grad_sum=kernel", "--tracker", "mlflow"], "pool_grad_sum=kernel runs with a Triton pool"),
    (["--model-kwarg", "conv1_pad_to=2", "--tracker", "mlflow"], "conv1_pad_to must be 0 (off)"),
])
def test_cli_train_bad_input(tiny_root, tmp_path, capsys, extra, message):
    code = main(["train", "--data", str(tiny_root), "--out", str(tmp_path / "runs"), "--epochs", "5",
                 "--tracker", "none", *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()  # training not started, nothing written


def test_cli_train_missing_or_corrupt_dataset(tmp_path, capsys):
    code = main(["train", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "r"), "--tracker", "none"])
    assert code == 2 and "no Biased MNIST dataset" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text("[]")
    code = main(["train", "--data", str(tmp_path / "bad"), "--out", str(tmp_path / "r"), "--tracker", "none"])
    assert code == 2 and "corrupt manifest" in capsys.readouterr().err


def test_compile_mode_reaches_torch_compile(tiny_root, tmp_path, monkeypatch):
    """`--compile MODE` compiles every module of the method (LfF: both models) with that mode and static
    shapes, fused steps too; an unknown mode is one error line and exit 2, before any run folder exists."""
    import torch

    from biasbench.train.fused import FusedMethods

    seen = []

    def fake_module_compile(self, **kwargs):  # records instead of compiling (the CPU compile takes a while)
        seen.append(kwargs)

    monkeypatch.setattr(torch.nn.Module, "compile", fake_module_compile)
    code = main(["train", "--data", str(tiny_root), "--out", str(tmp_path / "r"), "--method", "lff", "--epochs", "1",
                 "--tracker", "none", "--no-progress", "--compile", "reduce-overhead"])
    assert code == 0 and seen == [{"dynamic": False, "mode": "reduce-overhead"}] * 2
    traced = []
    monkeypatch.setattr(torch, "compile", lambda f, **kw: traced.append(kw) or f)
    cfgs = [TrainConfig(data=str(tiny_root), method="stdm", epochs=1, seed=s) for s in (0, 1)]
    trainers = [Trainer(c, tmp_path / "f", tracker="none") for c in cfgs]
    from biasbench.train.loop import load_splits

    train = load_splits(cfgs[0].data, trainers[0].device)["train"]
    FusedMethods([t.build_method(train) for t in trainers], compile_steps="max-autotune-no-cudagraphs")
    assert traced == [{"dynamic": False, "mode": "max-autotune-no-cudagraphs"}] * 2  # the step and predict
    with pytest.raises(BiasbenchError, match="unknown compile mode 'fast'"):
        Trainer(cfgs[0], tmp_path / "g", tracker="none", compile_model="fast")
    assert not (tmp_path / "g").exists()


def test_prep_images_converts_once_in_the_asked_layout():
    import torch

    from biasbench.train.loop import prep_images

    x = torch.randint(0, 256, (4, 3, 6, 5), dtype=torch.uint8)
    cl = prep_images(x, True)
    assert cl.dtype == torch.float32 and cl.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(cl, x.float()) and torch.equal(prep_images(x, False), x.float())
    assert prep_images(x, False).is_contiguous()


def test_load_splits_renders_a_dataset_once_per_process(tmp_path, monkeypatch):
    """The trials of a sweep share one rendering per dataset and device; a dataset made again (changed files)
    is rendered again, and loading another dataset drops the first."""
    import shutil

    import torch

    from biasbench.config import DatasetSettings
    from biasbench.data.biased_mnist import generate
    from biasbench.train import loop

    from .conftest import TINY

    renders = []
    render = loop._render_splits
    monkeypatch.setattr(loop, "_render_splits", lambda *a: renders.append(a[0]) or render(*a))
    a, b = tmp_path / "a", tmp_path / "b"
    generate(a, DatasetSettings(**TINY))
    generate(b, DatasetSettings(**{**TINY, "seed": 5}))
    cpu = torch.device("cpu")
    first = loop.load_splits(str(a), cpu)
    assert loop.load_splits(str(a), "cpu") is first and len(renders) == 1  # the same tensors, not rendered again
    other = loop.load_splits(str(b), cpu)
    assert not torch.equal(other["train"].images, first["train"].images) and len(renders) == 2
    assert len([k for k in loop._SPLITS_CACHE if k[-1] == "cpu"]) == 1  # one dataset per device is kept
    shutil.rmtree(a)
    generate(a, DatasetSettings(**{**TINY, "seed": 6}))  # the same folder made again
    again = loop.load_splits(str(a), cpu)
    assert len(renders) == 3 and not torch.equal(again["train"].images, first["train"].images)
