"""Batch composition: nnU-Net's data loader drawing fixed shares of each batch from case pools."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader


def split_batch(batch_size: int, share: float) -> tuple[int, int]:
    """(samples from the first pool, samples from the second) for a ``share`` of the first."""
    first = int(round(batch_size * share))
    return first, batch_size - first


class MixedBatchDataLoader(nnUNetDataLoader):
    """nnU-Net's loader whose every batch takes ``count`` samples from each ``(case_ids, count)`` pool.

    Pools are drawn in order with replacement, so the last pool fills the end of the batch, where
    nnU-Net forces foreground patches (``oversample_foreground_percent``): put labeled cases last.
    Everything else (cropping, padding, foreground oversampling, augmentation) is nnU-Net's.

    ``batch_mirror_axes``: mirror the whole batch (images and every deep-supervision target) along
    each of these spatial axes with probability 0.5, one draw per batch, in place of nnU-Net's
    per-sample mirroring (leave it out of the transforms). Losses that compare the spatial maps of
    different samples (AICL's l_csc) then see them in one orientation; each sample is still mirrored
    with nnU-Net's probabilities.
    """

    def __init__(self, data, batch_size: int, patch_size, final_patch_size, label_manager,
                 pools: Sequence[tuple[Sequence[str], int]], batch_mirror_axes: Sequence[int] | None = None,
                 **kwargs):
        super().__init__(data, batch_size, patch_size, final_patch_size, label_manager, **kwargs)
        self.batch_mirror_axes = tuple(batch_mirror_axes or ())
        pools = [(list(ids), int(n)) for ids, n in pools if n > 0]
        if sum(n for _, n in pools) != batch_size:
            raise ValueError(f"the pools give {sum(n for _, n in pools)} samples, the batch size is {batch_size}")
        for ids, n in pools:
            if not ids:
                raise ValueError(f"a pool asked for {n} samples per batch has no cases")
            missing = set(ids) - set(data.identifiers)
            if missing:
                raise ValueError(f"pool cases missing from the dataset: {sorted(missing)[:5]}")
        self.pools = pools

    def get_indices(self):
        return [key for ids, n in self.pools for key in np.random.choice(ids, n, replace=True)]

    def generate_train_batch(self) -> dict:
        batch = super().generate_train_batch()
        dims = [axis + 2 for axis in self.batch_mirror_axes if np.random.uniform() < 0.5]
        if dims:  # nnU-Net's loader gives tensors, with or without transforms
            batch["data"] = torch.flip(batch["data"], dims)
            targets = batch["target"]
            batch["target"] = ([torch.flip(t, dims) for t in targets] if isinstance(targets, list)
                               else torch.flip(targets, dims))
        return batch
