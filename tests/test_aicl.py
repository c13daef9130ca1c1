"""nnUNetTrainerAICL: schedules, gradient paths, and a real nnU-Net run (train, resume, predict)."""
import json
import math
import re

import numpy as np
import pytest
import torch
from conftest import (assert_same_on_every_rank, build_before_joining, ddp_train_steps, on_gloo_ranks, tiny_unet,
                      train_tiny_phantom, trained_states)

from nnunet_uda.losses.patch_contrast import patch_contrastive_loss
from nnunet_uda.losses.structural_consistency import structural_consistency_loss
from nnunet_uda.nn.network import DomainConditionedUNet
from nnunet_uda.nn.organ_patches import OrganPatchSampler
from nnunet_uda.pipeline import command
from nnunet_uda.planning import DEFAULT_PLANS
from nnunet_uda.training.aicl import nnUNetTrainerAICL, nnUNetTrainerAICL_ColdStart, nnUNetTrainerAICL_noFPC_noCSC


def paper_weights(t, T=20):
    """Section 3.2, transcribed."""
    r = min(1, max(0, (t - 10) / T))
    return {"sup": 1.0, "supUL": 1 - r, "csc": r, "fpc": 0.5 * r}


@pytest.mark.parametrize("t", [0, 5, 10, 12.5, 20, 29.9, 30, 45])
def test_schedule_is_the_papers(t):
    trainer = object.__new__(nnUNetTrainerAICL)
    assert trainer.loss_weights(t) == pytest.approx(paper_weights(t))


def test_variants_switch_terms_and_warm_up():
    ablation = object.__new__(nnUNetTrainerAICL_noFPC_noCSC).loss_weights(40)
    assert ablation["fpc"] == ablation["csc"] == 0 and ablation["supUL"] == 0
    cold = object.__new__(nnUNetTrainerAICL_ColdStart).loss_weights(5)
    assert cold["fpc"] == pytest.approx(0.5 * 5 / 20) and cold["supUL"] == pytest.approx(0.75)


def test_labeled_anchors_hold_the_hand_labeled_maps_of_each_sample():
    trainer = object.__new__(nnUNetTrainerAICL)  # csc_anchors = "labeled" by default
    trainer.device = torch.device("cpu")
    hand = {"ct_1": np.array([1, 1, 1, 0], bool), "t1_1": np.array([1, 0, 0, 1], bool)}  # organs 1-2 / organ 3
    trainer._case_annotated = {"ground_truth": hand}
    probs = torch.softmax(torch.randn(2, 4, 3, 3, 3), 1).requires_grad_()
    hand_labeled = trainer.batch_annotations(["ct_1", "t1_1"], "ground_truth")
    trainer.csc_maps(probs, hand_labeled, torch.tensor([0, 1]))[:, 1:].sum().backward()
    moved = probs.grad.flatten(2).abs().sum(2) > 0
    assert torch.equal(moved[:, 1:], torch.tensor([[False, False, True], [True, True, False]]))


def test_unknown_csc_anchors_are_refused_before_training():
    trainer = object.__new__(type("Bad", (nnUNetTrainerAICL,), {"csc_anchors": "target"}))
    with pytest.raises(ValueError, match="csc_anchors = 'target'; choose one of 'source', 'labeled', None"):
        trainer.initialize()


@pytest.mark.parametrize("name", ["nnUNetTrainerAICL", "nnUNetTrainerAICL_noFPC_noCSC", "nnUNetTrainerUDA_Adam"])
def test_paper_optimizer_is_adam_at_a_constant_1e_4(name):
    import nnunet_uda.training
    trainer = object.__new__(getattr(nnunet_uda.training, name))
    trainer.network, trainer.num_epochs = torch.nn.Linear(2, 2), 10
    optimizer, scheduler = trainer.configure_optimizers()
    assert type(optimizer) is torch.optim.Adam and optimizer.defaults["weight_decay"] == 1e-5
    scheduler.step(7)
    assert optimizer.param_groups[0]["lr"] == 1e-4


@pytest.mark.parametrize("name", ["nnUNetTrainerUDA", "nnUNetTrainerAICL_SGD_Eq5",
                                  "nnUNetTrainerAICL_SGD_noFPC_noCSC"])
def test_without_paper_optimizer_the_optimizer_is_nnunets_sgd(name):
    import nnunet_uda.training
    trainer = object.__new__(getattr(nnunet_uda.training, name))
    trainer.network, trainer.num_epochs, trainer.initial_lr, trainer.weight_decay = torch.nn.Linear(2, 2), 10, 1e-2, 3e-5
    optimizer, _ = trainer.configure_optimizers()
    assert type(optimizer) is torch.optim.SGD


def test_contrastive_gradients_reach_the_encoder_and_its_conditional_norms():
    from nnunet_uda.nn.conditional_norm import ConditionalInstanceNorm
    torch.manual_seed(0)
    net = DomainConditionedUNet(tiny_unet("resenc", num_classes=4), ["CT", "T1", "T2"], "T1")
    x = torch.randn(2, 1, 16, 16, 16)
    domains = torch.tensor([1, 0])  # T1 and CT; T2 absent from the batch
    out = net(x, domains, return_features=True)
    organs = torch.zeros(2, 16, 16, 16, dtype=torch.long)  # three organs in three octants
    organs[:, :8, :8, :8], organs[:, 8:, :8, 8:], organs[:, :8, 8:, 8:] = 1, 2, 3
    guidance = torch.nn.functional.one_hot(organs, 4).movedim(-1, 1).float()
    patches = OrganPatchSampler((3, 3, 3))(out.encoder[2], guidance)
    patch_contrastive_loss(patches.embeddings, patches.present).backward(retain_graph=True)
    norms = [m for m in net.encoder.modules() if isinstance(m, ConditionalInstanceNorm)]
    for norm in norms:  # the batch's domains get gradients, the absent one none
        assert norm.weight.grad[[0, 1]].abs().sum(1).min() > 0 and norm.weight.grad[2].abs().sum() == 0
    assert net.encoder.stem.convs[0].conv.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.decoder.seg_layers.parameters())  # l_fpc acts on the encoder only
    net.zero_grad()
    probs = torch.softmax(out.logits[0], 1)
    structural_consistency_loss(probs, domains, torch.ones(2, 3, dtype=torch.bool)).backward()
    assert net.decoder.seg_layers[-1].weight.grad.abs().sum() > 0 and norms[0].weight.grad[[0, 1]].abs().sum() > 0


DATASET = 952
TRAINER = "nnUNetTrainerAICL_ColdStart"


@pytest.fixture(scope="module")
def aicl_run(tmp_path_factory):
    """Partial labels with registration-like pseudo labels for the rest, on modality pairs of one
    subject, as in AICL's setting."""
    paths = train_tiny_phantom(tmp_path_factory.mktemp("aicl"), DATASET, TRAINER, (
        "--n_source", "4", "--n_target", "2", "--partial_labels", "--pseudo_labels", "reg", "--paired"), iterations=3)
    embeddings = paths["work"] / "embeddings.png"
    paths["run"]("embeddings", command("nnUNetv2_uda_embeddings"), "-d", str(DATASET), "-tr", TRAINER, "-n", "2",
                 "-o", str(embeddings))
    return {**paths, "embeddings": embeddings}


def test_planning_derives_pgps_patch_sizes(aicl_run):
    plans = json.loads((aicl_run["preprocessed"] / f"{DEFAULT_PLANS}.json").read_text())
    pgps = plans["uda"]["pgps"]["3d_fullres"]
    assert all(s % 2 == 1 and 1 <= s <= n for s, n in zip(pgps["patch_size"], pgps["feature_shape"]))
    assert set(pgps["extents"]) == {"liver", "spleen", "kidney_left", "kidney_right", "aorta", "gallbladder"}
    assert pgps["extents"]["gallbladder"]["n"] == 2  # hand-drawn in the two T1 cases only, not the pseudo ones
    assert (aicl_run["preprocessed"] / "pgps_extents_3d_fullres.png").is_file()


def test_every_aicl_term_is_trained_logged_and_resumed(aicl_run):
    checkpoint = torch.load(aicl_run["results"] / "checkpoint_final.pth", weights_only=False)
    assert checkpoint["current_epoch"] == 2 and checkpoint["uda_state"]["counters"]["iterations"] == 6
    logged = checkpoint["logging"]
    for name in ("l_sup", "l_supUL", "l_csc", "l_fpc", "lambda_fpc", "lambda_supUL"):
        assert len(logged[name]) == 2 and all(math.isfinite(v) for v in logged[name]), name
    # cold start: the ramps move from the first iteration (t = i / 3 epochs)
    assert logged["lambda_fpc"][1] > logged["lambda_fpc"][0] > 0 and logged["lambda_supUL"][1] < 1
    assert (aicl_run["results"] / "progress.png").is_file()
    log = (aicl_run["work"] / "log.txt").read_text()
    assert "Epoch 1" in log.split("--c")[-1]
    assert re.search(r"twin batches: [1-4] target cases with their source twin", log)
    assert aicl_run["first"]["current_epoch"] == 1 and aicl_run["first"]["uda_state"]["counters"]["iterations"] == 3


def test_embedding_plot(aicl_run):
    assert aicl_run["embeddings"].is_file() and aicl_run["embeddings"].stat().st_size > 10_000


def test_predictions_for_every_domain(aicl_run):
    import SimpleITK as sitk
    files = sorted(aicl_run["predictions"].rglob("*.nii.gz"))
    assert len(files) == 3
    for f in files:
        assert set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(f))))) <= set(range(7))


def _ddp_steps(rank, trainer):
    batches = ddp_train_steps(trainer, steps=2)
    return {"data": batches[0]["data"], "pairs": trainer.n_twin_pairs, "states": trained_states(trainer)}


def test_the_network_stays_identical_across_ddp_ranks(aicl_run, tmp_path):
    """Two iterations on two gloo ranks, network A (with the conditional norms of three domains, two of which a
    twin batch uses) in DDP as nnU-Net wraps it: equal on both ranks afterwards; one twin pair per rank."""
    from nnunet_uda.training import nnUNetTrainerAICL_ColdStart

    ranks = on_gloo_ranks(_ddp_steps, tmp_path, aicl_run, tmp_path / "results", nnUNetTrainerAICL_ColdStart,
                          before_joining=build_before_joining)
    assert [r["pairs"] for r in ranks] == [1, 1]
    assert not torch.equal(ranks[0]["data"], ranks[1]["data"])
    assert_same_on_every_rank([r["states"] for r in ranks])
