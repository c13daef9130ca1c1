"""Translating 3D volumes slice by slice with a trained generator (FLARE 2024 Task 3, section 3.2:
"we used the trained CycleGAN to translate the CT images into corresponding MRI modalities. These
translated images were then reassembled into 3D volumes based on the original slice information").

The images of a raw dataset are harmonised already (the dataset convention,
:mod:`nnunet_uda.intensity`: CT clipped to [-600, 600], MRI to its 1st-99th percentiles, both to
[-1, 1]), which is the generator's input range. A volume's axial slices go through the generator in
batches, and the stack, in the generator's [-1, 1], is harmonised by the MR rule, so a translated
image lies in the range every MRI of a raw dataset has. The written image copies the source's
geometry (spacing, origin, direction) exactly.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from nnunet_uda.intensity import harmonize

@torch.no_grad()
def translate_volume(generator: torch.nn.Module, volume: np.ndarray, batch_size: int = 16,
                     device: torch.device | str = "cpu") -> np.ndarray:
    """(Z, Y, X) harmonised volume in [-1, 1] to its translation, slice by slice along Z, in
    batches of ``batch_size`` slices; float32 in [-1, 1]. A generator trained on nnU-Net's z-scored
    images (``input_normalization`` "zscore", CISFA's) gets the volume z-scored first."""
    volume = np.asarray(volume, dtype=np.float32)
    if getattr(generator, "input_normalization", "harmonized") == "zscore":
        volume = (volume - volume.mean()) / max(float(volume.std()), 1e-8)
    slices = torch.from_numpy(np.ascontiguousarray(volume)).unsqueeze(1)
    out = [generator(batch.to(device)).cpu() for batch in slices.split(batch_size)]
    return torch.cat(out)[:, 0].numpy()


def translate_image_file(generator: torch.nn.Module, source: Path, destination: Path, batch_size: int = 16,
                         device: torch.device | str = "cpu") -> int:
    """Read ``source`` (a harmonised 3D image), translate it and write ``destination``, harmonised as
    MRI, with the source's geometry; returns the number of slices translated."""
    image = sitk.ReadImage(str(source))
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"{source}: expected a 3D single-channel image, got {image.GetDimension()}D with "
                         f"{image.GetNumberOfComponentsPerPixel()} components")
    volume = sitk.GetArrayFromImage(image)
    translated = sitk.GetImageFromArray(harmonize(translate_volume(generator, volume, batch_size, device), "MR"))
    translated.CopyInformation(image)
    sitk.WriteImage(translated, str(destination))
    return volume.shape[0]
