"""The self-training pipeline end to end on a tiny phantom, through nnU-Net's real commands:
round 0 (two real folds), ``nnUNetv2_uda_pseudolabel``, round 1, evaluation
(``examples/pseudolabel_rounds.py`` in its shortest setting)."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import load_example
from nnunet_uda.data.raw import load_dataset_json
from nnunet_uda.domains import DomainTable
from nnunet_uda.pipeline import nnunet_environment

DATASET = 982


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    work = tmp_path_factory.mktemp("rounds")
    rounds = load_example("pseudolabel_rounds")
    results = rounds.main(["--work", str(work), "--dataset", str(DATASET), "--folds", "2", "--top", "1",
                           "--shape", "20", "20", "20", "--n_source", "4", "--n_target", "3", "--n_test", "1",
                           "--epochs", "1", "--iterations", "2", "--val_iterations", "1"])
    return work, results


def test_round_dataset_holds_source_and_the_selected_cases(pipeline):
    work, results = pipeline
    raw = work / "nnUNet_raw"
    before = DomainTable.from_dataset_json(load_dataset_json(next(raw.glob(f"Dataset{DATASET}_*"))))
    after = DomainTable.from_dataset_json(load_dataset_json(next(raw.glob(f"Dataset{DATASET + 1}_*"))))
    report = json.loads((work / "pseudolabels_round1" / "report.json").read_text())
    selected = sorted(c for c, r in report["cases"].items() if r["selected"])
    assert len(report["cases"]) == 6 and len(selected) == 2  # top 1 of 3 per target modality
    assert sorted(report["cases"]) == sorted(c for c, e in before.cases.items() if e.labels == "none")
    assert sorted(c for c, e in after.cases.items() if e.labels == "pseudo") == selected
    assert {after.entry(c).round for c in selected} == {1}
    assert {after.domain_of(c) for c in selected} == {"T1", "T2"}
    assert sorted(c for c, e in after.cases.items() if e.labels == "ground_truth") == \
        sorted(c for c, e in before.cases.items() if e.labels == "ground_truth")
    for name in ("scores.png", "examples.png"):
        assert (work / "pseudolabels_round1" / name).stat().st_size > 0


def test_fused_labels_are_the_argmax_of_the_real_folds_probabilities(pipeline):
    """Eq. 9 on nnU-Net's own per-fold exports, and eq. 8's scores within [0, 1]."""
    work, _ = pipeline
    round_work = work / "pseudolabels_round1"
    report = json.loads((round_work / "report.json").read_text())
    case = sorted(report["cases"])[0]
    total = sum(np.load(round_work / "fold_predictions" / f"fold_{f}" / f"{case}.npz")["probabilities"]
                for f in (0, 1))
    fused = sitk.GetArrayFromImage(sitk.ReadImage(str(round_work / "fused" / f"{case}.nii.gz")))
    np.testing.assert_array_equal(fused, total.argmax(0))
    assert all(0 <= r["score"] <= 1 for r in report["cases"].values())


def test_an_interrupted_round_reuses_the_fold_predictions(pipeline):
    work, _ = pipeline
    folder = work / "pseudolabels_round1" / "fold_predictions" / "fold_0"
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    out = subprocess.run([str(Path(sys.executable).parent / "nnUNetv2_uda_pseudolabel"), "-d", str(DATASET), "-o",
                          str(DATASET + 2), "-tr", "nnUNetTrainerSourceOnly", "-p", "nnUNetResEncUNetMPlans",
                          "-f", "0", "1", "--top", "1", "-work", str(work / "pseudolabels_round1"), "-device", "cpu"],
                         env=nnunet_environment(work), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == stamps


def test_both_rounds_are_evaluated_and_selection_is_scored(pipeline):
    work, results = pipeline
    assert set(results["rounds"]) == {"round 0", "round 1"}
    for r in results["rounds"].values():
        for domain in ("T1", "T2"):
            assert 0 <= r["targets"][domain]["dice"] <= 1
    assert set(results["selection"]) == {"1 (round 1)", "0"}  # as run, and rescored with absent agreement 0
    for quality in results["selection"].values():
        for q in quality.values():
            assert q["selected"] == 1 and q["candidates"] == 3
            assert 0 <= q["true_dice_selected"] <= 1 and q["precision"] in (0.0, 1.0)
    assert (work / "selection.png").stat().st_size > 0
    assert "round 1" in (work / "rounds.md").read_text()
