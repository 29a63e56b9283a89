import builtins
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from biasbench.cli import main
from biasbench.config import TrainConfig
from biasbench.errors import BiasbenchError
from biasbench.track import make_tracker
from biasbench.train.loop import Trainer


@pytest.fixture(scope="module")
def tracked_run(tiny_root, tmp_path_factory):
    """One short run logged to all three backends at once."""
    out = tmp_path_factory.mktemp("tracked")
    cfg = TrainConfig(data=str(tiny_root), epochs=2, eval_epochs=(1, 2), batch_size=256)
    res = Trainer(cfg, out, tracker="mlflow,tensorboard,aim", progress=False).run()
    ids = json.loads((Path(res["run_dir"]) / "tracker.json").read_text())
    return out, res, ids


def test_mlflow_round_trip(tracked_run):
    from mlflow.tracking import MlflowClient

    out, res, ids = tracked_run
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    run = client.get_run(ids["mlflow"])
    assert run.data.params["config.method"] == "stdm"
    assert run.data.tags["biasbench.version"] and run.data.tags["device"] == "cpu"
    assert run.data.metrics["test/accuracy"] == pytest.approx(res["final"]["test"]["accuracy"])
    arts = {a.path for a in client.list_artifacts(ids["mlflow"])}
    assert {"config.json", "metrics.json", "samples.png"} <= arts


def test_tensorboard_round_trip(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, res, ids = tracked_run
    acc = EventAccumulator(str(out / "tensorboard" / ids["tensorboard"]), size_guidance={"images": 0, "tensors": 0})
    acc.Reload()
    test_acc = [(e.step, e.value) for e in acc.Scalars("test/accuracy")]
    assert [s for s, _ in test_acc] == [1, 2]
    assert test_acc[-1][1] == pytest.approx(res["final"]["test"]["accuracy"], abs=1e-4)
    mmd = acc.Scalars("test/texture_color/mmd")[-1].value
    assert mmd == pytest.approx(res["final"]["test"]["factors"]["texture_color"]["mmd"], abs=1e-4)
    assert len(acc.Scalars("train/loss")) == 2
    tags = acc.Tags()
    assert "figures/samples" in tags["images"]
    params_text = acc.Tensors("params/text_summary")[0].tensor_proto.string_val[0].decode()
    assert json.loads(params_text)["config.method"] == "stdm"


def test_aim_round_trip(tracked_run):
    from biasbench.track.aim import read_run

    out, res, ids = tracked_run
    run = read_run(str(out), ids["aim"])
    assert run is not None and run.experiment == "biasbench"
    assert run["hparams"]["config.method"] == "stdm"
    assert run["tags"]["device"] == "cpu"
    values = {}
    for m in run.metrics():
        values[(m.name, m.context.to_dict().get("subset"))] = dict((s, v[0]) for s, v in m.data.items())
    assert values[("accuracy", "test")][2] == pytest.approx(res["final"]["test"]["accuracy"])
    assert set(values[("loss", "train")]) == {1, 2}
    assert run["status"] == "FINISHED"


def test_an_evaluation_joins_the_runs_tracker_records(tracked_run, tmp_path):
    """biasbench evaluate adds its accuracy, worst group and MMDs to the run's own MLflow, TensorBoard and Aim
    records (at the epoch of the weights), and its JSON as an artifact; the run stays finished."""
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from biasbench.config import DatasetSettings
    from biasbench.data.biased_mnist import generate
    from biasbench.eval.shift import dataset_key, evaluate_run

    from .conftest import TINY

    out, res, ids = tracked_run
    ref = tmp_path / "reference"
    generate(ref, DatasetSettings(**TINY, drawing="reference"))
    got = evaluate_run(res["run_dir"], ref, device="cpu", progress=False)
    prefix = f"shift_{dataset_key(got['dataset'])}_test"
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    run = client.get_run(ids["mlflow"])
    assert run.data.metrics[f"{prefix}/accuracy"] == pytest.approx(got["metrics"]["accuracy"])
    assert run.data.metrics[f"{prefix}/texture/mmd"] == pytest.approx(got["metrics"]["factors"]["texture"]["mmd"])
    assert run.info.status == "FINISHED"
    arts = {a.path for a in client.list_artifacts(ids["mlflow"])}
    assert f"{dataset_key(got['dataset'])}-test-epoch002.json" in arts
    acc = EventAccumulator(str(out / "tensorboard" / ids["tensorboard"]))
    acc.Reload()
    assert [(e.step, round(e.value, 4)) for e in acc.Scalars(f"{prefix}/accuracy")] == \
        [(2, round(got["metrics"]["accuracy"], 4))]
    from biasbench.track.aim import read_run

    aim_run = read_run(str(out), ids["aim"])  # in Aim the part before the first "/" is the context
    there = {m.context.to_dict().get("subset"): dict((s, v[0]) for s, v in m.data.items())
             for m in aim_run.metrics() if m.name == "accuracy"}
    assert there[prefix] == {2: pytest.approx(got["metrics"]["accuracy"])} and aim_run["status"] == "FINISHED"


def test_resumed_run_continues_the_same_tracker_runs(tiny_root, tmp_path):
    cfg = TrainConfig(data=str(tiny_root), epochs=1, batch_size=256)
    res = Trainer(cfg, tmp_path, tracker="tensorboard", progress=False).run()
    run_dir = Path(res["run_dir"])
    ids = json.loads((run_dir / "tracker.json").read_text())
    tracker = make_tracker("tensorboard", str(tmp_path))
    assert tracker.start("again", resume_ids=ids) == ids  # same log folder as before
    tracker.finish()


def test_bad_tracker_input(tiny_root, tmp_path, capsys, monkeypatch):
    code = main(["train", "--data", str(tiny_root), "--out", str(tmp_path / "r"), "--tracker", "mlflow,wandb"])
    assert code == 2 and "unknown tracker 'wandb'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code = main(["train", "--data", str(tiny_root), "--out", str(blocker / "runs"), "--tracker", "tensorboard"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot write the tracking store" in err and len(err.strip().splitlines()) == 1
    real_import = builtins.__import__

    def no_tensorboard(name, globals=None, locals=None, fromlist=(), level=0):
        if level == 0 and (name == "tensorboard" or name.startswith("tensorboard.")):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, globals, locals, fromlist, level)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(BiasbenchError, match=r"pip install 'biasbench\[tensorboard\]'"):
        make_tracker("tensorboard", str(tmp_path / "tb"))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ui_serves_tensorboard_and_explains_missing_mlflow_ui(tracked_run, capsys):
    out, _, _ = tracked_run
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "biasbench.cli", "ui", str(out), "--tracker", "tensorboard",
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        first = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}" in first
        deadline, status = time.time() + 90, None
        while time.time() < deadline and status is None:
            try:
                status = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).status
            except OSError:
                time.sleep(0.5)
        assert status == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    code = main(["ui", str(out), "--tracker", "mlflow"])
    err = capsys.readouterr().err
    import importlib.util
    if importlib.util.find_spec("flask") is None:  # mlflow-skinny only: the UI is an extra
        assert code == 2 and "pip install 'biasbench[ui]'" in err
    code = main(["ui", str(out / "nothing"), "--tracker", "aim"])
    assert code == 2 and "no Aim repository" in capsys.readouterr().err
