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
    ``present`` (B, K) bool; ``starts`` (B, K, 3) first voxel of each cuboid in the feature map;
    ``centres`` (B, K, 3) float mean coordinates (NaN where absent). K counts foreground classes."""
    embeddings: torch.Tensor
    present: torch.Tensor
    starts: torch.Tensor
    centres: torch.Tensor


def downsample_probabilities(probs: torch.Tensor, spatial_shape: Sequence[int]) -> torch.Tensor:
    """Ȳ': soft predictions (B, C, *s) averaged over the voxels of each cell of ``spatial_shape``."""
    return F.adaptive_avg_pool3d(probs, tuple(spatial_shape))


def organ_centres(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean coordinate of each foreground class's argmax voxels.

    ``probs`` (B, C, h, w, d) with background in channel 0. Returns centres (B, C - 1, 3), NaN
    where absent, and present (B, C - 1) bool.
    """
    num_classes, spatial = probs.shape[1], probs.shape[2:]
    onehot = F.one_hot(probs.argmax(1), num_classes).movedim(-1, 1)[:, 1:].float()  # (B, K, h, w, d)
    counts = onehot.flatten(2).sum(2)
    coords = torch.stack(torch.meshgrid(*(torch.arange(n, device=probs.device, dtype=torch.float32)
                                          for n in spatial), indexing="ij"))  # (3, h, w, d)
    sums = torch.einsum("bkxyz,axyz->bka", onehot, coords)
    present = counts > 0
    centres = sums / counts.unsqueeze(-1)  # NaN where the class is absent
    return centres, present


def fitted_size(size: Sequence[int], spatial_shape: Sequence[int]) -> tuple[int, ...]:
    """``size`` per axis, reduced to the largest odd size that fits the map where it does not."""
    out = []
    for s, n in zip(size, spatial_shape):
        if s < 1 or s % 2 == 0:
            raise ValueError(f"PGPS cuboid sizes must be odd (ps = 2r + 1, AICL eq. 2), got {tuple(size)}")
        out.append(min(s, n if n % 2 else n - 1))
    return tuple(out)


def cuboid_starts(centres: torch.Tensor, present: torch.Tensor, size: Sequence[int],
                  spatial_shape: Sequence[int]) -> torch.Tensor:
    """First voxel (B, K, 3) of the cuboid of ``size`` centred on the rounded centre (eq. 2),
    shifted to lie inside the map; absent organs get 0."""
    size_t = torch.tensor(size, device=centres.device)
    upper = torch.tensor(spatial_shape, device=centres.device) - size_t
    radius = (size_t - 1) // 2
    rounded = torch.nan_to_num(centres).round().long()
    starts = torch.minimum(torch.clamp(rounded - radius, min=0), upper)
    return torch.where(present.unsqueeze(-1), starts, 0)


def gather_cuboids(features: torch.Tensor, starts: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """F[:, C_m^k] (eq. 3): (B, C, h, w, d) features, (B, K, 3) starts -> (B, K, C, *size)."""
    b, c, h, w, d = features.shape
    k = starts.shape[1]
    offsets = torch.meshgrid(*(torch.arange(s, device=features.device) for s in size), indexing="ij")
    zi, yi, xi = (starts[..., a, None, None, None] + offsets[a] for a in range(3))  # (B, K, *size)
    linear = ((zi * w + yi) * d + xi).reshape(b, 1, -1).expand(b, c, -1)
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
        """``features`` (B, C, h, w, d); ``probs`` (B, K + 1, *s) softmax predictions at any
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
                cuboids = F.adaptive_avg_pool3d(cuboids.flatten(0, 1), common).view(b, len(organs), c, *common)
            embeddings[:, organs] = cuboids
            starts[:, organs] = group_starts
        return OrganPatches(embeddings.flatten(2), present, starts, centres)
