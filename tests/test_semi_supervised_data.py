"""Tests of semi-supervised raw datasets (nnunet_uda.data.semi_supervised): nnUNetv2_uda_semisupervised and
nnUNetv2_uda_add_unlabeled, through their main(argv), and the real nnUNetv2_uda_plan_and_preprocess on the result."""
from __future__ import annotations

import filecmp
import json
import shutil
import subprocess

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_uda.cli.semi_supervised import add_unlabeled_main, main
from nnunet_uda.data.semi_supervised import (SemiSupervisedDatasetError, choose_labeled, make_semi_supervised_dataset,
                                             read_split)
from nnunet_uda.domains import DomainTable
from nnunet_uda.intensity import harmonize
from nnunet_uda.synthetic.anatomy import LABELS
from nnunet_uda.synthetic.dataset import generate_phantom_dataset
from nnunet_uda.verify import find_problems

N_TRAIN = 6
IGNORE = max(v for k, v in LABELS.items() if k != "ignore") + 1  # what a dataset without "ignore" gets
SOURCE = "Dataset010_Abdomen"


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """A fully labeled three-domain phantom at 20^3: CT cases 0-5 make the plain dataset, 6-8 are
    unlabeled images to add."""
    return generate_phantom_dataset(1, shape=(20, 20, 20), n_source=N_TRAIN + 3, n_target=1, n_test=2,
                                    fully_labeled=True, output_root=tmp_path_factory.mktemp("pool"))


@pytest.fixture
def raw(tmp_path, monkeypatch, pool):
    """$nnUNet_raw holding Dataset010_Abdomen: an ordinary nnU-Net dataset (no domain table, no ignore label)."""
    root = tmp_path / "nnUNet_raw"
    monkeypatch.setenv("nnUNet_raw", str(root))
    folder = root / SOURCE
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (folder / sub).mkdir(parents=True)
    for i in range(N_TRAIN):
        shutil.copy(pool / "imagesTr" / f"ph_CT_{i:03d}_0000.nii.gz", folder / "imagesTr" / f"abd_{i:03d}_0000.nii.gz")
        shutil.copy(pool / "labelsTr" / f"ph_CT_{i:03d}.nii.gz", folder / "labelsTr" / f"abd_{i:03d}.nii.gz")
    for i in range(2):
        shutil.copy(pool / "imagesTs" / f"ph_CT_ts{i:03d}_0000.nii.gz", folder / "imagesTs" / f"ts_{i:03d}_0000.nii.gz")
        shutil.copy(pool / "labelsTs" / f"ph_CT_ts{i:03d}.nii.gz", folder / "labelsTs" / f"ts_{i:03d}.nii.gz")
    labels = {k: v for k, v in load_json(pool / "dataset.json")["labels"].items() if k != "ignore"}
    write_json({"name": "Abdomen", "channel_names": {"0": "CT"}, "labels": labels, "numTraining": N_TRAIN,
                "file_ending": ".nii.gz"}, folder / "dataset.json")
    return root


@pytest.fixture
def unlabeled(tmp_path, pool):
    """A folder of two unlabeled images, one named X_0000.nii.gz, one X.nii.gz."""
    folder = tmp_path / "unlabeled"
    folder.mkdir()
    shutil.copy(pool / "imagesTr" / "ph_CT_006_0000.nii.gz", folder / "a_0000.nii.gz")
    shutil.copy(pool / "imagesTr" / "ph_CT_007_0000.nii.gz", folder / "b.nii.gz")
    return folder


def load_json(path):
    return json.loads(path.read_text())


def write_json(content, path):
    path.write_text(json.dumps(content, indent=2))


def read(path) -> tuple[np.ndarray, tuple]:
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), (image.GetSize(), image.GetSpacing(), image.GetOrigin(),
                                          image.GetDirection())


def snapshot(root) -> dict:
    """Every file and folder under ``root`` (hidden ones too), files with size and modification time."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else "folder"
            for p in sorted(root.rglob("*"))}


def table(folder) -> DomainTable:
    return DomainTable.from_dataset_json(load_json(folder / "dataset.json"), str(folder / "dataset.json"))


def fails(command, argv, *expected):
    """Run a CLI expecting failure: one line naming every ``expected`` string; exit status 1."""
    with pytest.raises(SystemExit) as error:
        command(argv)
    message = error.value.code
    assert isinstance(message, str) and "\n" not in message, message  # Python prints it and exits with 1
    for text in expected:
        assert text in message, message
    return message


# ------------------------------------------------------------------------------------ the split
def test_labeled_counts_from_fraction_and_count():
    cases = [f"c{i}" for i in range(N_TRAIN)]
    for kwargs, count in ((dict(fraction=0.5), 3), (dict(fraction=0.25), 2), (dict(fraction=0.01), 1),
                          (dict(fraction=0.99), N_TRAIN - 1), (dict(n_labeled=2), 2), (dict(n_labeled=5), 5)):
        split = choose_labeled(cases, **kwargs)
        assert len(split.labeled) == count and len(split.unlabeled) == N_TRAIN - count, kwargs
        assert sorted(split.labeled + split.unlabeled) == cases
    assert choose_labeled(cases, n_labeled=2).fraction == pytest.approx(2 / N_TRAIN)


def test_split_is_deterministic_by_seed():
    cases = [f"case_{i:02d}" for i in range(10)]
    first = choose_labeled(cases, fraction=0.3, seed=4)
    assert choose_labeled(list(reversed(cases)), fraction=0.3, seed=4) == first  # the order given does not matter
    assert len({tuple(choose_labeled(cases, fraction=0.3, seed=s).labeled) for s in range(5)}) > 1


# ------------------------------------------------------------------------------------ nnUNetv2_uda_semisupervised
def test_semisupervised_dataset(raw):
    main(["-d", "10", "-o", "11", "--labeled", "0.5"])
    folder = raw / "Dataset011_AbdomenSemi50"
    source = raw / SOURCE
    split = read_split(folder)
    cases = [f"abd_{i:03d}" for i in range(N_TRAIN)]
    expected = choose_labeled(cases, fraction=0.5, seed=0)
    assert (split["labeled"], split["unlabeled"], split["seed"], split["fraction"]) == \
        (expected.labeled, expected.unlabeled, 0, 0.5)
    assert len(split["labeled"]) == 3 and split["source"] == SOURCE

    content = load_json(folder / "dataset.json")
    assert content["labels"]["ignore"] == IGNORE and content["numTraining"] == N_TRAIN
    assert content["name"] == "AbdomenSemi50" and content["channel_names"] == {"0": "CT"}
    uda = table(folder)
    assert uda.domain_names == ["CT"] and uda.target == ["CT"]
    assert uda.domains["CT"].modality == "CT" and not uda.domains["CT"].harmonized  # copied as acquired
    assert sorted(uda.cases_with_labels("ground_truth")) == split["labeled"]
    assert sorted(uda.cases_with_labels("none")) == split["unlabeled"]
    assert sorted(uda.test_cases) == ["ts_000", "ts_001"]
    for case in cases:
        assert filecmp.cmp(source / "imagesTr" / f"{case}_0000.nii.gz", folder / "imagesTr" / f"{case}_0000.nii.gz",
                           shallow=False)
        original, geometry = read(source / "labelsTr" / f"{case}.nii.gz")
        label, label_geometry = read(folder / "labelsTr" / f"{case}.nii.gz")
        assert label_geometry == geometry
        if case in split["unlabeled"]:
            assert label.shape == original.shape and np.all(label == IGNORE)
            assert np.array_equal(read(folder / "labelsTr_reference" / f"{case}.nii.gz")[0], original)
        else:
            assert np.array_equal(label, original)
    assert sorted(p.name for p in (folder / "labelsTr_reference").iterdir()) == \
        [f"{c}.nii.gz" for c in split["unlabeled"]]
    assert sorted(p.name for p in (folder / "imagesTs").iterdir()) == ["ts_000_0000.nii.gz", "ts_001_0000.nii.gz"]
    assert find_problems(folder) == []
    assert load_json(source / "dataset.json").get("labels").get("ignore") is None  # the source is untouched


def test_count_seed_and_name(raw):
    main(["-d", "10", "-o", "12", "--n_labeled", "2", "--seed", "3"])
    folder = raw / "Dataset012_AbdomenSemi33"
    assert len(read_split(folder)["labeled"]) == 2 and len(table(folder).cases_with_labels("none")) == 4
    main(["-d", "10", "-o", "13", "--n_labeled", "2", "--seed", "3", "--name", "Again"])
    assert read_split(raw / "Dataset013_Again")["labeled"] == read_split(folder)["labeled"]
    for seed in range(4, 8):
        main(["-d", "10", "-o", str(20 + seed), "--n_labeled", "2", "--seed", str(seed), "--name", f"Seed{seed}"])
    chosen = {tuple(read_split(raw / f"Dataset{20 + s:03d}_Seed{s}")["labeled"]) for s in range(4, 8)}
    assert len(chosen | {tuple(read_split(folder)["labeled"])}) > 1


def test_a_single_domain_table_and_ignore_label_are_kept(raw):
    source = raw / SOURCE
    content = load_json(source / "dataset.json")
    content["labels"]["ignore"] = IGNORE + 3  # declared by the source: kept even though not highest + 1
    content["uda"] = {"domains": {"abdominal_ct": {"modality": "CT", "annotated_labels": "all"}},
                      "target": ["abdominal_ct"],
                      "cases": {f"abd_{i:03d}": {"domain": "abdominal_ct", "subject": f"s{i}"} for i in range(N_TRAIN)},
                      "test_cases": {"ts_000": {"domain": "abdominal_ct"}, "ts_001": {"domain": "abdominal_ct"}}}
    write_json(content, source / "dataset.json")
    main(["-d", "10", "-o", "11", "--labeled", "0.3"])
    folder = raw / "Dataset011_AbdomenSemi30"
    uda = table(folder)
    assert uda.domain_names == ["abdominal_ct"] and uda.domains["abdominal_ct"].harmonized
    assert load_json(folder / "dataset.json")["labels"]["ignore"] == IGNORE + 3
    assert len(uda.cases_with_labels("ground_truth")) == 2 and uda.entry("abd_000").subject == "s0"
    unlabeled = uda.cases_with_labels("none")[0]
    assert np.all(read(folder / "labelsTr" / f"{unlabeled}.nii.gz")[0] == IGNORE + 3)


@pytest.mark.parametrize("argv, expected", [
    (["-d", "99", "-o", "11", "--labeled", "0.5"], ("dataset 99", "nnUNet_raw")),
    (["-d", "10", "-o", "11", "--labeled", "0"], ("between 0 and 1",)),
    (["-d", "10", "-o", "11", "--labeled", "1.5"], ("between 0 and 1", "1.5")),
    (["-d", "10", "-o", "11", "--n_labeled", "0"], ("from 1 to 5",)),
    (["-d", "10", "-o", "11", "--n_labeled", str(N_TRAIN)], ("from 1 to 5", "6 training cases")),
    (["-d", "10", "-o", "10", "--labeled", "0.5", "--name", "Abdomen"], ("replace its source",)),
    (["-d", "10", "-o", "11", "--labeled", "0.5", "--name", "bad name"], ("letters, digits",)),
])
def test_semisupervised_argument_errors(raw, argv, expected):
    before = snapshot(raw)
    fails(main, argv, *expected)
    assert snapshot(raw) == before


def test_semisupervised_source_errors(raw, pool):
    source = raw / SOURCE
    before = snapshot(raw)
    fails(main, ["-d", str(pool), "-o", "11", "--labeled", "0.5"], "3 domains", "CT, T1, T2", "one domain")
    assert snapshot(raw) == before
    (source / "labelsTr" / "abd_003.nii.gz").unlink()
    before = snapshot(raw)
    fails(main, ["-d", "10", "-o", "11", "--labeled", "0.5"], "imagesTr/abd_003_0000.nii.gz",
          "labelsTr/abd_003.nii.gz", "fully labeled")
    with pytest.raises(SemiSupervisedDatasetError, match="abd_003"):  # the library's exception
        make_semi_supervised_dataset(10, 11, fraction=0.5)
    assert snapshot(raw) == before


def test_existing_output_and_failure_while_writing_leave_nothing_behind(raw):
    main(["-d", "10", "-o", "11", "--n_labeled", "3"])
    before = snapshot(raw)
    fails(main, ["-d", "10", "-o", "11", "--n_labeled", "3"], "Dataset011_AbdomenSemi50 already exists",
          "--overwrite")
    fails(main, ["-d", "10", "-o", "11", "--n_labeled", "3", "--name", "Other"], "id 11 is already used")
    assert snapshot(raw) == before
    # a damaged label file of a case to be made unlabeled is found while writing: the old dataset stays
    victim = choose_labeled([f"abd_{i:03d}" for i in range(N_TRAIN)], n_labeled=3, seed=1).unlabeled[-1]
    label = raw / SOURCE / "labelsTr" / f"{victim}.nii.gz"
    original = label.read_bytes()
    label.write_bytes(b"not an image")
    before = snapshot(raw)
    fails(main, ["-d", "10", "-o", "11", "--n_labeled", "3", "--seed", "1", "--overwrite"],
          f"{victim}.nii.gz", "cannot read")
    assert snapshot(raw) == before
    label.write_bytes(original)
    main(["-d", "10", "-o", "11", "--n_labeled", "3", "--seed", "1", "--overwrite"])
    assert read_split(raw / "Dataset011_AbdomenSemi50")["seed"] == 1


# ------------------------------------------------------------------------------------ nnUNetv2_uda_add_unlabeled
def test_add_unlabeled_to_a_semi_supervised_dataset(raw, unlabeled):
    main(["-d", "10", "-o", "11", "--labeled", "0.5"])
    folder = raw / "Dataset011_AbdomenSemi50"
    add_unlabeled_main(["-d", "11", "-i", str(unlabeled)])
    uda = table(folder)
    assert len(uda.cases) == N_TRAIN + 2 and load_json(folder / "dataset.json")["numTraining"] == N_TRAIN + 2
    for case, name in (("unl_a", "a_0000.nii.gz"), ("unl_b", "b.nii.gz")):
        assert uda.cases[case].labels == "none" and uda.cases[case].domain == "CT"
        image = folder / "imagesTr" / f"{case}_0000.nii.gz"
        assert filecmp.cmp(unlabeled / name, image, shallow=False)  # the domain's images are not harmonised
        label, geometry = read(folder / "labelsTr" / f"{case}.nii.gz")
        assert geometry == read(image)[1] and np.all(label == IGNORE)
    assert find_problems(folder) == []
    assert not list(folder.glob(".*"))

    before = snapshot(raw)
    fails(add_unlabeled_main, ["-d", "11", "-i", str(unlabeled)], "case unl_a", "already exists", "--prefix")
    assert snapshot(raw) == before
    add_unlabeled_main(["-d", "11", "-i", str(unlabeled), "--prefix", "more_"])
    assert len(table(folder).cases_with_labels("none")) == 3 + 4


def test_add_unlabeled_to_a_dataset_without_domain_table(raw, unlabeled):
    folder = raw / SOURCE
    add_unlabeled_main(["-d", "10", "-i", str(unlabeled), "--prefix", ""])
    content = load_json(folder / "dataset.json")
    assert content["labels"]["ignore"] == IGNORE and content["numTraining"] == N_TRAIN + 2
    uda = table(folder)
    assert uda.domain_names == ["CT"] and uda.domains["CT"].modality == "CT" and uda.target == ["CT"]
    assert len(uda.cases_with_labels("ground_truth")) == N_TRAIN and sorted(uda.cases_with_labels("none")) == ["a", "b"]
    assert sorted(uda.test_cases) == ["ts_000", "ts_001"]
    assert find_problems(folder) == []


def hounsfield_image(pool, path):
    """An image in HU (not harmonised) on a phantom CT grid."""
    grid = sitk.ReadImage(str(pool / "imagesTr" / "ph_CT_008_0000.nii.gz"))
    values = np.random.default_rng(0).uniform(-1000, 1000, sitk.GetArrayFromImage(grid).shape).astype(np.float32)
    image = sitk.GetImageFromArray(values)
    image.CopyInformation(grid)
    sitk.WriteImage(image, str(path), True)
    return values


def test_harmonisation_follows_the_domain_table(raw, pool, tmp_path):
    phantom = raw / "Dataset030_UDAPhantom"
    shutil.copytree(pool, phantom)
    hu = tmp_path / "hu"
    hu.mkdir()
    values = hounsfield_image(pool, hu / "hu_0000.nii.gz")
    before = snapshot(raw)
    fails(add_unlabeled_main, ["-d", "30", "-i", str(hu)], "domains CT, T1, T2", "--domain")
    fails(add_unlabeled_main, ["-d", "30", "-i", str(hu), "--domain", "PET"], "no domain \"PET\"")
    assert snapshot(raw) == before
    add_unlabeled_main(["-d", "30", "-i", str(hu), "--domain", "CT"])  # the phantom's images are harmonised
    written = read(phantom / "imagesTr" / "unl_hu_0000.nii.gz")[0]
    assert np.allclose(written, harmonize(values, "CT"), atol=1e-6)
    assert table(phantom).cases["unl_hu"].domain == "CT"

    harmonised = tmp_path / "harmonised"
    harmonised.mkdir()
    shutil.copy(pool / "imagesTr" / "ph_CT_008_0000.nii.gz", harmonised / "h.nii.gz")
    shutil.copy(hu / "hu_0000.nii.gz", harmonised / "a.nii.gz")
    before = snapshot(raw)  # found while writing, after a.nii.gz was written: nothing of either stays
    fails(add_unlabeled_main, ["-d", "30", "-i", str(harmonised), "--domain", "CT"], "h.nii.gz",
          "harmonised already", "--no_harmonize")
    assert snapshot(raw) == before
    (harmonised / "a.nii.gz").unlink()
    add_unlabeled_main(["-d", "30", "-i", str(harmonised), "--domain", "CT", "--no_harmonize"])
    assert filecmp.cmp(harmonised / "h.nii.gz", phantom / "imagesTr" / "unl_h_0000.nii.gz", shallow=False)

    add_unlabeled_main(["-d", "10", "-i", str(hu), "--harmonize"])  # asked for on a dataset stored as acquired
    assert np.allclose(read(raw / SOURCE / "imagesTr" / "unl_hu_0000.nii.gz")[0], harmonize(values, "CT"), atol=1e-6)


def test_add_unlabeled_errors_leave_the_dataset_as_it_was(raw, unlabeled, tmp_path):
    source = raw / SOURCE
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x_0001.nii.gz").write_bytes(b"")
    before = snapshot(raw)
    fails(add_unlabeled_main, ["-d", "10", "-i", str(bad)], "x_0001.nii.gz", "single-channel")
    (bad / "x_0001.nii.gz").unlink()
    fails(add_unlabeled_main, ["-d", "10", "-i", str(bad)], "holds no images")
    fails(add_unlabeled_main, ["-d", "10", "-i", str(tmp_path / "missing")], "is not a folder")
    fails(add_unlabeled_main, ["-d", "99", "-i", str(unlabeled)], "dataset 99")
    (bad / "junk.nii.gz").write_bytes(b"not an image")
    fails(add_unlabeled_main, ["-d", "10", "-i", str(bad)], "junk.nii.gz", "cannot read")
    assert snapshot(raw) == before

    content = load_json(source / "dataset.json")
    content["channel_names"] = {"0": "CT", "1": "PET"}
    write_json(content, source / "dataset.json")
    before = snapshot(raw)
    fails(add_unlabeled_main, ["-d", "10", "-i", str(unlabeled)], "2 channels", "only single-channel datasets")
    assert snapshot(raw) == before


# ------------------------------------------------------------------------------------ nnU-Net's planning
def test_plan_and_preprocess_takes_every_case(raw, unlabeled, tmp_path):
    from nnunet_uda.pipeline import command, nnunet_environment
    from nnunet_uda.planning import DEFAULT_PLANS

    main(["-d", "10", "-o", "11", "--n_labeled", "3"])
    add_unlabeled_main(["-d", "11", "-i", str(unlabeled)])
    env = nnunet_environment(tmp_path, processes=1)
    assert env["nnUNet_raw"] == str(raw.resolve())
    result = subprocess.run([command("nnUNetv2_uda_plan_and_preprocess"), "-d", "11", "-bs", "2", "-np", "1",
                             "-folds", "2"], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    preprocessed = tmp_path / "nnUNet_preprocessed" / "Dataset011_AbdomenSemi50"
    cases = sorted(table(raw / "Dataset011_AbdomenSemi50").cases)
    assert len(cases) == N_TRAIN + 2
    data = preprocessed / f"{DEFAULT_PLANS}_3d_fullres"
    for case in cases:
        for name in (f"{case}.b2nd", f"{case}_seg.b2nd", f"{case}.pkl"):
            assert (data / name).is_file(), name
    splits = load_json(preprocessed / "splits_final.json")
    labeled = set(read_split(raw / "Dataset011_AbdomenSemi50")["labeled"])
    assert {c for fold in splits for c in fold["val"]} == labeled  # unlabeled cases train in every fold
    assert all({"unl_a", "unl_b"} <= set(fold["train"]) for fold in splits)


def test_the_domain_table_keeps_the_harmonized_mark(raw):
    main(["-d", "10", "-o", "11", "--labeled", "0.5"])
    content = load_json(raw / "Dataset011_AbdomenSemi50" / "dataset.json")
    assert DomainTable.from_dataset_json(content).to_json()["domains"]["CT"]["harmonized"] is False
    content["uda"]["domains"]["CT"]["harmonized"] = "no"
    with pytest.raises(ValueError, match="harmonized"):
        DomainTable.from_dataset_json(content)
