"""nnUNetTrainerDACL in nnU-Net: a real nnUNetv2_train / --c / nnUNetv2_predict run on the shared semi-supervised
phantom, the schedule of eq. 1, and one step of L_CL^soft training the heads and the encoders."""
import math

import pytest
import torch

from conftest import changed, train_tiny
from nnunet_uda.losses.cross_pseudo import cross_pseudo_supervision

TRAINER = "nnUNetTrainerDACL"


@pytest.fixture(scope="module")
def dacl_run(semi_supervised_phantom):
    return train_tiny(semi_supervised_phantom, TRAINER)


def test_training_logs_eq1_and_resumes_with_the_bank(dacl_run, build_trainer):
    from nnunet_uda.training import nnUNetTrainerDACL

    checkpoint = torch.load(dacl_run["results"] / "checkpoint_final.pth", weights_only=False)
    assert checkpoint["current_epoch"] == 2 and checkpoint["uda_state"]["counters"]["iterations"] == 6
    for name in ("l_sup", "l_cps", "l_dacl", "lambda_cps", "lambda_dacl"):
        assert len(checkpoint["logging"][name]) == 2 and all(map(math.isfinite, checkpoint["logging"][name])), name
    assert checkpoint["logging"]["lambda_cps"] == [1.0, 1.0]  # lambda_cross = 1, no ramp
    first = dacl_run["first"]
    assert set(first["uda_state"]) == {"counters", "network_b", "head_a", "head_b", "dacl_bank"}
    assert int(first["uda_state"]["dacl_bank"]["count"].sum()) > 0
    trainer = build_trainer(dacl_run, nnUNetTrainerDACL)
    trainer.load_checkpoint(first)
    for key, value in trainer.contrast.state_dict().items():
        assert torch.equal(value, first["uda_state"]["dacl_bank"][key]), key
    assert len(list(dacl_run["predictions"].rglob("*.nii.gz"))) == 1


def test_lambda_cl_waits_then_follows_the_gaussian_warm_up(dacl_run, build_trainer):
    from nnunet_uda.training import nnUNetTrainerDACL

    trainer = build_trainer(dacl_run, nnUNetTrainerDACL)
    trainer.num_epochs, trainer.num_iterations_per_epoch = 300, 100  # 30,000 iterations, as the paper's run
    for t, expected in ((0, 0.0), (999, 0.0), (1000, 0.1 * math.exp(-5 * (1 - 1000 / 30000) ** 2)),
                        (15000, 0.1 * math.exp(-1.25)), (30000, 0.1)):
        trainer.counters.values["iterations"] = t
        assert trainer.contrast_lambda() == pytest.approx(expected), t
    trainer.num_epochs = 3  # 300 iterations: the warm-up is 1/30 of the run
    trainer.counters.values["iterations"] = 9
    assert trainer.contrast_lambda() == 0
    trainer.counters.values["iterations"] = 10
    assert trainer.contrast_lambda() > 0


@pytest.mark.parametrize("level", ["voxel", "region"])
def test_the_contrast_alone_trains_both_heads_and_encoders(dacl_run, build_trainer, level):
    from nnunet_uda.training import nnUNetTrainerDACL, nnUNetTrainerDACL_Region

    torch.manual_seed(0)
    trainer = build_trainer(dacl_run, nnUNetTrainerDACL if level == "voxel" else nnUNetTrainerDACL_Region)
    trainer.load_checkpoint(dacl_run["first"])
    trainer.dataloader_train, _ = trainer.get_dataloaders()
    data, target = trainer._to_device(next(trainer.dataloader_train))
    encoders = {"a": trainer.network.encoder, "b": trainer.network_b.encoder}
    modules = {**encoders, "head_a": trainer.heads[0], "head_b": trainer.heads[1]}
    before = {name: {k: v.clone() for k, v in m.state_dict().items()} for name, m in modules.items()}
    trainer.optimizer.zero_grad(set_to_none=True)
    a, b = trainer.run_pair(data)
    weight, loss = trainer.method_losses(a, b, target[0][1:], 1)["dacl"]
    assert loss.requires_grad and torch.isfinite(loss) and loss.item() > 0
    trainer.optimizer_step(loss, trainer.optimizer, trainer.clipping_groups())
    assert all(changed(before[name], module) for name, module in modules.items())


def test_variants_switch_what_their_table_row_names(dacl_run, build_trainer):
    from nnunet_uda.training import nnUNetTrainerDACL_CPS, nnUNetTrainerDACL_PaperSGD, nnUNetTrainerDACL_PCL

    baseline = build_trainer(dacl_run, nnUNetTrainerDACL_CPS)
    assert baseline.heads == [] and "dacl_bank" not in baseline.extra_state
    assert baseline.method_losses(None, None, None, 1) == {}
    pcl = build_trainer(dacl_run, nnUNetTrainerDACL_PCL)
    assert (pcl.contrast.sampling, pcl.contrast.use_bank, pcl.contrast.use_positiveness) == ("random", False, False)
    paper = build_trainer(dacl_run, nnUNetTrainerDACL_PaperSGD)
    assert {(g["momentum"], g["weight_decay"]) for g in paper.optimizer.param_groups} == {(0.9, 1e-4)}
    assert len(paper.optimizer.param_groups) == 2


def test_labeled_contrast_takes_no_unlabeled_voxel_however_confident(dacl_run, build_trainer):
    from nnunet_uda.training import nnUNetTrainerDACL, nnUNetTrainerDACL_LabeledContrast
    from nnunet_uda.training.cotraining import CoTrainingOutputs

    torch.manual_seed(0)
    labels = torch.zeros(1, 1, 8, 8, 8)
    labels[0, 0, :2, :2, :] = 1  # 32 labeled voxels of class 1, the rest background
    counts = {}
    for trainer_class in (nnUNetTrainerDACL, nnUNetTrainerDACL_LabeledContrast):
        trainer = build_trainer(dacl_run, trainer_class)
        logits = torch.zeros(2, trainer.label_manager.num_segmentation_heads, 8, 8, 8)
        logits[0, 1] = 50.0  # the unlabeled sample: class 1 everywhere, probability 1
        channels = trainer.configuration_manager.network_arch_init_kwargs["features_per_stage"][0]
        outputs = CoTrainingOutputs([logits], torch.randn(2, channels, 8, 8, 8), trainer.heads[0])
        _, classes = trainer.class_features(outputs, labels, 1)
        counts[trainer_class.__name__] = int((classes == 1).sum())
    assert counts == {"nnUNetTrainerDACL": 512, "nnUNetTrainerDACL_LabeledContrast": 32}


def test_ramped_cross_ramps_lambda_cross_to_one(dacl_run, build_trainer):
    from nnunet_uda.training import nnUNetTrainerDACL_RampedCross

    trainer = build_trainer(dacl_run, nnUNetTrainerDACL_RampedCross)
    loader, _ = trainer.get_dataloaders()
    batch = next(loader)
    data, target = trainer._to_device(batch)
    weights = []
    for t in (0, trainer.num_epochs * trainer.num_iterations_per_epoch):
        trainer.counters.values["iterations"] = t
        weights.append(trainer.loss_terms(data, target, batch["keys"])["cps"][0])
    assert weights == [pytest.approx(math.exp(-5)), 1.0]


def test_cross_supervision_covers_every_case_of_the_batch(dacl_run, build_trainer):
    """DACL's L_cross on the labeled and the unlabeled case of the batch ("all samples are utilized to construct
    cross-supervised learning"), the CPS base's on the unlabeled one alone (DVCL eq. 2)."""
    from nnunet_uda.training import nnUNetTrainerCPS, nnUNetTrainerDACL

    for trainer_class, crossed, left_out in ((nnUNetTrainerDACL, slice(None), slice(1)),
                                             (nnUNetTrainerCPS, slice(1), slice(None))):
        trainer = build_trainer(dacl_run, trainer_class)
        loader, _ = trainer.get_dataloaders()
        batch = next(loader)
        data, target = trainer._to_device(batch)
        data[1] = 0.0  # a blank second case: its cross loss is far from the first's, so the two sets tell apart
        with torch.no_grad():
            value = trainer.loss_terms(data, target, batch["keys"])["cps"][1].item()
            a, b = trainer.run_pair(data)
        expected, other = (cross_pseudo_supervision(a.logits[0][s], b.logits[0][s]).item() for s in (crossed, left_out))
        assert value == pytest.approx(expected, rel=1e-5) and value != pytest.approx(other, rel=1e-2)
