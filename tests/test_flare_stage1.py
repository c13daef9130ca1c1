"""The translation-fidelity measure of ``examples/flare_stage1.py`` against a direct computation."""
import math
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from conftest import load_example


def write(array: np.ndarray, path: Path) -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    return path


def test_organ_means_pool_the_voxels_of_every_case_and_mark_absent_structures(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.normal(size=(3, 4, 5)).astype(np.float32) for _ in range(2)]
    labels = [rng.integers(0, 2, size=(3, 4, 5)).astype(np.uint8) for _ in range(2)]
    labels[1][0, 0, :2] = 2  # structure 2 only in the second case
    pairs = [(write(x, tmp_path / f"{i}_0000.nii.gz"), write(y, tmp_path / f"{i}.nii.gz"))
             for i, (x, y) in enumerate(zip(images, labels))]
    means = load_example("flare_stage1").organ_means(pairs, {"background": 0, "liver": 1, "spleen": 2, "aorta": 3})
    image, label = np.concatenate([x.ravel() for x in images]), np.concatenate([y.ravel() for y in labels])
    for name, value in (("background", 0), ("liver", 1), ("spleen", 2)):
        assert math.isclose(means[name], float(image[label == value].mean()), rel_tol=1e-5)
    assert math.isnan(means["aorta"])


def test_fidelity_is_the_mean_absolute_organ_error_without_background():
    real = {"background": 5.0, "liver": 0.5, "spleen": -0.5}
    table = {d: {"real target": real, "plain": {"background": -5.0, "liver": 0.1, "spleen": -0.3}}
             for d in ("T1", "T2")}
    rows = load_example("flare_stage1").fidelity_markdown(table).splitlines()
    assert rows[2] == "| plain | 0.30 | 0.30 |"
