"""Bias metrics, defined once. All accuracies are in percent (0-100); all functions are vectorised
(``np.bincount`` over group ids), computed from per-sample predictions so they can be recomputed from
records at any time.

Notation: ``pred``, ``y`` (N,) predicted and true classes; ``factors`` (N, 7) factor value indices;
``correct_i = [pred_i = y_i]``; ``maj_{i,f}`` = sample i has factor f at its class-aligned value under
the dataset's mode (see :func:`biasbench.data.factors.majority_mask`).
"""
from __future__ import annotations

import numpy as np

from ..data.factors import FACTOR_TABLE, FACTORS, NUM_CLASSES, majority_mask

ALPHAS = (-1.0, 0.0, 1.0, 2.0)
"""Tuning distributions reported by default: inverted, balanced, training, more biased."""


def accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    """Overall accuracy: ``100 * mean_i correct_i``. On the p = 0.1 test set this is the paper's
    *unbiased accuracy* (Table 1, Acc(alpha = 0))."""
    return float(100.0 * np.mean(np.asarray(pred) == np.asarray(y))) if len(y) else float("nan")


def group_accuracy(correct: np.ndarray, groups: np.ndarray, num_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-group accuracy and count: ``acc_g = 100 * sum_{i in g} correct_i / n_g`` (NaN where n_g = 0)."""
    groups = np.asarray(groups, dtype=np.int64)
    n = np.bincount(groups, minlength=num_groups).astype(np.float64)
    hits = np.bincount(groups, weights=np.asarray(correct, dtype=np.float64), minlength=num_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(n > 0, 100.0 * hits / n, np.nan)
    return acc, n.astype(np.int64)


def mean_per_class_accuracy(pred: np.ndarray, y: np.ndarray, num_classes: int = NUM_CLASSES) -> float:
    """MPA: ``mean_c acc_c`` over classes present, ``acc_c`` = accuracy on samples of class c."""
    acc, _ = group_accuracy(np.asarray(pred) == np.asarray(y), y, num_classes)
    return float(np.nanmean(acc))


def worst_class_accuracy(pred: np.ndarray, y: np.ndarray, num_classes: int = NUM_CLASSES) -> float:
    """``min_c acc_c`` over the classes present: the worst-class accuracy, which needs no bias labels
    (SubpopBench's model selection without attributes)."""
    acc, _ = group_accuracy(np.asarray(pred) == np.asarray(y), y, num_classes)
    return float(np.nanmin(acc)) if len(y) else float("nan")


def cell_accuracy(correct: np.ndarray, y: np.ndarray, values: np.ndarray, num_values: int) -> tuple[np.ndarray, np.ndarray]:
    """(num_values, 10) accuracy and count over (factor value, class) cells; NaN where a cell is empty."""
    g = np.asarray(values, dtype=np.int64) * NUM_CLASSES + np.asarray(y, dtype=np.int64)
    acc, n = group_accuracy(correct, g, num_values * NUM_CLASSES)
    return acc.reshape(num_values, NUM_CLASSES), n.reshape(num_values, NUM_CLASSES)


def majority_minority(correct: np.ndarray, maj: np.ndarray) -> dict[str, dict[str, float]]:
    """Per factor f: ``majority = acc over {i: maj_if}``, ``minority = acc over {i: not maj_if}``,
    ``mmd = majority - minority`` (percentage points; high = the model exploits f)."""
    correct = np.asarray(correct, dtype=np.float64)
    out = {}
    for f, name in enumerate(FACTORS):
        m = maj[:, f]
        a_maj = float(100.0 * correct[m].mean()) if m.any() else float("nan")
        a_min = float(100.0 * correct[~m].mean()) if (~m).any() else float("nan")
        out[name] = {"majority": a_maj, "minority": a_min, "mmd": a_maj - a_min,
                     "n_majority": int(m.sum()), "n_minority": int((~m).sum())}
    return out


def cell_mean_and_worst(correct: np.ndarray, y: np.ndarray, factors: np.ndarray) -> dict[str, dict[str, float]]:
    """Per factor f: ``cell_mean`` = mean over non-empty (value, class) cells of the cell accuracy (the
    unbiased accuracy as a mean over groups) and ``worst_group`` = the minimum over those cells."""
    out = {}
    for f, name in enumerate(FACTORS):
        acc, _ = cell_accuracy(correct, y, factors[:, f], FACTOR_TABLE[name].num_values)
        out[name] = {"cell_mean": float(np.nanmean(acc)), "worst_group": float(np.nanmin(acc))}
    return out


def prediction_gaps(pred: np.ndarray, y: np.ndarray, values: np.ndarray, num_values: int,
                    num_classes: int = NUM_CLASSES) -> dict[str, float]:
    """Distribution gaps of the predictions across one factor's values (percentage points; 0 = the predictions
    do not depend on the factor), FFB's fairness gaps (Han et al., 2023) for ten classes and a many-valued
    attribute b:

    - ``dp_gap`` (demographic parity): ``mean_k (max_b - min_b) P(pred = k | b)``, over the predicted classes k
      and the values b present. With two classes it is FFB's ``|P(pred = 1 | b = 0) - P(pred = 1 | b = 1)|``.
    - ``eo_gap`` (equalized odds): ``mean_y mean_k (max_b - min_b) P(pred = k | y, b)``, over the classes y
      with at least two values present. With two classes it is half of FFB's sum over y.

    On the unbiased test set (b independent of y), a model that ignores the factor has both near 0 and one
    that predicts the class the factor's value is aligned with has both at 100 (at most 90 for digit position,
    whose nine cells cannot name ten classes). They are ranges of estimated rates, so finite cells push them
    up: with about 100 test images per (class, value) cell, as at full scale, EO's ranges carry several points
    of noise. NaN when fewer than two values are present."""
    pred, y = np.asarray(pred, dtype=np.int64), np.asarray(y, dtype=np.int64)
    b = np.asarray(values, dtype=np.int64)
    k = num_classes
    n_bk = np.bincount(b * k + pred, minlength=num_values * k).reshape(num_values, k).astype(np.float64)
    n_ybk = np.bincount((y * num_values + b) * k + pred,
                        minlength=k * num_values * k).reshape(k, num_values, k).astype(np.float64)
    return {"dp_gap": _mean_range(n_bk[None]), "eo_gap": _mean_range(n_ybk)}


ABCC_BINS = 200
"""Steps of [0, 1] for the CDFs of :func:`probability_gap`: each probability is rounded to the nearest multiple
of 1 / ABCC_BINS, which moves the area by at most half a step (0.25 point, well inside the gap's sampling noise).
The cost grows with the steps and not only with the images: 1,000 steps took about 50 ms per split of 2,000
images (the test suite's evaluations), 200 take 5."""


def probability_gap(probs: np.ndarray, values: np.ndarray, num_values: int, bins: int = ABCC_BINS) -> float:
    """FFB's area between CDF curves (ABCC; Han et al., 2023) for ten classes and a many-valued attribute b, in
    percentage points: ``mean_k max_{b, b'} integral_0^1 |F_kb(t) - F_kb'(t)| dt``, where ``F_kb`` is the
    empirical CDF of the predicted probability of class k, ``softmax(logits)_k``, over the images with value b
    (the integral is the Wasserstein-1 distance between the two distributions). Where the DP gap counts the
    predicted classes, this sees the probabilities: a model whose confidence moves with the factor while its
    argmax stays put has a DP gap of 0 and an ABCC above 0. 0 when the distributions are equal; 100 when the
    factor's value decides, with certainty, every probability (p_k = 1 where b is k's aligned value, else 0).
    Probabilities are rounded to the nearest multiple of ``1 / bins`` (within half a step, 0.25 point at the
    default 200, of the exact area; exact for 0 and 1). NaN when fewer than two values are present."""
    return _probability_gap(probability_grid(probs, bins), values, num_values, bins)


def probability_grid(probs: np.ndarray, bins: int = ABCC_BINS) -> np.ndarray:
    """(N, K) int64: each probability rounded to its point j of the grid j / bins, offset by its class k's
    ``k * (bins + 1)``; computed once per split for every factor's :func:`probability_gap`."""
    k = np.asarray(probs).shape[1]
    t = np.rint(np.clip(np.asarray(probs, dtype=np.float64), 0.0, 1.0) * bins).astype(np.int64)
    return t + np.arange(k) * (bins + 1)


def _probability_gap(grid: np.ndarray, values: np.ndarray, num_values: int, bins: int) -> float:
    b = np.asarray(values, dtype=np.int64)
    n_b = np.bincount(b, minlength=num_values)
    present = np.flatnonzero(n_b)
    if len(present) < 2:
        return float("nan")
    k, g = grid.shape[1], bins + 1
    counts = np.bincount((grid + (b * (k * g))[:, None]).ravel(), minlength=num_values * k * g)
    cdf = counts.reshape(num_values, k, g)[present].cumsum(2)[..., :bins] / n_b[present, None, None]
    area = np.stack([np.abs(cdf[i] - cdf).sum(2) for i in range(len(present))]) / bins  # (B, B, K)
    return float(100.0 * area.max((0, 1)).mean())


GAP_METRICS = ("dp_gap", "eo_gap", "abcc")
"""The per-factor distribution gaps a split's record holds (:func:`prediction_gaps`, :func:`probability_gap`),
in the order ``train``'s summary, the trackers and the report show them."""


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (stable: the row maximum subtracted first)."""
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


def _mean_range(counts: np.ndarray) -> float:
    """``mean_g mean_k (max_b - min_b) counts[g, b, k] / n[g, b]`` in percent over the rows g with at least two
    non-empty b (n[g, b] = sum_k counts[g, b, k]); NaN when no row has two."""
    n = counts.sum(2, keepdims=True)
    present = n > 0
    rate = np.divide(counts, n, out=np.zeros_like(counts), where=present)
    spread = (np.where(present, rate, -np.inf).max(1) - np.where(present, rate, np.inf).min(1)).mean(1)
    rows = present[:, :, 0].sum(1) >= 2
    return float(100.0 * spread[rows].mean()) if rows.any() else float("nan")


ECE_BINS = 15
"""Confidence bins of :func:`expected_calibration_error` (Guo et al., 2017's 15)."""


def expected_calibration_error(logits: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE in percent: ``sum_b (n_b / N) |acc_b - conf_b|`` over ``bins`` equal-width bins of the confidence
    ``conf_i = max_k softmax(z_i)_k`` ((0, 1/bins], ..., ((bins-1)/bins, 1]), ``acc_b`` and ``conf_b`` the
    accuracy and mean confidence of bin b (Guo et al., ICML 2017). 0 is calibrated; a model that follows a
    shortcut onto the unbiased test set is confidently wrong, so its ECE is high."""
    return _calibration_error(softmax(logits), y, bins)


def _calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> float:
    """:func:`expected_calibration_error` from the softmax probabilities (computed once per split for the ECE
    and the ABCC)."""
    y = np.asarray(y)
    if not len(y):
        return float("nan")
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y).astype(np.float64)
    b = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    gap = np.bincount(b, weights=correct, minlength=bins) - np.bincount(b, weights=conf, minlength=bins)
    return float(100.0 * np.abs(gap).sum() / len(y))  # sum_b n_b/N |acc_b - conf_b| = sum_b |hits_b - conf_sum_b| / N


def bias_patterns(maj: np.ndarray) -> np.ndarray:
    """Integer 0..127 per sample: bit f set iff factor f is majority (the reference's 7-way group key)."""
    return (np.asarray(maj, dtype=np.int64) << np.arange(len(FACTORS))).sum(axis=1)


def pattern_distribution(maj_train: np.ndarray) -> np.ndarray:
    """p_train(g) over the 128 majority/minority patterns, from the training split's frequencies."""
    counts = np.bincount(bias_patterns(maj_train), minlength=2 ** len(FACTORS)).astype(np.float64)
    return counts / max(1.0, counts.sum())


def alpha_weighted_accuracy(correct: np.ndarray, maj: np.ndarray, p_train: np.ndarray, alpha: float) -> float:
    """Accuracy under tuning distribution alpha: ``sum_g w_g acc_g`` with ``w_g ∝ p_train(g)^alpha``.

    Groups g are the 128 majority/minority patterns of the seven factors (the reference's 7-way key);
    only groups present both in training (p_train > 0) and in the evaluated samples count, weights are
    renormalised over them. alpha = 1 weights groups as training does, 0 equally (balanced over
    patterns), 2 more biased than training, -1 inverted (minority patterns weigh most). This is our
    reconstruction of the paper's tuning distribution (paper-reference §3.6, unverified there).
    """
    acc, n = group_accuracy(correct, bias_patterns(maj), len(p_train))
    ok = (n > 0) & (p_train > 0)
    if not ok.any():
        return float("nan")
    w = p_train[ok] ** alpha
    w = w / w.sum()
    return float((w * acc[ok]).sum())


def evaluate_split(pred: np.ndarray, y: np.ndarray, factors: np.ndarray, mode: str = "paper",
                   p_train: np.ndarray | None = None, alphas=ALPHAS, logits: np.ndarray | None = None) -> dict:
    """All metrics of one split, as a JSON-ready dict::

        accuracy, mpa, worst_class, cell_mean (mean over factors of per-factor cell means), worst_group (min over
        factors), factors: {name: {majority, minority, mmd, cell_mean, worst_group, dp_gap, eo_gap,
        n_majority, n_minority}} (:func:`prediction_gaps`; and ``abcc``, :func:`probability_gap`, when the
        logits are given),
        alpha: {"-1.0": ..., "0.0": ..., ...} when p_train is given,
        ece (:func:`expected_calibration_error`) when the logits are given.
    """
    pred, y, factors = np.asarray(pred), np.asarray(y), np.asarray(factors)
    correct = pred == y
    maj = majority_mask(y, factors, mode)
    per = majority_minority(correct, maj)
    cells = cell_mean_and_worst(correct, y, factors)
    probs = softmax(logits) if logits is not None else None
    grid = probability_grid(probs) if probs is not None else None
    for f, name in enumerate(FACTORS):
        per[name].update(cells[name])
        per[name].update(prediction_gaps(pred, y, factors[:, f], FACTOR_TABLE[name].num_values))
        if grid is not None:
            per[name]["abcc"] = _probability_gap(grid, factors[:, f], FACTOR_TABLE[name].num_values, ABCC_BINS)
    out = {
        "n": int(len(y)),
        "accuracy": accuracy(pred, y),
        "mpa": mean_per_class_accuracy(pred, y),
        "worst_class": worst_class_accuracy(pred, y),
        "cell_mean": float(np.mean([cells[n]["cell_mean"] for n in FACTORS])),
        "worst_group": float(np.min([cells[n]["worst_group"] for n in FACTORS])),
        "factors": per,
    }
    if logits is not None:
        out["ece"] = _calibration_error(probs, y)
    if p_train is not None:
        out["alpha"] = {str(float(a)): alpha_weighted_accuracy(correct, maj, p_train, a) for a in alphas}
    return out
