"""Axial slices of 3D volumes for the CycleGAN (FLARE 2024 Task 3, section 3.2: "we first
converted the 3D images into 2D slices by slicing along the Z-axis. At this stage, all 2D slices
were retained without any filtering").

The images of a raw dataset are harmonised already (the dataset convention,
:mod:`nnunet_uda.intensity`: [-1, 1] by each image's modality), the generators' range, and every
axial slice is centre-cropped or centre-padded to one in-plane size, so slices of volumes of
different sizes batch together; padding uses -1, the harmonised range's floor (air in CT, signal
void in MRI), and 0 for attention maps. Source and target slices are drawn independently: the
domains are unpaired.

With ``cache`` the slices are written to a file volume by volume and memory-mapped, so a training
set of thousands of volumes (FLARE's CT) needs one volume's memory, not the whole set's; the
operating system keeps the slices that batches draw in its page cache.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import SimpleITK as sitk
import torch


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


def stack_slices(volumes: Iterable[np.ndarray], size: tuple[int, int], dtype=np.float32,
                 cache: Path | None = None) -> torch.Tensor:
    """(N, 1, H, W) tensor of the (Z, H, W) fitted volumes, in memory, or with ``cache`` written to
    that file one volume at a time and memory-mapped."""
    if cache is None:
        return torch.from_numpy(np.concatenate([v.astype(dtype) for v in volumes])).unsqueeze(1)
    n = 0
    with open(cache, "wb") as f:
        for volume in volumes:
            f.write(np.ascontiguousarray(volume, dtype).tobytes())
            n += len(volume)
    return torch.from_numpy(np.memmap(cache, dtype, "r+", shape=(n, 1, *size)))


def read_slices(paths: Sequence[Path], size: tuple[int, int], fill: float = -1.0, dtype=np.float32,
                cache: Path | None = None) -> torch.Tensor:
    """(N, 1, H, W) axial slices of every volume in ``paths`` (harmonised images, padded with -1;
    label maps with ``fill`` 0 and an integer ``dtype``), in memory or memory-mapped from ``cache``."""
    volumes = (fit_slices(sitk.GetArrayFromImage(sitk.ReadImage(str(p))).astype(np.float32), size, fill)
               for p in paths)
    return stack_slices(volumes, size, dtype, cache)


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


@dataclass
class CycleGANCases:
    """Which cases of a UDA raw dataset a translation model trains on: the labeled source-domain
    training cases, and up to ``n_target`` randomly chosen training cases of one target domain (the
    paper trains one model per MRI sequence from 50 of its cases)."""
    source: list[str]
    target: list[str]
    source_modality: str
    target_modality: str

    @classmethod
    def choose(cls, table, target_domain: str, n_target: int | None = 50, seed: int = 0) -> "CycleGANCases":
        if target_domain not in table.domains:
            raise ValueError(f"target domain {target_domain!r} is not in the domain table; its domains are "
                             f"{', '.join(table.domains)}")
        if target_domain in table.source:
            raise ValueError(f"{target_domain!r} is a source domain; translate into one of the targets "
                             f"({', '.join(table.target)})")
        source = [c for c in table.cases_of(table.source) if table.entry(c).labels == "ground_truth"]
        target = table.cases_of([target_domain])
        if not source or not target:
            raise ValueError(f"need labeled source training cases and {target_domain} training cases; the domain "
                             f"table has {len(source)} and {len(target)}")
        modalities = {table.domains[table.domain_of(c)].modality for c in source}
        if len(modalities) != 1:
            raise ValueError(f"the labeled source cases mix modalities {sorted(modalities)}; one translation model "
                             f"maps one modality into another")
        if n_target is not None and n_target < len(target):
            chosen = np.random.default_rng(seed).choice(len(target), n_target, replace=False)
            target = [target[i] for i in sorted(chosen)]
        return cls(source, target, modalities.pop(), table.domains[target_domain].modality)


def image_size(path: Path) -> tuple[int, ...]:
    """An image's size (X, Y, Z), read from its header only."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return reader.GetSize()


def slice_size_of(paths: Sequence[Path]) -> tuple[int, int]:
    """The largest in-plane size (Y, X) among the images."""
    sizes = [image_size(p)[:2] for p in paths]
    return max(y for _, y in sizes), max(x for x, _ in sizes)


def read_attention(probability_files: Sequence[Sequence[Path]], size: tuple[int, int],
                   cache: Path | None = None) -> torch.Tensor:
    """(N, 1, H, W) organ attention A = 1 - p_background (eqs. 4-5) of every axial slice, per case
    from nnU-Net's exported softmax probabilities of one or more folds (``<case>.npz``, key
    ``probabilities``, (C, Z, Y, X)), averaged over the folds; in memory or memory-mapped from ``cache``."""
    maps = (fit_slices(1.0 - np.mean([np.load(p)["probabilities"][0] for p in files], 0), size, 0.0)
            for files in probability_files)
    return stack_slices(maps, size, np.float32, cache)
