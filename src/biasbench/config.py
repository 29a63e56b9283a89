"""Typed, validated settings: the one place that turns bad input into clear :class:`BiasbenchError` lines."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

from .data.factors import FACTORS, check_mode
from .data.jpeg import check_quality
from .data.render import check_cell_size
from .data.stamps import DRAWINGS, check_drawing
from .errors import BiasbenchError

DEFAULT_P_BIAS = 0.7
"""The paper's main setting (Table 1)."""
DEFAULT_CELL_SIZE = 32
"""The paper's cell: 3 x 32 = 96 px images."""
UNBIASED_P = 0.1
"""p for ``balanced_val`` and ``test``: with 10 values every value has probability 1/10."""
MNIST_TRAIN_SIZE = 60_000
MNIST_TEST_SIZE = 10_000


def check_probability(value: Any, what: str) -> float:
    try:
        p = float(value)
    except (TypeError, ValueError):
        raise BiasbenchError(f"{what} must be a number in [0, 1], got {value!r}") from None
    if not (0.0 <= p <= 1.0) or math.isnan(p):
        raise BiasbenchError(f"{what} must be in [0, 1], got {value!r}")
    return p


def parse_p_bias(value: Any) -> dict[str, float]:
    """One p for all factors (a number) or a mapping ``factor -> p`` (others get the default 0.7).

    Strings are accepted as ``"0.7"`` or ``"digit_color=0.9,texture=0.5"`` (others 0.7).
    """
    if isinstance(value, str) and "=" in value:
        mapping: dict[str, Any] = {}
        for item in value.split(","):
            if "=" not in item:
                raise BiasbenchError(f"bad p_bias item {item!r}; expected NAME=P, e.g. digit_color=0.9")
            k, v = item.split("=", 1)
            mapping[k.strip()] = v.strip()
        value = mapping
    if isinstance(value, Mapping):
        out = {f: DEFAULT_P_BIAS for f in FACTORS}
        for k, v in value.items():
            if k not in FACTORS:
                raise BiasbenchError(f"unknown factor {k!r} in p_bias; expected one of: {', '.join(FACTORS)}")
            out[k] = check_probability(v, f"p_bias for {k}")
        return out
    p = check_probability(value, "p_bias")
    return {f: p for f in FACTORS}


def parse_fixed(value: Any) -> dict[str, int]:
    """``{factor: value index}`` or ``"texture=0,background_color=3"``; checked against the value tables."""
    from .data.factors import FACTOR_TABLE

    if isinstance(value, str):
        items = [i for i in value.split(",") if i.strip()]
        value = {}
        for item in items:
            if "=" not in item:
                raise BiasbenchError(f"bad fixed item {item!r}; expected NAME=INDEX, e.g. texture=0")
            k, v = item.split("=", 1)
            value[k.strip()] = v.strip()
    out = {}
    for k, v in dict(value or {}).items():
        if k not in FACTORS:
            raise BiasbenchError(f"unknown factor {k!r} in fixed; expected one of: {', '.join(FACTORS)}")
        out[k] = _check_int(v, f"fixed value of {k}", 0, FACTOR_TABLE[k].num_values - 1)
    return {k: out[k] for k in FACTORS if k in out}


def _check_int(value: Any, what: str, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            if isinstance(value, str) and value.strip().lstrip("-").isdigit():
                value = int(value)
            else:
                raise TypeError
        except TypeError:
            raise BiasbenchError(f"{what} must be an integer, got {value!r}") from None
    if value < lo or (hi is not None and value > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise BiasbenchError(f"{what} must be {rng}, got {value}")
    return value


@dataclass(frozen=True)
class DatasetSettings:
    """Everything that determines a Biased MNIST dataset (with the MNIST bytes and the renderer version).

    ``fixed``: factors held at one value index in every image of every split (not part of the paper;
    for controlled experiments such as a dataset where only the digit and one factor vary).

    ``jpeg_quality``: 0 (default) renders lossless images, as drawn; 1-100 gives every image the JPEG round
    trip of ``cv2.imwrite`` at that quality then ``cv2.imread``, exactly (:mod:`biasbench.data.jpeg`); 95 is
    what the reference's dataset files went through.

    ``drawing``: ``biasbench`` (default) draws the distractor shapes and texture glyphs our way and resizes
    digits in float64; ``reference`` draws the reference's own OpenCV pixels, its shapes and glyphs and its
    digits' float32 rounding (:mod:`biasbench.data.render`). With ``jpeg_quality=95`` and 32-px cells that
    gives the reference's images byte for byte.

    ``jpeg_quality`` and ``drawing`` are left out of :meth:`to_dict` at their defaults
    (:data:`OMITTED_AT_DEFAULT`), so datasets, trials and runs from before those options keep their ids.

    ``p_bias``: per-factor probability of the class-aligned value for ``train`` and ``val``;
    ``balanced_val`` and ``test`` use :data:`UNBIASED_P`. Sizes: ``n_train + n_val <= 60,000`` (one
    seeded permutation of MNIST-train, train first), ``n_test <= 10,000`` (the first MNIST-test digits).
    """

    p_bias: dict[str, float] = field(default_factory=lambda: {f: DEFAULT_P_BIAS for f in FACTORS})
    seed: int = 0
    cell_size: int = DEFAULT_CELL_SIZE
    mode: str = "paper"
    n_train: int = 50_000
    n_val: int = 10_000
    n_test: int = 10_000
    fixed: dict[str, int] = field(default_factory=dict)
    jpeg_quality: int = 0
    drawing: str = DRAWINGS[0]

    def __post_init__(self) -> None:
        object.__setattr__(self, "p_bias", parse_p_bias(self.p_bias))
        object.__setattr__(self, "fixed", parse_fixed(self.fixed))
        object.__setattr__(self, "seed", _check_int(self.seed, "seed", 0, 2**63 - 1))
        object.__setattr__(self, "cell_size", check_cell_size(_check_int(self.cell_size, "cell size", 0)))
        check_mode(self.mode)
        object.__setattr__(self, "n_train", _check_int(self.n_train, "train size", 1, MNIST_TRAIN_SIZE))
        object.__setattr__(self, "n_val", _check_int(self.n_val, "val size", 1, MNIST_TRAIN_SIZE))
        object.__setattr__(self, "n_test", _check_int(self.n_test, "test size", 1, MNIST_TEST_SIZE))
        object.__setattr__(self, "jpeg_quality", check_quality(self.jpeg_quality))
        object.__setattr__(self, "drawing", check_drawing(self.drawing))
        if self.n_train + self.n_val > MNIST_TRAIN_SIZE:
            raise BiasbenchError(
                f"train size + val size = {self.n_train + self.n_val} exceeds the {MNIST_TRAIN_SIZE} "
                f"MNIST training digits they are drawn from"
            )

    @property
    def image_size(self) -> int:
        return 3 * self.cell_size

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key, default in OMITTED_AT_DEFAULT.items():
            if d[key] == default:  # the dict (and every hash of it) as before the option
                del d[key]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DatasetSettings":
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise BiasbenchError(f"unknown dataset setting(s): {', '.join(sorted(unknown))}")
        return cls(**dict(d))

    def differences(self, other: "DatasetSettings") -> list[str]:
        """Human-readable list of settings that differ (empty when equal)."""
        a, b = asdict(self), asdict(other)
        out = []
        for k in a:
            if a[k] != b[k]:
                if k == "p_bias" and len(set(a[k].values())) == 1 and len(set(b[k].values())) == 1:
                    out.append(f"p_bias {a[k][FACTORS[0]]} vs {b[k][FACTORS[0]]}")
                elif k == "p_bias":
                    diffs = [f"{f} {a[k][f]} vs {b[k][f]}" for f in FACTORS if a[k][f] != b[k][f]]
                    out.append("p_bias " + ", ".join(diffs))
                elif k == "fixed":
                    def held(d):
                        return ",".join(f"{f}={i}" for f, i in d.items()) or "none"
                    out.append(f"fixed {held(a[k])} vs {held(b[k])}")
                else:
                    out.append(f"{k} {a[k]} vs {b[k]}")
        return out


OMITTED_AT_DEFAULT: dict[str, Any] = {"jpeg_quality": 0, "drawing": DRAWINGS[0]}
"""Dataset settings added after the first records were made: :meth:`DatasetSettings.to_dict` leaves them out
at these defaults, and a record or manifest without them had them."""


def later_settings_set(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Those of :data:`OMITTED_AT_DEFAULT` that a settings dict (a manifest's, a record's) sets away from their
    defaults, in that order: ``{"jpeg_quality": 95, "drawing": "reference"}``, ``{}`` for the default images."""
    return {k: settings[k] for k, default in OMITTED_AT_DEFAULT.items() if settings.get(k, default) != default}


OPTIMIZERS = ("adam", "adamw", "sgd", "madgrad", "madgradw")
PRECISIONS = ("auto", "fp32", "bf16")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
"""``torch.compile`` modes (``--compile MODE``); ``reduce-overhead`` adds CUDA graphs on CUDA."""


def _check_float(value: Any, what: str, lo: float, lo_open: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise BiasbenchError(f"{what} must be a number, got {value!r}") from None
    if math.isnan(v) or v < lo or (lo_open and v == lo):
        raise BiasbenchError(f"{what} must be {'>' if lo_open else '>='} {lo}, got {value!r}")
    return v


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Defaults are the paper's Biased MNIST settings (paper-reference §2.1):
    ``progressive``: a preset name or settings of :mod:`biasbench.train.progressive` (off by default).
    Adam, lr 1e-3, weight decay 1e-5 (coupled L2), batch 128, 30 epochs, evaluation at epochs 15 and 30.

    ``eval_epochs=None`` means (epochs // 2, epochs). ``precision``: ``auto`` = bf16 autocast on CUDA,
    fp32 elsewhere. ``channels_last``: ``auto`` = on for CUDA. ``data`` is not part of the run's identity;
    the dataset's recipe hash is (see :func:`biasbench.train.loop.run_identity`).
    """

    data: str
    method: str = "stdm"
    model: str = "paper_cnn"
    model_kwargs: dict = field(default_factory=dict)
    method_hparams: dict = field(default_factory=dict)
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 1e-5
    momentum: float = 0.9
    batch_size: int = 128
    epochs: int = 30
    eval_epochs: tuple | None = None
    seed: int = 0
    precision: str = "auto"
    channels_last: str = "auto"
    explicit: tuple = ("distractor_shape",)
    grouping: str = "unique"
    progressive: Any = None

    def __post_init__(self) -> None:
        from .methods import get_method_class
        from .methods.groups import GROUPINGS
        from .models import list_models

        if self.model not in list_models():
            raise BiasbenchError(f"unknown model {self.model!r}; expected one of: {', '.join(list_models())}")
        method_cls = get_method_class(self.method)  # raises a clear error for unknown methods
        explicit = self.explicit
        if isinstance(explicit, str):
            explicit = tuple(e.strip() for e in explicit.split(",") if e.strip())
        for name in explicit:
            if name not in FACTORS:
                raise BiasbenchError(f"unknown factor {name!r} in explicit; expected some of: {', '.join(FACTORS)}")
        if len(set(explicit)) != len(explicit):
            raise BiasbenchError(f"explicit factors repeat: {', '.join(explicit)}")
        if self.grouping not in GROUPINGS:
            raise BiasbenchError(f"unknown grouping {self.grouping!r}; expected one of: {', '.join(GROUPINGS)}")
        if method_cls.uses_bias_labels:
            if not explicit:
                raise BiasbenchError(f"{self.method} needs at least one explicit bias factor (--explicit)")
            explicit = tuple(f for f in FACTORS if f in explicit)  # canonical order: same set, same run
        else:  # methods without bias labels ignore them: same run whatever --explicit says
            object.__setattr__(self, "grouping", "unique")
            explicit = ()
        object.__setattr__(self, "explicit", explicit)
        object.__setattr__(self, "method_hparams", method_cls.check_hparams(self.method_hparams))
        if self.optimizer not in OPTIMIZERS:
            raise BiasbenchError(f"unknown optimizer {self.optimizer!r}; expected one of: {', '.join(OPTIMIZERS)}")
        if self.precision not in PRECISIONS:
            raise BiasbenchError(f"unknown precision {self.precision!r}; expected one of: {', '.join(PRECISIONS)}")
        if str(self.channels_last) not in ("auto", "on", "off"):
            raise BiasbenchError(f"channels_last must be auto, on or off, got {self.channels_last!r}")
        object.__setattr__(self, "epochs", _check_int(self.epochs, "epochs", 1))
        object.__setattr__(self, "batch_size", _check_int(self.batch_size, "batch size", 1))
        object.__setattr__(self, "seed", _check_int(self.seed, "seed", 0, 2**31 - 1))
        object.__setattr__(self, "lr", _check_float(self.lr, "learning rate", 0.0, lo_open=True))
        object.__setattr__(self, "weight_decay", _check_float(self.weight_decay, "weight decay", 0.0))
        object.__setattr__(self, "momentum", _check_float(self.momentum, "momentum", 0.0))
        if self.momentum >= 1:
            raise BiasbenchError(f"momentum must be below 1, got {self.momentum}")
        from .train.progressive import resolve as resolve_progressive

        prog = resolve_progressive(self.progressive)
        if prog and prog["mixup"][1] > 0 and not method_cls.supports_soft_targets:
            raise BiasbenchError(f"mixup (progressive {prog.get('preset', 'settings')}) needs soft targets, which "
                                 f"{self.method} does not support; use a preset without mixup (effnetv2-s)")
        object.__setattr__(self, "progressive", prog)
        ev = self.eval_epochs
        if ev is None:
            ev = (self.epochs // 2, self.epochs)
        ev = tuple(sorted({_check_int(e, "evaluation epoch", 0) for e in ev} - {0}))
        bad = [e for e in ev if e > self.epochs]
        if bad or not ev:
            raise BiasbenchError(f"evaluation epochs {list(bad or ev)} are outside the run (1..{self.epochs})")
        object.__setattr__(self, "eval_epochs", ev)

    def random_masks(self) -> list[str]:
        """The settings that make training draw random masks (dropout, drop-path) from torch's process-wide
        generator: progressive learning (dropout per stage) and ``drop*`` model options above 0. Such runs
        cannot be fused (vmap would not draw the masks of separate runs) nor trained in threads (the draws
        would depend on how the threads interleave)."""
        return (["progressive"] if self.progressive else []) + \
            sorted(k for k, v in self.model_kwargs.items() if "drop" in k and v)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["eval_epochs"] = list(self.eval_epochs)
        d["explicit"] = list(self.explicit)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        d = dict(d)
        if d.get("eval_epochs") is not None:
            d["eval_epochs"] = tuple(d["eval_epochs"])
        if d.get("explicit") is not None:
            d["explicit"] = tuple(d["explicit"])
        return cls(**d)
