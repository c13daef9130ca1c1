"""The phantom's domains and their contrast and acquisition model: tissues, per-domain contrast,
acquisition grids, bias field and noise, and the image acquired from a rendered tissue map.

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
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.ndimage import gaussian_filter

from nnunet_uda.intensity import harmonize

# ---------------------------------------------------------------------------------------------
# Domains and geometry
# ---------------------------------------------------------------------------------------------

DOMAIN_MODALITIES: dict[str, str] = {"CT": "CT", "T1": "MR", "T2": "MR"}
"""Domain name -> modality (selects the harmonisation rule). The order fixes the domain indices."""

SOURCE_DOMAIN = "CT"
TARGET_DOMAINS: tuple[str, ...] = ("T1", "T2")

BASE_SPACING_MM = 2.0
"""Isotropic voxel size of the CT grid; ``shape`` is given on this grid."""

DEFAULT_SHAPE: tuple[int, int, int] = (40, 40, 40)

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

# ---------------------------------------------------------------------------------------------
# Image formation
# ---------------------------------------------------------------------------------------------


def acquire(tissue: np.ndarray, axes: Sequence[np.ndarray], grid: AcquisitionGrid, domain: str,
            rng: np.random.Generator, variation: float = 1.0) -> np.ndarray:
    """The harmonised image of ``domain`` from the rendered ``tissue`` map: contrast and texture,
    bias field, partial-volume blur, thick-slice averaging and noise; ``variation`` multiplies the
    per-case jitter of the tissue means."""
    acq, modality = ACQUISITION[domain], DOMAIN_MODALITIES[domain]
    means, textures, gain = case_contrast(domain, rng, variation)
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


def case_contrast(domain: str, rng: np.random.Generator,
                  variation: float = 1.0) -> tuple[np.ndarray, np.ndarray, float]:
    """Per-tissue means and texture levels of one case (indexed by tissue code), and its gain; the
    means' jitter (:data:`CT_JITTER_HU`, :data:`MR_JITTER`) times ``variation``."""
    table = CONTRAST[domain]
    means = np.array([table[t][0] for t in TISSUES], np.float32)
    textures = np.array([table[t][1] for t in TISSUES], np.float32)
    if DOMAIN_MODALITIES[domain] == "CT":
        jitter = rng.normal(0.0, CT_JITTER_HU * variation, size=len(TISSUES)).astype(np.float32)
        jitter[TISSUE["air"]] = 0.0
        return means + jitter, textures, 1.0
    gain = float(rng.uniform(*MR_GAIN_RANGE))
    jitter = rng.normal(1.0, MR_JITTER * variation, size=len(TISSUES)).astype(np.float32)
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
