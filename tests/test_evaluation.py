"""Tests of nnunet_uda.evaluation (metrics against DeepMind's surface_distance and medpy, folder reports)
and nnUNetv2_uda_evaluate."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import surface_distance
from medpy.metric import binary
from scipy import ndimage

from nnunet_uda.evaluation.metrics import case_metrics, organ_metrics, physical_diagonal, surface
from nnunet_uda.evaluation import EvaluationError
from nnunet_uda.evaluation.report import evaluate_folder, format_markdown, resolve_tolerances

REPO = Path(__file__).resolve().parents[1]
SHAPE = (20, 24, 28)
SPACING = (2.5, 0.8, 1.2)  # numpy z, y, x; deliberately anisotropic
SITK_SPACING = SPACING[::-1]  # SimpleITK x, y, z


def blob(seed: int, fraction: float, shape=SHAPE) -> np.ndarray:
    """A random smooth blob covering about ``fraction`` of the image."""
    noise = ndimage.gaussian_filter(np.random.default_rng(seed).standard_normal(shape), 2.0)
    return noise > np.quantile(noise, 1.0 - fraction)


def reference_metrics(reference: np.ndarray, prediction: np.ndarray, spacing, tolerance_mm: float) -> dict:
    """NSD by DeepMind's surface_distance, HD95 and ASSD by medpy, of two non-empty masks."""
    distances = surface_distance.compute_surface_distances(reference, prediction, spacing)
    return {"nsd": surface_distance.compute_surface_dice_at_tolerance(distances, tolerance_mm),
            "hd95": binary.hd95(prediction, reference, voxelspacing=spacing),
            "assd": binary.assd(prediction, reference, voxelspacing=spacing)}


def assert_matches_references(reference, prediction, spacing, tolerance_mm):
    ours = organ_metrics(reference, prediction, spacing, tolerance_mm)
    theirs = reference_metrics(reference, prediction, spacing, tolerance_mm)
    for name, value in theirs.items():
        assert ours[name] == pytest.approx(value, rel=0, abs=1e-6), name
    return ours


# ---------------------------------------------------------------------------------------- metrics
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("shape, spacing", [(SHAPE, SPACING), ((12, 30, 26), (3.0, 0.8, 0.8)),
                                            ((16, 16, 16), (1.0, 1.0, 1.0))])
def test_random_masks_match_the_references(seed, shape, spacing):
    reference = blob(seed, 0.15, shape)
    prediction = blob(seed + 100, 0.15, shape) if seed % 2 else reference ^ (
        np.random.default_rng(seed).random(shape) < 0.03)
    # 3 x 0.8 mm is 2.4000000000000004 in float64: outside a 2.4 mm tolerance, as in DeepMind's code
    for tolerance_mm in (1.0, 2.0, 2.4, 3.0):
        ours = assert_matches_references(reference, prediction, spacing, tolerance_mm)
    assert 0 < ours["nsd"] < 1


def test_dice_matches_numpy_formula():
    reference, prediction = blob(1, 0.2), blob(2, 0.3)
    expected = 2 * np.sum(reference & prediction) / (np.sum(reference) + np.sum(prediction))
    assert organ_metrics(reference, prediction, SPACING, 2.0)["dice"] == pytest.approx(expected, rel=1e-12)


def test_masks_touching_the_border_match_the_references():
    reference, prediction = blob(3, 0.6), blob(4, 0.6)  # large blobs: many voxels on the image border
    for mask in (reference, prediction):
        assert mask[0].any() and mask[-1].any() and mask[:, :, 0].any()
    assert_matches_references(reference, prediction, SPACING, 2.0)
    full = np.ones(SHAPE, bool)
    shifted = np.zeros(SHAPE, bool)
    shifted[2:] = True
    assert_matches_references(full, shifted, SPACING, 2.0)


def test_one_voxel_organs_match_the_references():
    reference = np.zeros((3, 3, 3), bool)
    reference[1, 1, 1] = True  # one voxel in a 3^3 image; the prediction fills it
    assert_matches_references(reference, np.ones((3, 3, 3), bool), (3.0, 0.8, 0.8), 2.0)
    prediction = np.zeros(SHAPE, bool)
    prediction[0, 0, 0] = True  # one voxel in the image corner
    assert_matches_references(blob(9, 0.05), prediction, SPACING, 3.0)


def test_2d_masks_match_deepminds_nsd():
    reference, prediction = blob(10, 0.2, (30, 40)), blob(11, 0.2, (30, 40))
    for tolerance_mm in (1.0, 2.0):
        distances = surface_distance.compute_surface_distances(reference, prediction, (0.7, 1.9))
        assert organ_metrics(reference, prediction, (0.7, 1.9), tolerance_mm)["nsd"] == pytest.approx(
            surface_distance.compute_surface_dice_at_tolerance(distances, tolerance_mm), abs=1e-6)


def test_border_voxels_are_surface():
    cube = np.ones((3, 3, 3), bool)
    expected = cube.copy()
    expected[1, 1, 1] = False  # only the centre has all six face neighbours inside
    np.testing.assert_array_equal(surface(cube), expected)


def test_surface_uses_face_connectivity():
    mask = np.zeros((5, 5, 5), bool)
    mask[1:4, 1:4, 1:4] = True
    assert surface(mask).sum() == 26  # the 3x3x3 cube minus its centre
    assert not surface(mask)[2, 2, 2]


def test_identical_masks_are_perfect():
    mask = blob(5, 0.2)
    assert organ_metrics(mask, mask, SPACING, 0.0) == {"dice": 1.0, "nsd": 1.0, "hd95": 0.0, "assd": 0.0}


def test_both_empty():
    empty = np.zeros(SHAPE, bool)
    assert organ_metrics(empty, empty, SPACING, 2.0) == {"dice": 1.0, "nsd": 1.0, "hd95": 0.0, "assd": 0.0}


@pytest.mark.parametrize("empty_side", ["reference", "prediction"])
def test_one_empty_gives_the_diagonal(empty_side):
    mask, empty = blob(6, 0.1), np.zeros(SHAPE, bool)
    pair = (empty, mask) if empty_side == "reference" else (mask, empty)
    diagonal = np.sqrt((20 * 2.5) ** 2 + (24 * 0.8) ** 2 + (28 * 1.2) ** 2)
    assert physical_diagonal(SHAPE, SPACING) == pytest.approx(diagonal)
    assert organ_metrics(*pair, SPACING, 2.0) == pytest.approx(
        {"dice": 0.0, "nsd": 0.0, "hd95": diagonal, "assd": diagonal})


def test_single_voxel_masks():
    reference, prediction = np.zeros(SHAPE, bool), np.zeros(SHAPE, bool)
    reference[5, 5, 5] = True
    prediction[5, 7, 5] = True  # two voxels apart along y: 1.6 mm between centres
    # a voxel's surfels are its 8 corners: 4 of each lie one voxel (0.8 mm) from the other's, 4 two (1.6 mm)
    strict = assert_matches_references(reference, prediction, SPACING, 1.0)
    assert strict == pytest.approx({"dice": 0.0, "nsd": 0.5, "hd95": 1.6, "assd": 1.6})
    assert assert_matches_references(reference, prediction, SPACING, 1.6)["nsd"] == 1.0
    assert organ_metrics(reference, reference, SPACING, 0.0) == {"dice": 1.0, "nsd": 1.0, "hd95": 0.0, "assd": 0.0}


def test_hd95_and_assd_conventions_by_hand():
    """Two slabs 1 voxel apart along y: every surface distance is known."""
    reference, prediction = np.zeros((4, 6, 4), bool), np.zeros((4, 6, 4), bool)
    reference[:, :2] = True  # all its voxels touch the image border or the prediction side: all surface
    prediction[:, 2:3] = True
    result = organ_metrics(reference, prediction, (1.0, 1.0, 1.0), 1.0)
    # prediction -> reference: 1 mm for all 16 voxels; reference -> prediction: 1 mm (y=1), 2 mm (y=0)
    assert result["hd95"] == pytest.approx(2.0)  # the 95th percentile of the 48 distances pooled
    assert result["assd"] == pytest.approx((16 * 1 + 16 * 1 + 16 * 2) / 48)  # their mean
    assert_matches_references(reference, prediction, (1.0, 1.0, 1.0), 1.0)


def test_case_metrics_excludes_the_ignore_label():
    reference = np.zeros(SHAPE, np.uint8)
    reference[blob(7, 0.2)] = 1
    reference[blob(8, 0.2) & (reference == 0)] = 2
    reference[:, :, :5] = 3  # ignore
    prediction = reference.copy()
    prediction[:, :, :5] = 1  # wrong only where the reference is ignored
    result = case_metrics(reference, prediction, SPACING, {"liver": 1, "spleen": 2},
                          {"liver": 2.0, "spleen": 2.0}, ignore_label=3)
    perfect = {"dice": 1.0, "nsd": 1.0, "hd95": 0.0, "assd": 0.0}
    assert result == {"liver": perfect, "spleen": perfect}
    unmasked = case_metrics(reference, prediction, SPACING, {"liver": 1}, {"liver": 2.0})
    assert unmasked["liver"]["dice"] < 1


def test_invalid_inputs():
    mask = np.zeros(SHAPE, bool)
    with pytest.raises(ValueError, match="shape"):
        organ_metrics(mask, mask[1:], SPACING, 2.0)
    with pytest.raises(ValueError, match="spacing"):
        organ_metrics(mask, mask, (1.0, 1.0), 2.0)
    with pytest.raises(ValueError, match="tolerance"):
        organ_metrics(mask, mask, SPACING, -1.0)


# ---------------------------------------------------------------------------------------- folders
LABELS = {"background": 0, "liver": 1, "spleen": 2}
CASES = {"case_000": "CT", "case_001": "CT", "case_100": "T1", "case_900": None}


def dataset_json(**uda_extra) -> dict:
    return {"channel_names": {"0": "image"}, "labels": dict(LABELS), "numTraining": 2, "file_ending": ".nii.gz",
            "uda": {"domains": {"CT": {"modality": "CT"}, "T1": {"modality": "MR"}}, "target": ["T1"],
                    "cases": {"case_000": {"domain": "CT", "labels": "ground_truth"},
                              "case_001": {"domain": "CT", "labels": "ground_truth"}},
                    "test_cases": {"case_100": {"domain": "T1"}}, **uda_extra}}


def label_map(seed: int) -> np.ndarray:
    labels = np.zeros(SHAPE, np.uint8)
    labels[blob(seed, 0.15)] = 1
    labels[blob(seed + 50, 0.1) & (labels == 0)] = 2
    return labels


def write_labels(path: Path, labels: np.ndarray, spacing=SPACING) -> None:
    """A label file with ``spacing`` given in numpy's z, y, x order."""
    image = sitk.GetImageFromArray(labels)
    image.SetSpacing(spacing[::-1])
    sitk.WriteImage(image, str(path))


@pytest.fixture()
def folders(tmp_path):
    """labelsTs and predictions folders; each prediction is its reference, perturbed."""
    reference_folder, prediction_folder = tmp_path / "labelsTs", tmp_path / "predictions"
    reference_folder.mkdir()
    prediction_folder.mkdir()
    for index, case in enumerate(CASES):
        reference = label_map(index)
        prediction = reference.copy()
        prediction[np.random.default_rng(index).random(SHAPE) < 0.02 * (index + 1)] = 0
        write_labels(reference_folder / f"{case}.nii.gz", reference)
        write_labels(prediction_folder / f"{case}.nii.gz", prediction)
    return reference_folder, prediction_folder


def test_evaluate_folder(folders, tmp_path):
    reference_folder, prediction_folder = folders
    summary = evaluate_folder(reference_folder, prediction_folder, dataset_json(), tmp_path / "out",
                              num_processes=1)
    assert [c["case"] for c in summary["cases"]] == list(CASES)
    assert [c["domain"] for c in summary["cases"]] == ["CT", "CT", "T1", "all"]
    assert list(summary["mean"]) == ["CT", "T1", "all"]
    assert summary["tolerances_mm"] == {"liver": 2.0, "spleen": 2.0}

    # spacing is read from the image (NIfTI stores it in float32) and reordered to numpy's z, y, x
    reference_image = sitk.ReadImage(str(reference_folder / "case_001.nii.gz"))
    spacing = reference_image.GetSpacing()[::-1]
    assert spacing == pytest.approx(SPACING)
    reference = sitk.GetArrayFromImage(reference_image)
    prediction = sitk.GetArrayFromImage(sitk.ReadImage(str(prediction_folder / "case_001.nii.gz")))
    expected = case_metrics(reference, prediction, spacing, {"liver": 1, "spleen": 2},
                            {"liver": 2.0, "spleen": 2.0})
    assert summary["cases"][1]["metrics"] == expected

    ct = [c["metrics"] for c in summary["cases"][:2]]
    for organ in ("liver", "spleen"):
        for metric in ("dice", "nsd", "hd95", "assd"):
            assert summary["mean"]["CT"][organ][metric] == pytest.approx(np.mean([m[organ][metric] for m in ct]))
    assert summary["mean"]["CT"]["average"]["dice"] == pytest.approx(
        np.mean([summary["mean"]["CT"][o]["dice"] for o in ("liver", "spleen")]))
    assert summary["mean"]["T1"]["liver"] == summary["cases"][2]["metrics"]["liver"]

    written = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert written == json.loads(json.dumps(summary))
    assert (tmp_path / "out" / "summary.md").read_text() == format_markdown(summary)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["summary.json", "summary.md"]


def test_markdown_tables(folders):
    summary = evaluate_folder(*folders, dataset_json(), num_processes=1)
    text = format_markdown(summary)
    assert "### CT (2 cases)" in text and "### T1 (1 case)" in text and "### all (1 case)" in text
    assert text.count("| organ | Dice | NSD@2 mm | HD95 (mm) | ASSD (mm) |") == 3
    liver = summary["mean"]["T1"]["liver"]
    assert (f"| liver | {liver['dice']:.4f} | {liver['nsd']:.4f} | {liver['hd95']:.2f} | "
            f"{liver['assd']:.2f} |") in text
    assert text.count("| average |") == 3

    summary["tolerances_mm"]["spleen"] = 3.0
    assert "| spleen (tol 3 mm) |" in format_markdown(summary)


def test_domain_all_without_domain_table(folders):
    plain = dataset_json()
    del plain["uda"]
    summary = evaluate_folder(*folders, plain, num_processes=1)
    assert list(summary["mean"]) == ["all"]


def test_tolerance_precedence():
    organs = {"liver": 1, "spleen": 2}
    assert resolve_tolerances(dataset_json(), organs, None) == {"liver": 2.0, "spleen": 2.0}
    with_dataset = dataset_json(nsd_tolerance_mm={"liver": 3.0})
    assert resolve_tolerances(with_dataset, organs, {"spleen": 1.0}) == {"liver": 3.0, "spleen": 1.0}
    assert resolve_tolerances(with_dataset, organs, {"liver": 1.5}) == {"liver": 1.5, "spleen": 2.0}
    with pytest.raises(EvaluationError, match="kidney"):
        resolve_tolerances(dataset_json(), organs, {"kidney": 1.0})


def test_missing_prediction_is_an_error(folders):
    reference_folder, prediction_folder = folders
    (prediction_folder / "case_100.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match="case_100.nii.gz") as error:
        evaluate_folder(reference_folder, prediction_folder, dataset_json(), num_processes=1)
    assert str(prediction_folder) in str(error.value)


def test_extra_prediction_is_skipped_with_a_warning(folders):
    reference_folder, prediction_folder = folders
    write_labels(prediction_folder / "case_999.nii.gz", label_map(9))
    with pytest.warns(UserWarning, match="case_999"):
        summary = evaluate_folder(reference_folder, prediction_folder, dataset_json(), num_processes=1)
    assert len(summary["cases"]) == len(CASES)


def test_shape_mismatch_names_the_case(folders):
    reference_folder, prediction_folder = folders
    write_labels(prediction_folder / "case_001.nii.gz", label_map(1)[1:])
    with pytest.raises(EvaluationError, match="case_001"):
        evaluate_folder(reference_folder, prediction_folder, dataset_json(), num_processes=1)


def test_label_maps_stored_as_floats(folders):
    reference_folder, prediction_folder = folders
    expected = evaluate_folder(reference_folder, prediction_folder, dataset_json(), num_processes=1)
    write_labels(reference_folder / "case_001.nii.gz", label_map(1).astype(np.float32))
    assert evaluate_folder(reference_folder, prediction_folder, dataset_json(), num_processes=1) == expected


@pytest.mark.parametrize("side", ["prediction", "reference"])
def test_undeclared_label_values_name_the_file(folders, side):
    reference_folder, prediction_folder = folders
    path = (prediction_folder if side == "prediction" else reference_folder) / "case_001.nii.gz"
    labels = label_map(1)
    labels[0, 0, :3] = 9  # dataset.json declares 0, 1, 2
    write_labels(path, labels)
    with pytest.raises(EvaluationError) as error:
        evaluate_folder(reference_folder, prediction_folder, dataset_json(), num_processes=1)
    assert f"case case_001: the {side} {path} holds label value(s) 9, which dataset.json does not declare " \
           f"(its labels: 0, 1, 2)" in str(error.value)


# ---------------------------------------------------------------------------------------- CLI
def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, "-m", "nnunet_uda.cli.evaluate", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture()
def raw_dataset(tmp_path):
    folder = tmp_path / "Dataset900_Eval"
    folder.mkdir()
    (folder / "dataset.json").write_text(json.dumps(dataset_json()))
    return folder


def test_cli(folders, raw_dataset, tmp_path):
    reference_folder, prediction_folder = folders
    result = run_cli("-ref", str(reference_folder), "-pred", str(prediction_folder), "-d", str(raw_dataset),
                     "-o", str(tmp_path / "cli"), "-tol", "liver=3", "-np", "2")
    assert result.returncode == 0, result.stderr
    assert "### CT (2 cases)" in result.stdout and "| liver (tol 3 mm) |" in result.stdout
    written = json.loads((tmp_path / "cli" / "summary.json").read_text())
    expected = evaluate_folder(reference_folder, prediction_folder, dataset_json(),
                               tolerances_mm={"liver": 3.0}, num_processes=1)
    assert written == json.loads(json.dumps(expected))  # worker processes compute the same numbers


def test_cli_writes_to_the_prediction_folder_by_default(folders, raw_dataset):
    reference_folder, prediction_folder = folders
    result = run_cli("-ref", str(reference_folder), "-pred", str(prediction_folder), "-d", str(raw_dataset),
                     "-np", "1")
    assert result.returncode == 0, result.stderr
    assert (prediction_folder / "summary.json").is_file() and (prediction_folder / "summary.md").is_file()


@pytest.mark.parametrize("problem", ["missing prediction", "missing folder", "undeclared label"])
def test_cli_errors_without_traceback(folders, raw_dataset, tmp_path, problem):
    reference_folder, prediction_folder = folders
    if problem == "missing prediction":
        (prediction_folder / "case_000.nii.gz").unlink()
    elif problem == "undeclared label":
        write_labels(prediction_folder / "case_000.nii.gz", label_map(0) * 3)
    else:
        prediction_folder = tmp_path / "nowhere"
    result = run_cli("-ref", str(reference_folder), "-pred", str(prediction_folder), "-d", str(raw_dataset))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    message = result.stderr.strip().splitlines()[-1]  # after the progress bar, if the cases were being read
    assert message.startswith("nnUNetv2_uda_evaluate: ") and str(prediction_folder) in message
