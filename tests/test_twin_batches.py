"""TwinBatchDataLoader: a subject's two modalities cropped at one place and augmented by one draw of
nnU-Net's transforms. In-memory cases in nnU-Net's preprocessed layout (channels first, class
locations as nnU-Net's preprocessing stores them) drive nnU-Net's own loader code."""
import numpy as np
import pytest
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.label_handling.label_handling import LabelManager

from nnunet_uda.data.loader import TwinBatchDataLoader

LABELS = LabelManager({"background": 0, "organ": 1, "other": 2}, None)
PATCH = (8, 8, 8)


class Cases:
    """Preprocessed cases held in memory: ``load_case`` as nnU-Net's datasets give it."""

    def __init__(self, cases: dict):
        self.cases = cases
        self.identifiers = list(cases)

    def load_case(self, key):
        data, seg = self.cases[key]
        locations = {c: np.argwhere(seg == c) for c in (1, 2)}
        return data, seg, None, {"class_locations": locations}


def blobs(shape, offset, seed):
    """A random label map of two organs and an image that shows it, placed at ``offset`` in ``shape``."""
    rng = np.random.default_rng(seed)
    seg = np.zeros((1, *shape), dtype=np.int16)
    inner = rng.integers(0, 3, size=(10, 10, 10))
    z, y, x = offset
    seg[0, z:z + 10, y:y + 10, x:x + 10] = inner
    return (seg * 100.0 + rng.normal(0, 1, seg.shape)).astype(np.float32), seg


def test_a_pair_is_cropped_at_one_place_of_their_centred_volumes():
    """The case is 12^3, its twin 16^3 with the same anatomy 2 voxels further in: every crop shows
    both at the same place, wherever the forced-foreground crop of the twin falls."""
    data, seg = blobs((12, 12, 12), (1, 1, 1), 0)
    twin = blobs((16, 16, 16), (3, 3, 3), 0)
    loader = TwinBatchDataLoader(Cases({"t1": (data, seg), "ct": twin}), 2, PATCH, PATCH, LABELS, {"t1": "ct"},
                                 oversample_foreground_percent=1.0)
    with pytest.warns(UserWarning, match="differ in preprocessed shape"):
        batches = [loader.generate_train_batch() for _ in range(20)]
    for batch in batches:
        assert batch["keys"] == ["t1", "ct"] and batch["data"].shape == (2, 1, *PATCH)
        inside = batch["target"][0] >= 0  # -1: outside the smaller volume (nnU-Net's padding)
        assert torch.equal(batch["target"][0][inside], batch["target"][1][inside]) and (batch["target"] > 0).any()
        assert torch.allclose(batch["data"][0][inside], batch["data"][1][inside], atol=10)  # other noise only
    assert len({tuple(np.asarray(b["data"][1]).ravel()[:50]) for b in batches}) > 5  # the crops move


def test_2d_patches_are_one_slice_of_the_pair():
    """nnU-Net's 2d configuration (a 2D patch size): each pair is one axial slice, the same in both volumes."""
    data, seg = blobs((12, 12, 12), (1, 1, 1), 3)
    cases = Cases({"t1": (data, seg), "ct": (data.copy(), seg.copy()), "ct2": blobs((12, 12, 12), (1, 1, 1), 4)})
    loader = TwinBatchDataLoader(cases, 3, (8, 8), (8, 8), LABELS, {"t1": "ct"}, extra=["ct2"],
                                 oversample_foreground_percent=1.0)
    for _ in range(5):
        batch = loader.generate_train_batch()
        assert batch["data"].shape == (3, 1, 8, 8) and batch["target"].shape == (3, 1, 8, 8)
        assert torch.equal(batch["data"][0], batch["data"][2]) and (batch["target"][0] > 0).any()


def test_nnunet_training_transforms_move_both_alike():
    """nnU-Net's training transforms (rotation, scaling, elastic-free spatial transform, mirroring,
    deep supervision) on a pair of identical anatomies: the two label maps stay identical at every
    scale, while the intensity augmentations are drawn per modality."""
    data, seg = blobs((12, 12, 12), (1, 1, 1), 1)
    cases = Cases({"t1": (data, seg), "ct": (data.copy(), seg.copy()), "ct2": blobs((12, 12, 12), (1, 1, 1), 2)})
    transforms = nnUNetTrainer.get_training_transforms(
        PATCH, (-0.5, 0.5), [[1, 1, 1], [0.5, 0.5, 0.5]], (0, 1, 2), False, [False], False, (1, 2), None, None)
    loader = TwinBatchDataLoader(cases, 3, (12, 12, 12), PATCH, LABELS, {"t1": "ct"}, extra=["ct2"],
                                 oversample_foreground_percent=0.33, transforms=transforms)
    np.random.seed(0)
    torch.manual_seed(0)
    differing = 0
    for _ in range(10):
        batch = loader.generate_train_batch()
        assert batch["keys"] == ["t1", "ct2", "ct"]
        assert [t.shape for t in batch["target"]] == [(3, 1, 8, 8, 8), (3, 1, 4, 4, 4)]
        for target in batch["target"]:
            assert torch.equal(target[0], target[2])
        differing += not torch.equal(batch["data"][0], batch["data"][2])
    assert differing >= 5


def test_bad_twin_batches_are_refused():
    cases = Cases({"t1": blobs((12, 12, 12), (1, 1, 1), 0), "ct": blobs((12, 12, 12), (1, 1, 1), 0)})
    with pytest.raises(ValueError, match="at least one pair"):
        TwinBatchDataLoader(cases, 2, PATCH, PATCH, LABELS, {})
    with pytest.raises(ValueError, match="odd"):
        TwinBatchDataLoader(cases, 3, PATCH, PATCH, LABELS, {"t1": "ct"})
    with pytest.raises(ValueError, match="missing from the dataset: \\['mr'\\]"):
        TwinBatchDataLoader(cases, 2, PATCH, PATCH, LABELS, {"mr": "ct"})
