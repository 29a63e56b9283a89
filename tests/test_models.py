import pytest
import torch

from biasbench.errors import BiasbenchError
from biasbench.models import count_parameters, create_model, list_models


def test_paper_cnn_is_the_papers_network():
    m = create_model("paper_cnn", num_classes=10)
    assert count_parameters(m) == 67_760  # "about 67.8k"
    x = torch.rand(4, 3, 96, 96) * 255
    logits, feats = m.forward_features(x, ("pooled2", "pooled4", "before_logits"))
    assert logits.shape == (4, 10)
    assert feats["pooled2"].shape == (4, 32) and feats["pooled4"].shape == (4, 64)
    torch.testing.assert_close(m(x), logits)
    assert m(x[:1]).shape == (1, 10)  # the reference's .squeeze() broke batches of one; ours does not
    assert isinstance(m.input_bn, torch.nn.BatchNorm2d)


@pytest.mark.parametrize("channels_last", [False, True])
def test_paper_cnn_pools_before_its_relu_bit_for_bit(channels_last):
    """relu(maxpool(conv1)) gives the reference's maxpool(relu(conv1)) exactly: logits and every gradient."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    m = create_model("paper_cnn", num_classes=10)
    x, y = torch.rand(16, 3, 24, 24) * 255, torch.randint(0, 10, (16,))
    if channels_last:
        m, x = m.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)

    def reference(x):  # the reference's order
        h = F.relu(m.conv2(m.pool1(F.relu(m.conv1(m.input_bn(x))))))
        h = F.relu(m.conv4(F.relu(m.conv3(h)))).mean(dim=(2, 3))
        return m.fc(h)

    grads = []
    for forward in (m, reference):
        m.zero_grad()
        logits = forward(x)
        F.cross_entropy(logits, y).backward()
        grads.append((logits.detach(), {n: p.grad.clone() for n, p in m.named_parameters()}))
    (a, ga), (b, gb) = grads
    assert torch.equal(a, b)
    assert ga.keys() == gb.keys() and all(torch.equal(ga[n], gb[n]) for n in ga)
    assert (m.conv1(m.input_bn(x)) < 0).any()  # windows with negative values were there to get right


@pytest.mark.parametrize("form", [True, "normalized"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_folded_input_batch_norm_trains_like_the_batch_norm(channels_last, form):
    """fold_input_bn (raw or normalised input): in float64, three Adam steps give the ordinary network's logits,
    every parameter gradient, the parameters and the running statistics (gamma and beta away from 1 and 0, so
    their folding into conv1 and the zero padding's border term are exercised); evaluation is the ordinary
    path."""
    import copy

    import torch.nn.functional as F

    torch.manual_seed(0)
    ref = create_model("paper_cnn").double()
    with torch.no_grad():
        ref.input_bn.weight.copy_(torch.tensor([1.3, 0.7, 2.0]))
        ref.input_bn.bias.copy_(torch.tensor([0.1, -0.4, 0.3]))
    fold = copy.deepcopy(ref)
    fold.fold_input_bn = form
    x = torch.randint(0, 256, (3, 8, 3, 24, 24)).double()
    y = torch.randint(0, 10, (3, 8))
    if channels_last:
        ref, fold = ref.to(memory_format=torch.channels_last), fold.to(memory_format=torch.channels_last)
        x = torch.stack([b.contiguous(memory_format=torch.channels_last) for b in x])
    opts = [torch.optim.Adam(m.parameters(), lr=1e-2) for m in (ref, fold)]
    for step in range(3):
        outs = []
        for m, opt in zip((ref, fold), opts):
            opt.zero_grad()
            logits = m(x[step])
            F.cross_entropy(logits, y[step]).backward()
            outs.append((logits.detach(), {n: p.grad.clone() for n, p in m.named_parameters()}))
            opt.step()
        (a, ga), (b, gb) = outs
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
        for n in ga:
            torch.testing.assert_close(ga[n], gb[n], rtol=1e-9, atol=1e-12, msg=f"gradient of {n}")
    for (n, a), (_, b) in zip(ref.state_dict().items(), fold.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=n)
    assert fold.input_bn.num_batches_tracked.item() == 3
    plain = copy.deepcopy(fold)
    plain.fold_input_bn = False
    plain.eval(), fold.eval()
    assert torch.equal(plain(x[0]), fold(x[0]))  # evaluation: the ordinary path
    plain.train(), fold.train()
    assert not torch.equal(plain(x[0]), fold(x[0]))  # training: the folded path (it rounds differently)


@pytest.mark.parametrize("fold", [False, True])
@pytest.mark.parametrize("pad_to", [4, 8])
def test_conv1_pad_to_trains_like_the_unpadded_network(monkeypatch, fold, pad_to):
    """conv1_pad_to: conv1 sees pad_to input channels (zeros appended to its input and weight), and in float64
    two Adam steps give the unpadded network's logits, gradients and parameters, with the same parameters and
    checkpoint keys; alone and with fold_input_bn."""
    import copy

    import torch.nn.functional as F

    torch.manual_seed(0)
    ref = create_model("paper_cnn", fold_input_bn=fold).double().to(memory_format=torch.channels_last)
    padded = copy.deepcopy(ref)
    padded.conv1_pad_to = pad_to
    seen = []
    conv2d = F.conv2d
    monkeypatch.setattr(F, "conv2d", lambda x, w, *a: seen.append((x.shape[1], w.shape[1])) or conv2d(x, w, *a))
    x = [b.contiguous(memory_format=torch.channels_last) for b in torch.randint(0, 256, (2, 8, 3, 24, 24)).double()]
    y = torch.randint(0, 10, (2, 8))
    opts = [torch.optim.Adam(m.parameters(), lr=1e-2) for m in (ref, padded)]
    for step in range(2):
        outs = []
        for m, opt in zip((ref, padded), opts):
            opt.zero_grad()
            seen.clear()
            logits = m(x[step])
            F.cross_entropy(logits, y[step]).backward()
            outs.append((logits.detach(), {n: p.grad.clone() for n, p in m.named_parameters()}, list(seen)))
            opt.step()
        (a, ga, seen_ref), (b, gb, seen_pad) = outs
        assert (pad_to, pad_to) in seen_pad and (pad_to, pad_to) not in seen_ref  # conv1 ran padded
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
        for n in ga:
            assert ga[n].shape == gb[n].shape
            torch.testing.assert_close(ga[n], gb[n], rtol=1e-9, atol=1e-12, msg=f"gradient of {n}")
    assert ref.state_dict().keys() == padded.state_dict().keys()
    for (n, a), (_, b) in zip(ref.state_dict().items(), padded.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=n)


@pytest.mark.parametrize("value", [2, 65, True, "4", 4.0])
def test_conv1_pad_to_takes_a_channel_count(value):
    with pytest.raises(BiasbenchError, match="conv1_pad_to must be 0"):
        create_model("paper_cnn", conv1_pad_to=value)
    assert create_model("paper_cnn", conv1_pad_to=0).conv1_pad_to == 0


@pytest.mark.parametrize("value", ["maybe", "raw", 1, 0.0])
def test_fold_input_bn_takes_false_true_or_normalized(value):
    with pytest.raises(BiasbenchError, match="fold_input_bn must be false, true or normalized"):
        create_model("paper_cnn", fold_input_bn=value)


def test_normalized_fold_convolves_the_normalized_input(monkeypatch):
    """fold_input_bn="normalized" hands conv1 (x - mean_B) * rstd_B in autocast's dtype and x's layout, and the
    weight scaled by gamma alone; the raw fold hands it x and the weight scaled by gamma * rstd_B."""
    torch.manual_seed(0)
    x = (torch.rand(4, 3, 24, 24) * 255).round().contiguous(memory_format=torch.channels_last)
    var, mean = torch.var_mean(x, dim=(0, 2, 3), unbiased=False)
    seen = {}
    real_conv2d = torch.nn.functional.conv2d

    def spy(inp, weight, *args):
        if inp.shape[0] == x.shape[0]:  # not the border term's batch-of-one convolution
            seen.setdefault("conv", (inp, weight))
        return real_conv2d(inp, weight, *args)

    for form in (True, "normalized"):
        m = create_model("paper_cnn", fold_input_bn=form, pool_kernel="torch")
        with torch.no_grad():
            m.input_bn.weight.copy_(torch.tensor([1.3, 0.7, 2.0]))
        seen.clear()
        monkeypatch.setattr(torch.nn.functional, "conv2d", spy)
        with torch.autocast("cpu", torch.bfloat16):
            m(x)
        monkeypatch.undo()
        inp, weight = seen["conv"]
        gamma = m.input_bn.weight.detach().view(1, -1, 1, 1)
        rstd = torch.rsqrt(var + m.input_bn.eps).view(1, -1, 1, 1)
        if form == "normalized":
            assert inp.dtype == torch.bfloat16 and inp.is_contiguous(memory_format=torch.channels_last)
            torch.testing.assert_close(inp.float(), ((x - mean.view(1, -1, 1, 1)) * rstd), rtol=1e-2, atol=1e-2)
            torch.testing.assert_close(weight, m.conv1.weight * gamma)
        else:
            assert torch.equal(inp, x)
            torch.testing.assert_close(weight, m.conv1.weight * gamma * rstd)


def test_normalized_fold_rounds_without_the_raw_folds_cancellation():
    """On bright inputs (mean about 227, spread about 16) the raw fold's convolution and border term are about 14
    times their sum, so bf16 rounds the first block's output far from float64; the normalised fold does not."""
    torch.manual_seed(0)
    x = (200 + torch.rand(16, 3, 24, 24) * 55).round()
    ref = create_model("paper_cnn", pool_kernel="torch").double()
    with torch.no_grad():
        ref.input_bn.weight.copy_(torch.tensor([1.3, 0.7, 2.0]))
        ref.input_bn.bias.copy_(torch.tensor([0.1, -0.4, 0.3]))
    want = ref._first_block(x.double())
    errors = {}
    for form in (False, True, "normalized"):
        m = create_model("paper_cnn", fold_input_bn=form, pool_kernel="torch")
        m.load_state_dict(ref.state_dict())
        with torch.autocast("cpu", torch.bfloat16):
            got = m._first_block(x)
        errors[form] = ((got.double() - want).norm() / want.norm()).item()
    assert errors[True] > 4 * errors["normalized"], errors
    assert errors["normalized"] < 2 * errors[False], errors


def test_resnet18_stems():
    big = create_model("resnet18")
    small = create_model("resnet18", small_stem=True)
    assert count_parameters(big) > 11e6
    x = torch.rand(2, 3, 24, 24) * 255
    logits, feats = small.forward_features(x)
    assert logits.shape == (2, 10) and feats["pooled2"].shape == (2, 128) and feats["pooled4"].shape == (2, 512)
    assert small.net.conv1.stride == (1, 1)


def test_unknown_model():
    assert {"paper_cnn", "resnet18"} <= set(list_models())
    with pytest.raises(BiasbenchError, match="unknown model 'vgg'"):
        create_model("vgg")
