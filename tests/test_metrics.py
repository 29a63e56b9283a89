import numpy as np
import pytest

from biasbench.data.factors import FACTORS
from biasbench.eval import metrics as M


def test_accuracy_and_mpa_exact():
    y = np.array([0, 0, 0, 0, 1, 1])
    pred = np.array([0, 0, 0, 1, 0, 1])
    assert M.accuracy(pred, y) == pytest.approx(100 * 4 / 6)
    assert M.mean_per_class_accuracy(pred, y) == pytest.approx((75 + 50) / 2)
    assert M.worst_class_accuracy(pred, y) == pytest.approx(50)
    assert M.evaluate_split(pred, y, np.zeros((6, len(FACTORS)), int))["worst_class"] == pytest.approx(50)


def test_group_accuracy_with_empty_groups():
    acc, n = M.group_accuracy(np.array([1, 0, 1, 1]), np.array([0, 0, 2, 2]), 4)
    assert n.tolist() == [2, 0, 2, 0]
    assert acc[0] == 50 and acc[2] == 100 and np.isnan(acc[1]) and np.isnan(acc[3])


def test_expected_calibration_error():
    """15 equal-width confidence bins, sum_b n_b / N |acc_b - conf_b| in percent: 0 for a bin whose accuracy is
    its confidence; the confidence itself for confidently wrong predictions; equal to a per-bin loop on random
    logits; an empty split gives NaN."""
    p = np.full((10, 2), 0.2)
    p[:, 0] = 0.8
    logits = np.log(p)
    y = np.array([0] * 8 + [1] * 2)  # 80 % right at confidence 0.8
    assert M.expected_calibration_error(logits, y) == pytest.approx(0.0, abs=1e-9)
    assert M.expected_calibration_error(logits, np.ones(10, dtype=int)) == pytest.approx(80.0)
    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, (5000, 10))
    y = rng.integers(0, 10, 5000)
    prob = np.exp(z - z.max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    conf, right = prob.max(1), prob.argmax(1) == y
    expected = 0.0
    for b in range(15):
        inside = (conf > b / 15) & (conf <= (b + 1) / 15)
        if inside.any():
            expected += inside.mean() * abs(right[inside].mean() - conf[inside].mean())
    assert M.expected_calibration_error(z, y) == pytest.approx(100 * expected, rel=1e-9)
    assert np.isnan(M.expected_calibration_error(np.zeros((0, 10)), np.zeros(0, dtype=int)))


def _case():
    """8 samples, class 0 or 1; digit_color majority for the first 4 (value = label), minority after."""
    y = np.array([0, 0, 1, 1, 0, 0, 1, 1])
    f = np.zeros((8, 7), dtype=np.int64)
    f[:, :] = np.array([5])  # every factor at value 5 (minority for classes 0 and 1)
    f[:4, 0] = y[:4]  # digit_color aligned for the first four
    f[4:, 0] = [3, 3, 4, 4]
    pred = np.array([0, 0, 1, 1, 0, 1, 0, 0])  # all majority right; minority 1 of 4 right
    return pred, y, f


def test_prediction_gaps():
    """DP and EO gaps: FFB's definitions with two classes and two values (checked against the hand formulas);
    0 for a model that ignores the factor and 100 for one that predicts the factor's value, with ten classes;
    a split with one value present has no gap (NaN); evaluate_split records both per factor."""
    rng = np.random.default_rng(0)
    y, b = rng.integers(0, 2, 2000), rng.integers(0, 2, 2000)
    pred = np.where(rng.random(2000) < 0.3, b, y)
    rate = [np.mean(pred[b == v] == 1) for v in (0, 1)]
    eo = [abs(np.mean(pred[(b == 0) & (y == c)] == 1) - np.mean(pred[(b == 1) & (y == c)] == 1)) for c in (0, 1)]
    gaps = M.prediction_gaps(pred, y, b, 2, num_classes=2)
    assert gaps["dp_gap"] == pytest.approx(100 * abs(rate[0] - rate[1]))
    assert gaps["eo_gap"] == pytest.approx(100 * sum(eo) / 2)  # FFB sums over the two classes; we average
    y, b = np.repeat(np.arange(10), 10), np.tile(np.arange(10), 10)  # every (class, value) cell once
    assert M.prediction_gaps(y, y, b, 10) == {"dp_gap": 0.0, "eo_gap": 0.0}  # right everywhere: b is ignored
    assert M.prediction_gaps(b, y, b, 10) == {"dp_gap": 100.0, "eo_gap": 100.0}  # the factor's value, always
    half = np.where(y < 5, b, y)  # classes 0-4 follow the factor
    assert M.prediction_gaps(half, y, b, 10)["eo_gap"] == pytest.approx(50.0)
    assert np.isnan(M.prediction_gaps(y, y, np.zeros(100, int), 10)["dp_gap"])
    y, b = np.repeat(np.arange(10), 9), np.tile(np.arange(9), 10)  # nine values: every factor has them
    rec = M.evaluate_split(b, y, np.stack([b] * len(FACTORS), 1))
    # nine classes follow nine values, the tenth is never predicted: its rate has no range
    assert all(rec["factors"][f]["dp_gap"] == 90.0 and rec["factors"][f]["eo_gap"] == 90.0 for f in FACTORS)


def _exact_w1(a: np.ndarray, b: np.ndarray) -> float:
    """The area between two empirical CDFs, exactly: the sum over the merged sample of |F_a - F_b| times the step."""
    t = np.sort(np.concatenate([a, b]))
    fa = np.searchsorted(np.sort(a), t[:-1], side="right") / len(a)
    fb = np.searchsorted(np.sort(b), t[:-1], side="right") / len(b)
    return float(np.sum(np.abs(fa - fb) * np.diff(t)))


def test_probability_gap():
    """ABCC: within half a step (0.25 point) of the exact area between the CDFs of each class's probability, the
    largest over pairs of values, averaged over classes; 0 for probabilities that ignore the factor, 100 for
    certain ones that follow it, above 0 where only the confidence follows the factor (DP gap 0 there); NaN
    with one value; evaluate_split records it per factor when it has the logits."""
    rng = np.random.default_rng(0)
    n, k = 3000, 10
    b = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, k)) + 2.0 * np.eye(k)[b] * rng.random((n, 1))  # b raises its class, by chance
    p = M.softmax(logits)
    exact = np.mean([max(_exact_w1(p[b == u, c], p[b == v, c]) for u in range(3) for v in range(3) if u < v)
                     for c in range(k)])
    assert M.probability_gap(p, b, 3) == pytest.approx(100 * exact, abs=0.25)
    assert M.probability_gap(p, b, 3, bins=2000) == pytest.approx(100 * exact, abs=0.025)
    y, b = np.repeat(np.arange(10), 10), np.tile(np.arange(10), 10)
    ignores = M.softmax(rng.normal(size=(10, k)))[y]  # a function of the class alone; each value sees each class
    assert M.probability_gap(ignores, b, 10) == pytest.approx(0.0, abs=1e-9)
    assert M.probability_gap(np.eye(k)[b], b, 10) == pytest.approx(100.0)
    # the argmax is the class everywhere, the confidence in it follows the factor: no DP gap, an ABCC
    confident = M.softmax(np.eye(k)[y] * np.where(b < 5, 8.0, 2.0)[:, None])
    assert M.prediction_gaps(confident.argmax(1), y, b, 10)["dp_gap"] == 0.0
    assert M.probability_gap(confident, b, 10) > 10
    assert np.isnan(M.probability_gap(confident, np.zeros(100, int), 10))
    y, b = np.repeat(np.arange(10), 9), np.tile(np.arange(9), 10)  # nine values: every factor has them
    logits = np.eye(k)[y] * np.where(b < 5, 8.0, 2.0)[:, None]
    rec = M.evaluate_split(y, y, np.stack([b] * len(FACTORS), 1), logits=logits)
    want = M.probability_gap(M.softmax(logits), b, 9)
    assert want > 10 and all(rec["factors"][f]["abcc"] == pytest.approx(want) for f in FACTORS)
    assert "abcc" not in M.evaluate_split(y, y, np.stack([b] * len(FACTORS), 1))["factors"][FACTORS[0]]


def test_majority_minority_mmd_exact():
    pred, y, f = _case()
    out = M.evaluate_split(pred, y, f, "paper")
    dc = out["factors"]["digit_color"]
    assert dc["majority"] == 100 and dc["minority"] == 25 and dc["mmd"] == 75
    assert dc["n_majority"] == 4 and dc["n_minority"] == 4
    tex = out["factors"]["texture"]  # all minority
    assert np.isnan(tex["majority"]) and tex["minority"] == pytest.approx(100 * 5 / 8)
    assert out["accuracy"] == pytest.approx(62.5)


def test_cell_mean_and_worst_group_exact():
    pred, y, f = _case()
    out = M.evaluate_split(pred, y, f, "paper")
    # digit_color cells (value, class): (0,0): 2/2, (1,1): 2/2, (3,0): 1/2, (4,1): 0/2
    dc = out["factors"]["digit_color"]
    assert dc["cell_mean"] == pytest.approx((100 + 100 + 50 + 0) / 4)
    assert dc["worst_group"] == 0
    # texture cells: (5,0): 3/4 right, (5,1): 2/4 right
    assert out["factors"]["texture"]["cell_mean"] == pytest.approx((75 + 50) / 2)
    assert out["worst_group"] == 0


def test_alpha_weighted_accuracy_exact():
    # two patterns: A = all majority (bits 127), B = all minority (0)
    maj = np.zeros((6, 7), dtype=bool)
    maj[:4] = True
    correct = np.array([1, 1, 1, 0, 0, 1])  # A: 75 %, B: 50 %
    p_train = np.zeros(128)
    p_train[127], p_train[0] = 0.8, 0.2
    assert M.alpha_weighted_accuracy(correct, maj, p_train, 1.0) == pytest.approx(0.8 * 75 + 0.2 * 50)
    assert M.alpha_weighted_accuracy(correct, maj, p_train, 0.0) == pytest.approx((75 + 50) / 2)
    w = np.array([0.8 ** 2, 0.2 ** 2]) / (0.8 ** 2 + 0.2 ** 2)
    assert M.alpha_weighted_accuracy(correct, maj, p_train, 2.0) == pytest.approx(w[0] * 75 + w[1] * 50)
    w = np.array([1 / 0.8, 1 / 0.2]) / (1 / 0.8 + 1 / 0.2)
    assert M.alpha_weighted_accuracy(correct, maj, p_train, -1.0) == pytest.approx(w[0] * 75 + w[1] * 50)


def test_pattern_bits():
    maj = np.zeros((2, 7), dtype=bool)
    maj[0, 0] = True
    maj[1, 6] = True
    assert M.bias_patterns(maj).tolist() == [1, 64]
    assert len(FACTORS) == 7


def test_paper_mode_position_labelling_changes_mmd():
    f = np.full((2, 7), 5, dtype=np.int64)
    f[:, FACTORS.index("digit_position")] = 4
    y = np.array([4, 4])
    pred = np.array([4, 0])
    paper = M.evaluate_split(pred, y, f, "paper")["factors"]["digit_position"]
    corr = M.evaluate_split(pred, y, f, "corrected")["factors"]["digit_position"]
    assert paper["n_majority"] == 0 and corr["n_majority"] == 2
