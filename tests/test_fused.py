"""Fused training: R runs under vmap are R separate runs (issue 9's equivalence requirement)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import vmap

from biasbench.config import TrainConfig
from biasbench.methods import Batch, TrainInfo, get_method_class, list_methods
from biasbench.models import create_model
from biasbench.train.fused import FusedMethods, fusable, fuse_key, fused_layout, train_fused
from biasbench.train.loop import Trainer, load_splits
from biasbench.train.optim import optimizer_factory

EXPLICIT = [("distractor_shape",), ("texture",), ("background_color",)]


def _methods(name, data, optimizer="adam", dtype=torch.float64, explicit_sets=EXPLICIT, model="paper_cnn",
             model_kwargs=None):
    """Three runs (seeds 0-2; explicit factors differ for bias-label methods), built as Trainer builds them."""
    train = data["train"]
    out = []
    for seed, explicit in zip((0, 1, 2), explicit_sets):
        cfg = TrainConfig(data="unused", method=name, seed=seed, explicit=explicit, optimizer=optimizer,
                          batch_size=64, lr=1e-3, weight_decay=1e-4)
        torch.manual_seed(seed)
        net = create_model(model, num_classes=10, **(model_kwargs or {})).to(dtype)
        info = TrainInfo(num_train=len(train.labels), num_classes=10, labels=train.labels, factors=train.factors,
                         mode="paper", explicit=explicit if get_method_class(name).uses_bias_labels else (),
                         batch_size=64, seed=seed)
        m = get_method_class(name)(net, optimizer_factory(cfg, torch.device("cpu")), info, {})
        for mod in m.modules().values():
            mod.to(dtype)
        out.append(m)
    return out


def _orders(methods, n_steps, bs=64):
    rows = []
    for r, m in enumerate(methods):
        gen = torch.Generator().manual_seed(100 + r)
        order = m.epoch_indices(1, gen)
        if order is None:
            order = torch.randperm(m.info.num_train, generator=gen)
        rows.append(order[: n_steps * bs])
    return torch.stack(rows).view(len(methods), n_steps, bs)


@pytest.fixture(scope="module")
def data(tiny_root):
    return load_splits(str(tiny_root), torch.device("cpu"))


CASES = [(name, EXPLICIT) for name in list_methods() if get_method_class(name).phases] + [
    # digit_position has 9 values: 89, 100 and 319 groups present in the tiny data, so q and the weights are zero-padded
    (name, [("digit_position",), ("texture",), ("digit_position", "texture")]) for name in ("group_dro", "upweight", "vrex", "coral", "mmd")]


@pytest.mark.parametrize("name,explicit_sets", CASES, ids=[n + ("" if x is EXPLICIT else "-padded") for n, x in CASES])
def test_fused_steps_equal_separate_steps(name, explicit_sets, data):
    """Every method: 4 fused steps of 3 runs give each run's parameters, optimizer state and method state
    as 4 steps of that run alone (float64, so only summation order differs)."""
    separate = _methods(name, data, explicit_sets=explicit_sets)
    fused_src = _methods(name, data, explicit_sets=explicit_sets)
    fused = FusedMethods(fused_src)
    if explicit_sets is not EXPLICIT:
        assert len(set(fused.tensor_lengths["groups"])) == 1 and len({m.num_groups for m in fused_src}) == 3
    train = data["train"]
    orders = _orders(separate, 4)
    for s in range(4):
        idx = orders[:, s]
        x = train.images[idx].to(torch.float64)
        stats = fused.update(x, train.labels[idx], train.factors[idx], idx)
        for r, m in enumerate(separate):
            single = m.update(Batch(x[r], train.labels[idx[r]], train.factors[idx[r]], idx[r]))
            for k, v in single.items():
                torch.testing.assert_close(stats[k][r].to(v.dtype), v, rtol=1e-6, atol=1e-9, msg=f"{name} {k}")
    fused.store(fused_src)
    for a, b in zip(separate, fused_src):
        sa, sb = a.state_dict(), b.state_dict()
        for mod in sa["modules"]:
            for k, v in sa["modules"][mod].items():
                torch.testing.assert_close(sb["modules"][mod][k], v, rtol=1e-6, atol=1e-9, msg=f"{name} {mod}.{k}")
        for opt in sa["optimizers"]:
            for pid, st in sa["optimizers"][opt]["state"].items():
                for k, v in st.items():
                    torch.testing.assert_close(sb["optimizers"][opt]["state"][pid][k], v, rtol=1e-6, atol=1e-9)
        for k, v in a.tensors().items():
            torch.testing.assert_close(b.tensors()[k], v, rtol=1e-6, atol=1e-9, msg=f"{name} tensor {k}")
    # the runs really differ (different seeds): fusing did not make them one run
    p = [dict(m.model.named_parameters())["conv1.weight"] for m in fused_src]
    assert not torch.allclose(p[0], p[1])


@pytest.mark.parametrize("optimizer,model,kwargs", [
    ("sgd", "paper_cnn", {}), ("madgrad", "paper_cnn", {}), ("adamw", "paper_cnn", {}),
    ("adam", "paper_cnn", {"conv1_pad_to": 4}), ("adam", "resnet18", {}), ("adam", "effnetv2_s_w025", {})])
def test_fused_optimizers_and_models_are_per_run(optimizer, model, kwargs, data):
    """Other optimizers, model options, and deeper models (BatchNorm in every block) fuse exactly too."""
    separate = _methods("stdm", data, optimizer, model=model, model_kwargs=kwargs)
    fused_src = _methods("stdm", data, optimizer, model=model, model_kwargs=kwargs)
    fused = FusedMethods(fused_src)
    train = data["train"]
    orders = _orders(separate, 3)
    for s in range(3):
        idx = orders[:, s]
        x = train.images[idx].to(torch.float64)
        fused.update(x, train.labels[idx], train.factors[idx], idx)
        for r, m in enumerate(separate):
            m.update(Batch(x[r], train.labels[idx[r]], train.factors[idx[r]], idx[r]))
    fused.store(fused_src)
    for a, b in zip(separate, fused_src):
        for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
            torch.testing.assert_close(vb, va, rtol=1e-6, atol=1e-9, msg=f"{optimizer} {k}")


def test_fused_predict_is_each_runs_prediction(data):
    methods = _methods("lff", data)
    fused = FusedMethods(methods)
    x = data["test"].images[:32].to(torch.float64)
    fused.train(False)
    for m in methods:
        m.train(False)
    out = fused.predict(x)
    assert out.shape == (3, 32, 10)
    for r, m in enumerate(methods):
        torch.testing.assert_close(out[r], m.predict(x), rtol=1e-9, atol=1e-9)


def test_train_fused_matches_separate_trainers_and_resumes_alone(mini_root, tmp_path):
    """End to end in float32: same run ids, same record files, losses and accuracies within float noise;
    a fused run's checkpoint resumes in a plain Trainer. In the default layout, where the fused grouped
    convolutions round as the separate ones do (weights within 1e-4 of each other's norm after 2 epochs,
    measured); in channels-last (the CUDA default, opt-in on the CPU) oneDNN runs other kernels for grouped
    convolutions and Adam amplifies their rounding to 1-2 % (measured): that layout is checked below, more
    loosely."""
    cfgs = [TrainConfig(data=str(mini_root), method="group_dro", epochs=2, batch_size=128, seed=s, explicit=e,
                        eval_epochs=(1, 2), channels_last="off") for s, e in zip((0, 1), EXPLICIT)]
    sep = [Trainer(c, tmp_path / "sep", tracker="none", progress=False).run() for c in cfgs]
    fus = train_fused(cfgs, tmp_path / "fus", tracker="none", progress=False)
    for a, b in zip(sep, fus):
        assert a["run_id"] == b["run_id"] and b["status"] == "finished"
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-3)
        assert abs(b["final"]["test"]["accuracy"] - a["final"]["test"]["accuracy"]) <= 1.5  # 3 of 200 images
        la = np.load(f"{a['run_dir']}/predictions/epoch002_test.npz")["logits"].astype(np.float64)
        lb = np.load(f"{b['run_dir']}/predictions/epoch002_test.npz")["logits"].astype(np.float64)
        assert np.abs(la - lb).max() < 0.05 * np.abs(la).max()
        ha = json.loads(open(f"{a['run_dir']}/metrics.json").read())["history"]
        hb = json.loads(open(f"{b['run_dir']}/metrics.json").read())["history"]
        assert [(e["epoch"], e["split"]) for e in ha] == [(e["epoch"], e["split"]) for e in hb]
        # the weights kept at evaluation epochs: the same keys, within float noise of the separate run's
        for ep in (1, 2):
            wa = torch.load(f"{a['run_dir']}/weights/epoch{ep:03d}.pt", weights_only=True)["model"]
            wb = torch.load(f"{b['run_dir']}/weights/epoch{ep:03d}.pt", weights_only=True)["model"]
            assert wa.keys() == wb.keys()
            for k in wa:  # Adam's normalised steps can amplify float noise in single elements: norms compared
                diff, ref = (wa[k].double() - wb[k].double()).norm(), wa[k].double().norm()
                assert diff <= 1e-2 * ref + 1e-6, (ep, k, float(diff), float(ref))
    again = train_fused(cfgs, tmp_path / "fus", tracker="none", progress=False)
    assert [r["status"] for r in again] == ["skipped", "skipped"]
    # a fused checkpoint is a plain checkpoint: epoch 3 resumes alone from the fused run's epoch 2
    longer = TrainConfig(**{**cfgs[1].to_dict(), "epochs": 3, "eval_epochs": (1, 2, 3)})
    tr = Trainer(longer, tmp_path / "fus", tracker="none", progress=False)
    (tmp_path / "fus" / tr.run_id).mkdir()
    for f in ("checkpoint.pt",):
        (tmp_path / "fus" / tr.run_id / f).write_bytes((tmp_path / "fus" / fus[1]["run_id"] / f).read_bytes())
    (tmp_path / "fus" / tr.run_id / "config.json").write_text(json.dumps(
        {"config": longer.to_dict(), "dataset": {"recipe_sha256": tr.manifest["recipe_sha256"],
                                                 "settings": tr.settings}}))
    logs = []
    tr.log = logs.append
    res = tr.run()
    assert any("resuming" in s and "after epoch 2" in s for s in logs)
    assert res["epoch"] == 3


def test_a_group_of_one_trains_in_the_plain_loop(mini_root, tmp_path):
    """RUBi with digit_position (9 groups) cannot fuse with the others (10): it trains alone, in the plain
    Trainer loop, and its records equal a plain run's exactly; the other two still fuse."""
    cfgs = [TrainConfig(data=str(mini_root), method="rubi", epochs=1, batch_size=128, seed=0, explicit=(f,),
                        eval_epochs=(1,)) for f in ("digit_position", "texture", "digit_color")]
    logs = []
    fus = train_fused(cfgs, tmp_path / "fus", tracker="none", progress=False, log=logs.append)
    assert sum(line.startswith("fused: 2 runs") for line in logs) == 1
    plain = Trainer(cfgs[0], tmp_path / "sep", tracker="none", progress=False).run()
    assert _history(plain["run_dir"]) == _history(fus[0]["run_dir"])
    assert "fused_runs" not in json.loads(open(f"{fus[0]['run_dir']}/metrics.json").read())["history"][0]


def test_a_fused_group_waits_for_the_locks_of_all_its_runs(mini_root, tmp_path):
    """A fused group takes every run's lock (:mod:`biasbench.train.runlock`) before it writes: while another
    trainer holds one of them, none of the group's runs starts; then all train."""
    import threading
    import time

    from biasbench.train.runlock import hold_run

    cfgs = [TrainConfig(data=str(mini_root), method="sd", epochs=1, batch_size=128, seed=s, eval_epochs=(1,))
            for s in (0, 1)]
    dirs = [Trainer(c, tmp_path, tracker="none").run_dir for c in cfgs]
    results = []
    with hold_run(dirs[1], log=lambda line: None):
        worker = threading.Thread(target=lambda: results.extend(
            train_fused(cfgs, tmp_path, tracker="none", progress=False)))
        worker.start()
        time.sleep(1.0)
        assert worker.is_alive() and not any((d / "config.json").exists() for d in dirs)
    worker.join()
    assert [r["status"] for r in results] == ["finished", "finished"]


def test_channels_last_layout_gives_the_same_runs(mini_root, tmp_path):
    """The CUDA default layout (channels-last through the fused convolutions), here on the CPU."""
    cfgs = [TrainConfig(data=str(mini_root), method="sd", epochs=1, batch_size=128, seed=s, channels_last="on",
                        eval_epochs=(1,)) for s in (0, 1)]
    sep = [Trainer(c, tmp_path / "sep", tracker="none", progress=False).run() for c in cfgs]
    fus = train_fused(cfgs, tmp_path / "fus", tracker="none", progress=False)
    for a, b in zip(sep, fus):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        la = np.load(f"{a['run_dir']}/predictions/epoch001_val.npz")["logits"].astype(np.float64)
        lb = np.load(f"{b['run_dir']}/predictions/epoch001_val.npz")["logits"].astype(np.float64)
        assert np.abs(la - lb).max() < 0.01 * np.abs(la).max()


def test_modules_of_different_shapes_do_not_fuse(data):
    from biasbench.errors import BiasbenchError

    with pytest.raises(BiasbenchError, match="module shapes"):
        FusedMethods(_methods("rubi", data, explicit_sets=[("digit_position",), ("texture",), ("texture",)]))


def test_fuse_rules():
    a = TrainConfig(data="d", method="rubi", seed=0, explicit=("texture",))
    b = TrainConfig(data="d", method="rubi", seed=3, explicit=("digit_color",))
    c = TrainConfig(data="d", method="rubi", seed=0, explicit=("texture",), lr=0.01)
    assert fuse_key(a) == fuse_key(b) != fuse_key(c)
    assert fusable(a) is None
    assert "progressive" in fusable(TrainConfig(data="d", model="effnetv2_s_w025", progressive="effnetv2-s"))
    assert "drop_path_rate" in fusable(TrainConfig(data="d", model="effnetv2_s_w025",
                                                   model_kwargs={"drop_path_rate": 0.1}))
    assert "fold_input_bn" in fusable(TrainConfig(data="d", model_kwargs={"fold_input_bn": True}))
    assert "pool_kernel=triton" in fusable(TrainConfig(data="d", model_kwargs={"pool_kernel": "triton"}))
    assert "changes its networks between epochs" in fusable(TrainConfig(data="d", method="jtt"))  # JTT's switch
    assert "has its own update" in fusable(TrainConfig(data="d", method="fish"))  # sequential inner steps


def _history(run_dir):
    return [h.get("metrics") or h["loss"] for h in json.loads(open(f"{run_dir}/metrics.json").read())["history"]]


def _resume_cfgs(root):
    return [TrainConfig(data=str(root), method="lff", epochs=2, batch_size=128, seed=s, eval_epochs=(2,))
            for s in (0, 1)]


@pytest.fixture(scope="module")
def uninterrupted_fused(mini_root, tmp_path_factory):
    """The uninterrupted fused group both interruption cases compare with (trained once)."""
    return train_fused(_resume_cfgs(mini_root), tmp_path_factory.mktemp("ref"), tracker="none", progress=False)


@pytest.mark.parametrize("stop_after", [2, 1], ids=["both-checkpointed", "one-checkpointed"])
def test_interrupted_fused_training_resumes(stop_after, mini_root, tmp_path, monkeypatch, uninterrupted_fused):
    """Interrupted after epoch 1 of a fused group: a rerun resumes. When both runs have their epoch-1
    checkpoint they resume as one group and end exactly as an uninterrupted fused run; when only one has,
    the two resume as separate groups (epoch 1 vs from scratch) and end within float noise of it."""
    cfgs = _resume_cfgs(mini_root)
    ref = uninterrupted_fused
    calls = []
    original = Trainer.end_epoch

    def interrupted(self, method, epoch, history):
        original(self, method, epoch, history)
        calls.append(epoch)
        if len(calls) == stop_after:
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "end_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_fused(cfgs, tmp_path / "cut", tracker="none", progress=False)
    monkeypatch.setattr(Trainer, "end_epoch", original)
    logs = []
    res = train_fused(cfgs, tmp_path / "cut", tracker="none", progress=False, log=logs.append)
    assert sum("resuming" in line for line in logs) == stop_after
    # one-checkpointed: two groups of one run each, which train in the plain loop
    assert sum(line.startswith("fused:") for line in logs) == (1 if stop_after == 2 else 0)
    for a, b in zip(ref, res):
        ha, hb = _history(a["run_dir"]), _history(b["run_dir"])
        if stop_after == 2:
            assert ha == hb
        else:
            assert hb[0] == pytest.approx(ha[0], rel=1e-3)  # epoch 1's training loss
            assert abs(b["final"]["test"]["accuracy"] - a["final"]["test"]["accuracy"]) <= 1.5  # 3 of 200 images


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_portable_batch_norm_is_batch_norm_under_vmap(layout):
    """portable_batch_norm gives F.batch_norm's output and running statistics (train and eval), per run under
    vmap too, channels-last included, and keeps the input's layout."""
    from biasbench.train.fused import portable_batch_norm

    g = torch.Generator().manual_seed(0)
    x = fused_layout(torch.randn(3, 8, 4, 5, 5, generator=g, dtype=torch.float64) * 3 + 1,
                     layout == "channels_last").double()
    w, b = torch.rand(3, 4, dtype=torch.float64, generator=g), torch.rand(3, 4, dtype=torch.float64, generator=g)
    for training in (True, False):
        rm, rv = torch.rand(3, 4, dtype=torch.float64), torch.rand(3, 4, dtype=torch.float64) + 0.5
        rm2, rv2 = rm.clone(), rv.clone()
        got = vmap(lambda xi, m, v, wi, bi: portable_batch_norm(xi, m, v, wi, bi, training, 0.1, 1e-5))(x, rm, rv, w, b)
        for r in range(3):
            want = F.batch_norm(x[r], rm2[r], rv2[r], w[r], b[r], training, 0.1, 1e-5)
            torch.testing.assert_close(got[r], want, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(rm, rm2, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(rv, rv2, rtol=1e-12, atol=1e-12)
    if layout == "channels_last":
        assert got.permute(1, 0, 2, 3, 4).reshape(8, 12, 5, 5).is_contiguous(memory_format=torch.channels_last)


def test_fused_steps_never_call_the_batch_norm_kernel(data, monkeypatch):
    """Inside fused steps every batch norm (ResNet18's nn.BatchNorm2d, EfficientNetV2's timm BatchNormAct2d)
    runs as portable_batch_norm: the kernel that fails under vmap on channels-last CUDA tensors is not called.
    A layout that fails is reported by layout_error without touching the runs' state."""
    import biasbench.train.fused as fused_mod

    def kernel(*args, **kwargs):
        raise AssertionError("torch.batch_norm called in a fused step")

    monkeypatch.setattr(torch, "batch_norm", kernel)
    for model in ("resnet18", "effnetv2_s_w025"):
        fused = FusedMethods(_methods("stdm", data, model=model))
        idx = _orders(_methods("stdm", data, model=model), 1)[:, 0]
        train = data["train"]
        fused.update(train.images[idx].to(torch.float64), train.labels[idx], train.factors[idx], idx)
        fused.train(False)
        fused.predict(train.images[:4].to(torch.float64))
        x = train.images[idx].to(torch.float64)
        assert fused.layout_error(x) is None
    before = {k: v.clone() for k, v in fused.buffers[fused.names[0]].items()}

    def fails(*args, **kwargs):
        raise RuntimeError("NYI: querying is_contiguous inside of vmap\nmore")

    monkeypatch.setattr(fused_mod, "portable_batch_norm", fails)
    assert fused.layout_error(x) == "NYI: querying is_contiguous inside of vmap"
    for k, v in fused.buffers[fused.names[0]].items():
        assert torch.equal(v, before[k])
    assert all(p.grad is None for ps in fused.params.values() for p in ps.values())
