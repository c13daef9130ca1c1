"""The phantom's label map and anatomy: the labels, the painted structures (:data:`ANATOMY`), each
case's random anatomy and pose, its elastic displacement, and the rendering of label and tissue maps.

Anatomy
-------
Each case is a small 3D abdomen (numpy ``z, y, x`` order; ``z`` runs from superior to inferior,
``y`` from anterior to posterior, ``x`` from the patient's right to left): an elliptic-cylinder
body whose cross-section varies slowly along ``z``, wrapped in subcutaneous fat, with a vertebral
body (bone, background label) and six labelled organs painted in :data:`ANATOMY` order (later
structures win, so the small aorta and gallbladder always stay visible). The anatomy is defined in
coordinates normalised to the field of view, so any ``shape`` is filled the same way. Every case
varies: organ sizes (about +-15 %), positions (about a voxel), small rotations, body size and fat
thickness, and a smooth random elastic deformation of the whole label map (a smoothed random
displacement field). Rather than resampling a voxelised label map, every structure is evaluated
analytically at the displaced position of each voxel centre (the continuous equivalent of an
order-0 warp), so labels stay exact on every domain's grid and never lose small organs to
nearest-neighbour aliasing. :func:`scaled_anatomy` gives the structures with larger or smaller
organs (the generator's ``organ_scale``); ``variation`` scales every case-to-case deviation (the generator's
``variation``, for harder or easier datasets); the labels rendered are always those of :data:`LABELS`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Sequence

import numpy as np
from scipy.ndimage import gaussian_filter

from nnunet_uda.synthetic.acquisition import TISSUE

# ---------------------------------------------------------------------------------------------
# Labels
# ---------------------------------------------------------------------------------------------

LABELS: dict[str, int] = {"background": 0, "liver": 1, "spleen": 2, "kidney_left": 3,
                          "kidney_right": 4, "aorta": 5, "gallbladder": 6, "ignore": 7}
"""nnU-Net label map of the phantom; ``ignore`` (highest label + 1) fills unlabeled cases."""

ORGANS: tuple[str, ...] = tuple(n for n in LABELS if n not in ("background", "ignore"))
"""The foreground classes, in label order."""

IGNORE_LABEL: int = LABELS["ignore"]

# ---------------------------------------------------------------------------------------------
# Anatomy
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ellipsoid:
    """An ellipsoid in normalised (z, y, x) coordinates, optionally turned by ``angle`` degrees
    about the z axis (in the axial plane)."""
    center: tuple[float, float, float]
    radii: tuple[float, float, float]
    angle: float = 0.0

    def contains(self, points: np.ndarray) -> np.ndarray:
        """Boolean mask of the (3, N) ``points`` inside the ellipsoid."""
        dz, dy, dx = (points[i] - self.center[i] for i in range(3))
        if self.angle:
            c, s = math.cos(math.radians(self.angle)), math.sin(math.radians(self.angle))
            dy, dx = c * dy + s * dx, c * dx - s * dy
        rz, ry, rx = self.radii
        return (dz / rz) ** 2 + (dy / ry) ** 2 + (dx / rx) ** 2 <= 1.0


@dataclass(frozen=True)
class Structure:
    """A painted structure: the union of ``parts`` minus ``cuts``, with label ``label`` and tissue
    ``tissue``; inside it, ``core`` (if any) gets tissue ``core_tissue`` (e.g. renal medulla).
    The first part's centre is the structure's reference point for per-case poses."""
    name: str
    label: int
    tissue: str
    parts: tuple[Ellipsoid, ...]
    cuts: tuple[Ellipsoid, ...] = ()
    core: Ellipsoid | None = None
    core_tissue: str | None = None


def _kidney(name: str, side: float, z: float) -> Structure:
    """A bean-shaped kidney on ``side`` (+1 patient left, -1 right) centred at height ``z``:
    an ellipsoid with a medial hilum notch and a medulla core."""
    center = (z, 0.38, 0.46 * side)
    return Structure(
        name, LABELS[name], "kidney_cortex",
        parts=(Ellipsoid(center, (0.36, 0.16, 0.13), angle=-25.0 * side),),
        cuts=(Ellipsoid((z, 0.33, 0.35 * side), (0.12, 0.06, 0.06)),),
        core=Ellipsoid(center, (0.24, 0.09, 0.065), angle=-25.0 * side),
        core_tissue="kidney_medulla")


ORGAN_MAGNIFICATION = (1.3, 1.4, 1.4)
"""Scale (z, y, x) of the organs' sizes, and of their heights, relative to the layout in
:data:`ANATOMY`'s definition: the organs fill the field of view, so that background is not
overwhelming and a short CPU training gets past nnU-Net's early all-background phase (at 24^3
voxels, 1.0 left 93 % background and every organ but the liver under 1 % of the voxels)."""


def _magnify(structure: Structure) -> Structure:
    """``structure`` with every ellipsoid scaled by :data:`ORGAN_MAGNIFICATION` (heights too)."""
    mz, my, mx = ORGAN_MAGNIFICATION

    def scale(e: Ellipsoid | None) -> Ellipsoid | None:
        if e is None:
            return None
        (cz, cy, cx), (rz, ry, rx) = e.center, e.radii
        return Ellipsoid((cz * mz, cy, cx), (rz * mz, ry * my, rx * mx), e.angle)

    return replace(structure, parts=tuple(map(scale, structure.parts)), cuts=tuple(map(scale, structure.cuts)),
                   core=scale(structure.core))


ANATOMY: tuple[Structure, ...] = (
    Structure("spine", 0, "bone", parts=(Ellipsoid((0.0, 0.52, 0.0), (5.0, 0.12, 0.13)),)),
    Structure("liver", LABELS["liver"], "liver", parts=(
        Ellipsoid((-0.20, -0.05, -0.42), (0.50, 0.46, 0.36)),    # right lobe
        Ellipsoid((-0.40, -0.30, 0.10), (0.25, 0.20, 0.40)),     # left lobe
        Ellipsoid((0.20, 0.05, -0.50), (0.30, 0.28, 0.22)))),    # inferior tip
    Structure("spleen", LABELS["spleen"], "spleen",
              parts=(Ellipsoid((-0.30, 0.20, 0.56), (0.40, 0.28, 0.15), angle=35.0),)),
    _kidney("kidney_right", -1.0, 0.35),
    _kidney("kidney_left", 1.0, 0.20),
    Structure("aorta", LABELS["aorta"], "aorta", parts=(Ellipsoid((0.0, 0.27, 0.10), (5.0, 0.10, 0.10)),)),
    Structure("gallbladder", LABELS["gallbladder"], "gallbladder",
              parts=(Ellipsoid((0.22, -0.15, -0.17), (0.24, 0.12, 0.11), angle=20.0),)),
)
ANATOMY = ANATOMY[:1] + tuple(_magnify(organ) for organ in ANATOMY[1:])
"""The structures in paint order (later ones win); z-long ellipsoids act as tubes (spine, aorta).
The organs (all but the spine) are magnified by :data:`ORGAN_MAGNIFICATION`."""

ORGAN_SCALE_LIMITS = (0.5, 2.0)
"""Smallest and largest factor of :func:`scaled_anatomy`."""


@lru_cache(maxsize=None)
def scaled_anatomy(scale: float) -> tuple[Structure, ...]:
    """:data:`ANATOMY` with the radii of every organ's ellipsoids (parts, cuts and core) multiplied by
    ``scale`` about their own centres, on top of :data:`ORGAN_MAGNIFICATION`; the spine (and the body,
    not a structure) unchanged. ``scale`` 1 gives :data:`ANATOMY` itself."""
    if scale == 1.0:
        return ANATOMY

    def grow(e: Ellipsoid | None) -> Ellipsoid | None:
        return None if e is None else replace(e, radii=tuple(r * scale for r in e.radii))

    return tuple(replace(s, parts=tuple(map(grow, s.parts)), cuts=tuple(map(grow, s.cuts)), core=grow(s.core))
                 if s.name in ORGANS else s for s in ANATOMY)

BODY_RADII = (0.72, 0.90)
"""Body cross-section semi-axes (y, x), normalised: the body fills most of the field of view."""

FAT_THICKNESS = 0.10
"""Subcutaneous fat thickness (normalised) before per-case jitter of +-20 %."""

BODY_WOBBLE = 0.05
"""Relative amplitude of the body's slow cross-section variation along z."""

BODY_SCALE_RANGE = (0.94, 1.06)
"""Per-case body size factor (y and x drawn separately); organ positions follow it."""

ORGAN_SCALE_RANGE = (0.85, 1.15)
"""Per-case organ size factor; each axis gets an extra +-5 %."""

ORGAN_SHIFT = 0.05
"""Standard deviation (normalised, about 1 voxel at the default shape) of organ displacements,
clipped at two standard deviations."""

ORGAN_ROTATION_DEG = (8.0, 4.0, 4.0)
"""Largest per-case organ rotation about the z, y and x axes."""

WARP_LATTICE = 10
WARP_SMOOTHING = 1.5
WARP_STD = 0.035
"""Elastic deformation: random displacements on a 10^3 lattice over the field of view, smoothed
(sigma 1.5 lattice cells) and scaled to a standard deviation of 0.035 (about 0.7 voxel at the
default shape), interpolated to every sample position."""

# ---------------------------------------------------------------------------------------------
# Anatomy sampling and rendering
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pose:
    """Per-case placement of a structure: moved to ``center``, scaled and rotated about it."""
    reference: np.ndarray
    center: np.ndarray
    scale: np.ndarray
    rotation: np.ndarray

    def to_design(self, points: np.ndarray) -> np.ndarray:
        """Map (3, N) case positions to the structure's design coordinates."""
        local = np.einsum("ji,jn->in", self.rotation, points - self.center[:, None])
        return self.reference[:, None] + local / self.scale[:, None]


@dataclass(frozen=True)
class CaseAnatomy:
    """The random anatomy of one case: structure poses (in :data:`ANATOMY` order), body size,
    fat thickness, cross-section wobble and phases and the elastic displacement lattice (3, L, L, L)."""
    poses: tuple[Pose, ...]
    body_scale: np.ndarray
    fat: float
    phases: np.ndarray
    warp: np.ndarray
    wobble: float = BODY_WOBBLE


VARIATION_LIMITS = (0.0, 4.0)
"""Smallest and largest ``variation`` of :func:`sample_anatomy` (and of the images' contrast jitter)."""


def sample_anatomy(rng: np.random.Generator, structures: Sequence[Structure] = ANATOMY,
                   variation: float = 1.0) -> CaseAnatomy:
    """Draw one case's anatomical variation, a pose for each of ``structures`` (the random draws do
    not depend on the structures' sizes, so :func:`scaled_anatomy` keeps every pose). ``variation``
    multiplies every deviation from the design (body size and wobble, organ sizes, shifts and rotations, the
    elastic warp): 0 gives every case the same anatomy; the draws are the same for every value."""
    body_scale = _varied(rng.uniform(*BODY_SCALE_RANGE, size=2), variation)
    fat = FAT_THICKNESS * _varied(rng.uniform(0.8, 1.2), variation)
    phases = rng.uniform(0.0, 2 * math.pi, size=2)
    poses = tuple(sample_pose(s, body_scale, rng, variation) for s in structures)
    warp = smooth_field(rng, (WARP_LATTICE,) * 3, WARP_SMOOTHING, WARP_STD) * np.float32(variation)
    return CaseAnatomy(poses, body_scale, fat, phases, warp, BODY_WOBBLE * variation)


def _varied(factor, variation: float):
    """A random factor drawn about 1 with its deviation from 1 multiplied by ``variation``."""
    return 1.0 + variation * (factor - 1.0)


def sample_pose(structure: Structure, body_scale: np.ndarray, rng: np.random.Generator,
                variation: float = 1.0) -> Pose:
    """Random size, position and rotation of ``structure`` (deviations times ``variation``); its position
    follows the body size."""
    reference = np.asarray(structure.parts[0].center, dtype=np.float32)
    scale = _varied(rng.uniform(*ORGAN_SCALE_RANGE) * rng.uniform(0.95, 1.05, size=3), variation)
    shift = variation * np.clip(rng.normal(0.0, ORGAN_SHIFT, size=3), -2 * ORGAN_SHIFT, 2 * ORGAN_SHIFT)
    angles = variation * np.radians(ORGAN_ROTATION_DEG) * rng.uniform(-1.0, 1.0, size=3)
    center = reference * np.array([1.0, *body_scale]) + shift
    return Pose(reference, center.astype(np.float32), scale.astype(np.float32),
                rotation_matrix(angles).astype(np.float32))


def rotation_matrix(angles: Sequence[float]) -> np.ndarray:
    """Rotation about the z, y and x axes (radians) of (z, y, x) vectors."""
    matrix = np.eye(3)
    for axis, angle in enumerate(angles):
        i, j = [a for a in range(3) if a != axis]
        turn = np.eye(3)
        turn[i, i] = turn[j, j] = math.cos(angle)
        turn[i, j], turn[j, i] = -math.sin(angle), math.sin(angle)
        matrix = matrix @ turn
    return matrix


def smooth_field(rng: np.random.Generator, shape: Sequence[int], sigma: float | Sequence[float],
                 std: float) -> np.ndarray:
    """A smooth random vector field (3, *shape): white noise smoothed with Gaussian ``sigma``
    (voxels, per axis or for all), scaled to the overall standard deviation ``std``."""
    noise = rng.standard_normal((3, *shape)).astype(np.float32)
    field = gaussian_filter(noise, (0, *np.broadcast_to(sigma, 3)), mode="wrap")
    return field * np.float32(std / field.std())


def render(anatomy: CaseAnatomy, axes: Sequence[np.ndarray],
           structures: Sequence[Structure] = ANATOMY) -> tuple[np.ndarray, np.ndarray]:
    """Label (:data:`LABELS`) and tissue maps (uint8) of the elastically deformed case on the grid of
    ``axes``: every one of ``structures`` (those ``anatomy`` was drawn for) is evaluated at the
    displaced position of each voxel centre."""
    shape = tuple(len(a) for a in axes)
    q = (np.stack(np.meshgrid(*axes, indexing="ij")) + displacement(anatomy.warp, axes)).reshape(3, -1)
    label = np.zeros(q.shape[1], np.uint8)
    tissue = np.full(q.shape[1], TISSUE["air"], np.uint8)
    body, inner = body_masks(anatomy, q)
    tissue[body] = TISSUE["fat"]
    tissue[inner] = TISSUE["soft_tissue"]
    for structure, pose in zip(structures, anatomy.poses, strict=True):
        design = pose.to_design(q)
        mask = inner & _union(structure.parts, design) & ~_union(structure.cuts, design)
        label[mask] = structure.label
        tissue[mask] = TISSUE[structure.tissue]
        if structure.core is not None:
            tissue[mask & structure.core.contains(design)] = TISSUE[structure.core_tissue]
    return label.reshape(shape), tissue.reshape(shape)


def _union(ellipsoids: Sequence[Ellipsoid], points: np.ndarray) -> np.ndarray:
    mask = np.zeros(points.shape[1], bool)
    for ellipsoid in ellipsoids:
        mask |= ellipsoid.contains(points)
    return mask


def displacement(lattice: np.ndarray, axes: Sequence[np.ndarray]) -> np.ndarray:
    """The (3, z, y, x) displacement on the grid of ``axes``: the lattice (spanning [-1, 1]^3)
    interpolated trilinearly, as separable interpolation matrices (exact and fast)."""
    wz, wy, wx = (_linear_weights(a, n) for a, n in zip(axes, lattice.shape[1:]))
    return np.einsum("zi,yj,xk,cijk->czyx", wz, wy, wx, lattice, optimize=True)


def _linear_weights(coords: np.ndarray, n: int) -> np.ndarray:
    """(len(coords), n) linear interpolation weights of normalised ``coords`` on n lattice nodes
    spanning [-1, 1] (constant beyond the ends)."""
    position = np.clip((coords + 1.0) * ((n - 1) / 2.0), 0, n - 1)
    low = np.minimum(position.astype(int), n - 2)
    frac = (position - low).astype(np.float32)
    weights = np.zeros((len(coords), n), np.float32)
    rows = np.arange(len(coords))
    weights[rows, low] = 1.0 - frac
    weights[rows, low + 1] = frac
    return weights


def body_masks(anatomy: CaseAnatomy, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inside the skin, and inside the subcutaneous fat, of the z-varying elliptic cylinder."""
    radii = []
    for base, scale, phase in zip(BODY_RADII, anatomy.body_scale, anatomy.phases):
        radii.append(base * scale * (1.0 + anatomy.wobble * np.sin(1.5 * math.pi * q[0] + phase)))
    ry, rx = radii
    body = (q[1] / ry) ** 2 + (q[2] / rx) ** 2 <= 1.0
    inner = (q[1] / (ry - anatomy.fat)) ** 2 + (q[2] / (rx - anatomy.fat)) ** 2 <= 1.0
    return body, inner
