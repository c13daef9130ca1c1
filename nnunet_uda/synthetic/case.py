"""One phantom case: its anatomy drawn, rendered on its domain's acquisition grid and imaged.

Every case is drawn from its own random generator, seeded from (seed, domain, index, split), so
a case's image never depends on the options or on the generation order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from nnunet_uda.synthetic.acquisition import (BASE_SPACING_MM, DEFAULT_SHAPE, DOMAIN_MODALITIES, acquire,
                                              acquisition_grid)
from nnunet_uda.synthetic.anatomy import ANATOMY, Structure, render, sample_anatomy

SPLITS = ("train", "test")


@dataclass(frozen=True)
class PhantomCase:
    """A generated case: harmonised float32 image and uint8 true labels (z, y, x; values of
    :data:`~nnunet_uda.synthetic.anatomy.LABELS`), spacing and origin in mm (z, y, x)."""
    image: np.ndarray
    label: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]


def case_rng(seed: int, domain: str, index: int, split: str, stream: int = 0) -> np.random.Generator:
    """The random generator of one case, independent of every other case and of the options;
    ``stream`` 1 perturbs its pseudo labels without touching its image."""
    return np.random.default_rng([seed, list(DOMAIN_MODALITIES).index(domain), index,
                                  SPLITS.index(split), stream])


def synthesize_case(seed: int, domain: str, index: int, split: str,
                    shape: Sequence[int] = DEFAULT_SHAPE, anatomy_of: str | None = None,
                    structures: Sequence[Structure] = ANATOMY, variation: float = 1.0) -> PhantomCase:
    """Generate one case of ``domain`` on its acquisition grid for the CT ``shape``. ``anatomy_of``:
    the domain whose case of the same index and split lends its anatomy (one subject scanned in two
    modalities, the body in the same place); the acquisition stays this case's own. ``structures``:
    the painted anatomy (e.g. :func:`~nnunet_uda.synthetic.anatomy.scaled_anatomy`); ``variation``: the
    case-to-case variation of anatomy and contrast (:func:`~nnunet_uda.synthetic.anatomy.sample_anatomy`)."""
    rng = case_rng(seed, domain, index, split)
    anatomy = sample_anatomy(rng if anatomy_of is None else case_rng(seed, anatomy_of, index, split), structures,
                             variation)
    grid = acquisition_grid(domain, shape)
    axes = normalized_axes(grid.render_shape, grid.render_spacing, shape)
    label, tissue = render(anatomy, axes, structures)
    image = acquire(tissue, axes, grid, domain, rng, variation)
    centre = grid.sub_samples // 2
    return PhantomCase(image, label[centre::grid.sub_samples], grid.spacing, grid.origin)


def normalized_axes(grid_shape: Sequence[int], spacing: Sequence[float],
                    reference_shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel-centre positions along z, y and x, normalised so that the CT field of view of
    ``reference_shape`` spans [-1, 1] on every axis."""
    return tuple(((np.arange(n) - (n - 1) / 2) * s / (r * BASE_SPACING_MM / 2)).astype(np.float32)
                 for n, s, r in zip(grid_shape, spacing, reference_shape))
