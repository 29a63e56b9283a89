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
