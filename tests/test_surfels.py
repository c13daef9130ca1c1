"""Tests of nnunet_uda.evaluation.surfels against DeepMind's surface_distance (the reference of NSD)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from surface_distance import lookup_tables

from nnunet_uda.evaluation.surfels import neighbourhood_codes, surface_dice, surfel_distances, surfel_measures


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (3.0, 0.8, 0.8), (0.7, 1.9, 5.0), (2.5, 0.8, 1.2)])
def test_area_table_is_deepminds(spacing):
    expected = lookup_tables.create_table_neighbour_code_to_surface_area(spacing)
    np.testing.assert_allclose(surfel_measures(spacing), expected, rtol=1e-15, atol=1e-15)


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (0.7, 1.9)])
def test_contour_length_table_is_deepminds(spacing):
    expected = lookup_tables.create_table_neighbour_code_to_contour_length(spacing)
    np.testing.assert_allclose(surfel_measures(spacing), expected, rtol=1e-15, atol=1e-15)


def test_a_code_and_its_complement_have_the_same_area():
    areas = surfel_measures((3.0, 0.8, 0.8))
    np.testing.assert_array_equal(areas, areas[::-1])
    assert areas[0] == areas[255] == 0 and (areas[1:255] > 0).all()


@pytest.mark.parametrize("ndim", [2, 3])
def test_codes_are_the_correlation_of_the_padded_mask(ndim):
    """DeepMind's codes: the mask padded by one voxel at the end of each axis, correlated with the kernel of
    powers of two (its start padded by the correlation's zero border)."""
    mask = np.random.default_rng(ndim).random((5, 6, 7)[:ndim]) < 0.4
    kernel = (2 ** np.arange(2 ** ndim)[::-1]).reshape((2,) * ndim)
    padded = np.zeros(tuple(n + 1 for n in mask.shape), np.uint8)
    padded[tuple(slice(0, n) for n in mask.shape)] = mask
    expected = ndimage.correlate(padded.astype(np.int64), kernel, mode="constant", cval=0)
    np.testing.assert_array_equal(neighbourhood_codes(mask), expected)


def test_one_voxel_has_eight_corner_surfels():
    voxel = np.ones((1, 1, 1), bool)
    codes = neighbourhood_codes(voxel)
    assert sorted(codes.ravel()) == [1, 2, 4, 8, 16, 32, 64, 128]
    ref_to_pred, areas, _, _ = surfel_distances(voxel, voxel, (1.0, 1.0, 1.0))
    np.testing.assert_array_equal(ref_to_pred, 0.0)
    assert areas.sum() == pytest.approx(8 * np.sqrt(3) / 8)  # eight corner triangles of legs 1/2


def test_distance_equal_to_the_tolerance_is_within():
    reference, prediction = np.zeros((1, 1, 4), bool), np.zeros((1, 1, 4), bool)
    reference[0, 0, 0] = prediction[0, 0, 3] = True  # the near corners 2 voxels of 1.5 mm apart, the far 3
    assert surface_dice(reference, prediction, (1.0, 1.0, 1.5), 3.0) == 0.5
    assert surface_dice(reference, prediction, (1.0, 1.0, 1.5), np.nextafter(3.0, 0)) == 0.0
    assert surface_dice(reference, prediction, (1.0, 1.0, 1.5), 4.5) == 1.0
