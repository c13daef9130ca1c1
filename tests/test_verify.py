"""nnUNetv2_uda_verify: every convention violation gets one message naming the file or case and the fix."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_uda.synthetic.dataset import generate_phantom_dataset
from nnunet_uda.verify import DatasetError, find_problems, verify_dataset


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    return generate_phantom_dataset(950, shape=(20, 20, 20), n_source=3, n_target=2, n_test=1, output_root=root)


@pytest.fixture
def dataset(pristine, tmp_path):
    folder = tmp_path / pristine.name
    shutil.copytree(pristine, folder)
    return folder


def edit_json(folder, change):
    path = folder / "dataset.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def rewrite_label(path, change):
    image = sitk.ReadImage(str(path))
    out = sitk.GetImageFromArray(change(sitk.GetArrayFromImage(image)))
    out.CopyInformation(image)
    sitk.WriteImage(out, str(path))


def one_problem(folder, *fragments):
    problems = find_problems(folder)
    assert len(problems) == 1, problems
    for fragment in fragments:
        assert fragment in problems[0], problems[0]
    return problems[0]


def test_pristine_phantom_passes_both_checks(dataset):
    assert find_problems(dataset) == []
    verify_dataset(dataset, num_processes=1)


def test_missing_domain_table(dataset):
    edit_json(dataset, lambda d: d.pop("uda"))
    one_problem(dataset, "has no domain table", "add a \"uda\" entry")


def test_case_missing_from_table(dataset):
    edit_json(dataset, lambda d: d["uda"]["cases"].pop("ph_CT_000"))
    one_problem(dataset, "ph_CT_000_0000.nii.gz", "not in the domain table", "add it")


def test_table_case_without_image(dataset):
    edit_json(dataset, lambda d: d["uda"]["cases"].update(ph_CT_999={"domain": "CT"}))
    one_problem(dataset, "ph_CT_999", "has no image in imagesTr")


def test_unknown_domain(dataset):
    edit_json(dataset, lambda d: d["uda"]["cases"]["ph_CT_000"].update(domain="PET"))
    one_problem(dataset, "ph_CT_000", "'PET'", "not one of the domains")


def test_no_target_domain(dataset):
    edit_json(dataset, lambda d: d["uda"].update(target=[]))
    one_problem(dataset, "\"uda.target\" is empty")


def test_annotated_class_that_is_not_a_label(dataset):
    edit_json(dataset, lambda d: d["uda"]["domains"]["CT"].update(annotated_labels=["liver", "pancreas"]))
    one_problem(dataset, "\"pancreas\"", "not a foreground label")


def test_label_value_out_of_range(dataset):
    rewrite_label(dataset / "labelsTr" / "ph_CT_001.nii.gz", lambda a: np.where(a == 1, 17, a).astype(a.dtype))
    one_problem(dataset, "ph_CT_001.nii.gz", "[17]", "not declared")


def test_image_without_label_file(dataset):
    (dataset / "labelsTr" / "ph_CT_002.nii.gz").unlink()
    one_problem(dataset, "ph_CT_002_0000.nii.gz", "has no label file", "ignore label")


def test_mismatched_geometry(dataset):
    path = dataset / "labelsTr" / "ph_CT_000.nii.gz"
    label = sitk.ReadImage(str(path))
    label.SetSpacing((3.0, 3.0, 3.0))
    sitk.WriteImage(label, str(path))
    one_problem(dataset, "ph_CT_000_0000.nii.gz", "geometry differ", "resample")


def test_unlabeled_case_with_labels(dataset):
    rewrite_label(dataset / "labelsTr" / "ph_T1_000.nii.gz", lambda a: np.zeros_like(a))
    one_problem(dataset, "ph_T1_000", "unlabeled", "entirely the ignore label")


def test_unannotated_class_in_a_label_file(dataset):
    edit_json(dataset, lambda d: d["uda"]["domains"]["CT"].update(annotated_labels=["liver"]))
    problem = find_problems(dataset)[0]
    assert "not annotated for this case" in problem and "(spleen)" in problem


def test_cli_reports_and_fails(dataset):
    edit_json(dataset, lambda d: d["uda"].update(target=["PET"]))
    result = subprocess.run([sys.executable, "-m", "nnunet_uda.cli.verify", "-d", str(dataset)],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert "target domain \"PET\"" in result.stderr and "Traceback" not in result.stderr
    with pytest.raises(DatasetError):
        verify_dataset(dataset)
