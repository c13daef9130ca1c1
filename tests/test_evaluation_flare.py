"""Tests of the FLARE evaluation preset (nnunet_uda.evaluation.flare), through evaluate_folder and the CLI."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_uda.evaluation import EvaluationError
from nnunet_uda.evaluation.flare import ORGANS, TOLERANCES_MM, flare_rules, match_organs
from nnunet_uda.evaluation.metrics import case_metrics, organ_metrics, physical_diagonal
from nnunet_uda.evaluation.report import evaluate_folder, format_markdown, organ_labels, resolve_tolerances
from tests.test_evaluation import SHAPE, SPACING, run_cli, write_labels

# label_tolerance of https://github.com/JunMa11/FLARE/blob/main/FLARE24/T2andT3_FLARE24_DSC_NSD_Eval.py,
# whose i-th entry is label i, with the organ names of the FLARE datasets' dataset.json
OFFICIAL = [("liver", 5), ("right kidney", 3), ("spleen", 3), ("pancreas", 5), ("aorta", 2),
            ("inferior vena cava", 2), ("right adrenal gland", 2), ("left adrenal gland", 2), ("gallbladder", 2),
            ("esophagus", 3), ("stomach", 5), ("duodenum", 7), ("left kidney", 3)]
LABELS = {"background": 0, **{name: label for label, (name, _) in enumerate(OFFICIAL, start=1)}}
SCRIPT_COLUMNS = ["Liver", "RK", "Spleen", "Pancreas", "Aorta", "IVC", "RAG", "LAG", "Gallbladder", "Esophagus",
                  "Stomach", "Duodenum", "LK"]  # the script's label_tolerance keys
PERFECT = {"dice": 1.0, "nsd": 1.0, "hd95": 0.0, "assd": 0.0}
AXIAL_RANGE = ["aorta", "inferior vena cava", "esophagus"]


def dataset_json(labels=LABELS) -> dict:
    return {"channel_names": {"0": "MRI"}, "labels": dict(labels), "numTraining": 2, "file_ending": ".nii.gz"}


ORGAN_VALUES = organ_labels(dataset_json())[0]
RULES = flare_rules(ORGAN_VALUES)


def box(label: int) -> tuple[slice, ...]:
    """Organ ``label``'s box: slices 4-15 (numpy axis 0), one of 4 x 4 cells in y, x."""
    row, col = divmod(label - 1, 4)
    return slice(4, 16), slice(6 * row + 1, 6 * row + 6), slice(7 * col + 1, 7 * col + 7)


def flare_map(without: tuple[str, ...] = ()) -> np.ndarray:
    """All 13 organs as boxes, except those named in ``without``."""
    labels = np.zeros(SHAPE, np.uint8)
    for name, label in ORGANS.items():
        if name not in without:
            labels[box(label)] = label
    return labels


def one_organ(name: str, *box_slices: slice) -> np.ndarray:
    labels = np.zeros(SHAPE, np.uint8)
    labels[box_slices] = LABELS[name]
    return labels


def preset(reference: np.ndarray, prediction: np.ndarray) -> dict:
    """The per-organ metrics under the FLARE preset, FLARE's tolerances."""
    return case_metrics(reference, prediction, SPACING, ORGAN_VALUES, RULES.tolerances_mm, rules=RULES)


def plain(reference: np.ndarray, prediction: np.ndarray) -> dict:
    """The per-organ metrics without a preset, 2 mm tolerances."""
    return case_metrics(reference, prediction, SPACING, ORGAN_VALUES, {name: 2.0 for name in ORGAN_VALUES})


# ---------------------------------------------------------------------------------------- tables
def test_tables_are_the_official_ones():
    assert list(ORGANS.items()) == [(name, label) for name, label in LABELS.items() if label]
    assert TOLERANCES_MM == dict(OFFICIAL)
    assert RULES.tolerances_mm == dict(OFFICIAL)
    assert RULES.axial_range_organs == set(AXIAL_RANGE)


# ---------------------------------------------------------------------------------------- empty masks
@pytest.mark.parametrize("organ", ["gallbladder", "aorta"])
def test_both_empty_scores_one(organ):
    labels = flare_map(without=(organ,))
    assert preset(labels, labels.copy())[organ] == PERFECT


@pytest.mark.parametrize("organ", ["gallbladder", "aorta"])
@pytest.mark.parametrize("empty_side", ["reference", "prediction"])
def test_one_empty_scores_zero(organ, empty_side):
    present, absent = flare_map(), flare_map(without=(organ,))
    reference, prediction = (absent, present) if empty_side == "reference" else (present, absent)
    diagonal = physical_diagonal(SHAPE, SPACING)
    assert preset(reference, prediction)[organ] == pytest.approx(
        {"dice": 0.0, "nsd": 0.0, "hd95": diagonal, "assd": diagonal})


# ---------------------------------------------------------------------------------------- NSD and DSC < 0.2
@pytest.mark.parametrize("shift, dice, zeroed", [(9, 0.1, True), (8, 0.2, False), (7, 0.3, False)])
def test_nsd_is_zero_below_dice_0_2(shift, dice, zeroed):
    """Two 10-voxel liver bars along x, ``shift`` voxels apart: 10 - shift voxels overlap."""
    reference = one_organ("liver", slice(10, 11), slice(12, 13), slice(5, 15))
    prediction = one_organ("liver", slice(10, 11), slice(12, 13), slice(5 + shift, 15 + shift))
    without_rule = organ_metrics(reference == 1, prediction == 1, SPACING, 5.0)
    assert without_rule["dice"] == pytest.approx(dice) and without_rule["nsd"] > 0
    rounded = dict(without_rule, dice=round(without_rule["dice"], 4), nsd=round(without_rule["nsd"], 4))
    assert preset(reference, prediction)["liver"] == (dict(rounded, nsd=0.0) if zeroed else rounded)


# ---------------------------------------------------------------------------------------- axial range
@pytest.mark.parametrize("organ", AXIAL_RANGE)
def test_tubular_organs_are_scored_on_the_reference_slices_only(organ):
    reference = flare_map()
    prediction = reference.copy()
    _, y, x = box(LABELS[organ])
    prediction[:, y, x] = LABELS[organ]  # the whole height of the scan; the reference has slices 4-15
    assert preset(reference, prediction)[organ] == PERFECT
    assert plain(reference, prediction)[organ]["dice"] == pytest.approx(2 * 12 / (12 + 20))


def test_other_organs_are_scored_on_every_slice():
    reference = flare_map()
    prediction = reference.copy()
    _, y, x = box(LABELS["liver"])
    prediction[:, y, x] = LABELS["liver"]
    assert preset(reference, prediction)["liver"]["dice"] == pytest.approx(2 * 12 / (12 + 20))


@pytest.mark.parametrize("end_slice, dice", [(4, round(2 * 10 / (10 + 11), 4)), (15, 1.0)])
def test_the_reference_highest_slice_is_left_out(end_slice, dice):
    """The official script's [z_lower:z_upper] scores slices 4-14 of a reference on slices 4-15."""
    reference = flare_map()
    prediction = reference.copy()
    prediction[end_slice][prediction[end_slice] == LABELS["aorta"]] = 0
    assert preset(reference, prediction)["aorta"]["dice"] == dice


def test_a_reference_on_one_slice_is_scored_on_that_slice():
    """The script's slab is empty there (its DSC and NSD are NaN); the preset scores the one slice."""
    reference = one_organ("aorta", slice(7, 8), slice(2, 6), slice(2, 6))
    prediction = one_organ("aorta", slice(6, 9), slice(2, 6), slice(3, 7))
    assert preset(reference, prediction)["aorta"]["dice"] == 2 * 12 / (16 + 16)


def test_the_range_is_along_the_axial_axis_only():
    reference = flare_map()
    prediction = reference.copy()
    z, y, _ = box(LABELS["aorta"])
    prediction[z, y, :] = np.where(prediction[z, y, :] == 0, LABELS["aorta"], prediction[z, y, :])
    assert preset(reference, prediction)["aorta"]["dice"] < 1


def test_prediction_outside_the_range_only_is_a_miss_with_the_image_diagonal():
    reference = flare_map()
    prediction = reference.copy()
    _, y, x = box(LABELS["aorta"])
    prediction[:, y, x] = 0
    prediction[17:, y, x] = LABELS["aorta"]
    diagonal = physical_diagonal(SHAPE, SPACING)  # of the whole image, not of the slice range
    assert preset(reference, prediction)["aorta"] == pytest.approx(
        {"dice": 0.0, "nsd": 0.0, "hd95": diagonal, "assd": diagonal})


def test_the_axial_axis_is_the_official_scripts(tmp_path):
    """Axis 0 of SimpleITK's array is axis 2 of nibabel's, the axis the official script crops."""
    labels = np.zeros(SHAPE, np.uint8)
    labels[6:9, 3, 4] = LABELS["aorta"]
    write_labels(tmp_path / "case.nii.gz", labels)
    nibabel_z = np.nonzero(np.asarray(nib.load(tmp_path / "case.nii.gz").dataobj) == LABELS["aorta"])[2]
    assert (nibabel_z.min(), nibabel_z.max()) == (6, 8)


# ---------------------------------------------------------------------------------------- tolerances
def test_the_preset_tolerances_are_applied():
    """Duodenum boxes 3 voxels (3.6 mm) apart along x: within FLARE's 7 mm, not within 2 mm."""
    reference = one_organ("duodenum", slice(4, 16), slice(6, 14), slice(5, 15))
    prediction = one_organ("duodenum", slice(4, 16), slice(6, 14), slice(8, 18))
    assert preset(reference, prediction)["duodenum"]["nsd"] == 1.0
    assert plain(reference, prediction)["duodenum"]["nsd"] < 0.9


def test_tolerance_precedence_with_the_preset():
    with_dataset = dict(dataset_json(), uda={"nsd_tolerance_mm": {"duodenum": 1.0, "spleen": 1.0}})
    tolerances = resolve_tolerances(with_dataset, ORGAN_VALUES, {"spleen": 4.0}, RULES.tolerances_mm)
    assert tolerances == dict(TOLERANCES_MM, spleen=4.0)  # the preset over the dataset, the given over both


# ---------------------------------------------------------------------------------------- labels
def test_labels_are_matched_by_name():
    names = ["Liver", "Right_Kidney", "spleen", "PANCREAS", "aorta", "IVC", "RAG", "left-adrenal-gland",
             "gall bladder", "esophagus", "stomach", "duodenum", "LK"]
    organs = dict(zip(names, range(1, 14)))
    assert match_organs(organs) == dict(zip(names, ORGANS))
    rules = flare_rules(organs)
    assert rules.axial_range_organs == {"aorta", "IVC", "esophagus"}
    assert rules.tolerances_mm["Liver"] == 5.0 and rules.tolerances_mm["IVC"] == 2.0


def test_a_different_numbering_is_scored_by_name():
    swapped = dict(LABELS, liver=5, aorta=1)
    organs = organ_labels(dataset_json(swapped))[0]
    reference = one_organ("liver", slice(4, 16), slice(2, 6), slice(2, 6))  # value 1: the aorta here
    prediction = one_organ("liver", slice(0, 20), slice(2, 6), slice(2, 6))
    rules = flare_rules(organs)
    assert case_metrics(reference, prediction, SPACING, organs, rules.tolerances_mm, rules=rules)["aorta"] == PERFECT


@pytest.mark.parametrize("labels, culprit", [
    ({k: v for k, v in LABELS.items() if k != "duodenum"}, "no label names the duodenum"),
    (dict(LABELS, tumor=14), "\"tumor\" (14) are not FLARE organs"),
    ({("organ_1" if k == "liver" else k): v for k, v in LABELS.items()}, "\"organ_1\" (1) are not FLARE organs"),
    (dict(LABELS, Liver=14), "labels \"liver\", \"Liver\" all name the liver"),
])
def test_labels_that_do_not_fit_the_preset(labels, culprit):
    with pytest.raises(EvaluationError) as error:
        flare_rules(organ_labels(dataset_json(labels))[0])
    assert culprit in str(error.value)
    assert "1 liver, 2 right kidney" in str(error.value) and "rename the labels" in str(error.value)


def test_the_ignore_label_is_not_an_organ():
    with_ignore = dict(LABELS, ignore=14)
    organs, ignore_label = organ_labels(dataset_json(with_ignore))
    reference = flare_map()
    reference[:, :, :3] = ignore_label
    prediction = flare_map()
    prediction[:, :, :3] = LABELS["liver"]  # wrong only where the reference is ignored
    metrics = case_metrics(reference, prediction, SPACING, organs, RULES.tolerances_mm, ignore_label,
                           flare_rules(organs))
    assert metrics["liver"]["dice"] == 1.0


# ---------------------------------------------------------------------------------------- folders and CLI
@pytest.fixture()
def folders(tmp_path):
    """Two cases. case_a: the aorta predicted over the whole scan, the gallbladder missed. case_b: no
    gallbladder in either; the liver predicted 11 slices too high (DSC 0.12)."""
    reference_folder, prediction_folder = tmp_path / "labelsTs", tmp_path / "predictions"
    reference_folder.mkdir()
    prediction_folder.mkdir()
    reference_a = flare_map()
    prediction_a = flare_map(without=("gallbladder",))
    _, y, x = box(LABELS["aorta"])
    prediction_a[:, y, x] = LABELS["aorta"]
    reference_b = flare_map(without=("gallbladder",))
    prediction_b = reference_b.copy()
    _, y, x = box(LABELS["liver"])
    prediction_b[:, y, x] = 0
    prediction_b[15:, y, x] = LABELS["liver"]
    for case, reference, prediction in (("case_a", reference_a, prediction_a), ("case_b", reference_b, prediction_b)):
        write_labels(reference_folder / f"{case}.nii.gz", reference)
        write_labels(prediction_folder / f"{case}.nii.gz", prediction)
    return reference_folder, prediction_folder


def read(path) -> tuple[np.ndarray, tuple[float, ...]]:
    """The label array and its spacing (NIfTI stores it in float32), numpy z, y, x."""
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), image.GetSpacing()[::-1]


def test_evaluate_folder_with_the_preset(folders, tmp_path):
    reference_folder, prediction_folder = folders
    summary = evaluate_folder(reference_folder, prediction_folder, dataset_json(), tmp_path / "out",
                              num_processes=1, preset="flare")
    assert summary["preset"] == "flare" and summary["tolerances_mm"] == TOLERANCES_MM
    case_a, case_b = (c["metrics"] for c in summary["cases"])
    assert case_a["aorta"] == PERFECT
    assert case_a["gallbladder"]["dice"] == 0.0 and case_a["gallbladder"]["nsd"] == 0.0
    assert case_b["gallbladder"] == PERFECT
    assert case_b["liver"]["dice"] == round(2 * 30 / (360 + 150), 4) and case_b["liver"]["nsd"] == 0.0
    assert all(case_a[o] == PERFECT for o in ORGANS if o not in ("aorta", "gallbladder"))
    for case, metrics in zip(("case_a", "case_b"), (case_a, case_b)):
        (reference, spacing), (prediction, _) = (read(folder / f"{case}.nii.gz")
                                                 for folder in (reference_folder, prediction_folder))
        assert metrics == case_metrics(reference, prediction, spacing, ORGAN_VALUES, TOLERANCES_MM, rules=RULES)
    organ_means = [round(np.mean([case_a[o]["dice"], case_b[o]["dice"]]), 4) for o in ORGANS]  # FLARE23's summary
    assert [summary["mean"]["all"][o]["dice"] for o in ORGANS] == organ_means
    assert summary["mean"]["all"]["average"]["dice"] == round(np.mean(organ_means), 4)

    written = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert written == json.loads(json.dumps(summary)) and written["preset"] == "flare"
    markdown = (tmp_path / "out" / "summary.md").read_text()
    assert markdown == format_markdown(summary)
    assert markdown.startswith("Scored with the flare preset.") and "| duodenum (tol 7 mm) |" in markdown
    table = [line.split(",") for line in (tmp_path / "out" / "DSC_NSD.csv").read_text().splitlines()]
    assert table[0] == ["Name"] + [f"{c}_{m}" for m in ("DSC", "NSD") for c in SCRIPT_COLUMNS]
    assert table[2][0] == "case_b.nii.gz" and float(table[2][1]) == case_b["liver"]["dice"]
    assert float(table[1][13 + 9]) == case_a["gallbladder"]["nsd"]

    without = evaluate_folder(reference_folder, prediction_folder, dataset_json(), num_processes=1)
    assert without["preset"] is None and without["cases"][0]["metrics"]["aorta"]["dice"] < 1
    assert without["cases"][1]["metrics"]["liver"]["nsd"] > 0
    assert not format_markdown(without).startswith("Scored")


def test_evaluate_folder_rejects_unfit_labels_and_unknown_presets(folders):
    with pytest.raises(EvaluationError, match="no label names the esophagus"):
        evaluate_folder(*folders, dataset_json({k: v for k, v in LABELS.items() if k != "esophagus"}),
                        num_processes=1, preset="flare")
    with pytest.raises(EvaluationError, match="unknown evaluation preset 'flare22'; the presets are: flare"):
        evaluate_folder(*folders, dataset_json(), num_processes=1, preset="flare22")


def raw_dataset(tmp_path, labels=LABELS):
    folder = tmp_path / "Dataset901_Flare"
    folder.mkdir()
    (folder / "dataset.json").write_text(json.dumps(dataset_json(labels)))
    return folder


def test_cli_preset(folders, tmp_path):
    reference_folder, prediction_folder = folders
    result = run_cli("-ref", str(reference_folder), "-pred", str(prediction_folder), "-d", str(raw_dataset(tmp_path)),
                     "-o", str(tmp_path / "cli"), "-preset", "flare", "-tol", "liver=3", "-np", "2")
    assert result.returncode == 0, result.stderr
    assert "| liver (tol 3 mm) |" in result.stdout and "| duodenum (tol 7 mm) |" in result.stdout
    written = json.loads((tmp_path / "cli" / "summary.json").read_text())
    expected = evaluate_folder(reference_folder, prediction_folder, dataset_json(), tolerances_mm={"liver": 3.0},
                               num_processes=1, preset="flare")
    assert written == json.loads(json.dumps(expected))  # the rules reach the spawned workers


def test_cli_preset_error_without_traceback(folders, tmp_path):
    reference_folder, prediction_folder = folders
    dataset = raw_dataset(tmp_path, dict(LABELS, tumor=14))
    result = run_cli("-ref", str(reference_folder), "-pred", str(prediction_folder), "-d", str(dataset),
                     "-preset", "flare")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "\"tumor\" (14) are not FLARE organs" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------- the official script
RENAMED = ["Liver", "Right_Kidney", "spleen", "PANCREAS", "Aorta", "IVC", "RAG", "left-adrenal-gland", "Gall Bladder",
           "esophagus", "Stomach", "duodenum", "LK"]  # FLARE label values 1-13 under other spellings
# each phantom organ (rows: liver, spleen, kidney_left, kidney_right, aorta, gallbladder) becomes one FLARE organ
# per axial band (columns: upper, middle, lower third of the scan), so that every FLARE organ occurs
BANDS = np.array([[0, 0, 0], [1, 1, 4], [3, 11, 11], [8, 8, 13], [7, 7, 2], [10, 5, 6], [9, 9, 12]], np.uint8)


def as_flare(phantom_labels: np.ndarray) -> np.ndarray:
    band = np.digitize(np.arange(phantom_labels.shape[0]), [phantom_labels.shape[0] * 3 // 8,
                                                            phantom_labels.shape[0] * 5 // 8])
    return BANDS[phantom_labels, band[:, None, None]]


@pytest.fixture(scope="module")
def phantom_folders(tmp_path_factory):
    """Five phantom test cases with 13 FLARE organs, anisotropic spacings, and predictions of several kinds:
    registration-like (good), shifted (poor: Dice below 0.2 for small organs), another subject's labels,
    a missed gallbladder with the aorta predicted on every slice, and organs absent from the reference."""
    from nnunet_uda.synthetic.case import synthesize_case
    from nnunet_uda.synthetic.pseudo_labels import PSEUDO_LABEL_PERTURBATIONS, perturb_labels

    root = tmp_path_factory.mktemp("flare_phantom")
    (root / "labelsTs").mkdir()
    (root / "predictions").mkdir()
    spacings = [(3.0, 0.8, 0.8), (2.5, 0.8, 1.2), (2.0, 2.0, 2.0), (4.0, 0.7, 0.7), (1.5, 0.9, 0.9)]
    for index, spacing in enumerate(spacings):
        truth = synthesize_case(0, "CT", index, "test", shape=(24, 40, 40)).label
        rng = np.random.default_rng(index)
        kind = "sreg" if index == 1 else "reg"
        predicted = perturb_labels(truth, (2.0, 2.0, 2.0), PSEUDO_LABEL_PERTURBATIONS[kind], rng)
        if index == 2:
            predicted = synthesize_case(0, "CT", 9, "test", shape=(24, 40, 40)).label
        if index == 3:
            predicted[predicted == 6] = 0
            predicted[:, truth[12] == 5] = 5
        if index == 4:
            truth[np.isin(truth, (4, 6))] = 0  # no right kidney, no gallbladder
            predicted[predicted == 4] = 0
        for folder, labels in (("labelsTs", truth), ("predictions", predicted)):
            write_labels(root / folder / f"case_{index}.nii.gz", as_flare(labels), spacing)
    return root / "labelsTs", root / "predictions"


def official_scores(reference_folder, prediction_folder) -> dict[str, dict[str, float]]:
    """A loop transcription of the per-case logic of FLARE24's T2andT3_FLARE24_DSC_NSD_Eval.py, with its
    SurfaceDice helpers from DeepMind's surface_distance: case file -> {"Liver_DSC": .., "LK_NSD": ..}."""
    import surface_distance

    label_tolerance = dict(zip(SCRIPT_COLUMNS, [5, 3, 3, 5, 2, 2, 2, 2, 2, 3, 5, 7, 3]))
    scores = {}
    for name in sorted(p.name for p in prediction_folder.iterdir() if p.name.endswith(".nii.gz")):
        gt_nii = nib.load(reference_folder / name)
        case_spacing = gt_nii.header.get_zooms()
        gt_data = np.uint8(gt_nii.get_fdata())
        seg_data = np.uint8(nib.load(prediction_folder / name).get_fdata())
        scores[name] = {}
        for i, organ in enumerate(label_tolerance.keys(), 1):
            if np.sum(gt_data == i) == 0 and np.sum(seg_data == i) == 0:
                dsc_i, nsd_i = 1, 1
            elif np.sum(gt_data == i) == 0 or np.sum(seg_data == i) == 0:
                dsc_i, nsd_i = 0, 0
            else:
                if i in (5, 6, 10):
                    z_index = np.where(gt_data == i)[2]
                    z_lower, z_upper = np.min(z_index), np.max(z_index)
                    organ_i_gt, organ_i_seg = gt_data[:, :, z_lower:z_upper] == i, seg_data[:, :, z_lower:z_upper] == i
                else:
                    organ_i_gt, organ_i_seg = gt_data == i, seg_data == i
                dsc_i = surface_distance.compute_dice_coefficient(organ_i_gt, organ_i_seg)
                if dsc_i < 0.2:
                    nsd_i = 0
                else:
                    distances = surface_distance.compute_surface_distances(organ_i_gt, organ_i_seg, case_spacing)
                    nsd_i = surface_distance.compute_surface_dice_at_tolerance(distances, label_tolerance[organ])
            scores[name][f"{organ}_DSC"] = round(dsc_i, 4)
            scores[name][f"{organ}_NSD"] = round(nsd_i, 4)
    return scores


def test_the_preset_reproduces_the_official_script(phantom_folders, tmp_path):
    reference_folder, prediction_folder = phantom_folders
    official = official_scores(reference_folder, prediction_folder)
    values = [v for case in official.values() for v in case.values()]
    dsc_nsd = [(case[f"{c}_DSC"], case[f"{c}_NSD"]) for case in official.values() for c in SCRIPT_COLUMNS]
    assert (1, 1) in dsc_nsd and (0, 0) in dsc_nsd and any(0 < d < 0.2 and n == 0 for d, n in dsc_nsd)
    assert len(set(values)) > 50

    renamed = dict(zip(["background", *RENAMED], range(14)))
    summary = evaluate_folder(reference_folder, prediction_folder, dataset_json(renamed), tmp_path, num_processes=1,
                              preset="flare")
    ours = {case["case"] + ".nii.gz": {f"{column}_{short}": case["metrics"][name][metric]
                                       for metric, short in (("dice", "DSC"), ("nsd", "NSD"))
                                       for name, column in zip(RENAMED, SCRIPT_COLUMNS)}
            for case in summary["cases"]}
    assert ours == official

    # FLARE23's summary: organ means of the rounded values, rounded; Organ_DSC/NSD the mean of those, rounded
    for metric, column in (("dice", "DSC"), ("nsd", "NSD")):
        organ_means = {name: round(np.mean([case[f"{c}_{column}"] for case in official.values()]), 4)
                       for name, c in zip(RENAMED, SCRIPT_COLUMNS)}
        assert {name: summary["mean"]["all"][name][metric] for name in RENAMED} == organ_means
        assert summary["mean"]["all"]["average"][metric] == round(np.mean(list(organ_means.values())), 4)
    table = [line.split(",") for line in (tmp_path / "DSC_NSD.csv").read_text().splitlines()]
    assert {row[0]: dict(zip(table[0][1:], map(float, row[1:]))) for row in table[1:]} == official
