import json
import shutil

import numpy as np
import pytest
import torch

from biasbench.cli import main
from biasbench.config import DatasetSettings, TrainConfig
from biasbench.data.biased_mnist import BiasedMNIST, generate
from biasbench.data.factors import DIGIT_COLORS, FACTORS
from biasbench.data.stamps import texture_canvases
from biasbench.eval.audit import counterfactual_audit
from biasbench.train.loop import Trainer

from .conftest import TINY


class DigitColourReader(torch.nn.Module):
    """Hand-built: counts pixels of each digit colour outside every distractor patch and every texture
    glyph position. Only digit pixels can be there, so the model reads the digit colour and nothing else."""

    def __init__(self, cell: int):
        super().__init__()
        size = 3 * cell
        mask = ~texture_canvases(cell).any(axis=0)
        s, off = cell // 2, (cell - cell // 2) // 2
        for g in range(9):
            r, c = divmod(g, 3)
            mask[r * cell + off: r * cell + off + s, c * cell + off: c * cell + off + s] = False
        self.register_buffer("mask", torch.from_numpy(mask).view(1, 1, size, size))
        self.register_buffer("colours", torch.tensor(DIGIT_COLORS, dtype=torch.float32).view(10, 3, 1, 1))

    def forward(self, x):
        hits = (x[:, None] == self.colours[None]).all(dim=2) & self.mask  # (N, 10, H, W)
        return hits.flatten(2).sum(-1).float()


class Constant(torch.nn.Module):
    def forward(self, x):
        out = torch.zeros(len(x), 10)
        out[:, 3] = 1
        return out


@pytest.fixture(scope="module")
def audit_ds(tmp_path_factory):
    root = tmp_path_factory.mktemp("audit") / "ds"
    generate(root, DatasetSettings(cell_size=16, n_train=200, n_val=50, n_test=300, seed=4))
    return BiasedMNIST(root, split="test")


def test_digit_colour_model_flips_only_on_digit_colour(audit_ds):
    res = counterfactual_audit(DigitColourReader(16), audit_ds, torch.device("cpu"), samples=150)
    f = res["factors"]
    assert f["digit_color"]["flip_rate"] > 0.9
    for name in FACTORS:
        if name != "digit_color":
            assert f[name]["flip_rate"] == 0.0, name
    m = np.array(f["digit_color"]["value_class_matrix"])
    assert np.all(np.diag(m) > 0.9)  # forcing colour k makes the model say k
    assert f["digit_color"]["forced_majority_accuracy"] > 90
    assert f["digit_color"]["gap"] > 80


def test_constant_model_shows_no_sensitivity(audit_ds):
    res = counterfactual_audit(Constant(), audit_ds, torch.device("cpu"), samples=100, values=3)
    for name, r in res["factors"].items():
        assert r["flip_rate"] == 0.0
        assert np.array(r["value_class_matrix"])[:, 3].min() == 1.0
        assert r["n_pairs"] == 100 * 3


def test_audit_is_deterministic_for_a_seed(audit_ds):
    model = DigitColourReader(16)
    a = counterfactual_audit(model, audit_ds, torch.device("cpu"), samples=60, values=2, seed=7)
    b = counterfactual_audit(model, audit_ds, torch.device("cpu"), samples=60, values=2, seed=7)
    c = counterfactual_audit(model, audit_ds, torch.device("cpu"), samples=60, values=2, seed=8)
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    assert json.dumps(a, sort_keys=True) != json.dumps(c, sort_keys=True)


def test_cli_audit_writes_json_and_figures_and_rejects_bad_input(tiny_root, tmp_path, capsys):
    res = Trainer(TrainConfig(data=str(tiny_root), epochs=1, batch_size=256), tmp_path / "runs",
                  tracker="none", progress=False).run()
    run = res["run_dir"]
    code = main(["audit", run, "--data", str(tiny_root), "--samples", "40", "--values", "2", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0 and "flip rate" in out and "texture_color" in out
    result = json.loads((tmp_path / "runs" / res["run_id"] / "audit" / "audit.json").read_text())
    assert result["n_images"] == 40 and set(result["factors"]) == set(FACTORS)
    for png in ("flip_rates.png", "value_class.png"):
        assert (tmp_path / "runs" / res["run_id"] / "audit" / png).stat().st_size > 10_000
    # another dataset than the run's
    other = tmp_path / "other"
    generate(other, DatasetSettings(cell_size=8, n_train=100, n_val=20, n_test=50, seed=9))
    code = main(["audit", run, "--data", str(other), "--samples", "5"])
    err = capsys.readouterr().err
    assert code == 2 and "is not the dataset run" in err and "seed" in err
    # the same recipe with the reference's JPEG images: other images, so another dataset
    jpeg = tmp_path / "jpeg"
    generate(jpeg, DatasetSettings(**TINY, jpeg_quality=95))
    code = main(["audit", run, "--data", str(jpeg), "--samples", "5"])
    err = capsys.readouterr().err
    assert code == 2 and "is not the dataset run" in err and "jpeg_quality 0 vs 95" in err
    # bad ranges
    assert main(["audit", run, "--data", str(tiny_root), "--values", "9"]) == 2
    assert "--values must be in [1, 8]" in capsys.readouterr().err
    assert main(["audit", run, "--data", str(tiny_root), "--samples", "0"]) == 2
    capsys.readouterr()
    # without --data: the dataset path the run recorded; with a sweep's datasets root: the run's bmnist-<hash>
    assert main(["audit", run, "--samples", "5", "--values", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_images"] == 5
    from biasbench.sweep.trial import dataset_dir
    root = tmp_path / "datasets"
    shutil.copytree(tiny_root, dataset_dir(root, DatasetSettings(**TINY)))
    assert main(["audit", run, "--data", str(root), "--samples", "5", "--values", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_images"] == 5
    assert main(["audit", run, "--data", str(tmp_path / "nowhere"), "--samples", "5"]) == 2
    assert "nowhere" in capsys.readouterr().err
    moved = tmp_path / "moved"
    shutil.copytree(run, moved)
    rec = json.loads((moved / "config.json").read_text())
    rec["dataset"]["path"] = rec["config"]["data"] = str(tmp_path / "gone")
    (moved / "config.json").write_text(json.dumps(rec))
    assert main(["audit", str(moved), "--samples", "5"]) == 2
    err = capsys.readouterr().err
    assert "holds no dataset from here" in err and "pass --data DIR" in err
    # the weights kept at an evaluation epoch; an epoch without them is one clear error
    assert main(["audit", run, "--epoch", "1", "--samples", "5", "--values", "1"]) == 0
    assert "(model of epoch 1)" in capsys.readouterr().out
    assert (tmp_path / "runs" / res["run_id"] / "audit-epoch001" / "audit.json").is_file()
    assert main(["audit", run, "--epoch", "5", "--samples", "5"]) == 2
    assert "kept no weights of epoch 5; kept: 1" in capsys.readouterr().err
    # a run without a checkpoint
    bare = tmp_path / "bare"
    shutil.copytree(run, bare)
    (bare / "checkpoint.pt").unlink()
    code = main(["audit", str(bare), "--data", str(tiny_root)])
    assert code == 2 and "has no checkpoint" in capsys.readouterr().err


def test_runs_keep_the_weights_they_were_evaluated_with(tiny_root, tmp_path):
    """weights/epochNNN.pt at each evaluation epoch: the model as evaluated then (its test predictions are the
    ones recorded at that epoch), not the last checkpoint's."""
    from biasbench.eval.audit import _Predictor, load_run_model

    res = Trainer(TrainConfig(data=str(tiny_root), epochs=3, eval_epochs=(1, 3), batch_size=128), tmp_path / "runs",
                  tracker="none", progress=False).run()
    run = tmp_path / "runs" / res["run_id"]
    assert sorted(p.name for p in (run / "weights").iterdir()) == ["epoch001.pt", "epoch003.pt"]
    test = BiasedMNIST(tiny_root, split="test", download=False).render()
    preds = {}
    for epoch in (1, 3):
        model, rec = load_run_model(run, torch.device("cpu"), epoch)
        assert rec["checkpoint_epoch"] == epoch
        preds[epoch] = _Predictor(model, torch.device("cpu"))(test)
        recorded = np.load(run / "predictions" / f"epoch{epoch:03d}_test.npz")["pred"]
        assert np.array_equal(preds[epoch], recorded)
    assert not np.array_equal(preds[1], preds[3])  # epoch 1's model is not the last one
    last, _ = load_run_model(run, torch.device("cpu"))
    assert np.array_equal(_Predictor(last, torch.device("cpu"))(test), preds[3])
