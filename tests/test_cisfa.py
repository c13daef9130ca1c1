"""nnUNetTrainerCISFA in nnU-Net: real nnUNetv2_train runs in 3d_fullres (with --c) and 2d, nnUNetv2_predict, the
generator handed to nnUNetv2_uda_translate; gradient isolation of the discriminators, the sign of D_s's term, the
patch heads stepped, the checkpoint restoring every network and optimiser, a step on two DDP ranks."""
import json
import math

import numpy as np
import pytest
import torch

from conftest import (assert_same_on_every_rank, build_before_joining, changed, ddp_train_steps, on_gloo_ranks,
                      train_tiny, trained_states)

TRAINER = "nnUNetTrainerCISFA"


@pytest.fixture(scope="module")
def cisfa_run(unpaired_phantom):
    return train_tiny(unpaired_phantom, TRAINER)


def test_training_logs_every_term_resumes_and_writes_its_generator(cisfa_run):
    from nnunet_uda.gan.training import load_generator

    checkpoint = torch.load(cisfa_run["results"] / "checkpoint_final.pth", weights_only=False)
    assert checkpoint["current_epoch"] == 2
    for name in ("l_g_gan", "l_pcl", "l_sup", "l_s_gan", "l_gcl", "l_d_image", "l_d_seg"):
        assert len(checkpoint["logging"][name]) == 2 and all(map(math.isfinite, checkpoint["logging"][name])), name
    assert set(cisfa_run["first"]["uda_state"]) == {"counters", "generator", "d_image", "d_seg", "patch_heads",
                                                    "global_head", "optimizer_g", "optimizer_d"}
    assert len(list(cisfa_run["predictions"].rglob("*.nii.gz"))) == 3  # one test case per domain
    generator = load_generator(cisfa_run["results"] / "generator_final.pth")
    assert generator.input_normalization == "zscore"
    translation = json.loads((cisfa_run["results"] / "translation.json").read_text())
    assert (translation["source_domain"], translation["target_domain"]) == ("CT", "T1")
    assert (cisfa_run["results"] / "cisfa_preview.png").stat().st_size > 5_000


def test_checkpoint_restores_every_network_and_optimizer(cisfa_run, build_trainer):
    from nnunet_uda.training import nnUNetTrainerCISFA

    trainer = build_trainer(cisfa_run, nnUNetTrainerCISFA)
    trainer.load_checkpoint(cisfa_run["first"])
    saved = cisfa_run["first"]["uda_state"]
    for name in ("generator", "d_image", "d_seg", "patch_heads", "global_head"):
        state = getattr(trainer, name).state_dict()
        assert all(torch.equal(v, saved[name][k]) for k, v in state.items()), name
    moments = trainer.optimizer_g.state_dict()["state"]
    assert moments and all(torch.equal(v["exp_avg"], saved["optimizer_g"]["state"][k]["exp_avg"])
                           for k, v in moments.items())


def test_the_generator_translates_into_one_target_domain(cisfa_run, build_trainer, monkeypatch):
    from nnunet_uda.training import nnUNetTrainerCISFA

    trainer = build_trainer(cisfa_run, nnUNetTrainerCISFA)
    table, cases = trainer.domain_table, list(trainer.domain_table.cases)
    (first, _), _ = trainer.batch_pools(cases)
    monkeypatch.setenv("nnUNet_uda_target_domain", "T2")
    (chosen, _), (source, _) = trainer.batch_pools(cases)
    assert {table.entry(c).domain for c in first} == {"T1"} and {table.entry(c).domain for c in chosen} == {"T2"}
    assert {table.entry(c).domain for c in source} == {"CT"}
    monkeypatch.setenv("nnUNet_uda_target_domain", "CT")
    with pytest.raises(RuntimeError, match="CT is not a target domain"):
        trainer.batch_pools(cases)


def test_the_generator_losses_see_a_few_slices_of_each_3d_patch(cisfa_run, build_trainer):
    from nnunet_uda.training import nnUNetTrainerCISFA

    trainer = build_trainer(cisfa_run, nnUNetTrainerCISFA)
    axis = 2 + trainer.slice_axis
    shape = [2, 1, 6, 7, 8]
    shape[axis] = 10
    index = torch.arange(10.0).reshape([10 if d == axis else 1 for d in range(5)]).expand(shape)
    image, labels = trainer.slice_subset(index, index.clone())
    assert image.shape[axis] == trainer.generator_slices == 4 and torch.equal(image, labels)
    kept = image.movedim(axis, 0).flatten(1)
    assert (kept == kept[:, :1]).all() and kept[:, 0].unique().numel() == 4  # whole slices, one draw for all
    assert trainer.to_slices(image).shape == (2 * 4, 1, *[n for d, n in enumerate(shape[2:]) if d + 2 != axis])


def one_batch(trainer):
    """A training batch as train_step gets it (un-augmented, target cases first): x_b, y_b, x_a, y_a."""
    trainer.dataloader_train, _ = trainer.get_dataloaders()
    batch = next(trainer.dataloader_train)
    t = trainer.n_target
    return batch["data"][:t], batch["target"][:t], batch["data"][t:], batch["target"][t:]


def test_nnunets_augmentation_comes_after_the_translation(cisfa_run, build_trainer):
    """The loader gives un-augmented crops at nnU-Net's initial patch size; ``augment`` gives Seg patches of the
    final size, each translation moved by the spatial draw of its labels (a "translation" equal to its label map
    stays correlated with the augmented labels; one with its labels mirrored does not)."""
    from nnunet_uda.training import nnUNetTrainerCISFA

    np.random.seed(3)
    torch.manual_seed(3)  # nnU-Net's transforms draw from both generators
    trainer = build_trainer(cisfa_run, nnUNetTrainerCISFA)
    x_b, y_b, x_a, y_a = one_batch(trainer)
    initial = trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()[2]
    patch = list(trainer.configuration_manager.patch_size)
    assert list(x_a.shape[2:]) == list(initial) != patch and list(y_a.shape[2:]) == list(initial)

    def correlations(fake):
        out = []
        for _ in range(6):
            seen_b, seen_a, seen_fake, labels = trainer.augment(x_b, y_b, x_a, fake, y_a)
            assert [list(x.shape[2:]) for x in (seen_b, seen_a, seen_fake, labels[0])] == [patch] * 4
            out.append(np.corrcoef(seen_fake.flatten().numpy(), labels[0].float().flatten().numpy())[0, 1])
        return np.array(out)

    assert correlations(y_a.float().clamp_min(0)).min() > 0.8
    assert correlations(y_a.float().clamp_min(0).flip(2, 3, 4)).max() < 0.5


def test_the_box_of_a_batch_holds_every_image():
    from nnunet_uda.training.cisfa import image_box

    labels = torch.full((2, 1, 10, 10, 10), -1)
    labels[0, :, 2:5, 3:6, 4:7] = 0
    labels[1, :, 3:8, 3:4, 1:2] = 2
    assert image_box(labels) == (slice(None), slice(None), slice(2, 8), slice(3, 6), slice(1, 7))


def test_translations_are_zscored_over_the_image_and_zero_in_the_crops_padding(cisfa_run, build_trainer):
    from nnunet_uda.training import nnUNetTrainerCISFA

    torch.manual_seed(4)
    trainer = build_trainer(cisfa_run, nnUNetTrainerCISFA)
    _, _, x_a, y_a = one_batch(trainer)
    y_a[0, :, :3] = -1  # padding on top of whatever nnU-Net's crop put there
    with torch.no_grad():
        fake = trainer.translate(x_a, y_a)
        raw = trainer.from_slices(trainer.generator(trainer.to_slices(x_a)), x_a.shape[0])
    for f, g, y in zip(fake, raw, y_a):
        inside = y >= 0
        assert (~inside).any() and (f[~inside] == 0).all()
        values = g[inside]
        assert torch.allclose(f[inside], (values - values.mean()) / values.std(), atol=1e-4)


def test_discriminator_losses_reach_neither_generator_nor_segmenter(cisfa_run, build_trainer):
    from nnunet_uda.training import nnUNetTrainerCISFA

    torch.manual_seed(0)
    trainer = build_trainer(cisfa_run, nnUNetTrainerCISFA)
    x_b, y_b, x_a, y_a = one_batch(trainer)
    with torch.no_grad():
        fake = trainer.translate(x_a, y_a)
    seen_b, _, seen_fake, _ = trainer.augment(x_b, y_b, x_a, fake, y_a)
    trainer.discriminator_losses(x_b, fake, seen_b, seen_fake).backward()
    assert all(p.grad is None for p in (*trainer.generator.parameters(), *trainer.network.parameters()))
    assert all(p.grad is not None for p in (*trainer.d_image.parameters(), *trainer.d_seg.parameters()))


def test_the_segmentation_adversarial_term_makes_translations_look_like_target_to_d_s(cisfa_run, build_trainer):
    """One segmenter step on its D_s term alone raises D_s's "target" logit on softmax(Seg(G(x_a)))."""
    from nnunet_uda.gan.losses import adversarial_loss
    from nnunet_uda.training import nnUNetTrainerCISFA

    torch.manual_seed(1)
    trainer = build_trainer(cisfa_run, nnUNetTrainerCISFA)
    trainer.load_checkpoint(cisfa_run["first"])
    x_b, y_b, x_a, y_a = one_batch(trainer)
    with torch.no_grad():
        _, _, fake, _ = trainer.augment(x_b, y_b, x_a, trainer.translate(x_a, y_a), y_a)

    def realness():
        return trainer.d_seg(torch.softmax(trainer._logits(trainer.network(fake)), 1)).mean()

    before = realness().item()
    for group in trainer.optimizer.param_groups:
        group["lr"] = 0.1
    trainer.optimizer.zero_grad(set_to_none=True)
    adversarial_loss(trainer.d_seg(torch.softmax(trainer._logits(trainer.network(fake)), 1)), True).backward()
    trainer.optimizer.step()
    assert realness().item() > before


def test_the_generator_step_trains_the_patch_heads(cisfa_run, build_trainer):
    from nnunet_uda.training import nnUNetTrainerCISFA

    torch.manual_seed(2)
    trainer = build_trainer(cisfa_run, nnUNetTrainerCISFA)
    _, _, x_a, y_a = one_batch(trainer)
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in (trainer.patch_heads, trainer.generator)]
    trainer.optimizer_g.zero_grad(set_to_none=True)
    trainer.optimizer_step(trainer.generator_loss(x_a, y_a), trainer.optimizer_g, [])
    assert changed(before[0], trainer.patch_heads) and changed(before[1], trainer.generator)


def test_2d_configuration_trains_and_predicts(unpaired_phantom):
    run = train_tiny(unpaired_phantom, TRAINER, resume=False, configuration="2d")
    checkpoint = torch.load(run["results"] / "checkpoint_final.pth", weights_only=False)
    assert all(map(math.isfinite, checkpoint["logging"]["l_pcl"] + checkpoint["logging"]["l_gcl"]))
    assert len(list(run["predictions"].rglob("*.nii.gz"))) == 3


def test_translate_takes_the_cisfa_generator(cisfa_run):
    from nnunet_uda.pipeline import command

    cisfa_run["run"]("translate", command("nnUNetv2_uda_translate"), "-d", str(cisfa_run["dataset"]), "-o", "956",
                     "-m", str(cisfa_run["results"]))
    translated = next((cisfa_run["work"] / "nnUNet_raw").glob("Dataset956_*"))
    assert len(list((translated / "imagesTr").glob("*.nii.gz"))) >= 5


def _ddp_step(rank, trainer):
    batch, = ddp_train_steps(trainer)
    result = {"data": batch["data"], "batch_size": trainer.batch_size, "n_target": trainer.n_target,
              "states": trained_states(trainer)}
    trainer.configuration_manager.configuration["batch_size"] = 2  # one sample per GPU
    trainer._set_batch_size_and_oversample()
    try:
        trainer.batch_pools(list(trainer.domain_table.cases))
    except RuntimeError as error:
        result["error"] = str(error)
    return result


def test_every_network_stays_identical_across_ddp_ranks(cisfa_run, tmp_path):
    """One CISFA (sequential: both of Seg's steps) iteration on two gloo ranks with different batches, the
    segmenter in DDP as nnU-Net wraps it: every network equal on both ranks afterwards; the planned batch of 4
    split into 2 per rank, each a target and a source case; a batch of 2 over 2 GPUs is refused."""
    from nnunet_uda.training import nnUNetTrainerCISFA_Sequential

    ranks = on_gloo_ranks(_ddp_step, tmp_path, cisfa_run, tmp_path / "results", nnUNetTrainerCISFA_Sequential,
                          before_joining=build_before_joining)
    assert [(r["batch_size"], r["n_target"]) for r in ranks] == [(2, 1), (2, 1)]
    assert not torch.equal(ranks[0]["data"], ranks[1]["data"])
    assert_same_on_every_rank([r["states"] for r in ranks])
    assert all("holds no target case" in r["error"] and "over the 2 GPUs" in r["error"] for r in ranks)
