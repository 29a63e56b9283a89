"""The seven Biased MNIST v1 bias factors: value tables, the class-aligned value, seeded sampling.

Every factor has a table of distinct values and, for each class ``y`` in 0..9, a *class-aligned*
value ``aligned[y]`` (the "biased" value of the paper). A recipe stores, per image and factor, the
index of the value in the factor's table (``uint8``).

Value tables are the reference code's (erobic/bias-mitigators, ``datasets/biased_mnist_dataset.py``).
Colours are tuples **in the reference's order**, which was OpenCV's BGR: the reference wrote
``(255, 0, 0)`` with ``cv2.imwrite`` and read it back with ``cv2.imread``, so its model saw channel 0 =
the first tuple element. biasbench keeps that: rendered tensors have channel ``c`` = tuple element
``c`` (the model sees what the reference's model saw). Pictures meant for people (``data show``,
``data export --format png``) reverse the channels, so they look like the reference's JPEG files
(class 0's digit colour ``(255, 0, 0)`` is blue on screen).

Sampling (paper-reference §1.3): per image and independently per factor, with probability
``p_bias[f]`` the class-aligned value, otherwise one of the other entries of the factor's reference
list, uniformly. Two modes differ only on ``digit_position``, whose reference list is the nine cells
plus the centre again (``[0, 1, ..., 8, 4]``, class 9's aligned cell is the centre like class 4's):

``paper`` (default, the reference's behaviour)
    minority draws are uniform over the 9 *list entries* other than position ``y``, so the centre
    cell is drawn twice as often for classes 0-3 and 5-8; the majority/minority label follows the
    reference's string-keyed lookup, where the centre maps to list index 9: the centre is majority
    only for class 9, and class-4 digits in the centre count as **minority**.
``corrected``
    minority draws are uniform over the 8 *distinct cells* other than the aligned cell, and a sample
    is majority iff its cell is its class's aligned cell (class-4 digits in the centre are majority).

For all other factors the two modes are identical.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import BiasbenchError

NUM_CLASSES = 10

FACTORS: tuple[str, ...] = (
    "digit_color",
    "background_color",
    "digit_position",
    "distractor_shape",
    "distractor_color",
    "texture",
    "texture_color",
)
"""Factor names, in recipe column order. Used everywhere: CLI, records, reports."""

MODES: tuple[str, ...] = ("paper", "corrected")

DIGIT_COLORS: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255),
    (255, 0, 255), (128, 255, 0), (128, 0, 255), (0, 128, 255), (0, 255, 128),
)
TEXTURE_COLORS = tuple(tuple(255 - v for v in c) for c in DIGIT_COLORS)
BACKGROUND_COLORS = tuple(tuple((255 - v) // 4 for v in c) for c in DIGIT_COLORS)
DISTRACTOR_COLORS = tuple(reversed(DIGIT_COLORS))
SHAPES: tuple[str, ...] = (
    "circle", "right_triangle", "obtuse_triangle", "square", "parallelogram",
    "kite", "pentagon", "semi_circle", "plus", "arrow",
)
TEXTURES: tuple[str, ...] = ("-", "/", "|", "+", "x", "~", "::", ">", "<", "\\")
CELLS: tuple[int, ...] = tuple(range(9))
"""Digit cells, row-major in the 3x3 grid: row = g // 3, col = g % 3; 4 = centre."""

REFERENCE_POSITION_LIST = (0, 1, 2, 3, 4, 5, 6, 7, 8, 4)


@dataclass(frozen=True)
class Factor:
    """One bias factor.

    ``values``: the distinct values (colours as 3-tuples, shape/texture names, cell numbers).
    ``reference_list``: the reference's 10-entry list as indices into ``values``; entry ``y`` is the
    class-aligned value of class ``y``.
    """

    name: str
    values: tuple
    reference_list: tuple[int, ...]

    @property
    def num_values(self) -> int:
        return len(self.values)

    @property
    def aligned(self) -> np.ndarray:
        """``aligned[y]`` = index of class ``y``'s class-aligned value (int64, length 10)."""
        return np.asarray(self.reference_list, dtype=np.int64)


def _identity(values) -> tuple[int, ...]:
    return tuple(range(len(values)))


FACTOR_TABLE: dict[str, Factor] = {
    "digit_color": Factor("digit_color", DIGIT_COLORS, _identity(DIGIT_COLORS)),
    "background_color": Factor("background_color", BACKGROUND_COLORS, _identity(BACKGROUND_COLORS)),
    "digit_position": Factor("digit_position", CELLS, REFERENCE_POSITION_LIST),
    "distractor_shape": Factor("distractor_shape", SHAPES, _identity(SHAPES)),
    "distractor_color": Factor("distractor_color", DISTRACTOR_COLORS, _identity(DISTRACTOR_COLORS)),
    "texture": Factor("texture", TEXTURES, _identity(TEXTURES)),
    "texture_color": Factor("texture_color", TEXTURE_COLORS, _identity(TEXTURE_COLORS)),
}


def factor_index(name: str) -> int:
    """Column of ``name`` in a recipe's factor array; a clear error for unknown names."""
    try:
        return FACTORS.index(name)
    except ValueError:
        raise BiasbenchError(
            f"unknown factor {name!r}; expected one of: {', '.join(FACTORS)}"
        ) from None


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise BiasbenchError(f"unknown mode {mode!r}; expected one of: {', '.join(MODES)}")
    return mode


def sample_factors(labels: np.ndarray, p_bias: np.ndarray, rng: np.random.Generator,
                   mode: str = "paper") -> np.ndarray:
    """Draw the seven factor values for each label.

    ``labels``: int array (N,); ``p_bias``: float array (7,) in [0, 1]. Returns uint8 (N, 7) value
    indices. Per image and factor: ``u ~ U[0, 1)``; if ``u < p_bias[f]`` the aligned value, else a
    uniform draw over the other list entries (``paper``) or other distinct values (``corrected``,
    differs only for ``digit_position``). The random stream does not depend on ``mode``, so both modes
    agree wherever their rules agree.
    """
    check_mode(mode)
    labels = np.asarray(labels, dtype=np.int64)
    p_bias = np.asarray(p_bias, dtype=np.float64)
    n = labels.shape[0]
    u = rng.random((n, len(FACTORS)))
    j = rng.integers(0, 9, size=(n, len(FACTORS)))  # one of the 9 other list entries
    j_distinct = rng.integers(0, 8, size=n)  # one of the 8 other cells (corrected position)
    out = np.empty((n, len(FACTORS)), dtype=np.uint8)
    for f, name in enumerate(FACTORS):  # 7 vectorised columns, no per-image Python
        fac = FACTOR_TABLE[name]
        ref = fac.aligned
        aligned = ref[labels]
        if mode == "corrected" and fac.num_values != len(ref):
            minority = j_distinct + (j_distinct >= aligned)
        else:
            minority = ref[j[:, f] + (j[:, f] >= labels)]
        out[:, f] = np.where(u[:, f] < p_bias[f], aligned, minority)
    return out


def factor_majority(name: str, labels: np.ndarray, values: np.ndarray, mode: str = "paper") -> np.ndarray:
    """Bool (N,): factor ``name`` at ``values`` counts as majority for ``labels`` (see :func:`majority_mask`)."""
    fac = FACTOR_TABLE[name]
    labels = np.asarray(labels, dtype=np.int64)
    values = np.asarray(values, dtype=np.int64)
    if mode == "paper":
        value_to_class = np.empty(fac.num_values, dtype=np.int64)
        value_to_class[fac.aligned] = np.arange(len(fac.aligned))  # later entries overwrite
        return value_to_class[values] == labels
    return fac.aligned[labels] == values


def majority_mask(labels: np.ndarray, factors: np.ndarray, mode: str = "paper") -> np.ndarray:
    """Boolean (N, 7): True where the factor value counts as *majority* (class-aligned).

    ``paper``: value maps to the class through the reference's string-keyed lookup (the last list
    entry wins for repeated values, so the centre cell maps to 9). ``corrected``: value equals the
    class's aligned value.
    """
    check_mode(mode)
    factors = np.asarray(factors)
    return np.stack([factor_majority(name, labels, factors[:, f], mode) for f, name in enumerate(FACTORS)], axis=1)


def aligned_mask(labels: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """Boolean (N, 7): True where the value equals the class's aligned value (what sampling drew)."""
    labels = np.asarray(labels, dtype=np.int64)
    cols = [FACTOR_TABLE[n].aligned[labels] == np.asarray(factors)[:, f] for f, n in enumerate(FACTORS)]
    return np.stack(cols, axis=1)
