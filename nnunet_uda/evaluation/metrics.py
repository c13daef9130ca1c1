"""Per-organ segmentation metrics for one case: Dice, normalized surface Dice, HD95 and ASSD.

Pure numpy/scipy and vectorised. The surface metrics follow MONAI's conventions
(``monai.metrics.compute_surface_dice`` with ``use_subvoxels=False``,
``compute_hausdorff_distance(percentile=95)`` and
``compute_average_surface_distance(symmetric=True)``, all with ``spacing`` set), so that numbers
are comparable with papers that report MONAI's values:

- **Surface** of a mask: its voxels with at least one face neighbour (6-connectivity in 3D,
  4-connectivity in 2D; scipy's default cross-shaped structuring element) outside the mask, i.e.
  ``mask & ~binary_erosion(mask)``. Outside the image counts as background, so mask voxels on the
  image border are surface voxels.
- **Surface distances** from mask A to mask B: for every surface voxel of A, the Euclidean
  distance in mm (voxel centres, ``spacing`` per axis) to the nearest surface voxel of B.
- **NSD** at tolerance ``tau`` mm: (number of surface voxels of A within ``tau`` of B's surface +
  number of surface voxels of B within ``tau`` of A's surface) / (number of surface voxels of A +
  of B). Surface size is counted in voxels, not in area. Distances are compared with the tolerance
  in single precision, as MONAI does, so that a lattice distance equal to the tolerance counts as
  within it despite float64 rounding (three voxels of 0.8 mm are ``2.4000000000000004`` mm).
- **HD95**: the 95th percentile (linear interpolation) of each direction's distances; the larger
  of the two directions.
- **ASSD**: the mean of both directions' distances pooled together (so the larger surface weighs
  more), not the mean of the two directional means.

Empty masks (where MONAI returns NaN or inf):

- both empty: Dice 1, NSD 1, HD95 0, ASSD 0 (a correctly predicted absence is perfect);
- exactly one empty: Dice 0, NSD 0, and HD95 = ASSD = the image's physical diagonal length in mm
  (``sqrt(sum((shape * spacing) ** 2))``), a finite worst case, larger than any distance within
  the image, so that means over cases stay finite while still penalising the miss heavily.

Distances are computed within the bounding box of the union of both masks, enlarged by one voxel
(clipped to the image), which gives the same surfaces and distances as the whole image at a
fraction of the cost.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from scipy import ndimage

METRICS = ("dice", "nsd", "hd95", "assd")


def organ_metrics(reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float],
                  tolerance_mm: float) -> dict[str, float]:
    """Dice, NSD at ``tolerance_mm``, HD95 (mm) and ASSD (mm) of one binary organ mask.

    ``reference`` and ``prediction`` are boolean arrays of the same shape; ``spacing`` is the
    voxel size in mm per array axis (numpy order). See the module docstring for the conventions.
    """
    reference, prediction = np.asarray(reference, dtype=bool), np.asarray(prediction, dtype=bool)
    spacing = _check_inputs(reference, prediction, spacing, tolerance_mm)
    ref_any, pred_any = reference.any(), prediction.any()
    if not ref_any and not pred_any:
        return {"dice": 1.0, "nsd": 1.0, "hd95": 0.0, "assd": 0.0}
    if not ref_any or not pred_any:
        diagonal = physical_diagonal(reference.shape, spacing)
        return {"dice": 0.0, "nsd": 0.0, "hd95": diagonal, "assd": diagonal}
    box = _union_box(reference, prediction)
    pred_to_ref, ref_to_pred = surface_distances(reference[box], prediction[box], spacing)
    return {"dice": dice(reference, prediction),
            "nsd": _nsd(pred_to_ref, ref_to_pred, tolerance_mm),
            "hd95": float(max(np.percentile(pred_to_ref, 95), np.percentile(ref_to_pred, 95))),
            "assd": float(np.concatenate([pred_to_ref, ref_to_pred]).mean())}


def case_metrics(reference_labels: np.ndarray, predicted_labels: np.ndarray, spacing: Sequence[float],
                 labels: Mapping[str, int], tolerances_mm: Mapping[str, float],
                 ignore_label: int | None = None, rules=None) -> dict[str, dict[str, float]]:
    """:func:`organ_metrics` of every organ in ``labels`` (name -> label value) for one case.

    ``tolerances_mm`` gives each organ's NSD tolerance. Voxels where the reference holds
    ``ignore_label`` are excluded: they count as background in both masks. ``rules`` (a
    challenge's scoring rules, e.g. :class:`~nnunet_uda.evaluation.flare.FlareRules`) may restrict
    each organ's prediction (``rules.restrict(name, prediction, reference)``) and adjust its
    metrics (``rules.adjust(name, metrics)``).
    """
    if reference_labels.shape != predicted_labels.shape:
        raise ValueError(f"reference shape {reference_labels.shape} differs from prediction shape "
                         f"{predicted_labels.shape}")
    valid = None if ignore_label is None else reference_labels != ignore_label
    out = {}
    for name, value in labels.items():
        reference, prediction = reference_labels == value, predicted_labels == value
        if valid is not None:
            prediction &= valid
        if rules is not None:
            prediction = rules.restrict(name, prediction, reference)
        out[name] = organ_metrics(reference, prediction, spacing, tolerances_mm[name])
        if rules is not None:
            out[name] = rules.adjust(name, out[name])
    return out


def dice(reference: np.ndarray, prediction: np.ndarray) -> float:
    """2 |R & P| / (|R| + |P|); 1.0 when both masks are empty."""
    total = int(reference.sum()) + int(prediction.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(reference, prediction).sum()) / total


def surface(mask: np.ndarray) -> np.ndarray:
    """Mask voxels with a face neighbour outside the mask; outside the array counts as outside."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def surface_distances(reference: np.ndarray, prediction: np.ndarray,
                      spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Distances in mm (prediction surface -> reference surface, reference -> prediction).

    Both masks must be non-empty. One distance per surface voxel, in C order of the voxels.
    """
    ref_surface, pred_surface = surface(reference), surface(prediction)
    return (_distances_to(ref_surface, pred_surface, spacing),
            _distances_to(pred_surface, ref_surface, spacing))


def physical_diagonal(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Length in mm of the image diagonal, the worst-case distance for an organ missed entirely."""
    return float(np.linalg.norm(np.asarray(shape, dtype=float) * np.asarray(spacing, dtype=float)))


def _distances_to(target_surface: np.ndarray, source_surface: np.ndarray,
                  spacing: Sequence[float]) -> np.ndarray:
    """Distance from each ``source_surface`` voxel to the nearest ``target_surface`` voxel."""
    distance_map = ndimage.distance_transform_edt(~target_surface, sampling=spacing)
    return distance_map[source_surface]


def _nsd(pred_to_ref: np.ndarray, ref_to_pred: np.ndarray, tolerance_mm: float) -> float:
    """Fraction of both surfaces' voxels within the tolerance, compared in float32 like MONAI."""
    tolerance = np.float32(tolerance_mm)
    within = (np.count_nonzero(pred_to_ref.astype(np.float32) <= tolerance)
              + np.count_nonzero(ref_to_pred.astype(np.float32) <= tolerance))
    return float(within / (pred_to_ref.size + ref_to_pred.size))


def _union_box(reference: np.ndarray, prediction: np.ndarray, margin: int = 1) -> tuple[slice, ...]:
    """Slices of the union's bounding box, enlarged by ``margin`` voxels and clipped to the array."""
    union_box = ndimage.find_objects((reference | prediction).view(np.uint8))[0]
    return tuple(slice(max(s.start - margin, 0), min(s.stop + margin, n))
                 for s, n in zip(union_box, reference.shape))


def _check_inputs(reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float],
                  tolerance_mm: float) -> tuple[float, ...]:
    """Validate shapes, spacing and tolerance; return the spacing as a tuple of floats."""
    if reference.shape != prediction.shape:
        raise ValueError(f"reference shape {reference.shape} differs from prediction shape {prediction.shape}")
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != reference.ndim or min(spacing) <= 0:
        raise ValueError(f"spacing {spacing} must give one positive voxel size per axis of the "
                         f"{reference.ndim}D masks")
    if not np.isfinite(tolerance_mm) or tolerance_mm < 0:
        raise ValueError(f"NSD tolerance must be a finite, non-negative number of mm, got {tolerance_mm}")
    return spacing
