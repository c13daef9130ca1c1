"""Surface elements (surfels) of binary masks and the normalised surface Dice (NSD) built on them.

The surface representation of DeepMind's ``surface_distance`` package (Nikolov et al., the code of
NSD's authors), which FLARE's official evaluation uses:

- A mask, padded by one background voxel on every side, is read as a lattice of 2x2x2 voxel
  neighbourhoods (2x2 in 2D), one per pair of adjacent voxel positions along every axis. Each
  neighbourhood has a code, one bit per voxel inside the mask (voxel ``(a, b, c)`` of the
  neighbourhood is bit ``7 - (4a + 2b + c)``; ``(a, b)`` is bit ``3 - (2a + b)`` in 2D).
- A neighbourhood that is neither all inside nor all outside is a surfel. Its weight is the area in
  mm^2 of the marching-cubes surface (at level 1/2) inside it (in 2D, the length in mm of the
  marching-squares contour); its position is the neighbourhood's lattice point.
- Distances from one mask's surfels to the other's are Euclidean in mm on that lattice
  (``scipy.ndimage.distance_transform_edt`` with the spacing), and NSD at tolerance tau is the
  area of both masks' surfels within tau of the other surface over the area of all surfels.

The area table is derived here rather than copied: marching cubes with Lorensen's classic case table
(scikit-image) on each code's 2x2x2 cube, taking the side with at most four voxels inside (the
reference gives a code and its complement the same surface), as triangle area vectors at unit spacing
that are scaled to a spacing by the cofactors ``(s1 s2, s0 s2, s0 s1)``, as the reference scales its
table. It equals the reference's table to within 1e-15 relative (``tests/test_surfels.py``); the
measurement is on ``docs/evaluation.md``.
"""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
from scipy import ndimage


@functools.lru_cache(maxsize=1)
def _unit_area_vectors() -> tuple[np.ndarray, ...]:
    """Per 3D code, the area vectors (half cross products, shape ``(k, 3)``) of its surface's triangles
    at unit spacing."""
    from skimage.measure import marching_cubes

    vectors = []
    for code in range(256):
        inside = code if bin(code).count("1") <= 4 else 255 - code
        if inside == 0:
            vectors.append(np.zeros((0, 3)))
            continue
        corners = np.array([(inside >> (7 - corner)) & 1 for corner in range(8)], np.float64).reshape(2, 2, 2)
        vertices, faces, _, _ = marching_cubes(corners, 0.5, method="lorensen")
        triangles = vertices.astype(np.float64)[faces]  # edge midpoints: exact in any float type
        vectors.append(0.5 * np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0]))
    return tuple(vectors)


@functools.lru_cache(maxsize=64)
def surfel_measures(spacing: tuple[float, ...]) -> np.ndarray:
    """Area in mm^2 (3D, 256 codes) or contour length in mm (2D, 16 codes) of every neighbourhood code."""
    if len(spacing) == 3:
        s0, s1, s2 = spacing
        cofactors = np.array([s1 * s2, s0 * s2, s0 * s1])
        return np.array([np.linalg.norm(v * cofactors, axis=1).sum() for v in _unit_area_vectors()])
    if len(spacing) == 2:
        half_diagonal = 0.5 * np.hypot(*spacing)
        lengths = np.zeros(16)
        for code in range(1, 15):
            inside = [corner for corner in range(4) if code >> (3 - corner) & 1]
            if len(inside) != 2:  # one corner cut off (one or three voxels inside)
                lengths[code] = half_diagonal
            elif inside in ([0, 1], [2, 3]):  # a row inside: a straight contour along axis 1
                lengths[code] = spacing[1]
            elif inside in ([0, 2], [1, 3]):  # a column inside: along axis 0
                lengths[code] = spacing[0]
            else:  # two diagonal voxels: two corners cut off
                lengths[code] = 2 * half_diagonal
        return lengths
    raise ValueError(f"surfels are defined for 2D and 3D masks, got spacing {spacing}")


def neighbourhood_codes(mask: np.ndarray) -> np.ndarray:
    """The code of every neighbourhood of ``mask`` padded by one background voxel (shape: ``mask.shape + 1``).

    Built one axis at a time, the last first: pairing neighbouring positions along an axis doubles the bits
    per position, the lower position taking the higher bits.
    """
    codes = np.pad(mask.astype(np.uint8), 1)
    for step, axis in enumerate(reversed(range(mask.ndim))):
        lower = tuple(slice(None, -1) if a == axis else slice(None) for a in range(mask.ndim))
        upper = tuple(slice(1, None) if a == axis else slice(None) for a in range(mask.ndim))
        codes = (codes[lower] << (2 ** step)) | codes[upper]
    return codes


def surfel_distances(reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float]
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Reference surfels' distances to the prediction's surface and their areas, then the same from the
    prediction to the reference: ``(ref_to_pred, ref_areas, pred_to_ref, pred_areas)``. Both masks non-empty."""
    spacing = tuple(float(s) for s in spacing)
    measures = surfel_measures(spacing)
    full = len(measures) - 1
    codes = [neighbourhood_codes(mask) for mask in (reference, prediction)]
    borders = [(c != 0) & (c != full) for c in codes]
    to_ref, to_pred = (ndimage.distance_transform_edt(~border, sampling=spacing) for border in borders)
    return (to_pred[borders[0]], measures[codes[0][borders[0]]],
            to_ref[borders[1]], measures[codes[1][borders[1]]])


def surface_dice(reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float],
                 tolerance_mm: float) -> float:
    """NSD at ``tolerance_mm``: the surfel area of both masks within the tolerance of the other's surface
    over the area of all their surfels; a distance equal to the tolerance is within it. Both masks non-empty."""
    ref_to_pred, ref_areas, pred_to_ref, pred_areas = surfel_distances(reference, prediction, spacing)
    within = ref_areas[ref_to_pred <= tolerance_mm].sum() + pred_areas[pred_to_ref <= tolerance_mm].sum()
    return float(within / (ref_areas.sum() + pred_areas.sum()))
