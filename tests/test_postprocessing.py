"""Tests of nnunet_uda.postprocessing (each rule against hand-written references) and nnUNetv2_uda_postprocess."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_uda.cli.postprocess import main
from nnunet_uda.postprocessing import (FLARE_LABELS, OrganRules, PostprocessingError, apply_rules, load_config,
                                       parse_config, preset_config)

ISOTROPIC = (1.0, 1.0, 1.0)


def two_blobs(dtype=np.uint8) -> np.ndarray:
    """Label 1 as a 2x2x2 blob (8 voxels) and a 3x3x3 blob (27 voxels); label 2 as one 2x2x2 blob."""
    labels = np.zeros((8, 10, 12), dtype=dtype)
    labels[1:3, 1:3, 1:3] = 1
    labels[4:7, 5:8, 6:9] = 1
    labels[1:3, 6:8, 9:11] = 2
    return labels


def without_small_blob(labels: np.ndarray) -> np.ndarray:
    expected = labels.copy()
    expected[1:3, 1:3, 1:3] = 0
    return expected


def ball(shape, center, radius) -> np.ndarray:
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, center)) <= radius ** 2


# ----------------------------------------------------------------------------------------------------------------
# the rules


def test_min_volume_uses_the_anisotropic_spacing():
    labels = two_blobs()
    # 0.5 * 1 * 4 = 2 mm^3 per voxel: the blobs hold 16 and 54 mm^3; at 1 mm^3 per voxel, 8 and 27 mm^3
    anisotropic, rules = (0.5, 1.0, 4.0), {1: OrganRules(min_volume_ml=0.03)}
    np.testing.assert_array_equal(apply_rules(labels, anisotropic, rules), without_small_blob(labels))
    expected_isotropic = labels.copy()
    expected_isotropic[labels == 1] = 0
    np.testing.assert_array_equal(apply_rules(labels, ISOTROPIC, rules), expected_isotropic)


def test_min_volume_keeps_a_component_of_exactly_the_threshold():
    labels = two_blobs()
    # the large blob: 27 voxels of 1.05 mm^3, 0.02835 ml; in floating point 27 * 1.05 < 0.02835 * 1000
    spacing, rules = (0.5, 0.7, 3.0), {1: OrganRules(min_volume_ml=0.02835)}
    np.testing.assert_array_equal(apply_rules(labels, spacing, rules), without_small_blob(labels))
    np.testing.assert_array_equal(apply_rules(labels, spacing, {1: OrganRules(min_volume_ml=0.0)}), labels)


def test_largest_component_keeps_the_large_blob_and_other_organs():
    labels = two_blobs(np.int16)
    result = apply_rules(labels, ISOTROPIC, {1: OrganRules(largest_component=True)})
    assert result.dtype == np.int16
    np.testing.assert_array_equal(result, without_small_blob(labels))
    assert np.array_equal(labels, two_blobs(np.int16)), "the input must not be modified"


def test_largest_component_tie_keeps_the_first_in_c_order():
    labels = np.zeros((4, 4, 9), dtype=np.uint8)
    labels[1:3, 1:3, 1:3] = 3
    labels[1:3, 1:3, 5:7] = 3
    expected = labels.copy()
    expected[1:3, 1:3, 5:7] = 0
    np.testing.assert_array_equal(apply_rules(labels, ISOTROPIC, {3: OrganRules(largest_component=True)}), expected)


def test_min_volume_then_largest_component_can_remove_the_whole_organ():
    labels = two_blobs()
    rules = {1: OrganRules(min_volume_ml=0.03, largest_component=True)}  # 27 mm^3 < 30 mm^3: nothing is left
    expected = labels.copy()
    expected[labels == 1] = 0
    np.testing.assert_array_equal(apply_rules(labels, ISOTROPIC, rules), expected)


@pytest.mark.parametrize("neighbour", [(3, 3, 1), (3, 3, 3)], ids=["edge", "corner"])
def test_connectivity_6_and_26_with_diagonal_neighbours(neighbour):
    labels = np.zeros((6, 6, 6), dtype=np.uint8)
    labels[1:3, 1:3, 1:3] = 1
    labels[neighbour] = 1  # touches the cube across an edge or a corner only
    rules = {1: OrganRules(largest_component=True)}
    np.testing.assert_array_equal(apply_rules(labels, ISOTROPIC, rules, connectivity=26), labels)
    expected = labels.copy()
    expected[neighbour] = 0
    np.testing.assert_array_equal(apply_rules(labels, ISOTROPIC, rules, connectivity=6), expected)


def test_fill_holes_fills_a_sphere_with_a_cavity():
    shape, center = (13, 13, 13), (6, 6, 6)
    solid = ball(shape, center, 5)
    labels = (solid & ~ball(shape, center, 2)).astype(np.uint8) * 4
    expected = solid.astype(np.uint8) * 4
    assert (labels != expected).sum() == ball(shape, center, 2).sum() > 0
    np.testing.assert_array_equal(apply_rules(labels, ISOTROPIC, {4: OrganRules(fill_holes=True)}), expected)


def test_fill_holes_leaves_a_cavity_that_opens_to_the_outside():
    shape, center = (13, 13, 13), (6, 6, 6)
    labels = (ball(shape, center, 5) & ~ball(shape, center, 2)).astype(np.uint8)
    labels[6, 6, 6:] = 0  # a channel from the cavity to the image border
    np.testing.assert_array_equal(apply_rules(labels, ISOTROPIC, {1: OrganRules(fill_holes=True)}), labels)


def test_fill_holes_never_overwrites_another_organ_in_the_cavity():
    shape, center = (13, 13, 13), (6, 6, 6)
    cavity = ball(shape, center, 3)
    labels = (ball(shape, center, 5) & ~cavity).astype(np.uint8)
    labels[5:8, 5:8, 4:7] = 2  # another organ inside the cavity, touching its wall on one side
    assert (labels[cavity] == 2).any() and (labels[cavity] == 0).any()
    expected = labels.copy()
    expected[cavity & (labels == 0)] = 1
    np.testing.assert_array_equal(apply_rules(labels, ISOTROPIC, {1: OrganRules(fill_holes=True)}), expected)


def test_fill_holes_connectivity_decides_whether_a_diagonal_gap_closes_the_cavity():
    labels = np.zeros((9, 9, 9), dtype=np.uint8)
    labels[2:7, 2:7, 2:7] = 1
    labels[3:6, 3:6, 3:6] = 0  # the cavity
    labels[2, 2, 2] = 0  # the wall's corner: the cavity reaches the outside only diagonally
    rules = {1: OrganRules(fill_holes=True)}
    expected = labels.copy()
    expected[3:6, 3:6, 3:6] = 1
    np.testing.assert_array_equal(apply_rules(labels, ISOTROPIC, rules, connectivity=26), expected)
    np.testing.assert_array_equal(apply_rules(labels, ISOTROPIC, rules, connectivity=6), labels)


def test_default_rules_apply_to_unlisted_organs_only():
    labels = two_blobs()
    labels[5:7, 0:2, 0:2] = 2  # a second, smaller blob of label 2
    rules = {1: OrganRules()}
    expected = labels.copy()
    expected[5:7, 0:2, 0:2] = 0
    result = apply_rules(labels, ISOTROPIC, rules, default=OrganRules(largest_component=True))
    np.testing.assert_array_equal(result, expected)
    np.testing.assert_array_equal(apply_rules(labels, ISOTROPIC, rules), labels)


def test_apply_rules_rejects_bad_label_maps():
    with pytest.raises(PostprocessingError, match="integer dtype"):
        apply_rules(np.zeros((3, 3, 3), np.float32), ISOTROPIC, {})
    with pytest.raises(PostprocessingError, match="spacing must be 3 positive numbers"):
        apply_rules(np.zeros((3, 3, 3), np.uint8), (1.0, 1.0), {})
    with pytest.raises(PostprocessingError, match="connectivity must be 6"):
        apply_rules(np.zeros((3, 3, 3), np.uint8), ISOTROPIC, {}, connectivity=18)


# ----------------------------------------------------------------------------------------------------------------
# configuration

ORGANS = {"liver": 1, "spleen": 3, "gallbladder": 9}


def test_parse_config_resolves_names_and_values():
    config = parse_config({"labels": {"liver": {"largest_component": True, "fill_holes": True},
                                      "9": {"min_volume_ml": 1}},
                           "default": {"largest_component": True}, "connectivity": 6}, ORGANS)
    assert config.labels == {1: OrganRules(largest_component=True, fill_holes=True), 9: OrganRules(min_volume_ml=1.0)}
    assert config.default == OrganRules(largest_component=True)
    assert config.connectivity == 6
    assert config.label_names == {1: "liver", 9: "gallbladder"}
    assert parse_config(config.to_json()) == config, "the saved form must parse to the same configuration"


@pytest.mark.parametrize("config, message", [
    ({"labels": {"livr": {}}}, r"unknown organ \"livr\".*liver \(1\), spleen \(3\), gallbladder \(9\)"),
    ({"labels": {"liver": {"largest": True}}}, r"unknown rule key\(s\) largest; the rules are min_volume_ml"),
    ({"labels": {"liver": {"min_volume_ml": -1}}}, r"min_volume_ml must be >= 0"),
    ({"labels": {"liver": {"min_volume_ml": "1"}}}, r"min_volume_ml must be a number"),
    ({"labels": {"liver": {"fill_holes": 1}}}, r"fill_holes must be true or false"),
    ({"labels": {}, "connectivity": 8}, r"connectivity must be 6 .* or 26"),
    ({"labels": {}, "connectivity": "26"}, r"connectivity must be 6 .* or 26"),
    ({"labels": {}, "default": {"holes": True}}, r"default: unknown rule key"),
    ({"labels": {"4": {}}}, r"label value 4 is not an organ of the dataset.json"),
    ({"labels": {"0": {}}}, r"0 is the background"),
    ({"labels": {"liver": {}, "1": {}}}, r"label 1 is configured twice"),
    ({"label": {}}, r"unknown key\(s\) label; valid keys are labels"),
])
def test_parse_config_errors_name_the_problem(config, message):
    with pytest.raises(PostprocessingError, match=message):
        parse_config(config, ORGANS)


def test_organ_names_need_a_dataset_json():
    with pytest.raises(PostprocessingError, match=r"needs a dataset.json .*-d or -dataset_json"):
        parse_config({"labels": {"liver": {}}})
    assert parse_config({"labels": {"1": {"fill_holes": True}}}).labels == {1: OrganRules(fill_holes=True)}


def test_flare_preset_without_and_with_a_dataset_json():
    config = preset_config("flare")
    assert sorted(config.labels) == list(range(1, 14))
    assert config.label_names == {v: n for n, v in FLARE_LABELS.items()}
    gallbladder, spleen, liver = config.labels[9], config.labels[3], config.labels[1]
    assert gallbladder.min_volume_ml > 0 and gallbladder.largest_component
    assert spleen.min_volume_ml > 0
    assert liver.largest_component and liver.fill_holes and liver.min_volume_ml == 0
    with pytest.warns(UserWarning, match="no organ named right kidney"):
        matched = preset_config("flare", {"liver": 3, "kidney_left": 1, "Gallbladder": 2})
    assert matched.labels == {3: config.labels[1], 1: config.labels[13], 2: config.labels[9]}
    with pytest.raises(PostprocessingError, match="none of the dataset.json's organs"):
        preset_config("flare", {"tumour": 1})


# ----------------------------------------------------------------------------------------------------------------
# the command

SHAPE = (16, 20, 28)
DATASET_JSON = {"labels": {"background": 0, "liver": 1, "gallbladder": 9}, "file_ending": ".nii.gz"}
RULES = {"labels": {"liver": {"largest_component": True, "fill_holes": True},
                    "gallbladder": {"largest_component": True, "min_volume_ml": 1.0}}}


def clean_case(with_gallbladder: bool) -> np.ndarray:
    """A liver ball (label 1) and, optionally, a gallbladder ball (label 9) of about 1.4 ml."""
    labels = ball(SHAPE, (8, 9, 7), 5.5).astype(np.uint8)
    if with_gallbladder:
        labels[ball(SHAPE, (8, 10, 20), 4.2)] = 9
    return labels


def noisy_case(clean: np.ndarray) -> np.ndarray:
    """``clean`` with a cavity in the liver, a liver fragment and a gallbladder speck (0.04 ml)."""
    labels = clean.copy()
    labels[ball(SHAPE, (8, 9, 7), 2)] = 0
    labels[1:3, 17:19, 1:3] = 1
    labels[13:15, 1:3, 24:26] = 9
    return labels


def write_case(path: Path, labels: np.ndarray, dtype) -> sitk.Image:
    image = sitk.GetImageFromArray(labels.astype(dtype))
    image.SetSpacing((1.5, 1.2, 3.0))  # x, y, z: 5.4 mm^3 per voxel
    image.SetOrigin((-12.5, 40.25, 7.0))
    angle = 0.3
    image.SetDirection((np.cos(angle), -np.sin(angle), 0.0, np.sin(angle), np.cos(angle), 0.0, 0.0, 0.0, 1.0))
    sitk.WriteImage(image, str(path))
    return sitk.ReadImage(str(path))


@pytest.fixture
def label_folder(tmp_path):
    """Three noisy cases of different integer types, their clean references, and a dataset.json."""
    folder = tmp_path / "predictions"
    folder.mkdir()
    cases = {"case_000": (True, np.uint8), "case_001": (True, np.int16), "case_002": (False, np.uint16)}
    expected = {}
    for case, (with_gallbladder, dtype) in cases.items():
        clean = clean_case(with_gallbladder)
        write_case(folder / f"{case}.nii.gz", noisy_case(clean), dtype)
        expected[f"{case}.nii.gz"] = clean
    (folder / "plans.json").write_text("{}")  # not a label file: ignored
    dataset_json = tmp_path / "dataset.json"
    dataset_json.write_text(json.dumps(DATASET_JSON))
    config = tmp_path / "rules.json"
    config.write_text(json.dumps(RULES))
    return dict(folder=folder, expected=expected, dataset_json=dataset_json, config=config, tmp=tmp_path)


def assert_outputs(input_folder: Path, output_folder: Path, expected: dict[str, np.ndarray]) -> None:
    assert sorted(p.name for p in output_folder.iterdir()) == sorted(expected) + ["postprocessing.json"]
    for name, clean in expected.items():
        source, result = sitk.ReadImage(str(input_folder / name)), sitk.ReadImage(str(output_folder / name))
        assert result.GetPixelID() == source.GetPixelID()
        assert result.GetSpacing() == source.GetSpacing()
        assert result.GetOrigin() == source.GetOrigin()
        assert result.GetDirection() == source.GetDirection()
        np.testing.assert_array_equal(sitk.GetArrayFromImage(result), clean)


def test_cli_end_to_end_and_the_saved_config_is_reusable(label_folder):
    folder, tmp = label_folder["folder"], label_folder["tmp"]
    main(["-i", str(folder), "-o", str(tmp / "pp"), "-config", str(label_folder["config"]),
          "-dataset_json", str(label_folder["dataset_json"]), "-np", "1"])
    assert_outputs(folder, tmp / "pp", label_folder["expected"])
    saved = json.loads((tmp / "pp" / "postprocessing.json").read_text())
    assert saved["labels"]["1"] == {"min_volume_ml": 0.0, "largest_component": True, "fill_holes": True}
    assert saved["labels"]["9"] == {"min_volume_ml": 1.0, "largest_component": True, "fill_holes": False}
    assert saved["connectivity"] == 26 and saved["label_names"] == {"1": "liver", "9": "gallbladder"}
    # the saved rules again, without a dataset.json, with two worker processes
    main(["-i", str(folder), "-o", str(tmp / "pp2"), "-config", str(tmp / "pp" / "postprocessing.json"), "-np", "2"])
    assert_outputs(folder, tmp / "pp2", label_folder["expected"])
    assert load_config(tmp / "pp2" / "postprocessing.json") == load_config(tmp / "pp" / "postprocessing.json")


def test_cli_flare_preset_uses_flare_label_values(label_folder):
    folder, tmp = label_folder["folder"], label_folder["tmp"]
    main(["-i", str(folder), "-o", str(tmp / "pp"), "--preset", "flare", "-np", "1"])
    assert_outputs(folder, tmp / "pp", label_folder["expected"])
    assert load_config(tmp / "pp" / "postprocessing.json") == preset_config("flare")


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_cli_bad_config_leaves_no_output(label_folder):
    folder, tmp = label_folder["folder"], label_folder["tmp"]
    bad = tmp / "bad.json"
    bad.write_text(json.dumps({"labels": {"liver": {"largest_component": True, "fill_hole": True}}}))
    with pytest.raises(SystemExit, match="unknown rule key.*fill_hole"):
        main(["-i", str(folder), "-o", str(tmp / "pp"), "-config", str(bad),
              "-dataset_json", str(label_folder["dataset_json"]), "-np", "1"])
    assert not (tmp / "pp").exists() and leftovers(tmp) == []


def test_cli_failing_case_leaves_nothing_half_written(label_folder):
    folder, tmp = label_folder["folder"], label_folder["tmp"]
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 4, 4), np.float32)), str(folder / "case_003.nii.gz"))
    with pytest.raises(SystemExit, match=r"case_003.nii.gz: label maps must have an integer dtype"):
        main(["-i", str(folder), "-o", str(tmp / "pp"), "--preset", "flare", "-np", "1"])
    assert not (tmp / "pp").exists() and leftovers(tmp) == []


def test_cli_folder_errors(label_folder):
    folder, tmp = label_folder["folder"], label_folder["tmp"]
    preset = ["--preset", "flare", "-np", "1"]
    with pytest.raises(SystemExit, match="is the input folder"):
        main(["-i", str(folder), "-o", str(folder / ".." / folder.name), *preset])
    with pytest.raises(SystemExit, match="contains the input folder"):
        main(["-i", str(folder), "-o", str(tmp), "--overwrite", *preset])
    (tmp / "empty").mkdir()
    with pytest.raises(SystemExit, match=r"has no label files ending in \.nii\.gz"):
        main(["-i", str(tmp / "empty"), "-o", str(tmp / "pp"), *preset])
    (tmp / "pp").mkdir()
    (tmp / "pp" / "old.txt").write_text("old")
    with pytest.raises(SystemExit, match="exists and is not empty.*--overwrite"):
        main(["-i", str(folder), "-o", str(tmp / "pp"), *preset])
    assert (tmp / "pp" / "old.txt").exists()
    main(["-i", str(folder), "-o", str(tmp / "pp"), "--overwrite", *preset])
    assert_outputs(folder, tmp / "pp", label_folder["expected"])
