import numpy as np
import pytest

from biasbench.data.factors import (
    BACKGROUND_COLORS, DIGIT_COLORS, DISTRACTOR_COLORS, FACTOR_TABLE, FACTORS, SHAPES, TEXTURE_COLORS, TEXTURES,
    aligned_mask, majority_mask, sample_factors,
)
from biasbench.errors import BiasbenchError


def test_factor_names_and_order():
    assert FACTORS == ("digit_color", "background_color", "digit_position", "distractor_shape",
                       "distractor_color", "texture", "texture_color")


def test_value_tables_match_the_reference():
    assert DIGIT_COLORS[0] == (255, 0, 0) and DIGIT_COLORS[6] == (128, 255, 0) and DIGIT_COLORS[9] == (0, 255, 128)
    assert TEXTURE_COLORS == ((0, 255, 255), (255, 0, 255), (255, 255, 0), (0, 0, 255), (255, 0, 0), (0, 255, 0),
                              (127, 0, 255), (127, 255, 0), (255, 127, 0), (255, 0, 127))
    assert BACKGROUND_COLORS == ((0, 63, 63), (63, 0, 63), (63, 63, 0), (0, 0, 63), (63, 0, 0), (0, 63, 0),
                                 (31, 0, 63), (31, 63, 0), (63, 31, 0), (63, 0, 31))
    assert DISTRACTOR_COLORS == tuple(DIGIT_COLORS[9 - k] for k in range(10))
    assert SHAPES == ("circle", "right_triangle", "obtuse_triangle", "square", "parallelogram", "kite",
                      "pentagon", "semi_circle", "plus", "arrow")
    assert TEXTURES == ("-", "/", "|", "+", "x", "~", "::", ">", "<", "\\")
    pos = FACTOR_TABLE["digit_position"]
    assert pos.num_values == 9 and pos.aligned.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 4]
    for name in FACTORS:
        if name != "digit_position":
            assert FACTOR_TABLE[name].num_values == 10
            assert FACTOR_TABLE[name].aligned.tolist() == list(range(10))


def _labels(n, seed=0):
    return np.random.default_rng(seed).integers(0, 10, n)


@pytest.mark.parametrize("p", [0.1, 0.7, 1.0])
def test_aligned_fraction_within_binomial_tolerance(p):
    n = 40_000
    labels = _labels(n)
    fac = sample_factors(labels, np.full(7, p), np.random.default_rng(1))
    frac = aligned_mask(labels, fac).mean(axis=0)
    for f, name in enumerate(FACTORS):
        expected = p
        if name == "digit_position":  # minority draws hit the centre twice for classes != 4, 9
            expected = p + (1 - p) * (0.2 * 1 / 9)  # classes 4 and 9: the duplicate centre is aligned too
        tol = 4 * np.sqrt(expected * (1 - expected) / n) + 1e-12
        assert abs(frac[f] - expected) <= tol, (name, frac[f], expected)
    if p == 1.0:
        assert aligned_mask(labels, fac).all()


def test_p_zero_never_aligned_and_minority_uniform():
    n = 90_000
    labels = np.zeros(n, dtype=np.int64)
    fac = sample_factors(labels, np.zeros(7), np.random.default_rng(2))
    assert not aligned_mask(labels, fac).any()
    counts = np.bincount(fac[:, FACTORS.index("texture")], minlength=10)
    assert counts[0] == 0
    assert np.all(np.abs(counts[1:] / n - 1 / 9) < 0.006)


def test_position_quirk_paper_vs_corrected():
    n = 60_000
    labels = np.zeros(n, dtype=np.int64)  # class 0, aligned cell 0
    f = FACTORS.index("digit_position")
    paper = sample_factors(labels, np.zeros(7), np.random.default_rng(3), "paper")[:, f]
    corr = sample_factors(labels, np.zeros(7), np.random.default_rng(3), "corrected")[:, f]
    # paper: the centre appears twice in the 9 remaining list entries
    assert abs((paper == 4).mean() - 2 / 9) < 0.01
    assert abs((paper == 1).mean() - 1 / 9) < 0.01
    # corrected: uniform over the 8 other distinct cells
    assert abs((corr == 4).mean() - 1 / 8) < 0.01
    assert (corr == 0).sum() == 0 and (paper == 0).sum() == 0


def test_majority_labelling_of_the_centre_cell():
    f = FACTORS.index("digit_position")
    fac = np.zeros((3, 7), dtype=np.uint8)
    fac[:, f] = 4  # all digits in the centre
    labels = np.array([4, 9, 0])
    assert majority_mask(labels, fac, "paper")[:, f].tolist() == [False, True, False]
    assert majority_mask(labels, fac, "corrected")[:, f].tolist() == [True, True, False]
    other = [i for i in range(7) if i != f]
    assert (majority_mask(labels, fac, "paper")[:, other] == majority_mask(labels, fac, "corrected")[:, other]).all()


def test_unknown_mode_is_an_error():
    with pytest.raises(BiasbenchError, match="unknown mode"):
        sample_factors(np.zeros(3, dtype=int), np.zeros(7), np.random.default_rng(0), "fancy")
