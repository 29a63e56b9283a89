"""Progressive learning with adaptive regularization (EfficientNetV2, Tan & Le 2021, Algorithm 1).

Training is split into M stages of equal length. Stage i (0-based) trains at image size
``S_i = S_0 + (S_e - S_0) * i / (M - 1)`` and with dropout, RandAugment magnitude and mixup alpha
interpolated the same way between their minimum and maximum: small images with weak regularization
first, large images with strong regularization last. Evaluation always uses the dataset's own size.

Images for each stage are **rendered by the generator at the stage's size** (cell size = S_i / 3), not
resized: crisp images at every stage, byte-identical to a dataset generated at that cell size. Sizes are
therefore snapped to multiples of 6 (even cells) and must be at least 24 px (8-px cells).

Presets mirror the paper's Table 6 (ImageNet: S size 128 -> 300, RandAugment 5 -> 15, mixup 0, dropout
0.1 -> 0.3; M 5 -> 20, mixup 0 -> 0.2, dropout 0.1 -> 0.4; L 5 -> 25, mixup 0 -> 0.4, dropout 0.1 -> 0.5),
scaled to Biased MNIST: sizes from half the dataset's image size to its full size (48 -> 96 px for the
paper's 96-px images), 4 stages. Explicit settings: a dict with ``stages``, ``size`` [min, max] in pixels
(or ``size_fraction`` [min, max] of the dataset size), ``dropout``, ``randaug``, ``mixup`` [min, max].
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import BiasbenchError

PRESETS: dict[str, dict[str, Any]] = {
    "effnetv2-s": {"stages": 4, "size_fraction": [0.5, 1.0], "randaug": [5, 15], "mixup": [0, 0], "dropout": [0.1, 0.3]},
    "effnetv2-m": {"stages": 4, "size_fraction": [0.5, 1.0], "randaug": [5, 20], "mixup": [0, 0.2], "dropout": [0.1, 0.4]},
    "effnetv2-l": {"stages": 4, "size_fraction": [0.5, 1.0], "randaug": [5, 25], "mixup": [0, 0.4], "dropout": [0.1, 0.5]},
}
KEYS = {"stages", "size", "size_fraction", "dropout", "randaug", "mixup"}
MIN_SIZE = 24


@dataclass(frozen=True)
class Stage:
    index: int
    size: int
    dropout: float
    randaug: float
    mixup: float


def _pair(spec: dict, key: str, default) -> tuple[float, float]:
    v = spec.get(key, default)
    if not isinstance(v, (list, tuple)) or len(v) != 2:
        raise BiasbenchError(f"progressive {key} must be [min, max], got {v!r}")
    try:
        lo, hi = float(v[0]), float(v[1])
    except (TypeError, ValueError):
        raise BiasbenchError(f"progressive {key} must be two numbers, got {v!r}") from None
    if lo < 0 or hi < 0:
        raise BiasbenchError(f"progressive {key} must not be negative, got {v!r}")
    return lo, hi


def resolve(spec: str | dict | None) -> dict | None:
    """A preset name or a settings dict -> a checked settings dict (``None`` stays ``None``)."""
    if spec is None or spec == "" or spec == "none":
        return None
    if isinstance(spec, str):
        if spec not in PRESETS:
            raise BiasbenchError(f"unknown progressive preset {spec!r}; expected one of: {', '.join(PRESETS)}")
        return {"preset": spec, **PRESETS[spec]}
    if not isinstance(spec, dict):
        raise BiasbenchError(f"progressive must be a preset name or a mapping, got {spec!r}")
    unknown = set(spec) - KEYS - {"preset"}
    if unknown:
        raise BiasbenchError(f"unknown progressive setting(s): {', '.join(sorted(unknown))}; "
                             f"expected: {', '.join(sorted(KEYS))}")
    if "size" in spec and "size_fraction" in spec:
        raise BiasbenchError("progressive: give size or size_fraction, not both")
    stages = spec.get("stages", 4)
    if isinstance(stages, bool) or not isinstance(stages, int) or stages < 2:
        raise BiasbenchError(f"progressive stages must be an integer >= 2, got {stages!r}")
    out = dict(spec)
    for key, default in (("dropout", [0, 0]), ("randaug", [0, 0]), ("mixup", [0, 0])):
        out[key] = list(_pair(spec, key, default))
    if out["dropout"][1] >= 1:
        raise BiasbenchError(f"progressive dropout must be below 1, got {out['dropout']}")
    size_key = "size" if "size" in spec else "size_fraction"
    lo, hi = _pair(spec, size_key, [0.5, 1.0])
    if hi <= lo:
        raise BiasbenchError(f"progressive sizes must increase (min < max), got {size_key} [{lo}, {hi}]")
    out[size_key] = [lo, hi]
    return out


class ProgressiveSchedule:
    """Stage values for a run of ``epochs`` epochs on a dataset of ``image_size`` pixels."""

    def __init__(self, settings: dict, epochs: int, image_size: int):
        self.settings = settings
        self.stages = int(settings["stages"])
        self.epochs = epochs
        if "size" in settings:
            lo, hi = settings["size"]
        else:
            lo, hi = (f * image_size for f in settings["size_fraction"])
        self.size_range = (lo, hi)
        if self.stages > epochs:
            raise BiasbenchError(f"progressive: {self.stages} stages need at least as many epochs, got {epochs}")
        sizes = [self.stage(i).size for i in range(self.stages)]
        if sizes[0] < MIN_SIZE:
            raise BiasbenchError(f"progressive: the first stage's size {sizes[0]} px is too small to draw "
                                 f"(at least {MIN_SIZE} px, i.e. 8-px cells)")
        if sizes[-1] <= sizes[0]:
            raise BiasbenchError(f"progressive sizes must increase; they snap to {sizes}")

    @staticmethod
    def interpolate(lo: float, hi: float, i: int, m: int) -> float:
        return lo + (hi - lo) * i / (m - 1)

    def stage(self, i: int) -> Stage:
        m = self.stages
        raw = self.interpolate(*self.size_range, i, m)
        size = max(6, int(round(raw / 6.0)) * 6)  # even cells: multiples of 6
        s = self.settings
        return Stage(i, size, self.interpolate(*s["dropout"], i, m), self.interpolate(*s["randaug"], i, m),
                     self.interpolate(*s["mixup"], i, m))

    def stage_of_epoch(self, epoch: int) -> Stage:
        """Epochs are split into ``stages`` equal parts (1-based epochs)."""
        return self.stage(min(self.stages - 1, (epoch - 1) * self.stages // self.epochs))
