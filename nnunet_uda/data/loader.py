"""Batch composition: nnU-Net's data loader drawing fixed shares of each batch from case pools."""
from __future__ import annotations

from typing import Sequence

import numpy as np
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
    """

    def __init__(self, data, batch_size: int, patch_size, final_patch_size, label_manager,
                 pools: Sequence[tuple[Sequence[str], int]], **kwargs):
        super().__init__(data, batch_size, patch_size, final_patch_size, label_manager, **kwargs)
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
