"""Axial slices of 3D volumes for the CycleGAN (FLARE 2024 Task 3, section 3.2: "we first
converted the 3D images into 2D slices by slicing along the Z-axis. At this stage, all 2D slices
were retained without any filtering").

Each volume is harmonised by its modality (:func:`nnunet_uda.intensity.harmonize`, [-1, 1]) and
every axial slice is centre-cropped or centre-padded to one in-plane size, so slices of volumes of
different sizes batch together; padding uses -1, the harmonised range's floor (air in CT, signal
void in MRI), and 0 for attention maps. Source and target slices are drawn independently: the
domains are unpaired.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk
import torch

from nnunet_uda.intensity import harmonize


def fit_slices(volume: np.ndarray, size: tuple[int, int], fill: float) -> np.ndarray:
    """(Z, Y, X) to (Z, H, W): each slice centre-cropped or centre-padded with ``fill``."""
    out = np.full((volume.shape[0], *size), fill, dtype=np.float32)
    src, dst = [], []
    for have, want in zip(volume.shape[1:], size):
        start_src, start_dst = max(0, (have - want) // 2), max(0, (want - have) // 2)
        n = min(have, want)
        src.append(slice(start_src, start_src + n))
        dst.append(slice(start_dst, start_dst + n))
    out[:, dst[0], dst[1]] = volume[:, src[0], src[1]]
    return out


def read_slices(paths: Sequence[Path], modality: str, size: tuple[int, int]) -> torch.Tensor:
    """(N, 1, H, W) harmonised axial slices of every volume in ``paths``."""
    volumes = [fit_slices(harmonize(sitk.GetArrayFromImage(sitk.ReadImage(str(p))), modality), size, -1.0)
               for p in paths]
    return torch.from_numpy(np.concatenate(volumes)).unsqueeze(1)


@dataclass
class UnpairedSlices:
    """Source and target slices, and the source slices' attention maps (or None)."""
    source: torch.Tensor
    target: torch.Tensor
    attention: torch.Tensor | None = None

    def __post_init__(self):
        if self.attention is not None and self.attention.shape != self.source.shape:
            raise ValueError(f"attention maps {tuple(self.attention.shape)} do not match the source slices "
                             f"{tuple(self.source.shape)}: give one map per source volume, in the same order")

    def batch(self, batch_size: int, generator: torch.Generator | None = None):
        """``batch_size`` random source slices (with their attention) and, independently, target slices."""
        s = torch.randint(len(self.source), (batch_size,), generator=generator)
        t = torch.randint(len(self.target), (batch_size,), generator=generator)
        return self.source[s], self.target[t], None if self.attention is None else self.attention[s]
