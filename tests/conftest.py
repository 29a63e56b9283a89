"""Shared fixtures: a tiny Biased MNIST (8-px cells, 24x24 images) generated once per session; Triton's CPU
interpreter for the GPU kernels' tests."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    # under pytest-xdist (``make test`` runs ``-n auto``) the threads are shared out among the workers as the
    # sweep's local workers share them: N workers with torch's default of every core each would oversubscribe
    import torch

    from biasbench.sweep.runners import worker_threads

    torch.set_num_threads(worker_threads(torch.get_num_threads(), int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

from biasbench.config import DatasetSettings  # noqa: E402
from biasbench.data.biased_mnist import generate  # noqa: E402

TINY = dict(cell_size=8, n_train=2000, n_val=500, n_test=500, seed=0)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny") / "ds"
    generate(root, DatasetSettings(**TINY))
    return root


MINI = dict(cell_size=8, n_train=1000, n_val=200, n_test=200, seed=0)


@pytest.fixture(scope="session")
def mini_root(tmp_path_factory):
    """Half of ``tiny_root``'s training split, for tests that train twice to compare (captured against eager
    steps): at batch 128, 7 full batches and a short one per epoch, at half the convolutions of tiny's 256."""
    root = tmp_path_factory.mktemp("mini") / "ds"
    generate(root, DatasetSettings(**MINI))
    return root


@pytest.fixture
def interpreted(monkeypatch):
    """Triton's interpreter on: the kernels' module is imported afresh, as Triton reads the setting when a
    kernel is defined. The convolution kernels' programs take 2 images each instead of their GPU settings (32
    and 16): a program loops over all of its images, masked, and the interpreter runs every iteration, so
    tests of a few images would spend most of their time on absent ones (the GPU settings compile in
    ``test_the_kernels_compile_for_an_h100_without_one``)."""
    import sys

    from biasbench.models import conv_pool, maxpool

    monkeypatch.setattr(conv_pool, "N_PER", 2)
    monkeypatch.setattr(conv_pool, "WGRAD_N_PER", 2)

    def fresh():
        sys.modules.pop("biasbench.models._maxpool_kernels", None)
        maxpool._kernels.cache_clear()
        if hasattr(sys.modules["biasbench.models"], "_maxpool_kernels"):
            delattr(sys.modules["biasbench.models"], "_maxpool_kernels")

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    fresh()
    yield
    fresh()


@pytest.fixture
def count_calls(monkeypatch):
    """``count_calls(owner, name)``: a list that gets one entry per call of ``owner.name``, which still runs."""

    def patch(owner, name: str) -> list:
        calls = []
        real = getattr(owner, name)
        monkeypatch.setattr(owner, name, lambda *a: calls.append(1) or real(*a))
        return calls

    return patch
