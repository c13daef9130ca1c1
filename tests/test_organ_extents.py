"""Data-driven PGPS patch size (AICL section 3.2): stages, extents, the odd covering size."""
import numpy as np
import pytest

from nnunet_uda.organ_extents import (bounding_box_extents, choose_patch_sizes, contrast_stage, covering_odd,
                                      cumulative_stride, slice_extents, summarize)


def test_contrast_stage_is_the_first_at_stride_four():
    assert contrast_stage([[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]]) == 2
    assert contrast_stage([[1, 1, 1], [1, 2, 2], [1, 2, 2], [2, 2, 2]]) == 2  # anisotropic: in-plane stride 4
    assert contrast_stage([[1, 1, 1], [2, 2, 2]]) == 1  # never reaches 4: the last stage
    assert cumulative_stride([[1, 1, 1], [1, 2, 2], [2, 2, 2]], 2) == (2, 4, 4)


@pytest.mark.parametrize("value, limit, expected", [(2.9, 9, 3), (3.0, 9, 3), (3.1, 9, 5), (0.4, 9, 1),
                                                    (6.5, 9, 7), (12.0, 9, 9), (12.0, 8, 7)])
def test_covering_odd(value, limit, expected):
    assert covering_odd(value, limit) == expected


def test_bounding_boxes_and_choice():
    seg = np.zeros((10, 12, 14), dtype=np.uint8)
    seg[1:4, 2:9, 5:6] = 1
    seg[7, 7, 7] = 2
    extents = bounding_box_extents(seg, [1, 2, 3])
    assert {k: v.tolist() for k, v in extents.items()} == {1: [3, 7, 1], 2: [1, 1, 1]}
    summary = summarize({"a": np.array([[2.0, 4, 6], [4, 4, 6]]), "b": np.array([[1.0, 1, 1]]), "c": np.array([])})
    assert set(summary) == {"a", "b"} and summary["a"]["p50"] == [3.0, 4.0, 6.0] and summary["a"]["n"] == 2
    common, per_organ = choose_patch_sizes(summary, (9, 9, 5))
    assert common == [3, 3, 5] and per_organ == {"a": [3, 5, 5], "b": [1, 1, 1]}
    with pytest.raises(ValueError, match="no hand-drawn organ masks"):
        choose_patch_sizes({}, (9, 9, 9))


def test_slice_extents_are_the_in_plane_boxes_of_each_slice():
    """The 2d configuration's organ extents: one (y, x) box per axial slice holding the organ."""
    seg = np.zeros((4, 10, 12), dtype=np.uint8)
    seg[1, 2:5, 3:4] = 1
    seg[1, 8, 10] = 1
    seg[3, 0:10, 6:9] = 1
    seg[2, 5, 5] = 2
    extents = slice_extents(seg, [1, 2, 3])
    assert {k: v.tolist() for k, v in extents.items()} == {1: [[7, 8], [10, 3]], 2: [[1, 1]]}
