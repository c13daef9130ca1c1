"""Tests of the synthetic phantom benchmark (nnunet_uda.synthetic, nnUNetv2_uda_phantom)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.ndimage import binary_erosion

from nnunet_uda.cli.phantom import main
from nnunet_uda.domains import DomainTable
from nnunet_uda.synthetic import dataset
from nnunet_uda.synthetic.anatomy import ANATOMY, IGNORE_LABEL, LABELS, ORGANS, scaled_anatomy
from nnunet_uda.synthetic.case import synthesize_case
from nnunet_uda.synthetic.dataset import generate_phantom_dataset
from nnunet_uda.synthetic.options import PhantomOptions, PhantomOptionsError

SMALL = dict(shape=(24, 28, 28), n_source=3, n_target=2, n_test=2)
ORGAN_VALUES = set(range(1, len(ORGANS) + 1))


def make(root, dataset_id=1, **options):
    return generate_phantom_dataset(dataset_id, output_root=root, **{**SMALL, **options})


def load(path) -> tuple[np.ndarray, sitk.Image]:
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), image


def arrays(folder, sub: str, pattern: str = "*.nii.gz") -> dict[str, np.ndarray]:
    return {p.name: load(p)[0] for p in sorted((folder / sub).glob(pattern))}


def table(folder) -> DomainTable:
    return DomainTable.from_dataset_json(json.loads((folder / "dataset.json").read_text()))


def mean_dice(truth: np.ndarray, prediction: np.ndarray) -> float:
    scores = [2 * np.sum((truth == k) & (prediction == k)) / (np.sum(truth == k) + np.sum(prediction == k))
              for k in sorted(ORGAN_VALUES)]
    return float(np.mean(scores))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make(tmp_path_factory.mktemp("raw"))


def test_dataset_is_valid_for_the_domain_table_and_nnunet(base):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    content = json.loads((base / "dataset.json").read_text())
    assert base.name == "Dataset001_UDAPhantom"
    assert content["channel_names"] == {"0": "image"} and content["file_ending"] == ".nii.gz"
    assert content["labels"]["ignore"] == IGNORE_LABEL == max(LABELS.values())
    assert content["labels"] == LABELS
    assert content["phantom"]["organs"] == list(ORGANS) and content["phantom"]["organ_scale"] == 1.0
    assert content["numTraining"] == 3 + 2 * 2
    uda = table(base)
    assert uda.domain_names == ["CT", "T1", "T2"] and uda.target == ["T1", "T2"]
    assert [uda.domains[d].modality for d in uda.domain_names] == ["CT", "MR", "MR"]
    assert len(uda.test_cases) == 3 * 2 and len(list((base / "imagesTs").iterdir())) == 6
    assert all(set(uda.annotated_labels(case)) == set(ORGANS) for case in uda.test_cases)
    verify_dataset_integrity(str(base), num_processes=1)
    assert (base / "preview.png").stat().st_size > 0


def test_cases_are_deterministic_per_seed():
    first, again = (synthesize_case(0, "T1", 1, "train", SMALL["shape"]) for _ in range(2))
    other_seed = synthesize_case(1, "T1", 1, "train", SMALL["shape"])
    other_index = synthesize_case(0, "T1", 2, "train", SMALL["shape"])
    assert np.array_equal(first.image, again.image) and np.array_equal(first.label, again.label)
    for other in (other_seed, other_index):
        assert not np.array_equal(first.image, other.image) and not np.array_equal(first.label, other.label)


def test_every_organ_is_present_and_small_organs_are_small(base):
    truths = {**arrays(base, "labelsTr", "ph_CT_*"), **arrays(base, "labelsTr_reference"), **arrays(base, "labelsTs")}
    assert len(truths) == 3 + 4 + 6
    for name, label in truths.items():
        counts = np.bincount(label.ravel(), minlength=len(LABELS))
        assert set(np.unique(label)) == {0} | ORGAN_VALUES, name
        liver = counts[LABELS["liver"]]
        assert all(counts[LABELS[o]] < liver for o in ORGANS if o != "liver"), (name, counts)
        assert counts[LABELS["aorta"]] < liver / 3 and counts[LABELS["gallbladder"]] < liver / 10, (name, counts)


def test_image_and_label_geometry_match(base):
    direction = tuple(np.eye(3).ravel())
    for image_path in sorted(base.glob("imagesT*/*.nii.gz")):
        case = image_path.name.replace("_0000.nii.gz", "")
        labels = "labelsTr" if image_path.parent.name == "imagesTr" else "labelsTs"
        image = load(image_path)[1]
        label_paths = [base / labels / f"{case}.nii.gz", base / "labelsTr_reference" / f"{case}.nii.gz"]
        for label_path in filter(lambda p: p.is_file(), label_paths):
            label = load(label_path)[1]
            assert label.GetSize() == image.GetSize(), label_path
            assert np.allclose(label.GetSpacing(), image.GetSpacing())
            assert np.allclose(label.GetOrigin(), image.GetOrigin())
            assert np.allclose(label.GetDirection(), image.GetDirection())
        assert np.allclose(image.GetDirection(), direction)
        expected = ((28, 28, 12), (2.0, 2.0, 4.0)) if "_T2_" in case else ((28, 28, 24), (2.0, 2.0, 2.0))
        assert (image.GetSize(), image.GetSpacing()) == expected, case


def test_images_are_harmonised(base):
    for name, image in arrays(base, "imagesTr").items():
        assert image.dtype == np.float32 and image.min() >= -1.0 and image.max() <= 1.0, name


def organ_means(base, domain: str) -> dict[str, float]:
    """Mean intensity of every organ's interior over the test cases of ``domain``."""
    images, labels = arrays(base, "imagesTs", f"ph_{domain}_*"), arrays(base, "labelsTs", f"ph_{domain}_*")
    means = {}
    for organ in ORGANS:
        values = []
        for image, label in zip(images.values(), labels.values()):
            mask = label == LABELS[organ]
            interior = binary_erosion(mask)
            values.append(image[interior if interior.sum() >= 3 else mask])
        means[organ] = float(np.concatenate(values).mean())
    return means


def test_contrast_differs_non_monotonically_between_domains(base):
    means = {d: organ_means(base, d) for d in ("CT", "T1", "T2")}
    rankings = {d: tuple(sorted(ORGANS, key=m.get)) for d, m in means.items()}
    assert len(set(rankings.values())) == 3, rankings
    ct, t1, t2 = means["CT"], means["T1"], means["T2"]
    assert ct["liver"] > ct["spleen"] and t1["liver"] > t1["spleen"] and t2["liver"] < t2["spleen"]
    assert ct["gallbladder"] < ct["liver"] and t2["gallbladder"] > t2["liver"]
    assert ct["aorta"] == max(ct.values()) and t1["aorta"] == min(t1.values())


def test_unlabeled_target_cases_are_ignore_only_with_reference_labels(base):
    uda = table(base)
    labels, references = arrays(base, "labelsTr"), arrays(base, "labelsTr_reference")
    assert sorted(references) == sorted(f"ph_{d}_{i:03d}.nii.gz" for d in ("T1", "T2") for i in range(2))
    for name, reference in references.items():
        assert uda.cases[name[:-7]].labels == "none"
        assert np.all(labels[name] == IGNORE_LABEL)
        assert set(np.unique(reference)) == {0} | ORGAN_VALUES
    assert all(uda.cases[f"ph_CT_{i:03d}"].labels == "ground_truth" for i in range(3))


def test_partial_labels(tmp_path):
    folder = make(tmp_path, partial_labels=True)
    uda, labels = table(folder), arrays(folder, "labelsTr")
    gallbladder = LABELS["gallbladder"]
    assert uda.domains["CT"].annotated_labels == tuple(o for o in ORGANS if o != "gallbladder")
    assert uda.domains["T1"].annotated_labels == ("gallbladder",) and uda.domains["T2"].annotated_labels == ()
    for name, label in labels.items():
        values = set(np.unique(label))
        if "_CT_" in name:
            assert values == {0} | ORGAN_VALUES - {gallbladder}, name
        elif "_T1_" in name:
            assert values == {0, gallbladder} and uda.cases[name[:-7]].labels == "ground_truth", name
        else:
            assert values == {IGNORE_LABEL} and uda.cases[name[:-7]].labels == "none", name
    assert all(set(np.unique(label)) == {0} | ORGAN_VALUES for label in arrays(folder, "labelsTs").values())
    ct_test = next(c for c in uda.test_cases if "_CT_" in c)
    assert set(uda.annotated_labels(ct_test)) == set(ORGANS)


def test_partial_labels_with_initial_pseudo_labels(tmp_path):
    folder = make(tmp_path, partial_labels=True, pseudo_labels="reg", n_target=2)
    uda, labels, references = table(folder), arrays(folder, "labelsTr"), arrays(folder, "labelsTr_reference")
    gallbladder = LABELS["gallbladder"]
    for name, label in labels.items():
        case, reference = name[:-7], references[name]
        if "_T2_" in name:
            assert uda.cases[case].labels == "pseudo" and uda.pseudo_labeled(case) == ORGANS
            continue
        manual = uda.ground_truth_labels(case)
        assert uda.cases[case].labels == "ground_truth" and uda.cases[case].round == 0
        pseudo = set(uda.pseudo_labeled(case))
        assert set(manual) | pseudo == set(ORGANS) and not set(manual) & pseudo
        for organ in manual:  # hand-drawn classes are exact
            assert np.array_equal(label == LABELS[organ], reference == LABELS[organ]), (name, organ)
        for organ in uda.pseudo_labeled(case):  # the others are present but perturbed
            assert (label == LABELS[organ]).any() and not np.array_equal(label == LABELS[organ], reference == LABELS[organ])
        assert ("gallbladder" in manual) == ("_T1_" in name)
    assert all(np.any(labels[n] == gallbladder) for n in labels if "_CT_" in n)


def test_reg_pseudo_labels_are_better_than_sreg(tmp_path):
    dice = {}
    for dataset_id, kind in ((2, "reg"), (3, "sreg")):
        folder = make(tmp_path, dataset_id, pseudo_labels=kind, n_target=3)
        uda, labels, references = table(folder), arrays(folder, "labelsTr"), arrays(folder, "labelsTr_reference")
        for name in references:
            assert uda.cases[name[:-7]].labels == "pseudo" and uda.cases[name[:-7]].round == 0
            assert set(np.unique(labels[name])) <= {0} | ORGAN_VALUES
        dice[kind] = np.mean([mean_dice(references[n], labels[n]) for n in references])
    assert dice["reg"] > 0.45 and dice["reg"] > dice["sreg"] + 0.15, dice


def test_fully_labeled_twin_has_the_same_images(base, tmp_path):
    twin = make(tmp_path, fully_labeled=True)
    for sub in ("imagesTr", "imagesTs"):
        ours, theirs = arrays(base, sub), arrays(twin, sub)
        assert sorted(ours) == sorted(theirs)
        assert all(np.array_equal(ours[n], theirs[n]) for n in ours), sub
    uda, labels = table(twin), arrays(twin, "labelsTr")
    assert all(d.annotated_labels == ORGANS for d in uda.domains.values())
    assert all(entry.labels == "ground_truth" for entry in uda.cases.values())
    for name, reference in arrays(base, "labelsTr_reference").items():
        assert np.array_equal(labels[name], reference), name


def test_paired_targets_show_the_anatomy_of_their_ct_case(base, tmp_path):
    """T1 case i has CT case i's labels (same grid); T2 case i its labels on the T2 grid's slices;
    the CT cases and every image's own acquisition change nothing else; each case names its subject."""
    folder = make(tmp_path, paired=True, pseudo_labels="reg")
    uda, references = table(folder), arrays(folder, "labelsTr_reference")
    base_references = arrays(base, "labelsTr_reference")
    ct = {i: load(folder / "labelsTr" / f"ph_CT_{i:03d}.nii.gz")[0] for i in range(2)}
    for i in range(2):
        assert {uda.cases[f"ph_{d}_{i:03d}"].subject for d in ("CT", "T1", "T2")} == {f"subject_{i:03d}"}
        assert uda.twin(f"ph_T1_{i:03d}", ["CT"]) == f"ph_CT_{i:03d}" == uda.twin(f"ph_T2_{i:03d}", ["CT"])
        assert np.array_equal(references[f"ph_T1_{i:03d}.nii.gz"], ct[i])
        t2 = references[f"ph_T2_{i:03d}.nii.gz"]
        assert mean_dice(ct[i][1::2][:len(t2)], t2) > 0.8
        assert mean_dice(base_references[f"ph_T1_{i:03d}.nii.gz"], ct[i]) < 0.7  # unpaired: another subject
    assert uda.twin("ph_CT_000", ["T1"]) == "ph_T1_000" and all(e.subject is None for e in uda.test_cases.values())
    assert np.array_equal(arrays(base, "imagesTr", "ph_CT_*")["ph_CT_000_0000.nii.gz"],
                          load(folder / "imagesTr" / "ph_CT_000_0000.nii.gz")[0])


def test_semi_supervised_variant(base, tmp_path):
    folder = make(tmp_path, semi_supervised=0.5, n_source=4)
    uda, labels = table(folder), arrays(folder, "labelsTr")
    assert uda.domain_names == ["CT"] and uda.target == ["CT"]
    assert {e.domain for e in uda.test_cases.values()} == {"CT"} and len(uda.test_cases) == 2
    kinds = [uda.cases[f"ph_CT_{i:03d}"].labels for i in range(4)]
    assert kinds == ["ground_truth"] * 2 + ["none"] * 2
    assert all(np.all(labels[f"ph_CT_{i:03d}.nii.gz"] == IGNORE_LABEL) for i in (2, 3))
    assert set(np.unique(labels["ph_CT_000.nii.gz"])) == {0} | ORGAN_VALUES
    assert len(arrays(folder, "labelsTr_reference")) == 4
    base_images, images = arrays(base, "imagesTr", "ph_CT_*"), arrays(folder, "imagesTr")
    assert all(np.array_equal(base_images[n], images[n]) for n in base_images)


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    written = []

    def failing_writer(array, path, spacing, origin):
        written.append(path)
        if len(written) == 5:
            raise OSError("disk full")

    monkeypatch.setattr(dataset, "write_volume", failing_writer)
    with pytest.raises(OSError, match="disk full"):
        make(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_cli_writes_the_dataset_and_refuses_to_overwrite(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("nnUNet_raw", str(tmp_path))
    argv = ["-d", "7", "--name", "Tiny", "--shape", "24", "28", "28", "--n_source", "2", "--n_target", "1",
            "--n_test", "1", "--seed", "3", "--organs", "gallbladder", "liver", "--organ_scale", "1.2"]
    main(argv)
    folder = tmp_path / "Dataset007_Tiny"
    assert capsys.readouterr().out.strip().endswith(str(folder))
    content = json.loads((folder / "dataset.json").read_text())
    assert content["phantom"]["seed"] == 3 and content["labels"] == {"background": 0, "liver": 1, "gallbladder": 2,
                                                                      "ignore": 3}
    assert content["phantom"]["organs"] == ["liver", "gallbladder"] and content["phantom"]["organ_scale"] == 1.2
    with pytest.raises(SystemExit, match="already exists"):
        main(argv)
    main(argv + ["--overwrite"])
    with pytest.raises(SystemExit, match="already used by Dataset007_Tiny"):
        main(["-d", "7", "--name", "Other"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Dataset007_Tiny"]


@pytest.mark.parametrize("argv, message", [
    (["--shape", "8", "28", "28"], "shape must be"),
    (["--n_source", "0"], "n_source must be"),
    (["--semi_supervised", "1.5"], "semi_supervised must be"),
    (["--semi_supervised", "0.9", "--n_source", "2"], "at least one labeled and one unlabeled"),
    (["--fully_labeled", "--partial_labels"], "cannot be combined"),
    (["--semi_supervised", "0.5", "--partial_labels"], "cannot be combined"),
    (["--name", "bad name"], "name must be"),
    (["--paired", "--n_source", "2", "--n_target", "3"], "must not exceed n_source"),
    (["--paired", "--semi_supervised", "0.5"], "cannot be combined with semi_supervised"),
    (["--organs", "liver", "pancreas"], "unknown organ.*'pancreas'.*choose from: liver, spleen"),
    (["--organs", "liver", "liver"], "more than once"),
    (["--partial_labels", "--organs", "liver", "spleen"], "gallbladder and at least one other organ"),
    (["--partial_labels", "--organs", "gallbladder"], "gallbladder and at least one other organ"),
    (["--organ_scale", "2.5"], "organ_scale must be a number from 0.5 to 2.0"),
])
def test_cli_rejects_invalid_options_without_writing(tmp_path, monkeypatch, argv, message):
    monkeypatch.setenv("nnUNet_raw", str(tmp_path))
    with pytest.raises(SystemExit, match=message):
        main(["-d", "8"] + argv)
    assert list(tmp_path.iterdir()) == []


def test_cli_needs_nnunet_raw(monkeypatch):
    monkeypatch.delenv("nnUNet_raw", raising=False)
    with pytest.raises(SystemExit, match="nnUNet_raw is not set"):
        main(["-d", "9"])


def test_invalid_options_raise_before_writing(tmp_path):
    with pytest.raises(PhantomOptionsError, match="pseudo_labels must be"):
        make(tmp_path, pseudo_labels="elastic")
    assert list(tmp_path.iterdir()) == []


def test_cli_module_is_runnable():
    result = subprocess.run([sys.executable, "-m", "nnunet_uda.cli.phantom", "--help"], capture_output=True,
                            text=True, check=True)
    assert all(word in result.stdout for word in ("nnUNetv2_uda_phantom", "--pseudo_labels", "--organs", "--organ_scale"))


SUBSET = ("liver", "kidney_left", "kidney_right", "aorta")
SUBSET_VALUES = {LABELS[o]: value for value, o in enumerate(SUBSET, start=1)}  # rendered -> dataset value


def relabeled(label: np.ndarray) -> np.ndarray:
    """``label`` (all six organs) as the dataset of the organs :data:`SUBSET` labels it."""
    return np.vectorize(lambda v: SUBSET_VALUES.get(int(v), 0), otypes=[np.uint8])(label)


def test_organ_subset_is_renumbered_and_the_others_stay_in_the_images(base, tmp_path):
    folder = make(tmp_path, organs=["kidney_right", "liver", "aorta", "kidney_left"])  # kept in ORGANS order
    content, uda = json.loads((folder / "dataset.json").read_text()), table(folder)
    assert content["labels"] == {"background": 0, "liver": 1, "kidney_left": 2, "kidney_right": 3, "aorta": 4,
                                 "ignore": 5}
    assert content["phantom"]["organs"] == list(SUBSET)
    assert uda.domains["CT"].annotated_labels == SUBSET and uda.domains["T1"].annotated_labels == ()
    assert all(uda.annotated_labels(case) == SUBSET for case in uda.test_cases)
    for sub in ("imagesTr", "imagesTs"):  # spleen and gallbladder tissue still painted: the same images
        ours, theirs = arrays(folder, sub), arrays(base, sub)
        assert sorted(ours) == sorted(theirs) and all(np.array_equal(ours[n], theirs[n]) for n in ours), sub
    truths = {f"{sub}/{n}": label for sub in ("labelsTr_reference", "labelsTs")
              for n, label in arrays(folder, sub).items()}
    truths.update({f"labelsTr/{n}": label for n, label in arrays(folder, "labelsTr", "ph_CT_*").items()})
    assert len(truths) == 4 + 6 + 3
    for name, label in truths.items():
        full = arrays(base, name.split("/")[0], name.split("/")[1])[name.split("/")[1]]
        assert set(np.unique(label)) == {0, 1, 2, 3, 4}, name
        assert np.array_equal(label, relabeled(full)), name  # spleen and gallbladder are background
        assert np.any(full == LABELS["spleen"]) and not np.any(label[full == LABELS["spleen"]]), name
    labels = arrays(folder, "labelsTr")
    for i in range(2):
        for domain in ("T1", "T2"):
            assert np.all(labels[f"ph_{domain}_{i:03d}.nii.gz"] == 5)


def test_organ_subset_pseudo_labels_and_partial_labels(tmp_path):
    small = dict(shape=(20, 20, 20), n_source=1, n_target=2, n_test=1)
    folder = make(tmp_path, 1, organs=SUBSET, pseudo_labels="reg", **small)
    uda, labels, references = table(folder), arrays(folder, "labelsTr"), arrays(folder, "labelsTr_reference")
    assert len(references) == 4
    for name, reference in references.items():
        assert uda.cases[name[:-7]].labels == "pseudo" and uda.pseudo_labeled(name[:-7]) == SUBSET
        assert set(np.unique(labels[name])) <= {0, 1, 2, 3, 4} and set(np.unique(reference)) == {0, 1, 2, 3, 4}
        assert not np.array_equal(labels[name], reference)
    folder = make(tmp_path, 2, organs=("gallbladder", "liver"), partial_labels=True, pseudo_labels="reg", **small)
    content, uda, labels = json.loads((folder / "dataset.json").read_text()), table(folder), arrays(folder, "labelsTr")
    assert content["labels"] == {"background": 0, "liver": 1, "gallbladder": 2, "ignore": 3}
    assert uda.domains["CT"].annotated_labels == ("liver",) and uda.domains["T1"].annotated_labels == ("gallbladder",)
    assert uda.pseudo_labeled("ph_CT_000") == ("gallbladder",) and uda.pseudo_labeled("ph_T1_000") == ("liver",)
    assert all(set(np.unique(label)) <= {0, 1, 2} for label in labels.values())
    assert set(np.unique(labels["ph_CT_000.nii.gz"])) == {0, 1, 2}


def test_organ_scale_enlarges_every_organ_and_nothing_else(base, tmp_path):
    assert scaled_anatomy(1.0) is ANATOMY
    bigger = scaled_anatomy(1.3)
    assert bigger[0] == ANATOMY[0] and bigger[0].name == "spine"
    for grown, organ in zip(bigger[1:], ANATOMY[1:]):
        ellipsoids = [*zip(grown.parts, organ.parts), *zip(grown.cuts, organ.cuts)]
        ellipsoids += [(grown.core, organ.core)] if organ.core else []
        for new, old in ellipsoids:
            assert new.center == old.center and np.allclose(new.radii, np.multiply(old.radii, 1.3)), organ.name
    folder = make(tmp_path, organ_scale=1.3)
    assert json.loads((folder / "dataset.json").read_text())["phantom"]["organ_scale"] == 1.3
    volumes = {}
    for sub, pattern in (("labelsTr", "ph_CT_*"), ("labelsTr_reference", "*"), ("labelsTs", "*")):
        scaled, plain = arrays(folder, sub, pattern), arrays(base, sub, pattern)
        for name in plain:
            for organ in ORGANS:
                counts = volumes.setdefault(organ, [0, 0])
                counts[0] += np.sum(plain[name] == LABELS[organ])
                counts[1] += np.sum(scaled[name] == LABELS[organ])
    growth = {organ: new / old for organ, (old, new) in volumes.items()}
    # the ellipsoids' volume grows by 1.3^3; the aorta, a tube through the field of view, by 1.3^2; the
    # liver and the spleen less (clipped by the body wall, the liver partly covered by organs painted later)
    assert all(ratio > 1.3 for ratio in growth.values()), growth
    assert all(abs(growth[o] / 1.3 ** 3 - 1) < 0.15 for o in ("kidney_left", "kidney_right", "gallbladder")), growth
    assert abs(growth["aorta"] / 1.3 ** 2 - 1) < 0.1, growth


@pytest.mark.parametrize("options, message", [
    (dict(organs=()), "at least one organ of: liver, spleen, kidney_left, kidney_right, aorta, gallbladder"),
    (dict(organs=("liver", "pancreas")), "unknown organ.*choose from: liver, spleen"),
    (dict(organs=("aorta", "liver", "aorta")), "aorta more than once"),
    (dict(organs=None), "organs must be a list of organ names"),
    (dict(partial_labels=True, organs=("liver", "aorta")), "gallbladder and at least one other organ"),
    (dict(organ_scale=0.4), "organ_scale must be a number from 0.5 to 2.0"),
    (dict(organ_scale="big"), "organ_scale must be"),
    (dict(variation=4.5), "variation must be a number from 0.0 to 4.0"),
    (dict(variation=True), "variation must be"),
])
def test_invalid_organ_options(options, message):
    with pytest.raises(PhantomOptionsError, match=message):
        PhantomOptions(1, **options)


def test_organ_options_are_normalised():
    options = PhantomOptions(1, organs="spleen", organ_scale=2)
    assert options.organs == ("spleen",) and options.organ_scale == 2.0
    assert options.labels == {"background": 0, "spleen": 1, "ignore": 2} and options.ignore_label == 2
    assert list(options.label_lookup) == [0, 0, 1, 0, 0, 0, 0, 2]
    assert PhantomOptions(1).labels == LABELS and PhantomOptions(1).structures is ANATOMY


def test_variation_scales_case_to_case_differences():
    """0: every case the same anatomy and tissue means; larger: organ volumes spread more (same draws)."""
    from nnunet_uda.synthetic.acquisition import case_contrast
    from nnunet_uda.synthetic.case import synthesize_case

    def kidney_volumes(variation):
        return np.array([np.sum(synthesize_case(0, "CT", i, "train", (20, 20, 20), variation=variation).label
                                == LABELS["kidney_left"]) for i in range(6)])

    alike = [synthesize_case(0, "CT", i, "train", (20, 20, 20), variation=0.0) for i in range(2)]
    assert np.array_equal(alike[0].label, alike[1].label)
    assert not np.array_equal(alike[0].image, alike[1].image)  # texture and noise stay the case's own
    spread = {v: kidney_volumes(v).std() / kidney_volumes(v).mean() for v in (1.0, 3.0)}
    assert spread[3.0] > 1.5 * spread[1.0], spread
    means = [case_contrast("CT", np.random.default_rng(0), v)[0] for v in (0.0, 1.0, 3.0)]
    np.testing.assert_allclose(means[2] - means[0], 3 * (means[1] - means[0]), atol=1e-3)
