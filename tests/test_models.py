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
