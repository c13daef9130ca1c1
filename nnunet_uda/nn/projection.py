"""Projection heads: the feature heads of the contrastive methods."""
from __future__ import annotations

import torch
from torch import nn


class ProjectionHead(nn.Module):
    """A per-voxel MLP, linear - ReLU - linear, ``channels`` -> ``channels`` -> ``dim`` (DVCL's "feature head",
    section 3.1): 1x1x1 convolutions applied to feature vectors.

    Takes (N, channels) vectors, e.g. the voxels a loss samples (so the head's cost does not grow with the
    patch), or a (B, channels, *spatial) map.
    """

    def __init__(self, channels: int, dim: int):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(channels, channels), nn.ReLU(inplace=True), nn.Linear(channels, dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.ndim == 2:
            return self.layers(features)
        return self.layers(features.movedim(1, -1)).movedim(-1, 1)
