"""Scoring, fusion, selection and the next round's dataset, from fold exports on disk.

The fold exports are written here in nnU-Net's export format (``<case>.nii.gz`` and ``<case>.npz``
with ``probabilities``), from the phantom's true labels perturbed per fold, so each case's
consistency is known; the prediction itself is tested end to end elsewhere.
"""
import json

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_uda.domains import DomainTable
from nnunet_uda.pseudolabels.consistency import class_consistency
from nnunet_uda.pseudolabels.figures import plot_examples, plot_scores
from nnunet_uda.pseudolabels.fold_predictions import fold_folder, shard
from nnunet_uda.pseudolabels.rounds import RoundInputs, report_json, run_selection, write_round_dataset
from nnunet_uda.pseudolabels.selection import SelectionRule
from nnunet_uda.cli.phantom import main as phantom_main

FOLDS = [0, 1, 2]


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("nnUNet_raw", str(root))
        phantom_main(["-d", "971", "--shape", "20", "20", "20", "--n_source", "2", "--n_target", "3", "--n_test", "1"])
    return next(root.glob("Dataset971_*"))


def write_fold_exports(raw, predictions, noise_by_case):
    """Fold f of case c: the true label with a share ``noise_by_case[c]`` of voxels relabeled at
    random (different per fold); probabilities put 0.7 on the fold's label."""
    dataset_json = json.loads((raw / "dataset.json").read_text())
    n_classes = len([k for k in dataset_json["labels"] if k != "ignore"])
    rng = np.random.default_rng(0)
    for case, noise in noise_by_case.items():
        truth_image = sitk.ReadImage(str(raw / "labelsTr_reference" / f"{case}.nii.gz"))
        truth = sitk.GetArrayFromImage(truth_image)
        for fold in FOLDS:
            labels = truth.copy()
            flip = rng.random(truth.shape) < noise
            labels[flip] = rng.integers(0, n_classes, flip.sum())
            folder = fold_folder(predictions, fold)
            folder.mkdir(parents=True, exist_ok=True)
            image = sitk.GetImageFromArray(labels.astype(np.uint8))
            image.CopyInformation(truth_image)
            sitk.WriteImage(image, str(folder / f"{case}.nii.gz"))
            probabilities = np.full((n_classes, *truth.shape), 0.3 / (n_classes - 1), np.float32)
            np.put_along_axis(probabilities, labels[None].astype(np.int64), 0.7, axis=0)
            np.savez_compressed(folder / f"{case}.npz", probabilities=probabilities)


def test_scores_selection_fusion_and_next_dataset(phantom, tmp_path):
    raw = phantom
    dataset_json = json.loads((raw / "dataset.json").read_text())
    inputs = RoundInputs(raw, dataset_json, tmp_path / "predictions", FOLDS)
    candidates = inputs.candidates()
    table = inputs.table
    assert sorted(candidates) == sorted(c for c in table.cases_of(table.target))
    noise = {c: 0.02 + 0.1 * i for i, c in enumerate(sorted(candidates))}  # the first of each domain is best
    write_fold_exports(raw, inputs.predictions, noise)

    scores = run_selection(inputs, SelectionRule(top=1), tmp_path / "fused", progress=False)
    case = sorted(candidates)[0]
    folds = np.stack([sitk.GetArrayFromImage(sitk.ReadImage(str(fold_folder(inputs.predictions, f) /
                                                                f"{case}.nii.gz"))) for f in FOLDS])
    expected = class_consistency(folds, list(inputs.organs.values()))
    np.testing.assert_allclose(list(scores[case].organs.values()), expected)
    assert scores[case].score == pytest.approx(expected.mean())
    for domain in table.target:  # per modality, the least noisy case wins
        ranked = sorted((c for c in candidates if table.domain_of(c) == domain), key=lambda c: noise[c])
        assert [scores[c].selected for c in ranked] == [True] + [False] * (len(ranked) - 1)

    fused = sitk.ReadImage(str(tmp_path / "fused" / f"{case}.nii.gz"))
    truth = sitk.ReadImage(str(raw / "labelsTr_reference" / f"{case}.nii.gz"))
    assert fused.GetSpacing() == truth.GetSpacing() and fused.GetOrigin() == truth.GetOrigin()
    agreement = (sitk.GetArrayFromImage(fused) == sitk.GetArrayFromImage(truth)).mean()
    assert agreement > 0.97  # the fold majority undoes independent noise

    new = write_round_dataset(inputs, scores, tmp_path / "fused", 972, "UDAPhantomRound1", 1, raw.parent)
    new_json = json.loads((new / "dataset.json").read_text())
    new_table = DomainTable.from_dataset_json(new_json)
    selected = sorted(c for c, s in scores.items() if s.selected)
    assert sorted(new_table.cases_with_labels("pseudo")) == selected
    assert all(new_table.entry(c).round == 1 for c in selected)
    assert sorted(new_table.cases_with_labels("ground_truth")) == sorted(table.cases_with_labels("ground_truth"))
    assert new_json["numTraining"] == len(new_table.cases) == len(list((new / "labelsTr").iterdir()))
    assert len(list((new / "imagesTr").iterdir())) == len(new_table.cases)
    assert sorted(p.name for p in (new / "imagesTs").iterdir()) == sorted(p.name for p in (raw / "imagesTs").iterdir())

    plot_scores(scores, tmp_path / "scores.png")
    plot_examples(scores, lambda c: inputs.channel_files(c)[0], lambda c: tmp_path / "fused" / f"{c}.nii.gz",
                  tmp_path / "examples.png")
    assert (tmp_path / "scores.png").stat().st_size > 10_000 and (tmp_path / "examples.png").stat().st_size > 10_000

    report = report_json(scores, SelectionRule(top=1), 1)
    assert report["per_domain"] == {d: {"candidates": 3, "selected": 1} for d in table.target}

    with pytest.raises(FileExistsError):
        write_round_dataset(inputs, scores, tmp_path / "fused", 972, "UDAPhantomRound1", 1, raw.parent)
    with pytest.raises(ValueError, match="replace the one it is built from"):
        write_round_dataset(inputs, scores, tmp_path / "fused", 971, raw.name.split("_", 1)[1], 1, raw.parent)


def test_missing_fold_predictions_are_named(phantom, tmp_path):
    inputs = RoundInputs(phantom, json.loads((phantom / "dataset.json").read_text()), tmp_path / "none", FOLDS)
    with pytest.raises(FileNotFoundError, match="fold 0 has no prediction"):
        run_selection(inputs, SelectionRule(top=1), tmp_path / "fused", progress=False)


def test_a_failed_dataset_write_leaves_nothing(phantom, tmp_path):
    inputs = RoundInputs(phantom, json.loads((phantom / "dataset.json").read_text()), tmp_path, FOLDS)
    from nnunet_uda.pseudolabels.rounds import CaseScore
    case = inputs.candidates()[0]
    scores = {case: CaseScore(case, inputs.table.domain_of(case), {}, 1.0, selected=True)}
    with pytest.raises(FileNotFoundError):  # no fused label on disk
        write_round_dataset(inputs, scores, tmp_path / "no_fused", 973, "Broken", 1, phantom.parent)
    assert not list(phantom.parent.glob("*973*")) and not list(phantom.parent.glob(".Dataset973*"))


def test_shards_partition_the_cases():
    cases = [f"c{i}" for i in range(7)]
    parts = [shard(cases, 3, i) for i in range(3)]
    assert sorted(sum(parts, [])) == cases and parts[0] == ["c0", "c3", "c6"]
    with pytest.raises(ValueError, match="part_id"):
        shard(cases, 2, 2)
