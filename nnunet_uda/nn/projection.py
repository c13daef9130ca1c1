"""Projection heads: the feature heads of the contrastive methods."""
from __future__ import annotations

import torch
from torch import nn


class ProjectionHead(nn.Module):
    """A per-voxel MLP, linear - ReLU - linear, ``channels`` -> ``hidden`` (default ``channels``) -> ``dim`` (DVCL's
    "feature head", section 3.1): 1x1x1 convolutions applied to feature vectors.

    Takes (N, channels) vectors, e.g. the voxels a loss samples (so the head's cost does not grow with the
    patch), or a (B, channels, *spatial) map.
    """

    def __init__(self, channels: int, dim: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or channels
        self.layers = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.ndim == 2:
            return self.layers(features)
        return self.layers(features.movedim(1, -1)).movedim(-1, 1)
