"""Fold consistency (eq. 8), fused labels (eq. 9) and case selection against direct transcriptions."""
import itertools

import numpy as np
import pytest

from nnunet_uda.pseudolabels.consistency import class_consistency, fused_label, pairwise_dice
from nnunet_uda.pseudolabels.selection import SelectionRule, select_cases


def loop_consistency(fold_labels, c):
    """Eq. 8 as written: 1 / C(N, 2) * sum_{i < j} Dice(P_i^c, P_j^c)."""
    n = len(fold_labels)
    total = 0.0
    for i in range(n - 1):
        for j in range(i + 1, n):
            a, b = fold_labels[i] == c, fold_labels[j] == c
            denominator = a.sum() + b.sum()
            total += 1.0 if denominator == 0 else 2 * (a & b).sum() / denominator
    return total / (n * (n - 1) / 2)


@pytest.mark.parametrize("folds", [2, 3, 5])
def test_consistency_matches_eq8(folds):
    rng = np.random.default_rng(folds)
    labels = rng.integers(0, 4, size=(folds, 6, 7, 5))
    labels[:, :, :, 0] = 2  # a shared slab: class 2 agrees more than chance
    classes = [1, 2, 3, 5]  # 5 is absent from every fold
    expected = [loop_consistency(labels, c) for c in classes]
    np.testing.assert_allclose(class_consistency(labels, classes), expected, rtol=1e-12)
    assert class_consistency(labels, [5])[0] == 1.0


def test_absent_agreement_scores_folds_that_all_miss_a_class():
    labels = np.zeros((3, 4, 4), int)
    labels[0, :2] = 1  # one fold of three finds class 1; none finds class 2
    assert class_consistency(labels, [1, 2]) == pytest.approx([1 / 3, 1.0])
    assert class_consistency(labels, [1, 2], absent_agreement=0.0) == pytest.approx([0.0, 0.0])


def test_consistency_extremes():
    identical = np.stack([np.arange(24).reshape(2, 3, 4) % 3] * 5)
    np.testing.assert_array_equal(class_consistency(identical, [0, 1, 2]), [1, 1, 1])
    disjoint = np.zeros((2, 4, 4), int)
    disjoint[0, :2], disjoint[1, 2:] = 1, 1
    assert class_consistency(disjoint, [1])[0] == 0.0
    with pytest.raises(ValueError, match="at least two folds"):
        class_consistency(disjoint[:1], [1])


def test_pairwise_dice_is_symmetric_with_unit_diagonal():
    masks = np.random.default_rng(0).random((4, 5, 5)) > 0.5
    masks[3] = False
    d = pairwise_dice(masks)
    np.testing.assert_allclose(d, d.T)
    np.testing.assert_allclose(np.diag(d), 1.0)
    a, b = masks[0], masks[1]
    assert d[0, 1] == pytest.approx(2 * (a & b).sum() / (a.sum() + b.sum()))
    assert d[0, 3] == 0.0


def test_fused_label_is_argmax_of_fold_mean():
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(4), size=(5, 3, 4, 2)).transpose(0, 4, 1, 2, 3)  # (folds, C, *s)
    fused = fused_label(probs.sum(0))
    for index in itertools.product(range(3), range(4), range(2)):
        mean = [np.mean([probs[f][(c, *index)] for f in range(5)]) for c in range(4)]
        assert fused[index] == int(np.argmax(mean))
    assert fused.dtype == np.uint8


def test_selection_ranks_within_each_modality():
    scores = {"t1_a": 0.9, "t1_b": 0.5, "t1_c": 0.7, "t2_a": 0.2, "t2_b": 0.3, "t2_c": 0.3}
    modality = {c: c[:2].upper() for c in scores}
    top = select_cases(scores, modality, SelectionRule(top=2))
    assert {c for c, s in top.items() if s} == {"t1_a", "t1_c", "t2_b", "t2_c"}
    half = select_cases(scores, modality, SelectionRule(fraction=0.34))  # ceil(0.34 * 3) = 2 per modality
    assert half == top
    ties = select_cases(scores, modality, SelectionRule(top=1))  # a tie goes to the smaller case id
    assert {c for c, s in ties.items() if s} == {"t1_a", "t2_b"}
    above = select_cases(scores, modality, SelectionRule(threshold=0.3))
    assert {c for c, s in above.items() if s} == {"t1_a", "t1_b", "t1_c", "t2_b", "t2_c"}
    assert set(above) == set(scores)


@pytest.mark.parametrize("kwargs, message", [({}, "exactly one"), ({"top": 2, "fraction": 0.5}, "exactly one"),
                                             ({"top": 0}, "at least 1"), ({"fraction": 1.5}, r"\(0, 1\]")])
def test_selection_rule_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SelectionRule(**kwargs)


def test_selection_needs_every_case_in_the_domain_table():
    with pytest.raises(ValueError, match="without a modality"):
        select_cases({"a": 1.0, "b": 0.5}, {"a": "T1"}, SelectionRule(top=1))
