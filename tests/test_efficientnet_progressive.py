import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from biasbench.cli import main
from biasbench.config import DatasetSettings, TrainConfig
from biasbench.data.biased_mnist import generate
from biasbench.errors import BiasbenchError
from biasbench.methods import Batch, TrainInfo, get_method_class, list_methods
from biasbench.models import create_model
from biasbench.train.augment import OPS, mixup, rand_augment
from biasbench.train.loop import Trainer
from biasbench.train.optim import optimizer_factory
from biasbench.train.progressive import ProgressiveSchedule, resolve

EFFNETS = ["effnetv2_s_w025", "effnetv2_s_w050", "efficientnetv2_rw_t", "efficientnetv2_s", "efficientnetv2_m",
           "efficientnetv2_l"]


@pytest.mark.parametrize("name", EFFNETS)
def test_each_efficientnetv2_builds_and_trains_a_step(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, drop_rate=0.2)
    x = torch.rand(4, 3, 48, 48) * 255
    y = torch.tensor([0, 1, 2, 3])
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    assert math.isfinite(loss.item())
    logits, feats = model.forward_features(x)
    assert logits.shape == (4, 10) and feats["pooled2"].shape[1] == model.feature_dims["pooled2"]
    model.set_dropout(0.4)
    assert model.net.drop_rate == 0.4


def test_width_and_depth_multipliers_shrink_the_network():
    from biasbench.models import count_parameters

    s = count_parameters(create_model("efficientnetv2_s"))
    half = count_parameters(create_model("efficientnetv2_s", channel_multiplier=0.5, depth_multiplier=0.5))
    assert half < s / 4
    with pytest.raises(BiasbenchError, match="unknown EfficientNetV2 option"):
        create_model("effnetv2_s_w025", width=2)


def _info(n=64, batch=16):
    rng = np.random.default_rng(0)
    y = torch.from_numpy(rng.integers(0, 10, n))
    f = torch.from_numpy(rng.integers(0, 9, (n, 7)))
    return TrainInfo(n, 10, y, f, "paper", ("distractor_shape",), "unique", batch)


@pytest.mark.parametrize("model_name", ["paper_cnn", "resnet18", "effnetv2_s_w025", "simple_cnn"])
def test_every_model_works_with_every_method(model_name):
    info = _info()
    cfg = TrainConfig(data="unused")
    for method in list_methods():
        torch.manual_seed(0)
        kwargs = {"small_stem": True} if model_name == "resnet18" else {}
        hparams = {"samples_per_env": 8} if method == "fish" else {}  # (a batch of 16 holds two environments)
        m = get_method_class(method)(create_model(model_name, **kwargs), optimizer_factory(cfg, torch.device("cpu")),
                                     info, hparams)
        idx = torch.arange(16)
        batch = Batch(torch.rand(16, 3, 24, 24) * 255, info.labels[idx], info.factors[idx], idx)
        stats = m.update(batch)
        assert math.isfinite(float(stats["loss"])), (model_name, method)
        assert m.predict(batch.x).shape == (16, 10)


def madgrad_reference(params, grads_fn, steps, lr, momentum, wd, decoupled, eps=1e-6):
    """MADGRAD written from the paper's equations (Defazio & Jelassi 2021, Algorithm 1): dual averaging with
    lambda_k = lr * sqrt(k + 1), s_k = sum lambda g, nu_k = sum lambda g^2, z = x0 - s / (nu^(1/3) + eps),
    x = (1 - c) x + c z with c = 1 - momentum. Conventions of the reference code: eps is added to lr;
    coupled decay adds wd * x to g, decoupled decay scales x by (1 - lr * wd) before the step."""
    x = [p.detach().clone().double() for p in params]
    x0 = [p.clone() for p in x]
    s = [torch.zeros_like(p) for p in x]
    nu = [torch.zeros_like(p) for p in x]
    c = 1 - momentum
    for k in range(steps):
        grads = grads_fn(x)
        lam = (lr + eps) * math.sqrt(k + 1)
        for i in range(len(x)):
            g = grads[i]
            if wd:
                if decoupled:
                    x[i] = x[i] * (1 - lr * wd)
                else:
                    g = g + wd * x[i]
            s[i] = s[i] + lam * g
            nu[i] = nu[i] + lam * g * g
            z = x0[i] - s[i] / (nu[i].pow(1 / 3) + eps)
            x[i] = (1 - c) * x[i] + c * z
    return x


@pytest.mark.parametrize("optimizer, wd", [("madgrad", 0.0), ("madgrad", 1e-2), ("madgradw", 1e-2)])
def test_madgrad_matches_an_independent_implementation(optimizer, wd):
    torch.manual_seed(0)
    a = torch.randn(32, 5, dtype=torch.float64)
    b = torch.randn(32, dtype=torch.float64)
    w = torch.nn.Parameter(torch.randn(5, dtype=torch.float64))
    v = torch.nn.Parameter(torch.randn(1, dtype=torch.float64))

    def loss_of(ws, vs):
        return ((a @ ws + vs - b) ** 2).mean() + 0.1 * (ws ** 4).sum()

    def grads_fn(xs):
        ws, vs = xs[0].clone().requires_grad_(), xs[1].clone().requires_grad_()
        return torch.autograd.grad(loss_of(ws, vs), [ws, vs])

    start = [w.detach().clone(), v.detach().clone()]
    cfg = TrainConfig(data="unused", optimizer=optimizer, lr=0.02, weight_decay=wd, momentum=0.9)
    opt = optimizer_factory(cfg, torch.device("cpu"))([w, v])
    for _ in range(300):
        opt.zero_grad()
        loss_of(w, v).backward()
        opt.step()
    ref = madgrad_reference(start, grads_fn, 300, 0.02, 0.9, wd, optimizer == "madgradw")
    torch.testing.assert_close(w.detach(), ref[0], rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(v.detach(), ref[1], rtol=1e-9, atol=1e-10)
    assert loss_of(w, v).item() < loss_of(*start).item()


def test_stage_values_follow_the_formula():
    s = ProgressiveSchedule(resolve({"stages": 4, "size": [48, 96], "randaug": [5, 15], "dropout": [0.1, 0.3],
                                     "mixup": [0, 0.2]}), epochs=8, image_size=96)
    for i in range(4):
        st = s.stage(i)
        assert st.size == int(round((48 + 48 * i / 3) / 6)) * 6
        assert st.randaug == pytest.approx(5 + 10 * i / 3)
        assert st.dropout == pytest.approx(0.1 + 0.2 * i / 3)
        assert st.mixup == pytest.approx(0.2 * i / 3)
    assert [s.stage_of_epoch(e).index for e in range(1, 9)] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert [s.stage(i).size for i in range(4)] == [48, 66, 78, 96]
    preset = ProgressiveSchedule(resolve("effnetv2-s"), epochs=30, image_size=96)
    assert preset.stage(0).size == 48 and preset.stage(3).size == 96 and preset.stage(3).randaug == 15


def test_progressive_run_trains_at_the_scheduled_sizes(tmp_path):
    root = tmp_path / "ds"
    generate(root, DatasetSettings(cell_size=16, n_train=128, n_val=32, n_test=32))
    cfg = TrainConfig(data=str(root), epochs=4, eval_epochs=(4,), batch_size=64,
                      progressive={"stages": 4, "size": [24, 48], "randaug": [0, 10], "dropout": [0, 0.3]})
    seen = []
    import biasbench.train.loop as loop

    real = loop.Trainer._train_epoch

    def spy(self, method, train, epoch, images=None, stage=None):
        handle = method.model.register_forward_pre_hook(
            lambda mod, args: seen.append((epoch, args[0].shape[-1])) if mod.training else None)
        try:
            return real(self, method, train, epoch, images, stage)
        finally:
            handle.remove()

    loop.Trainer._train_epoch = spy
    try:
        res = Trainer(cfg, tmp_path / "runs", tracker="none", progress=False).run()
    finally:
        loop.Trainer._train_epoch = real
    sizes = {e: {s for ep, s in seen if ep == e} for e in range(1, 5)}
    assert sizes == {1: {24}, 2: {30}, 3: {42}, 4: {48}}
    assert res["final"]["test"]["n"] == 32  # evaluation at the dataset's own size
    model_drop = json.loads((Path(res["run_dir"]) / "config.json").read_text())["config"]["progressive"]
    assert model_drop["dropout"] == [0.0, 0.3]


def test_rand_augment_is_per_sample_and_deterministic():
    x = torch.rand(64, 3, 24, 24) * 255
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    a, b = rand_augment(x, 10, g()), rand_augment(x, 10, g())
    assert torch.equal(a, b) and a.shape == x.shape
    assert a.min() >= 0 and a.max() <= 255
    changed = (a - x).abs().flatten(1).amax(1) > 1e-3
    assert 0 < changed.sum() < 64 or changed.all()  # each image draws its own ops (identity among them)
    assert torch.equal(rand_augment(x, 0, g()), x)
    assert len(OPS) == 12
    xm, ys = mixup(x, torch.arange(64) % 10, 0.4, np.random.default_rng(0), g())
    assert torch.allclose(ys.sum(1), torch.ones(64)) and xm.shape == x.shape


@pytest.mark.parametrize("extra, message", [
    (["--model", "efficientnetv2_xxl"], "unknown model 'efficientnetv2_xxl'"),
    (["--progressive", "effnetv2-xl"], "unknown progressive preset 'effnetv2-xl'"),
    (["--progressive", "effnetv2-m"], "needs soft targets"),
    (["--model", "effnetv2_s_w025", "--model-kwarg", "width=2"], "unknown EfficientNetV2 option"),
])
def test_bad_model_and_progressive_input(tiny_root, tmp_path, capsys, extra, message):
    code = main(["train", "--data", str(tiny_root), "--out", str(tmp_path / "r"), "--epochs", "4", "--tracker",
                 "none", "--method", "upweight" if "effnetv2-m" in extra else "stdm", "--no-progress", *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err


def test_bad_progressive_settings():
    with pytest.raises(BiasbenchError, match="sizes must increase"):
        resolve({"stages": 3, "size": [96, 48]})
    with pytest.raises(BiasbenchError, match="too small to draw"):
        ProgressiveSchedule(resolve({"stages": 3, "size": [12, 48]}), epochs=6, image_size=48)
    with pytest.raises(BiasbenchError, match="stages must be an integer >= 2"):
        resolve({"stages": 1})
    with pytest.raises(BiasbenchError, match="unknown optimizer"):
        TrainConfig(data="x", optimizer="lion")
