"""The voxel-feature mode of nnUNetv2_uda_embeddings on synthetic tensors: cluster scores, voxel sampling
per class, the projection head read back from a checkpoint, the atomic JSON. The plot: tests/test_cotraining.py."""
import json
import math

import numpy as np
import pytest
import torch

from nnunet_uda.embeddings import (VoxelEmbeddings, central_patch, cluster_scores, load_projection_head,
                                   sample_class_voxels, write_atomically, write_scores)
from nnunet_uda.nn.projection import ProjectionHead


def blobs(separation: float, n: int = 60, seed: int = 0):
    rng = np.random.default_rng(seed)
    centre = np.zeros(8)
    centre[0] = separation
    vectors = np.concatenate([rng.normal(size=(n, 8)) * 0.1 + centre, rng.normal(size=(n, 8)) * 0.1 - centre])
    return vectors, ["liver"] * n + ["spleen"] * n


def test_separated_classes_score_high():
    scores = cluster_scores(*blobs(1.0))
    assert scores["silhouette"] > 0.8 and scores["v_measure"] == pytest.approx(1.0)
    assert 0 < scores["davies_bouldin"] < 0.3


def test_mixed_classes_score_near_zero():
    vectors, _ = blobs(0.0)
    classes = list(np.random.default_rng(1).choice(["liver", "spleen"], len(vectors)))
    scores = cluster_scores(vectors, classes)
    assert abs(scores["silhouette"]) < 0.1 and scores["v_measure"] < 0.1 and scores["davies_bouldin"] > 3


def test_scores_are_nan_without_two_classes():
    vectors, _ = blobs(1.0, n=5)
    assert all(math.isnan(v) for v in cluster_scores(vectors, ["liver"] * 10).values())


def test_voxels_are_sampled_per_class_within_the_bound():
    seg = torch.zeros(1, 6, 7, 8, dtype=torch.long)  # background 328 voxels
    seg[0, :2, :2, :2] = 1  # 8 voxels
    seg[0, 3:, 3:, 3:] = 2  # 60 voxels
    seg[0, 5, :, :] = 3  # ignore (C = 3)
    seg[0, :, 6, :] = -1  # outside the crop, padding
    index, classes = sample_class_voxels(seg, 3, 20, torch.Generator().manual_seed(0))
    flat = seg.flatten()
    assert torch.equal(flat[index], classes)  # every voxel has the class it is listed under
    assert torch.bincount(classes, minlength=3).tolist() == [20, 8, 20]
    assert len(set(index.tolist())) == len(index)  # without replacement
    again, _ = sample_class_voxels(seg, 3, 20, torch.Generator().manual_seed(0))
    other, _ = sample_class_voxels(seg, 3, 20, torch.Generator().manual_seed(1))
    assert torch.equal(index, again) and not torch.equal(index, other)


def test_central_patch_pads_labels_with_fill():
    seg = np.ones((1, 2, 6, 4), dtype=np.int8)
    patch = central_patch(seg, (4, 4, 4), fill=-1)
    assert patch.shape == (1, 4, 4, 4) and (patch[0, 1:3] == 1).all() and (patch[0, [0, 3]] == -1).all()


def test_projection_head_is_read_from_the_checkpoint(tmp_path):
    head = ProjectionHead(6, 4)
    (tmp_path / "fold_0").mkdir()
    for name, trainer, state in (("dvcl.pth", "nnUNetTrainerDVCL", {"head_a": head.state_dict()}),
                                 ("unknown.pth", "SomeoneElsesTrainer", {"head_a": head.state_dict()}),
                                 ("plain.pth", "nnUNetTrainerUDA", {})):
        torch.save({"trainer_name": trainer, "uda_state": state}, tmp_path / "fold_0" / name)
    loaded, stage = load_projection_head(tmp_path, 0, "dvcl.pth")
    x = torch.randn(5, 6)
    assert stage == 0 and not loaded.training and torch.equal(loaded(x), head(x))
    assert load_projection_head(tmp_path, 0, "unknown.pth")[1] == 0
    assert load_projection_head(tmp_path, 0, "plain.pth") is None


def test_json_is_written_whole_or_not_at_all(tmp_path):
    vectors, classes = blobs(1.0, n=20)
    embeddings = VoxelEmbeddings(vectors, classes, ["a"] * 30 + ["b"] * 10)
    write_scores(tmp_path / "e.json", embeddings, {"silhouette": 0.5, "davies_bouldin": math.nan, "v_measure": 1.0})
    assert json.loads((tmp_path / "e.json").read_text()) == {
        "silhouette": 0.5, "davies_bouldin": None, "v_measure": 1.0, "cases": 2,
        "voxels_per_class": {"liver": 20, "spleen": 20}}

    def fail(partial):
        partial.write_text("half")
        raise RuntimeError("disk full")
    with pytest.raises(RuntimeError):
        write_atomically(tmp_path / "e.json", fail)
    assert json.loads((tmp_path / "e.json").read_text())["cases"] == 2  # the earlier file, untouched
    assert [p.name for p in tmp_path.iterdir()] == ["e.json"]
