"""The whole workflow through nnU-Net's real commands on a tiny phantom, on the CPU.

phantom -> nnUNetv2_uda_plan_and_preprocess -> nnUNetv2_train -tr nnUNetTrainerUDA -device cpu
-> nnUNetv2_train --c (resume) -> nnUNetv2_predict per domain -> nnUNetv2_uda_evaluate.
"""
import json

import numpy as np
import pytest
import torch

from conftest import train_tiny_phantom

from nnunet_uda.pipeline import command
from nnunet_uda.planning import DEFAULT_PLANS

DATASET = 951
TRAINER = "nnUNetTrainerUDA"


@pytest.fixture(scope="module")
def workflow(tmp_path_factory):
    paths = train_tiny_phantom(tmp_path_factory.mktemp("e2e"), DATASET, TRAINER, ("--n_source", "5", "--n_target", "2"))
    evaluation = paths["work"] / "evaluation"
    paths["run"]("evaluate", command("nnUNetv2_uda_evaluate"), "-ref", str(paths["raw"] / "labelsTs"),
                 "-pred", str(paths["predictions"]), "-d", str(DATASET), "-o", str(evaluation))
    return paths


def test_training_writes_domain_aware_checkpoint(workflow):
    first = workflow["first"]
    assert first["trainer_name"] == TRAINER and first["current_epoch"] == 1
    assert first["uda_state"]["counters"]["iterations"] == 2
    weights = first["network_weights"]
    assert int(weights["inference_domain"]) == 1  # the first target domain, T1
    assert any(k.endswith("norm.weight") and v.shape[0] == 3 for k, v in weights.items())  # one row per domain
    assert (workflow["results"] / "progress.png").is_file()
    validation = json.loads((workflow["results"] / "validation" / "summary.json").read_text())
    assert validation["foreground_mean"]["Dice"] >= 0


def test_resume_continues_where_training_stopped(workflow):
    resumed = torch.load(workflow["results"] / "checkpoint_final.pth", weights_only=False)
    assert resumed["current_epoch"] == 2
    assert resumed["uda_state"]["counters"]["iterations"] == 4
    assert len(resumed["logging"]["train_losses"]) == 2
    log = (workflow["work"] / "log.txt").read_text()
    assert "Epoch 1" in log.split("nnUNetv2_train")[-1] and "Epoch 0\n" not in log.split("--c")[-1]


def test_every_domain_is_predicted_and_evaluated(workflow):
    summary = json.loads((workflow["work"] / "evaluation" / "summary.json").read_text())
    assert set(summary["mean"]) == {"CT", "T1", "T2"}
    assert len(summary["cases"]) == 3
    for case in summary["cases"]:
        assert set(case["metrics"]) == {"liver", "spleen", "kidney_left", "kidney_right", "aorta", "gallbladder"}
    assert (workflow["work"] / "evaluation" / "summary.md").is_file()


def test_batches_mix_target_and_source_cases_in_order(workflow):
    """On the real preprocessed data: target samples first, source (labeled) last, every batch."""
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_uda.data.loader import MixedBatchDataLoader
    from nnunet_uda.domains import DomainTable

    preprocessed = workflow["preprocessed"]
    dataset_json = json.loads((preprocessed / "dataset.json").read_text())
    table = DomainTable.from_dataset_json(dataset_json)
    plans = PlansManager(str(preprocessed / f"{DEFAULT_PLANS}.json"))
    data = nnUNetDatasetBlosc2(str(preprocessed / f"{DEFAULT_PLANS}_3d_fullres"))
    target, source = table.cases_of(table.target), table.cases_of(table.source)
    patch = plans.get_configuration("3d_fullres").patch_size
    loader = MixedBatchDataLoader(data, 4, patch, patch, plans.get_label_manager(dataset_json),
                                  [(target, 3), (source, 1)], oversample_foreground_percent=0.33)
    for _ in range(5):
        keys = loader.generate_train_batch()["keys"]
        assert all(k in target for k in keys[:3]) and keys[3] in source
    with pytest.raises(ValueError, match="batch size"):
        MixedBatchDataLoader(data, 4, patch, patch, plans.get_label_manager(dataset_json), [(target, 1), (source, 1)])
    with pytest.raises(ValueError, match="has no cases"):
        MixedBatchDataLoader(data, 2, patch, patch, plans.get_label_manager(dataset_json), [([], 1), (source, 1)])


def test_uniform_crops_ignore_the_labels(workflow):
    """nnU-Net's crops of a labeled case always hold a forced foreground voxel; uniform crops land anywhere within
    nnU-Net's bounds, as an unlabeled case's."""
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_uda.data.loader import MixedBatchDataLoader
    from nnunet_uda.domains import DomainTable

    preprocessed = workflow["preprocessed"]
    dataset_json = json.loads((preprocessed / "dataset.json").read_text())
    table = DomainTable.from_dataset_json(dataset_json)
    plans = PlansManager(str(preprocessed / f"{DEFAULT_PLANS}.json"))
    data = nnUNetDatasetBlosc2(str(preprocessed / f"{DEFAULT_PLANS}_3d_fullres"))
    patch = [p // 2 for p in plans.get_configuration("3d_fullres").patch_size]
    shape = np.array(patch) * 3
    corner = {1: np.array([[0, 0, 0, 0]])}  # the only foreground voxel: (0, 0, 0)
    pools = [(table.cases_of(table.target), 1), (table.cases_of(table.source), 1)]
    lowers = {}
    for uniform in (False, True):
        loader = MixedBatchDataLoader(data, 2, patch, patch, plans.get_label_manager(dataset_json), pools,
                                      uniform_crops=uniform)
        np.random.seed(0)
        lowers[uniform] = np.array([loader.get_bbox(shape, True, corner)[0] for _ in range(50)])
    assert (lowers[False] <= 0).all()  # every forced crop holds voxel (0, 0, 0)
    assert (lowers[True] >= 0).all() and (lowers[True] <= shape - patch).all()
    assert (lowers[True] > 0).any(1).mean() > 0.9


def test_batch_mirroring_flips_every_sample_and_target_alike(workflow):
    """Same seed, same crops: the batch-mirrored batch is the plain one flipped along one common
    set of axes, images and targets alike; over several batches both orientations occur."""
    import itertools

    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_uda.data.loader import MixedBatchDataLoader
    from nnunet_uda.domains import DomainTable

    preprocessed = workflow["preprocessed"]
    dataset_json = json.loads((preprocessed / "dataset.json").read_text())
    table = DomainTable.from_dataset_json(dataset_json)
    plans = PlansManager(str(preprocessed / f"{DEFAULT_PLANS}.json"))
    data = nnUNetDatasetBlosc2(str(preprocessed / f"{DEFAULT_PLANS}_3d_fullres"))
    patch = plans.get_configuration("3d_fullres").patch_size
    pools = [(table.cases_of(table.target), 2), (table.cases_of(table.source), 2)]
    plain, mirrored = (MixedBatchDataLoader(data, 4, patch, patch, plans.get_label_manager(dataset_json), pools,
                                            batch_mirror_axes=axes) for axes in (None, (0, 1, 2)))
    flips = []
    for seed in range(40):  # P(no unflipped batch among 40) = (7/8)^40 < 0.5%
        np.random.seed(seed)
        a = plain.generate_train_batch()
        np.random.seed(seed)
        b = mirrored.generate_train_batch()
        assert a["keys"] == b["keys"]
        plain_arrays, mirrored_arrays = ([np.asarray(batch[k]) for k in ("data", "target")] for batch in (a, b))
        common = [dims for r in range(4) for dims in itertools.combinations((2, 3, 4), r)
                  if all(np.array_equal(m, np.flip(p, dims)) for m, p in zip(mirrored_arrays, plain_arrays))]
        assert common, f"seed {seed}: the samples were not mirrored alike"
        flips.append(common[0])
    assert () in flips and any(len(dims) for dims in flips), flips


def test_planning_writes_domains_normalisation_and_folds(workflow):
    preprocessed = workflow["preprocessed"]
    plans = json.loads((preprocessed / f"{DEFAULT_PLANS}.json").read_text())
    block = dict(plans["uda"])
    assert set(block.pop("pgps")) == {"3d_fullres"}  # AICL's planned patch sizes (tests/test_aicl.py)
    assert block == {"domains": ["CT", "T1", "T2"], "modalities": {"CT": "CT", "T1": "MR", "T2": "MR"},
                     "target": ["T1", "T2"], "inference_domain": "T1"}
    config = plans["configurations"]["3d_fullres"]
    assert config["normalization_schemes"] == ["ZScoreNormalization"] and config["use_mask_for_norm"] == [False]
    assert config["data_identifier"] == f"{DEFAULT_PLANS}_3d_fullres" and config["batch_size"] == 2
    assert config["architecture"]["network_class_name"].endswith("ResidualEncoderUNet")
    splits = json.loads((preprocessed / "splits_final.json").read_text())
    assert len(splits) == 5
    for split in splits:
        assert split["val"] and all(case.startswith("ph_CT_") for case in split["val"])
        assert {"ph_T1_000", "ph_T2_001"} <= set(split["train"])


def test_cyclegan_training_from_the_dataset_with_the_trained_model_as_segmenter(workflow):
    """``nnUNetv2_uda_cyclegan_train`` on the phantom's CT and T1 training cases, the organ attention
    from the trained fold's softmax (nnU-Net's predictor), one short epoch; then the ablation
    without attention, and the error without a segmenter."""
    import subprocess

    import SimpleITK as sitk

    out = workflow["work"] / "cyclegan_T1"
    small = ("--epochs", "1", "--iterations", "2", "--width", "8", "--n_blocks", "1", "--discriminator_layers", "1",
             "-device", "cpu")
    workflow["run"]("cyclegan", command("nnUNetv2_uda_cyclegan_train"), "-d", str(DATASET), "--target", "T1",
                    "-o", str(out), "--segmenter", str(workflow["results"].parent), "-f", "0", *small)
    config = json.loads((out / "cyclegan.json").read_text())
    assert config["source_modality"] == "CT" and config["target_modality"] == "MR"
    assert len(config["source_cases"]) == 5 and len(config["target_cases"]) == 2
    assert all(c.startswith("ph_T1_") for c in config["target_cases"])
    probabilities = np.load(out / "attention_probabilities" / "fold_0" / f"{config['source_cases'][0]}.npz")
    image = sitk.ReadImage(str(workflow["raw"] / "imagesTr" / f"{config['source_cases'][0]}_0000.nii.gz"))
    assert probabilities["probabilities"].shape[1:] == sitk.GetArrayFromImage(image).shape
    for name in ("generator_final.pth", "checkpoint_latest.pth", "preview_epoch_001.png", "losses.png"):
        assert (out / name).is_file(), name
    assert not (out / "slice_cache").exists()  # the memory-mapped slices are removed after training
    state = torch.load(out / "checkpoint_latest.pth", weights_only=False)
    assert "gan_local" in state["history"][0] and state["settings"]["attention"]

    plain = workflow["work"] / "cyclegan_T1_plain"
    workflow["run"]("cyclegan, no attention", command("nnUNetv2_uda_cyclegan_train"), "-d", str(DATASET),
                    "--target", "T1", "-o", str(plain), "--no_attention", *small)
    assert "gan_local" not in torch.load(plain / "checkpoint_latest.pth", weights_only=False)["history"][0]
    failed = subprocess.run([command("nnUNetv2_uda_cyclegan_train"), "-d", str(DATASET), "--target", "CT", "-o",
                             str(workflow["work"] / "x"), "--no_attention", *small], env=workflow["run"].env,
                            capture_output=True, text=True)
    assert failed.returncode != 0 and "'CT' is a source domain" in failed.stderr
    assert not (workflow["work"] / "x").exists()

    translated = workflow["work"] / "nnUNet_raw" / "Dataset952_UDAPhantomTranslated"
    workflow["run"]("translate", command("nnUNetv2_uda_translate"), "-d", str(DATASET), "-o", "952", "-m", str(out),
                    "-device", "cpu", "--batch_size", "7")
    dataset = json.loads((translated / "dataset.json").read_text())
    table = dataset["uda"]
    assert table["target"] == ["T1"] and set(table["domains"]) == {"T1"}
    made = {c: e for c, e in table["cases"].items() if "translated_from" in e}
    assert sorted(e["translated_from"] for e in made.values()) == sorted(config["source_cases"])
    assert all(e["domain"] == "T1" and e["labels"] == "ground_truth" for e in made.values())
    assert {c for c in table["cases"] if c not in made} == set(config["target_cases"])
    assert set(table["test_cases"]) == {c for c in table["test_cases"] if c.startswith("ph_T1_")}
    source_case = config["source_cases"][0]
    original = sitk.ReadImage(str(workflow["raw"] / "imagesTr" / f"{source_case}_0000.nii.gz"))
    copy = sitk.ReadImage(str(translated / "imagesTr" / f"{source_case}_to_T1_0000.nii.gz"))
    assert copy.GetSize() == original.GetSize() and copy.GetSpacing() == original.GetSpacing()
    assert copy.GetOrigin() == original.GetOrigin() and copy.GetDirection() == original.GetDirection()
    labels = [sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"{case}.nii.gz")))
              for folder, case in ((translated / "labelsTr", f"{source_case}_to_T1"),
                                   (workflow["raw"] / "labelsTr", source_case))]
    assert np.array_equal(*labels)
    workflow["run"]("verify translated", command("nnUNetv2_uda_verify"), "-d", "952", "-np", "1")
    again = subprocess.run([command("nnUNetv2_uda_translate"), "-d", str(DATASET), "-o", "952", "-m", str(out)],
                           env=workflow["run"].env, capture_output=True, text=True)
    assert again.returncode != 0 and "already exists" in again.stderr
