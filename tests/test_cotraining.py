"""The co-training base (nnUNetTrainerCPS) and nnUNetTrainerDVCL: eq. 2 against its transcription, the
ramp, the projection head, and a real nnUNetv2_train / --c / nnUNetv2_predict run on a semi-supervised
phantom with the trainer rebuilt in-process from its preprocessed data."""
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader

from conftest import (assert_same_on_every_rank, build_before_joining, changed, ddp_train_steps, on_gloo_ranks,
                      train_tiny, trained_states)
from nnunet_uda.losses.cross_pseudo import cross_pseudo_supervision
from nnunet_uda.nn.projection import ProjectionHead
from nnunet_uda.training.schedules import sigmoid_rampup

DATASET = 954
TRAINER = "nnUNetTrainerDVCL"


def test_cross_pseudo_supervision_is_eq2():
    torch.manual_seed(0)
    a, b = (torch.randn(2, 4, 3, 5, 2, dtype=torch.float64, requires_grad=True) for _ in range(2))
    total = 0.0
    for x, y in ((a, b), (b, a)):  # CE(p_x, argmax p_y), averaged over samples and voxels
        p = torch.softmax(x, 1)
        terms = [-torch.log(p[i, int(y[i, :, z, h, w].argmax()), z, h, w])
                 for i in range(2) for z in range(3) for h in range(5) for w in range(2)]
        total = total + sum(terms) / len(terms)
    loss = cross_pseudo_supervision(a, b)
    assert torch.allclose(loss.double(), total)
    # each network learns from the other's hard decision only: the gradient of a is that of CE(a, argmax b)
    (grad_a,) = torch.autograd.grad(loss, a, retain_graph=True)
    (expected,) = torch.autograd.grad(F.cross_entropy(a, b.argmax(1)), a)
    assert torch.allclose(grad_a, expected)


def test_sigmoid_rampup():
    assert sigmoid_rampup(0, 1.0) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(0.5, 1.0) == pytest.approx(math.exp(-1.25))
    assert sigmoid_rampup(1.0, 1.0) == sigmoid_rampup(7.0, 1.0) == sigmoid_rampup(3.0, 0) == 1.0


def test_projection_head_is_a_voxelwise_mlp():
    head = ProjectionHead(6, 4)
    maps = torch.randn(2, 6, 3, 4, 5)
    vectors = maps.movedim(1, -1).reshape(-1, 6)
    assert torch.allclose(head(maps).movedim(1, -1).reshape(-1, 4), head(vectors), atol=1e-6)


@pytest.fixture(scope="module")
def dvcl_run(semi_supervised_phantom):
    """One epoch on the shared semi-supervised phantom, a second through --c, prediction of the test case."""
    return train_tiny(semi_supervised_phantom, TRAINER)


def test_training_logs_every_term_and_resumes(dvcl_run):
    checkpoint = torch.load(dvcl_run["results"] / "checkpoint_final.pth", weights_only=False)
    assert checkpoint["current_epoch"] == 2 and checkpoint["uda_state"]["counters"]["iterations"] == 6
    for name in ("l_sup", "l_cps", "l_hqcl", "l_dvcl", "lambda_cps"):
        assert len(checkpoint["logging"][name]) == 2 and all(map(math.isfinite, checkpoint["logging"][name])), name
    assert 0 < checkpoint["logging"]["lambda_cps"][0] < checkpoint["logging"]["lambda_cps"][1] < 0.1
    first = dvcl_run["first"]
    assert set(first["uda_state"]) == {"counters", "network_b", "head_a", "head_b", "hqcl_bank", "dvcl_queue"}
    # network A is nnU-Net's own network (what nnUNetv2_predict loaded); B started from another draw
    a, b = first["network_weights"], first["uda_state"]["network_b"]
    assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())
    assert first["uda_state"]["dvcl_queue"]["count"] > 0 and int(first["uda_state"]["hqcl_bank"]["count"].sum()) > 0
    assert len(list(dvcl_run["predictions"].rglob("*.nii.gz"))) == 1


def test_checkpoint_restores_network_b_heads_bank_and_queue_exactly(dvcl_run, build_trainer):
    from nnunet_uda.training import nnUNetTrainerDVCL

    trainer = build_trainer(dvcl_run, nnUNetTrainerDVCL)
    trainer.load_checkpoint(dvcl_run["first"])
    saved = dvcl_run["first"]["uda_state"]
    for name, module in (("network_b", trainer.network_b), ("head_a", trainer.heads[0]), ("head_b", trainer.heads[1])):
        assert all(torch.equal(v, saved[name][k]) for k, v in module.state_dict().items()), name
    for name, state in (("hqcl_bank", trainer.hqcl.state_dict()), ("dvcl_queue", trainer.dvcl.state_dict())):
        for key, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(saved[name][key])), (name, key)
    assert trainer.counters.values["iterations"] == 3


@pytest.mark.parametrize("term", ["cps", "dvcl"])
def test_one_unsupervised_term_trains_the_networks_and_nothing_else(dvcl_run, build_trainer, term):
    """One optimiser step on L_cps (or L_dvcl) alone: both segmentation networks change; the projection heads
    do not (L_cps does not use them, L_dvcl's features only choose neighbours)."""
    from nnunet_uda.training import nnUNetTrainerDVCL

    torch.manual_seed(0)
    trainer = build_trainer(dvcl_run, nnUNetTrainerDVCL)
    trainer.load_checkpoint(dvcl_run["first"])  # a filled queue, so L_dvcl has candidates
    trainer.dataloader_train, _ = trainer.get_dataloaders()
    batch = next(trainer.dataloader_train)
    data, target = trainer._to_device(batch)
    assert trainer.n_unlabeled == 1
    assert trainer.domain_table.entry(batch["keys"][0]).labels == "none"
    assert trainer.domain_table.entry(batch["keys"][1]).labels == "ground_truth"
    modules = {"a": trainer.network, "b": trainer.network_b, "head_a": trainer.heads[0], "head_b": trainer.heads[1]}
    before = {name: {k: v.clone() for k, v in m.state_dict().items()} for name, m in modules.items()}
    trainer.optimizer.zero_grad(set_to_none=True)
    a, b = trainer.run_pair(data)
    if term == "cps":
        loss = cross_pseudo_supervision(a.logits[0][:1], b.logits[0][:1])
    else:
        loss = trainer.method_losses(a, b, target[0][1:], 1)["dvcl"][1]
        assert loss.requires_grad and torch.isfinite(loss)
    trainer.optimizer_step(loss, trainer.optimizer, trainer.clipping_groups())
    assert changed(before["a"], trainer.network) and changed(before["b"], trainer.network_b)
    assert not changed(before["head_a"], trainer.heads[0]) and not changed(before["head_b"], trainer.heads[1])


@pytest.mark.parametrize("name, weight", [("nnUNetTrainerCPS", 1.0), ("nnUNetTrainerCPS_PaperScale", 0.5)])
def test_cps_loss_is_the_weighted_sum_of_both_networks_terms(dvcl_run, build_trainer, name, weight):
    """L = w (L_sup(A) + L_sup(B)) + lambda_u(t) L_cps, with w nnU-Net's 1 by default and eq. 1's 1/2 in the
    paper-scale variant, recomputed from the two networks' outputs."""
    from nnunet_uda.training import TRAINERS

    trainer = build_trainer(dvcl_run, TRAINERS[name])
    trainer.dataloader_train, _ = trainer.get_dataloaders()
    batch = next(trainer.dataloader_train)
    data, target = trainer._to_device(batch)
    with torch.no_grad():
        loss = trainer.training_loss(data, target, batch["keys"])
        a, b = trainer.run_pair(data)
    labeled, annotated = [t[1:] for t in target], trainer.batch_annotations(batch["keys"][1:])
    sup = sum(trainer.supervised_loss([x[1:] for x in n.logits], labeled, annotated) for n in (a, b))
    cps = cross_pseudo_supervision(a.logits[0][:1], b.logits[0][:1])
    assert trainer.supervised_weight == weight
    assert loss.item() == pytest.approx((weight * sup + 0.1 * sigmoid_rampup(0.0, 1.0) * cps).item(), rel=1e-5)


def test_hqcl_trains_the_heads(dvcl_run, build_trainer):
    from nnunet_uda.training import nnUNetTrainerDVCL

    torch.manual_seed(1)
    trainer = build_trainer(dvcl_run, nnUNetTrainerDVCL)
    trainer.dataloader_train, _ = trainer.get_dataloaders()
    data, target = trainer._to_device(next(trainer.dataloader_train))
    before = [{k: v.clone() for k, v in h.state_dict().items()} for h in trainer.heads]
    trainer.optimizer.zero_grad(set_to_none=True)
    a, b = trainer.run_pair(data)
    loss = trainer.method_losses(a, b, target[0][1:], 1)["hqcl"][1]
    trainer.optimizer_step(loss, trainer.optimizer, trainer.clipping_groups())
    assert all(changed(saved, head) for saved, head in zip(before, trainer.heads))


def test_a_dataset_without_unlabeled_cases_is_refused(dvcl_run, build_trainer):
    from nnunet_uda.training import nnUNetTrainerCPS

    trainer = build_trainer(dvcl_run, nnUNetTrainerCPS)
    labeled = trainer.domain_table.cases_with_labels("ground_truth")
    with pytest.raises(RuntimeError, match="no unlabeled"):
        trainer.batch_pools(labeled)
    assert np.isclose(trainer.cps_weight, 0.1)


def forced(trainer) -> list[bool]:
    """Which samples of the trainer's batch nnU-Net's loader centres on foreground."""
    shares = SimpleNamespace(batch_size=trainer.batch_size,
                             oversample_foreground_percent=trainer.oversample_foreground_percent)
    return [nnUNetDataLoader._oversample_last_XX_percent(shares, i) for i in range(trainer.batch_size)]


def test_unlabeled_cases_added_to_the_planned_labeled_batch(dvcl_run, build_trainer):
    """``unlabeled_per_labeled``: nnU-Net's planned batch (2) stays labeled at the end of the batch with its one
    foreground-forced sample (nnU-Net's loader rule), 2 unlabeled cases come before it, and a step trains."""
    from nnunet_uda.training import nnUNetTrainerCPS, nnUNetTrainerCPS_PlusUnlabeled
    from nnunet_uda.training.cotraining import labeled_and_unlabeled

    split = build_trainer(dvcl_run, nnUNetTrainerCPS)
    trainer = build_trainer(dvcl_run, nnUNetTrainerCPS_PlusUnlabeled)
    trainer._set_batch_size_and_oversample()  # repeatable
    trainer.dataloader_train, _ = trainer.get_dataloaders()
    assert (split.batch_size, split.n_unlabeled, forced(split)) == (2, 1, [False, True])
    assert (trainer.batch_size, trainer.n_unlabeled, forced(trainer)) == (4, 2, [False, False, False, True])
    batch = next(trainer.dataloader_train)
    labeled, unlabeled = labeled_and_unlabeled(trainer.domain_table, batch["keys"])
    assert batch["keys"][:2] == unlabeled and batch["keys"][2:] == labeled
    assert np.isfinite(trainer.train_step(batch)["loss"])


def test_voxel_embeddings_of_the_test_set(dvcl_run, tmp_path):
    from nnunet_uda.pipeline import command

    png = tmp_path / "dvcl_embeddings.png"
    dvcl_run["run"]("embeddings", command("nnUNetv2_uda_embeddings"), "-d", str(DATASET), "-tr", TRAINER, "-f", "0",
                    "-n", "1", "-o", str(png))
    assert png.read_bytes().startswith(b"\x89PNG") and png.stat().st_size > 10_000
    scores = json.loads(png.with_suffix(".json").read_text())
    assert all(math.isfinite(scores[name]) for name in ("silhouette", "davies_bouldin", "v_measure"))
    assert scores["cases"] == 1 and len(scores["voxels_per_class"]) >= 2
    assert all(0 < n <= 200 for n in scores["voxels_per_class"].values())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dvcl_embeddings.json", "dvcl_embeddings.png"]


def _ddp_steps(rank, trainer):
    batches = ddp_train_steps(trainer, steps=2)
    return {"data": batches[0]["data"], "split": (trainer.batch_size, trainer.n_unlabeled, sum(forced(trainer))),
            "states": trained_states(trainer)}


@pytest.mark.parametrize("name, split", [("nnUNetTrainerDVCL", (2, 1)), ("nnUNetTrainerDACL", (2, 1)),
                                         ("nnUNetTrainerCPS_PlusUnlabeled", (4, 2))])
def test_both_networks_heads_and_banks_stay_identical_across_ddp_ranks(semi_supervised_phantom, tmp_path, name, split):
    """Two iterations on two gloo ranks with different batches, the networks and heads in DDP as nnU-Net and the
    trainer wrap them: networks, heads, banks and queues equal on both ranks afterwards; each rank's (batch,
    unlabeled) split of the planned batch of 4: half of its 2 cases, or its 2 labeled cases plus 2 unlabeled;
    the one foreground-forced sample of nnU-Net's planned batch on the second rank, as nnU-Net splits it."""
    from nnunet_uda import training

    ranks = on_gloo_ranks(_ddp_steps, tmp_path, semi_supervised_phantom, tmp_path / "results",
                          getattr(training, name), before_joining=build_before_joining)
    assert [r["split"] for r in ranks] == [(*split, 0), (*split, 1)]
    assert not torch.equal(ranks[0]["data"], ranks[1]["data"])
    assert_same_on_every_rank([r["states"] for r in ranks])
