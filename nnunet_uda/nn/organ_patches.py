"""Pseudo-label guided patch sampling (PGPS, AICL section 2.2.1, eqs. 2-3).

For every sample and organ class k, the soft prediction Y' is downsampled to the resolution of the
feature map F (area averaging, so it stays a probability map, giving Ȳ'), the ROI centre
(h_c, w_c, d_c) is the mean coordinate of the organ's valid voxels of Ȳ'(k), and a cuboid of fixed
size ps = 2r + 1 around it (eq. 2) is cut out of F (eq. 3). Adaptations, stated here:

- "valid voxels of Ȳ'(k)" are read as the voxels whose downsampled soft prediction is largest for
  k (its argmax); an organ with none is absent from that sample and is skipped;
- the centre is rounded to the nearest voxel and the cuboid is shifted, not cropped, where it
  would leave the feature map (clamped at borders), so every cuboid has the full size; a patch
  size larger than the map along an axis is reduced to the largest odd size that fits;
- organ-adaptive sizes (the paper's suggested improvement, section 3.4.3): each organ has its own
  cuboid size, and its cuboid is average-pooled to the common ``patch_size`` (adaptive pooling) so
  patches of all organs stay comparable.

- in nnU-Net's ``2d`` configuration the same on the 2D feature maps: squares around the in-slice
  centre of each organ (the paper is 3D; every function here takes 2D or 3D maps).

Everything is vectorised over samples and organs (one gather per distinct cuboid size).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F


@dataclass
class OrganPatches:
    """``embeddings`` (B, K, D): each organ's feature cuboid, flattened (D = C * prod(patch_size));
    ``present`` (B, K) bool; ``starts`` (B, K, A) first voxel of each cuboid in the feature map;
    ``centres`` (B, K, A) float mean coordinates (NaN where absent). K counts foreground classes, A spatial
    axes (3, or 2 in ``2d``)."""
    embeddings: torch.Tensor
    present: torch.Tensor
    starts: torch.Tensor
    centres: torch.Tensor


def adaptive_average(x: torch.Tensor, spatial_shape: Sequence[int]) -> torch.Tensor:
    """(N, C, *s) 2D or 3D maps average-pooled to ``spatial_shape``."""
    pool = F.adaptive_avg_pool2d if len(spatial_shape) == 2 else F.adaptive_avg_pool3d
    return pool(x, tuple(spatial_shape))


def downsample_probabilities(probs: torch.Tensor, spatial_shape: Sequence[int]) -> torch.Tensor:
    """Ȳ': soft predictions (B, C, *s) averaged over the voxels of each cell of ``spatial_shape``."""
    return adaptive_average(probs, spatial_shape)


def organ_centres(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean coordinate of each foreground class's argmax voxels.

    ``probs`` (B, C, *s) with background in channel 0, s of 3 (or 2) axes. Returns centres (B, C - 1, A),
    NaN where absent, and present (B, C - 1) bool.
    """
    num_classes, spatial = probs.shape[1], probs.shape[2:]
    onehot = F.one_hot(probs.argmax(1), num_classes).movedim(-1, 1)[:, 1:].flatten(2).float()  # (B, K, N)
    counts = onehot.sum(2)
    coords = torch.stack(torch.meshgrid(*(torch.arange(n, device=probs.device, dtype=torch.float32)
                                          for n in spatial), indexing="ij")).flatten(1)  # (A, N)
    sums = torch.einsum("bkn,an->bka", onehot, coords)
    present = counts > 0
    centres = sums / counts.unsqueeze(-1)  # NaN where the class is absent
    return centres, present


def fitted_size(size: Sequence[int], spatial_shape: Sequence[int]) -> tuple[int, ...]:
    """``size`` per axis, reduced to the largest odd size that fits the map where it does not."""
    if len(size) != len(spatial_shape):
        raise ValueError(f"PGPS cuboid size {tuple(size)} has {len(size)} axes, the feature maps "
                         f"{len(spatial_shape)} ({tuple(spatial_shape)}); give one odd size per axis of the "
                         f"configuration's patch")
    out = []
    for s, n in zip(size, spatial_shape):
        if s < 1 or s % 2 == 0:
            raise ValueError(f"PGPS cuboid sizes must be odd (ps = 2r + 1, AICL eq. 2), got {tuple(size)}")
        out.append(min(s, n if n % 2 else n - 1))
    return tuple(out)


def cuboid_starts(centres: torch.Tensor, present: torch.Tensor, size: Sequence[int],
                  spatial_shape: Sequence[int]) -> torch.Tensor:
    """First voxel (B, K, A) of the cuboid of ``size`` centred on the rounded centre (eq. 2),
    shifted to lie inside the map; absent organs get 0."""
    size_t = torch.tensor(size, device=centres.device)
    upper = torch.tensor(spatial_shape, device=centres.device) - size_t
    radius = (size_t - 1) // 2
    rounded = torch.nan_to_num(centres).round().long()
    starts = torch.minimum(torch.clamp(rounded - radius, min=0), upper)
    return torch.where(present.unsqueeze(-1), starts, 0)


def gather_cuboids(features: torch.Tensor, starts: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """F[:, C_m^k] (eq. 3): (B, C, *s) features, (B, K, A) starts -> (B, K, C, *size)."""
    (b, c), spatial = features.shape[:2], features.shape[2:]
    k = starts.shape[1]
    offsets = torch.meshgrid(*(torch.arange(s, device=features.device) for s in size), indexing="ij")
    linear = torch.zeros((), dtype=torch.long, device=features.device)
    for axis, n in enumerate(spatial):  # row-major index of each cuboid voxel, (B, K, *size)
        linear = linear * n + starts[(..., axis) + (None,) * len(size)] + offsets[axis]
    linear = linear.reshape(b, 1, -1).expand(b, c, -1)
    patches = features.flatten(2).gather(2, linear)  # (B, C, K * prod(size))
    return patches.view(b, c, k, *size).transpose(1, 2)


class OrganPatchSampler:
    """PGPS: organ feature cuboids from features and the network's soft predictions.

    ``patch_size``: the cuboid size ps (odd per axis) at the feature resolution.
    ``organ_sizes``: optional per-class sizes (foreground class index -> odd size per axis) for
    organ-adaptive sampling; each such cuboid is average-pooled to ``patch_size``.
    """

    def __init__(self, patch_size: Sequence[int], organ_sizes: Mapping[int, Sequence[int]] | None = None):
        self.patch_size = tuple(int(s) for s in patch_size)
        self.organ_sizes = {int(k): tuple(int(s) for s in v) for k, v in (organ_sizes or {}).items()}

    def __call__(self, features: torch.Tensor, probs: torch.Tensor) -> OrganPatches:
        """``features`` (B, C, *s), 3D or 2D maps; ``probs`` (B, K + 1, *s) softmax predictions at any
        resolution (detached: sampling positions carry no gradient)."""
        spatial = features.shape[2:]
        centres, present = organ_centres(downsample_probabilities(probs.detach().float(), spatial))
        common = fitted_size(self.patch_size, spatial)
        sizes = [fitted_size(self.organ_sizes.get(k + 1, self.patch_size), spatial) for k in range(present.shape[1])]
        starts = torch.zeros_like(centres, dtype=torch.long)
        b, c = features.shape[:2]
        embeddings = features.new_zeros(b, present.shape[1], c, *common)
        for size in dict.fromkeys(sizes):
            organs = [k for k, s in enumerate(sizes) if s == size]
            group_starts = cuboid_starts(centres[:, organs], present[:, organs], size, spatial)
            cuboids = gather_cuboids(features, group_starts, size)
            if size != common:
                cuboids = adaptive_average(cuboids.flatten(0, 1), common).view(b, len(organs), c, *common)
            embeddings[:, organs] = cuboids
            starts[:, organs] = group_starts
        return OrganPatches(embeddings.flatten(2), present, starts, centres)
