"""What the benchmark scripts share: the device they run on and its name for their headers."""
from __future__ import annotations

import platform

import torch


def pick_device(arg: str) -> str:
    """``--device``: ``auto`` is ``cuda`` when torch sees a GPU, else ``cpu``; anything else as given."""
    if arg == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return arg


def device_name(dev: str | torch.device) -> str:
    """The GPU's name for a CUDA device, else the CPU's."""
    dev = torch.device(dev)
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else (platform.processor() or platform.machine())
