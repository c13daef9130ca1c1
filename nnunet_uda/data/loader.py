"""Batch composition: nnU-Net's data loader drawing fixed shares of each batch from case pools, or
drawing modality pairs of one subject cropped and augmented together."""
from __future__ import annotations

import warnings
from typing import Mapping, Sequence

import numpy as np
import torch
from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from threadpoolctl import threadpool_limits

from nnunet_uda.distributed import distributed_world_size


def split_batch(batch_size: int, share: float,
                names: tuple[str, str] = ("first", "second")) -> tuple[int, int]:
    """(samples from the first pool, samples from the second) for a ``share`` of the first. A pool with a positive
    share that gets no sample (a planned batch of 1, or nnU-Net's DDP split leaving a GPU one sample) is an error
    naming the pools (``names``) and the fix."""
    first = int(round(batch_size * share))
    counts = first, batch_size - first
    empty = [name for name, n, wanted in zip(names, counts, (share, 1 - share)) if n == 0 and wanted > 0]
    if empty:
        world = distributed_world_size()
        split = (f"nnU-Net splits the planned batch over the {world} GPUs and gives each about {batch_size}; "
                 if world > 1 else "")
        raise RuntimeError(f"a batch of {batch_size} with a share of {share} for {names[0]} cases holds no "
                           f"{empty[0]} case ({split}plan a batch size of at least 2 per GPU with "
                           f"nnUNetv2_uda_plan_and_preprocess -bs)")
    return counts


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

    ``uniform_crops``: every case cropped at a uniform random position within nnU-Net's bounds, whatever its
    labels (no foreground oversampling, no centring on annotated voxels), so that the patches of labeled and
    unlabeled cases are drawn alike.
    """

    def __init__(self, data, batch_size: int, patch_size, final_patch_size, label_manager,
                 pools: Sequence[tuple[Sequence[str], int]], batch_mirror_axes: Sequence[int] | None = None,
                 uniform_crops: bool = False, **kwargs):
        super().__init__(data, batch_size, patch_size, final_patch_size, label_manager, **kwargs)
        self.batch_mirror_axes = tuple(batch_mirror_axes or ())
        self.uniform_crops = uniform_crops
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

    def get_bbox(self, data_shape, force_fg: bool, class_locations, overwrite_class=None, verbose: bool = False):
        if not self.uniform_crops:
            return super().get_bbox(data_shape, force_fg, class_locations, overwrite_class, verbose)
        need = [max(n, p - s) for n, p, s in zip(self.need_to_pad, self.patch_size, data_shape)]  # nnU-Net's bounds
        lower = [np.random.randint(-n // 2, s + n // 2 + n % 2 - p + 1)
                 for n, p, s in zip(need, self.patch_size, data_shape)]
        return lower, [lo + p for lo, p in zip(lower, self.patch_size)]

    def generate_train_batch(self) -> dict:
        batch = super().generate_train_batch()
        dims = [axis + 2 for axis in self.batch_mirror_axes if np.random.uniform() < 0.5]
        if dims:  # nnU-Net's loader gives tensors, with or without transforms
            batch["data"] = torch.flip(batch["data"], dims)
            targets = batch["target"]
            batch["target"] = ([torch.flip(t, dims) for t in targets] if isinstance(targets, list)
                               else torch.flip(targets, dims))
        return batch


#: a pair whose preprocessed shapes differ by more than this share on an axis is reported once
TWIN_SHAPE_TOLERANCE = 0.1


class TwinBatchDataLoader(nnUNetDataLoader):
    """nnU-Net's loader whose batches hold modality pairs: ``n_pairs = batch_size // 2`` cases drawn
    from ``twins`` (case -> the same subject's case of the other modality), each with its twin,
    cropped at one place and augmented by one draw of nnU-Net's transforms, so the two show one
    anatomy in one frame, as AICL's registered modality pairs (section 2.3). An odd batch size
    leaves one sample in the middle, drawn from ``extra`` cases as nnU-Net would.

    Layout: ``[cases of twins (n_pairs) | extra | their twins (n_pairs)]``; sample i and sample
    ``batch_size - n_pairs + i`` are a pair. The twins come last, where nnU-Net forces foreground:
    the crop is chosen on the twin (its class locations) and taken from both.

    The pair travels through the transforms as one two-channel image with a two-channel label map:
    spatial transforms and mirroring move both alike, intensity transforms draw per channel, as
    nnU-Net does for the channels of one case. Preprocessing resamples both to the plans' spacing;
    they are aligned by the centres of their preprocessed volumes (registered scans of one field of
    view crop alike), and a pair whose shapes differ by more than :data:`TWIN_SHAPE_TOLERANCE` on an
    axis is reported once.
    """

    def __init__(self, data, batch_size: int, patch_size, final_patch_size, label_manager,
                 twins: Mapping[str, str], extra: Sequence[str] = (), **kwargs):
        super().__init__(data, batch_size, patch_size, final_patch_size, label_manager, **kwargs)
        self.twins = dict(twins)
        self.extra = list(extra)
        self.n_pairs = batch_size // 2
        if not self.twins or self.n_pairs == 0:
            raise ValueError(f"twin batches need at least one pair and a batch size of 2 or more "
                             f"(got {len(self.twins)} pairs, batch size {batch_size})")
        if batch_size % 2 and not self.extra:
            raise ValueError(f"batch size {batch_size} is odd: its middle sample needs extra cases")
        missing = (set(self.twins) | set(self.twins.values()) | set(self.extra)) - set(data.identifiers)
        if missing:
            raise ValueError(f"twin batch cases missing from the dataset: {sorted(missing)[:5]}")
        self._reported: set[str] = set()

    def get_indices(self):
        first = list(np.random.choice(list(self.twins), self.n_pairs, replace=True))
        middle = list(np.random.choice(self.extra, self.batch_size - 2 * self.n_pairs)) if self.extra else []
        return first + middle + [self.twins[k] for k in first]

    def generate_train_batch(self) -> dict:
        keys = self.get_indices()
        b, n = self.batch_size, self.n_pairs
        data_all, seg_all = None, None
        with torch.no_grad(), threadpool_limits(limits=1, user_api=None):
            for j in range(b - n):
                if j < n:  # channels: the case's, then its twin's; one label channel each
                    data, seg = self._pair(keys[j], keys[b - n + j], self.get_do_oversample(b - n + j))
                    c = data.shape[0] // 2
                    slots = (slice(0, c), slice(0, 1), j), (slice(c, 2 * c), slice(1, 2), b - n + j)
                else:
                    data, seg = self._single(keys[j], self.get_do_oversample(j))
                    c = data.shape[0]
                    slots = ((slice(None), slice(None), j),)
                if data_all is None:
                    data_all = torch.empty((b, c, *data.shape[1:]), dtype=torch.float32)
                    seg_all = [torch.empty((b, 1, *s.shape[1:]), dtype=s.dtype) for s in seg]
                for channels, label_channel, slot in slots:
                    data_all[slot] = data[channels]
                    for target, s in zip(seg_all, seg):
                        target[slot] = s[label_channel]
        return {"data": data_all, "target": seg_all if len(seg_all) > 1 else seg_all[0], "keys": keys}

    def _pair(self, case: str, twin: str, force_fg: bool):
        """Both cases cropped where the twin's crop falls, as one two-channel sample, transformed."""
        data, seg, _, _ = self._data.load_case(case)
        twin_data, twin_seg, _, properties = self._data.load_case(twin)
        shape, twin_shape = np.array(data.shape[1:]), np.array(twin_data.shape[1:])
        self._check_shapes(case, twin, shape, twin_shape)
        offset = (twin_shape - shape) // 2  # a twin voxel v is voxel v - offset of the case
        bbox = [[lo, hi] for lo, hi in zip(*self.get_bbox(twin_shape, force_fg, properties["class_locations"]))]
        case_bbox = [[lo - o, hi - o] for (lo, hi), o in zip(bbox, offset)]
        image = torch.cat([self._crop_image(data, case_bbox), self._crop_image(twin_data, bbox)])
        labels = torch.cat([self._crop_seg(seg, case_bbox), self._crop_seg(twin_seg, bbox)])
        return self._transform(image, labels)

    def _single(self, case: str, force_fg: bool):
        data, seg, _, properties = self._data.load_case(case)
        bbox = [[lo, hi] for lo, hi in zip(*self.get_bbox(data.shape[1:], force_fg, properties["class_locations"]))]
        return self._transform(self._crop_image(data, bbox), self._crop_seg(seg, bbox))

    @staticmethod
    def _crop_image(data, bbox) -> torch.Tensor:
        return torch.from_numpy(crop_and_pad_nd(data, bbox, 0)).float()

    @staticmethod
    def _crop_seg(seg, bbox) -> torch.Tensor:
        return torch.from_numpy(crop_and_pad_nd(seg, bbox, -1, cast_cropped_to=np.int16)).to(torch.int16)

    def _transform(self, image: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if self.patch_size_was_2d:  # nnU-Net's 2d configuration: the crop is one slice thick (1, y, x)
            image, labels = image[:, 0], labels[:, 0]
        if self.transforms is not None:
            out = self.transforms(image=image, segmentation=labels)
            image, labels = out["image"], out["segmentation"]
        return image, labels if isinstance(labels, list) else [labels]

    def _check_shapes(self, case: str, twin: str, shape: np.ndarray, twin_shape: np.ndarray) -> None:
        if case in self._reported or np.all(np.abs(shape - twin_shape) <= TWIN_SHAPE_TOLERANCE * twin_shape):
            return
        self._reported.add(case)
        warnings.warn(f"twin cases {case} {tuple(shape)} and {twin} {tuple(twin_shape)} differ in preprocessed "
                      f"shape by more than {TWIN_SHAPE_TOLERANCE:.0%}: they are aligned by their centres; register "
                      f"the pair to one field of view for AICL's structural consistency")
