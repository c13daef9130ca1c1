"""A synthetic cross-modality abdominal phantom, written as an nnU-Net v2 raw UDA benchmark dataset.

The phantom lets every part of nnunet_uda (domain tables, harmonisation, adaptation losses,
pseudo-label rounds, evaluation) be exercised end to end in minutes, with a real and controllable
domain gap and known ground truth for every case, including the unlabeled target ones.

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
nearest-neighbour aliasing.

Domain gap
----------
``CT`` is the labelled source, ``T1`` and ``T2`` are unlabelled MR targets. They differ in:

- contrast (:data:`CONTRAST`): tissue intensities are drawn per case around per-domain means, and
  the organ order is deliberately non-monotonic between domains (the liver is brighter than the
  spleen in CT and T1 but darker in T2; the gallbladder is the darkest organ in CT and the
  brightest in T2; the aorta is the brightest in CT and a dark flow void in MR), so no global
  intensity mapping turns one domain into another;
- texture and noise (:data:`CONTRAST`, :data:`ACQUISITION`): per-tissue smooth texture, Gaussian
  noise for CT and Rician (magnitude) noise for MR, at different levels;
- a smooth multiplicative bias field for MR, strong for T1 and mild for T2;
- resolution: partial-volume blur (a Gaussian point-spread function, wider for MR) and, for T2,
  slices twice as thick (4 mm instead of 2 mm): half as many slices cover the same body, each the
  average of three sub-slices rendered on a finer grid; its labels are those of the slice centre.

CT images are generated in Hounsfield units and MR ones in arbitrary units; all are written
harmonised by :func:`nnunet_uda.intensity.harmonize`, as every image of an nnunet_uda dataset.

Variants
--------
Besides the plain UDA benchmark (labelled CT, ignore-only target label files), the generator
writes AICL-style partial labels (CT without gallbladder, T1 with the gallbladder only),
registration-like initial pseudo labels (``reg``, ``sreg``), a semi-supervised single-domain
variant and the fully labelled twin (same images, true target labels) for the supervised ceiling.
The true labels of the target training cases (and of cases with pseudo-labeled classes) are always
written to ``labelsTr_reference``.
Every case is drawn from its own random generator, seeded from (seed, domain, index, split), so
a case's image never depends on the options or on the generation order.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import gaussian_filter, map_coordinates
from tqdm import tqdm

from nnunet_uda.data.raw import atomic_folder, dataset_folder_name, raw_root, save_json
from nnunet_uda.domains import DomainTable
from nnunet_uda.intensity import harmonize

# ---------------------------------------------------------------------------------------------
# Labels, domains and geometry
# ---------------------------------------------------------------------------------------------

LABELS: dict[str, int] = {"background": 0, "liver": 1, "spleen": 2, "kidney_left": 3,
                          "kidney_right": 4, "aorta": 5, "gallbladder": 6, "ignore": 7}
"""nnU-Net label map of the phantom; ``ignore`` (highest label + 1) fills unlabeled cases."""

ORGANS: tuple[str, ...] = tuple(n for n in LABELS if n not in ("background", "ignore"))
"""The foreground classes, in label order."""

IGNORE_LABEL: int = LABELS["ignore"]

DOMAIN_MODALITIES: dict[str, str] = {"CT": "CT", "T1": "MR", "T2": "MR"}
"""Domain name -> modality (selects the harmonisation rule). The order fixes the domain indices."""

SOURCE_DOMAIN = "CT"
TARGET_DOMAINS: tuple[str, ...] = ("T1", "T2")

PARTIAL_ANNOTATIONS: dict[str, tuple[str, ...]] = {
    "CT": tuple(o for o in ORGANS if o != "gallbladder"),
    "T1": ("gallbladder",),
    "T2": (),
}
"""``partial_labels``: classes annotated per domain (as in AICL; T2 stays unlabeled)."""

BASE_SPACING_MM = 2.0
"""Isotropic voxel size of the CT grid; ``shape`` is given on this grid."""

DEFAULT_SHAPE: tuple[int, int, int] = (40, 40, 40)
SHAPE_LIMITS = (20, 256)
"""Smallest and largest allowed grid size per axis (below 20 the small organs may vanish)."""

FILE_ENDING = ".nii.gz"
SPLITS = ("train", "test")

# ---------------------------------------------------------------------------------------------
# Contrast and acquisition
# ---------------------------------------------------------------------------------------------

TISSUES: tuple[str, ...] = ("air", "fat", "soft_tissue", "bone", "liver", "spleen", "kidney_cortex",
                            "kidney_medulla", "aorta", "gallbladder")
"""Tissue classes of the intensity model; a tissue's index is its code in the tissue map."""

TISSUE = {name: code for code, name in enumerate(TISSUES)}

CONTRAST: dict[str, dict[str, tuple[float, float]]] = {
    "CT": {"air": (-1000, 5), "fat": (-100, 12), "soft_tissue": (40, 8), "bone": (450, 80),
           "liver": (110, 6), "spleen": (85, 6), "kidney_cortex": (160, 8), "kidney_medulla": (120, 6),
           "aorta": (200, 10), "gallbladder": (5, 3)},
    "T1": {"air": (0, 0), "fat": (900, 40), "soft_tissue": (300, 25), "bone": (480, 60),
           "liver": (620, 30), "spleen": (260, 20), "kidney_cortex": (420, 25),
           "kidney_medulla": (330, 20), "aorta": (60, 15), "gallbladder": (130, 10)},
    "T2": {"air": (0, 0), "fat": (560, 35), "soft_tissue": (200, 20), "bone": (260, 40),
           "liver": (160, 15), "spleen": (600, 30), "kidney_cortex": (640, 30),
           "kidney_medulla": (720, 30), "aorta": (50, 15), "gallbladder": (980, 25)},
}
"""Per domain and tissue: (mean intensity, texture standard deviation); CT in HU, MR in a.u.

CT is contrast-enhanced (portal-venous phase, as abdominal CT usually is): every organ stands at
least 45 HU from the surrounding soft tissue, so the labeled source domain is learnable in a short
CPU run. Organ order of the means: CT aorta > kidney > liver > spleen > gallbladder; T1 liver > kidney >
spleen > gallbladder > aorta; T2 gallbladder > kidney > spleen > liver > aorta.
"""

CT_JITTER_HU = 4.0
"""Per-case additive jitter (standard deviation, HU) of every CT tissue mean except air."""

MR_JITTER = 0.06
"""Per-case relative jitter (standard deviation) of every MR tissue mean."""

MR_GAIN_RANGE = (0.7, 1.4)
"""Per-case global MR gain (arbitrary scanner units), applied to means, texture and noise."""

TEXTURE_SCALE_MM = 2.0
"""Correlation length (Gaussian sigma) of the per-tissue texture field."""


@dataclass(frozen=True)
class Acquisition:
    """How a domain's images are acquired from the rendered tissue map.

    ``slice_factor``: slice thickness in multiples of :data:`BASE_SPACING_MM` (fewer, thicker
    slices); ``sub_samples``: sub-slices rendered per slice and averaged (odd, the middle one gives
    the labels); ``psf_mm``: Gaussian point-spread sigma (z, y, x); ``noise``: noise standard
    deviation (Gaussian for CT, Rician for MR); ``bias``: strength of the log bias field (0: none).
    """
    slice_factor: int
    sub_samples: int
    psf_mm: tuple[float, float, float]
    noise: float
    bias: float


ACQUISITION: dict[str, Acquisition] = {
    "CT": Acquisition(slice_factor=1, sub_samples=1, psf_mm=(0.8, 0.8, 0.8), noise=12.0, bias=0.0),
    "T1": Acquisition(slice_factor=1, sub_samples=1, psf_mm=(1.2, 1.2, 1.2), noise=25.0, bias=0.4),
    "T2": Acquisition(slice_factor=2, sub_samples=3, psf_mm=(1.4, 1.4, 1.4), noise=30.0, bias=0.12),
}
"""Per domain acquisition: CT sharp and mildly noisy; T1 blurrier with a strong bias field; T2
with 4 mm slices, the widest blur, the most noise and a mild bias field."""

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
# Initial pseudo labels
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Perturbation:
    """A registration-like error applied to true labels (all in voxels of the case's grid): a
    uniform random shift of at most ``max_shift`` per axis, an extra translation in a random
    direction whose length is drawn from ``offset``, and a smooth warp of standard deviation
    ``warp_std`` and correlation length ``warp_sigma``."""
    max_shift: float
    offset: tuple[float, float]
    warp_std: float
    warp_sigma: float


PSEUDO_LABEL_PERTURBATIONS: dict[str, Perturbation] = {
    "reg": Perturbation(max_shift=1.0, offset=(0.0, 0.0), warp_std=0.6, warp_sigma=4.0),
    "sreg": Perturbation(max_shift=1.0, offset=(3.0, 4.0), warp_std=0.6, warp_sigma=4.0),
}
"""``reg`` imitates AICL's registration-propagated labels (mean Dice about 0.6-0.8 to the truth);
``sreg`` (shifted REG) adds a 3-4 voxel translation in a random direction (mean Dice about
0.3-0.4). Measured at the default shape over 40 T1 and 40 T2 cases: 0.70 and 0.33 mean organ Dice.
Voxels are those of the 2 mm CT grid (a T2 z shift of 4 mm is one of its 4 mm voxels)."""

# ---------------------------------------------------------------------------------------------
# Options and case plan
# ---------------------------------------------------------------------------------------------


class PhantomOptionsError(ValueError):
    """Invalid generator options; the message says which and what is allowed."""


@dataclass(frozen=True)
class PhantomOptions:
    """Validated options of :func:`generate_phantom_dataset` (see there)."""
    dataset_id: int
    name: str = "UDAPhantom"
    shape: tuple[int, int, int] = DEFAULT_SHAPE
    n_source: int = 16
    n_target: int = 16
    n_test: int = 5
    seed: int = 0
    partial_labels: bool = False
    pseudo_labels: str | None = None
    semi_supervised: float | None = None
    fully_labeled: bool = False
    paired: bool = False

    def __post_init__(self):
        problem = next(iter(self._problems()), None)
        if problem is not None:
            raise PhantomOptionsError(problem)

    def _problems(self) -> Iterable[str]:
        """Yield a message for each invalid option (the first one is raised)."""
        if not _is_int(self.dataset_id) or not 1 <= self.dataset_id <= 999:
            yield f"dataset id must be an integer from 1 to 999, got {self.dataset_id!r}"
        if not re.fullmatch(r"[A-Za-z0-9_-]+", str(self.name)):
            yield f"name must be letters, digits, '_' or '-' only, got {self.name!r}"
        low, high = SHAPE_LIMITS
        if len(self.shape) != 3 or not all(_is_int(s) and low <= s <= high for s in self.shape):
            yield f"shape must be three integers Z Y X, each from {low} to {high}, got {tuple(self.shape)}"
        for key, minimum in (("n_source", 1), ("n_target", 1), ("n_test", 1), ("seed", 0)):
            value = getattr(self, key)
            if not _is_int(value) or value < minimum:
                yield f"{key} must be an integer >= {minimum}, got {value!r}"
        if self.pseudo_labels not in (None, *PSEUDO_LABEL_PERTURBATIONS):
            yield (f"pseudo_labels must be one of {', '.join(PSEUDO_LABEL_PERTURBATIONS)}, "
                   f"got {self.pseudo_labels!r}")
        if self.fully_labeled and (self.partial_labels or self.pseudo_labels):
            yield "fully_labeled cannot be combined with partial_labels or pseudo_labels"
        if self.semi_supervised is not None:
            yield from self._semi_supervised_problems()
        if self.paired and self.semi_supervised is not None:
            yield "paired needs target domains and cannot be combined with semi_supervised"
        elif self.paired and _is_int(self.n_target) and _is_int(self.n_source) and self.n_target > self.n_source:
            yield (f"paired gives every target training case the anatomy of the CT case of its index: n_target "
                   f"{self.n_target} must not exceed n_source {self.n_source}")

    def _semi_supervised_problems(self) -> Iterable[str]:
        fraction = self.semi_supervised
        if not isinstance(fraction, (int, float)) or not 0.0 < fraction < 1.0:
            yield f"semi_supervised must be a fraction between 0 and 1 (exclusive), got {fraction!r}"
        elif self.partial_labels:
            yield "semi_supervised has a single domain and cannot be combined with partial_labels"
        elif not 1 <= self.n_labeled < self.n_source:
            yield (f"semi_supervised {fraction} of n_source {self.n_source} gives {self.n_labeled} "
                   f"labeled cases; choose values that leave at least one labeled and one unlabeled case")

    @property
    def domains(self) -> tuple[str, ...]:
        return (SOURCE_DOMAIN,) if self.semi_supervised is not None else tuple(DOMAIN_MODALITIES)

    @property
    def targets(self) -> tuple[str, ...]:
        return (SOURCE_DOMAIN,) if self.semi_supervised is not None else TARGET_DOMAINS

    @property
    def n_labeled(self) -> int:
        """Labeled source training cases: all of them, or round(fraction * n_source) if semi."""
        if self.semi_supervised is None:
            return self.n_source
        return int(round(self.semi_supervised * self.n_source))

    def subject(self, plan: "CasePlan") -> str | None:
        """The subject of a training case of a paired dataset: case i of every domain shows subject i."""
        return f"subject_{plan.index:03d}" if self.paired and plan.split == "train" else None

    def annotated(self, domain: str) -> tuple[str, ...]:
        """Classes annotated in ``domain``'s ground-truth training label files."""
        if self.partial_labels:
            return PARTIAL_ANNOTATIONS[domain]
        if self.fully_labeled or domain == SOURCE_DOMAIN:
            return ORGANS
        return ()


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@dataclass(frozen=True)
class CasePlan:
    """One case to write: its id, domain, index and split, and for training cases what its label
    file holds (``ground_truth``, ``pseudo`` or ``none``) and, for ground-truth cases, which of
    their unannotated classes are filled with initial pseudo labels (``pseudo``)."""
    case_id: str
    domain: str
    index: int
    split: str
    labels: str = "ground_truth"
    pseudo: tuple[str, ...] = ()


def plan_cases(options: PhantomOptions) -> list[CasePlan]:
    """Every case of the dataset: training cases (source first), then test cases per domain."""
    unlabeled = "pseudo" if options.pseudo_labels else "none"
    plans = []
    for domain in options.domains:
        n = options.n_source if domain == SOURCE_DOMAIN else options.n_target
        for i in range(n):
            within_labeled = domain != SOURCE_DOMAIN or i < options.n_labeled
            labeled = options.fully_labeled or (bool(options.annotated(domain)) and within_labeled)
            filled = tuple(o for o in ORGANS if o not in options.annotated(domain)) \
                if labeled and options.pseudo_labels else ()
            plans.append(CasePlan(f"ph_{domain}_{i:03d}", domain, i, "train",
                                  "ground_truth" if labeled else unlabeled, filled))
    for domain in options.domains:
        plans += [CasePlan(f"ph_{domain}_ts{i:03d}", domain, i, "test") for i in range(options.n_test)]
    return plans


def domain_table(options: PhantomOptions, plans: Sequence[CasePlan]) -> dict:
    """The ``dataset.json["uda"]`` entry; fully labelled test cases of partially annotated domains
    say so with their own ``annotated_labels``."""
    def annotated_json(domain):
        names = options.annotated(domain)
        return "all" if names == ORGANS else list(names)

    cases, test_cases = {}, {}
    for plan in plans:
        if plan.split == "train":
            entry = {"domain": plan.domain, "labels": plan.labels}
            if options.subject(plan):
                entry["subject"] = options.subject(plan)
            if plan.pseudo:
                entry["pseudo_labels"] = list(plan.pseudo)
            if plan.labels == "pseudo" or plan.pseudo:
                entry["round"] = 0
            cases[plan.case_id] = entry
        else:
            entry = {"domain": plan.domain}
            if options.annotated(plan.domain) != ORGANS:
                entry["annotated_labels"] = list(ORGANS)
            test_cases[plan.case_id] = entry
    return {"domains": {d: {"modality": DOMAIN_MODALITIES[d], "annotated_labels": annotated_json(d)}
                        for d in options.domains},
            "target": list(options.targets), "cases": cases, "test_cases": test_cases}


def dataset_json(options: PhantomOptions, plans: Sequence[CasePlan]) -> dict:
    """The complete, validated dataset.json."""
    content = {
        "name": options.name,
        "description": "nnunet_uda synthetic cross-modality abdominal phantom (nnunet_uda.synthetic.phantom)",
        "channel_names": {"0": "image"},
        "labels": dict(LABELS),
        "numTraining": sum(p.split == "train" for p in plans),
        "file_ending": FILE_ENDING,
        "uda": domain_table(options, plans),
        "phantom": {"seed": options.seed, "shape": list(options.shape),
                    "spacing": {d: list(acquisition_grid(d, options.shape).spacing) for d in options.domains},
                    "partial_labels": options.partial_labels, "pseudo_labels": options.pseudo_labels,
                    "semi_supervised": options.semi_supervised, "fully_labeled": options.fully_labeled,
                    "paired": options.paired},
    }
    DomainTable.from_dataset_json(content)
    return content

# ---------------------------------------------------------------------------------------------
# One case
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PhantomCase:
    """A generated case: harmonised float32 image and uint8 true labels (z, y, x), spacing and
    origin in mm (z, y, x)."""
    image: np.ndarray
    label: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]


@dataclass(frozen=True)
class AcquisitionGrid:
    """A domain's output grid (``shape``, ``spacing``) and the finer grid it is rendered on, which
    has ``sub_samples`` sub-slices per output slice."""
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    sub_samples: int

    @property
    def render_shape(self) -> tuple[int, int, int]:
        return (self.shape[0] * self.sub_samples, *self.shape[1:])

    @property
    def render_spacing(self) -> tuple[float, float, float]:
        return (self.spacing[0] / self.sub_samples, *self.spacing[1:])

    @property
    def origin(self) -> tuple[float, float, float]:
        """Centre of voxel (0, 0, 0): the grid is centred on the body."""
        return tuple(-(n - 1) / 2 * s for n, s in zip(self.shape, self.spacing))


def acquisition_grid(domain: str, shape: Sequence[int]) -> AcquisitionGrid:
    """``domain``'s grid for a CT ``shape``: thicker slices mean fewer slices over the same body."""
    acq = ACQUISITION[domain]
    nz = math.ceil(shape[0] / acq.slice_factor)
    spacing = (BASE_SPACING_MM * acq.slice_factor, BASE_SPACING_MM, BASE_SPACING_MM)
    return AcquisitionGrid((nz, int(shape[1]), int(shape[2])), spacing, acq.sub_samples)


def case_rng(seed: int, domain: str, index: int, split: str, stream: int = 0) -> np.random.Generator:
    """The random generator of one case, independent of every other case and of the options;
    ``stream`` 1 perturbs its pseudo labels without touching its image."""
    return np.random.default_rng([seed, list(DOMAIN_MODALITIES).index(domain), index,
                                  SPLITS.index(split), stream])


def synthesize_case(seed: int, domain: str, index: int, split: str,
                    shape: Sequence[int] = DEFAULT_SHAPE, anatomy_of: str | None = None) -> PhantomCase:
    """Generate one case of ``domain`` on its acquisition grid for the CT ``shape``. ``anatomy_of``:
    the domain whose case of the same index and split lends its anatomy (one subject scanned in two
    modalities, the body in the same place); the acquisition stays this case's own."""
    rng = case_rng(seed, domain, index, split)
    anatomy = sample_anatomy(rng if anatomy_of is None else case_rng(seed, anatomy_of, index, split))
    grid = acquisition_grid(domain, shape)
    axes = normalized_axes(grid.render_shape, grid.render_spacing, shape)
    label, tissue = render(anatomy, axes)
    image = acquire(tissue, axes, grid, domain, rng)
    centre = grid.sub_samples // 2
    return PhantomCase(image, label[centre::grid.sub_samples], grid.spacing, grid.origin)


def normalized_axes(grid_shape: Sequence[int], spacing: Sequence[float],
                    reference_shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel-centre positions along z, y and x, normalised so that the CT field of view of
    ``reference_shape`` spans [-1, 1] on every axis."""
    return tuple(((np.arange(n) - (n - 1) / 2) * s / (r * BASE_SPACING_MM / 2)).astype(np.float32)
                 for n, s, r in zip(grid_shape, spacing, reference_shape))

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
    fat thickness, cross-section phases and the elastic displacement lattice (3, L, L, L)."""
    poses: tuple[Pose, ...]
    body_scale: np.ndarray
    fat: float
    phases: np.ndarray
    warp: np.ndarray


def sample_anatomy(rng: np.random.Generator) -> CaseAnatomy:
    """Draw one case's anatomical variation."""
    body_scale = rng.uniform(*BODY_SCALE_RANGE, size=2)
    fat = FAT_THICKNESS * rng.uniform(0.8, 1.2)
    phases = rng.uniform(0.0, 2 * math.pi, size=2)
    poses = tuple(sample_pose(s, body_scale, rng) for s in ANATOMY)
    warp = smooth_field(rng, (WARP_LATTICE,) * 3, WARP_SMOOTHING, WARP_STD)
    return CaseAnatomy(poses, body_scale, fat, phases, warp)


def sample_pose(structure: Structure, body_scale: np.ndarray, rng: np.random.Generator) -> Pose:
    """Random size, position and rotation of ``structure``; its position follows the body size."""
    reference = np.asarray(structure.parts[0].center, dtype=np.float32)
    scale = rng.uniform(*ORGAN_SCALE_RANGE) * rng.uniform(0.95, 1.05, size=3)
    shift = np.clip(rng.normal(0.0, ORGAN_SHIFT, size=3), -2 * ORGAN_SHIFT, 2 * ORGAN_SHIFT)
    angles = np.radians(ORGAN_ROTATION_DEG) * rng.uniform(-1.0, 1.0, size=3)
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


def render(anatomy: CaseAnatomy, axes: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Label and tissue maps (uint8) of the elastically deformed case on the grid of ``axes``:
    every structure is evaluated at the displaced position of each voxel centre."""
    shape = tuple(len(a) for a in axes)
    q = (np.stack(np.meshgrid(*axes, indexing="ij")) + displacement(anatomy.warp, axes)).reshape(3, -1)
    label = np.zeros(q.shape[1], np.uint8)
    tissue = np.full(q.shape[1], TISSUE["air"], np.uint8)
    body, inner = body_masks(anatomy, q)
    tissue[body] = TISSUE["fat"]
    tissue[inner] = TISSUE["soft_tissue"]
    for structure, pose in zip(ANATOMY, anatomy.poses):
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
        radii.append(base * scale * (1.0 + BODY_WOBBLE * np.sin(1.5 * math.pi * q[0] + phase)))
    ry, rx = radii
    body = (q[1] / ry) ** 2 + (q[2] / rx) ** 2 <= 1.0
    inner = (q[1] / (ry - anatomy.fat)) ** 2 + (q[2] / (rx - anatomy.fat)) ** 2 <= 1.0
    return body, inner

# ---------------------------------------------------------------------------------------------
# Image formation
# ---------------------------------------------------------------------------------------------


def acquire(tissue: np.ndarray, axes: Sequence[np.ndarray], grid: AcquisitionGrid, domain: str,
            rng: np.random.Generator) -> np.ndarray:
    """The harmonised image of ``domain`` from the rendered ``tissue`` map: contrast and texture,
    bias field, partial-volume blur, thick-slice averaging and noise."""
    acq, modality = ACQUISITION[domain], DOMAIN_MODALITIES[domain]
    means, textures, gain = case_contrast(domain, rng)
    spacing = np.asarray(grid.render_spacing)
    texture = gaussian_filter(rng.standard_normal(tissue.shape).astype(np.float32),
                              TEXTURE_SCALE_MM / spacing)
    image = means[tissue] + textures[tissue] * (texture / texture.std())
    if acq.bias:
        image *= bias_field(axes, acq.bias, rng)
    image = gaussian_filter(image, np.asarray(acq.psf_mm) / spacing)
    image = image.reshape(grid.shape[0], grid.sub_samples, *grid.shape[1:]).mean(axis=1)
    image = add_noise(image, acq.noise * gain, rician=modality == "MR", rng=rng)
    return harmonize(image, modality)


def case_contrast(domain: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
    """Per-tissue means and texture levels of one case (indexed by tissue code), and its gain."""
    table = CONTRAST[domain]
    means = np.array([table[t][0] for t in TISSUES], np.float32)
    textures = np.array([table[t][1] for t in TISSUES], np.float32)
    if DOMAIN_MODALITIES[domain] == "CT":
        jitter = rng.normal(0.0, CT_JITTER_HU, size=len(TISSUES)).astype(np.float32)
        jitter[TISSUE["air"]] = 0.0
        return means + jitter, textures, 1.0
    gain = float(rng.uniform(*MR_GAIN_RANGE))
    jitter = rng.normal(1.0, MR_JITTER, size=len(TISSUES)).astype(np.float32)
    return means * jitter * gain, textures * gain, gain


def bias_field(axes: Sequence[np.ndarray], strength: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth multiplicative field exp(b) on the grid of ``axes``: a random linear ramp plus a
    radial in-plane term, ``strength`` scaling b."""
    direction = rng.standard_normal(3)
    direction /= np.linalg.norm(direction)
    radial = rng.uniform(-1.0, 1.0)
    z, y, x = np.meshgrid(*axes, indexing="ij", sparse=True)
    log_bias = direction[0] * z + direction[1] * y + direction[2] * x + 0.5 * radial * (y ** 2 + x ** 2)
    return np.exp(strength * log_bias).astype(np.float32)


def add_noise(image: np.ndarray, sigma: float, rician: bool, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise, or Rician noise (magnitude of a complex signal with Gaussian noise)."""
    noise = np.float32(sigma) * rng.standard_normal(image.shape, dtype=np.float32)
    if not rician:
        return image + noise
    imaginary = np.float32(sigma) * rng.standard_normal(image.shape, dtype=np.float32)
    return np.sqrt((image + noise) ** 2 + imaginary ** 2)

# ---------------------------------------------------------------------------------------------
# Label files
# ---------------------------------------------------------------------------------------------


def perturb_labels(label: np.ndarray, spacing: Sequence[float], perturbation: Perturbation,
                   rng: np.random.Generator) -> np.ndarray:
    """Registration-like pseudo labels: ``label`` shifted and smoothly warped (nearest neighbour).
    The perturbation is given in voxels of the 2 mm CT grid and converted to ``spacing``."""
    to_grid = (BASE_SPACING_MM / np.asarray(spacing, dtype=np.float32))[:, None, None, None]
    shift = rng.uniform(-perturbation.max_shift, perturbation.max_shift, size=3)
    direction = rng.standard_normal(3)
    shift += rng.uniform(*perturbation.offset) * direction / np.linalg.norm(direction)
    sigma = perturbation.warp_sigma * to_grid.ravel()
    warp = smooth_field(rng, label.shape, sigma, perturbation.warp_std) + shift.astype(np.float32)[:, None, None, None]
    coords = np.indices(label.shape, dtype=np.float32) + warp * to_grid
    return map_coordinates(label, coords, order=0, mode="nearest")


def keep_classes(label: np.ndarray, names: Iterable[str]) -> np.ndarray:
    """``label`` with every class not in ``names`` drawn as background."""
    return np.where(np.isin(label, [LABELS[n] for n in names]), label, 0).astype(np.uint8)


def training_label(case: PhantomCase, plan: CasePlan, options: PhantomOptions) -> np.ndarray:
    """The label file content of a training case, by what the domain table says it holds."""
    if plan.labels == "none":
        return np.full_like(case.label, IGNORE_LABEL)
    if plan.labels == "ground_truth" and not plan.pseudo:
        return keep_classes(case.label, options.annotated(plan.domain))
    rng = case_rng(options.seed, plan.domain, plan.index, plan.split, stream=1)
    pseudo = perturb_labels(case.label, case.spacing, PSEUDO_LABEL_PERTURBATIONS[options.pseudo_labels], rng)
    if plan.labels == "pseudo":
        return pseudo
    manual = keep_classes(case.label, options.annotated(plan.domain))
    return np.where(manual > 0, manual, keep_classes(pseudo, plan.pseudo)).astype(np.uint8)

# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def write_volume(array: np.ndarray, path: Path, spacing: Sequence[float], origin: Sequence[float]) -> None:
    """Write a (z, y, x) array with SimpleITK: spacing and origin given in (z, y, x) order,
    identity direction."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing([float(s) for s in reversed(spacing)])
    image.SetOrigin([float(o) for o in reversed(origin)])
    image.SetDirection(np.eye(3).ravel().tolist())
    sitk.WriteImage(image, str(path), True)


def write_case(folder: Path, plan: CasePlan, options: PhantomOptions) -> PhantomCase:
    """Generate and write one case (image, label file, reference labels where needed)."""
    anatomy_of = SOURCE_DOMAIN if options.subject(plan) and plan.domain != SOURCE_DOMAIN else None
    case = synthesize_case(options.seed, plan.domain, plan.index, plan.split, options.shape, anatomy_of)
    images, labels = ("imagesTr", "labelsTr") if plan.split == "train" else ("imagesTs", "labelsTs")
    geometry = (case.spacing, case.origin)
    write_volume(case.image, folder / images / f"{plan.case_id}_0000{FILE_ENDING}", *geometry)
    label = training_label(case, plan, options) if plan.split == "train" else case.label
    write_volume(label, folder / labels / f"{plan.case_id}{FILE_ENDING}", *geometry)
    if plan.split == "train" and (plan.domain in options.targets or plan.pseudo):
        write_volume(case.label, folder / "labelsTr_reference" / f"{plan.case_id}{FILE_ENDING}", *geometry)
    return case


def write_preview(cases: Mapping[str, PhantomCase], path: Path) -> None:
    """A PNG with, per domain, a mid-axial and a mid-coronal slice with label contours."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    colors = dict(zip(ORGANS, ("tab:red", "tab:blue", "tab:green", "tab:olive", "tab:orange", "tab:purple")))
    figure = Figure(figsize=(6.4, 3.0 * len(cases)), layout="constrained")
    axes = figure.subplots(len(cases), 2, squeeze=False)
    for row, (domain, case) in zip(axes, cases.items()):
        sz, sy, sx = case.spacing
        mid_z, mid_y = case.image.shape[0] // 2, case.image.shape[1] // 2
        views = (("axial", case.image[mid_z], case.label[mid_z], sy / sx),
                 ("coronal", case.image[:, mid_y], case.label[:, mid_y], sz / sx))
        for ax, (view, image, label, aspect) in zip(row, views):
            ax.imshow(image, cmap="gray", vmin=-1, vmax=1, aspect=aspect, interpolation="nearest")
            for organ, color in colors.items():
                mask = label == LABELS[organ]
                if mask.any():
                    ax.contour(mask.astype(np.float32), levels=[0.5], colors=[color], linewidths=0.8)
            ax.set_title(f"{domain}, {view}", fontsize=9)
            ax.set_axis_off()
    figure.legend([Line2D([], [], color=c) for c in colors.values()], list(colors), loc="outside lower center",
                  ncol=3, fontsize=8)
    figure.savefig(path, dpi=100)


def generate_phantom_dataset(dataset_id: int, *, name: str = "UDAPhantom",
                             shape: Sequence[int] = DEFAULT_SHAPE, n_source: int = 16, n_target: int = 16,
                             n_test: int = 5, seed: int = 0, partial_labels: bool = False,
                             pseudo_labels: str | None = None, semi_supervised: float | None = None,
                             fully_labeled: bool = False, paired: bool = False, overwrite: bool = False,
                             output_root: str | Path | None = None, progress: bool = False) -> Path:
    """Write the phantom benchmark as ``<output_root>/DatasetXXX_<name>`` and return its path.

    ``shape``: CT grid (z, y, x) at 2 mm; ``n_source`` CT training cases; ``n_target`` training
    cases per target domain (T1, T2); ``n_test`` test cases per domain; ``seed``: everything is a
    function of it. ``partial_labels``: CT annotates all but the gallbladder, T1 training cases
    annotate only the gallbladder. ``pseudo_labels`` (``"reg"``/``"sreg"``): unlabeled training
    cases get registration-like initial pseudo labels instead of ignore-only ones; with
    ``partial_labels``, so do the unannotated classes of the partially labeled cases (manual
    labels win where both are drawn), as in AICL's setting.
    ``semi_supervised`` (fraction in (0, 1)): CT only, with round(fraction * n_source) labeled
    training cases. ``fully_labeled``: every training case carries its true labels (the images
    equal those of the dataset without it). ``paired``: target training case i shows the anatomy of
    CT training case i (the same subject in each modality, as AICL's registered modality pairs), and
    the domain table names each training case's ``subject``. ``output_root`` defaults to ``$nnUNet_raw``; the
    dataset appears only when complete, and an existing one is replaced only with ``overwrite``.
    Raises :class:`PhantomOptionsError` for invalid options, before anything is written.
    """
    options = PhantomOptions(dataset_id, name, tuple(shape), n_source, n_target, n_test, seed,
                             partial_labels, pseudo_labels, semi_supervised, fully_labeled, paired)
    root = Path(output_root) if output_root is not None else raw_root()
    final = root / dataset_folder_name(dataset_id, name)
    _check_id_unused(root, dataset_id, final)
    plans = plan_cases(options)
    content = dataset_json(options, plans)
    with atomic_folder(final, overwrite=overwrite) as folder:
        for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs", "labelsTr_reference"):
            (folder / sub).mkdir()
        previews = {}
        for plan in tqdm(plans, desc="phantom cases", unit="case", disable=not progress):
            case = write_case(folder, plan, options)
            if plan.split == "test" and plan.domain not in previews:
                previews[plan.domain] = case
        save_json(content, folder / "dataset.json")
        write_preview(previews, folder / "preview.png")
    return final


def _check_id_unused(root: Path, dataset_id: int, final: Path) -> None:
    """Refuse a dataset id already taken by a dataset of another name (nnU-Net needs unique ids)."""
    others = [p.name for p in root.glob(f"Dataset{int(dataset_id):03d}_*") if p.is_dir() and p != final]
    if others:
        raise PhantomOptionsError(f"dataset id {dataset_id} is already used by {', '.join(sorted(others))} "
                                  f"in {root}; choose another id")
