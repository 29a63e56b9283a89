"""Shared fixtures: a tiny Biased MNIST (8-px cells, 24x24 images) generated once per session."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from biasbench.config import DatasetSettings  # noqa: E402
from biasbench.data.biased_mnist import generate  # noqa: E402

TINY = dict(cell_size=8, n_train=2000, n_val=500, n_test=500, seed=0)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny") / "ds"
    generate(root, DatasetSettings(**TINY))
    return root
