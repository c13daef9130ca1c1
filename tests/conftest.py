import os

import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
from torch import nn

os.environ.setdefault("nnUNet_n_proc_DA", "0")


def tiny_unet(kind: str, num_classes: int = 4, deep_supervision: bool = True) -> nn.Module:
    """A small 3D nnU-Net network (nnU-Net's own classes, nnU-Net's default norm settings)."""
    common = dict(input_channels=1, n_stages=3, features_per_stage=[4, 8, 16], conv_op=nn.Conv3d, kernel_sizes=3,
                  strides=[1, 2, 2], num_classes=num_classes, n_conv_per_stage_decoder=[1, 1], conv_bias=True,
                  norm_op=nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU,
                  nonlin_kwargs={"inplace": True}, deep_supervision=deep_supervision)
    if kind == "plain":
        return PlainConvUNet(n_conv_per_stage=[2, 2, 2], **common)
    return ResidualEncoderUNet(n_blocks_per_stage=[1, 2, 2], **common)


@pytest.fixture(params=["plain", "resenc"])
def unet_kind(request):
    torch.manual_seed(0)
    return request.param


def train_tiny_phantom(work, dataset: int, trainer: str, phantom_flags=(), iterations: int = 2,
                       resume: bool = True) -> dict:
    """The real commands on a 20^3 phantom: phantom, planning, ``nnUNetv2_train`` for one epoch, a
    second epoch through ``--c`` (unless not ``resume``), ``nnUNetv2_predict`` of every domain's test
    set. Returns the paths and the checkpoint written after the first epoch."""
    from nnunet_uda.data.raw import dataset_folder_name
    from nnunet_uda.pipeline import Runner, command, nnunet_environment, predict_test_sets
    from nnunet_uda.planning import DEFAULT_PLANS

    run = Runner(nnunet_environment(work, epochs=1, iterations=iterations, val_iterations=1, processes=1),
                 log=work / "log.txt")
    d, name = str(dataset), dataset_folder_name(dataset, "UDAPhantom")
    run("phantom", command("nnUNetv2_uda_phantom"), "-d", d, "--shape", "20", "20", "20", "--n_test", "1",
        *phantom_flags)
    run("plan", command("nnUNetv2_uda_plan_and_preprocess"), "-d", d, "-bs", "2", "-np", "1")
    train = (command("nnUNetv2_train"), d, "3d_fullres", "0", "-tr", trainer, "-p", DEFAULT_PLANS, "-device", "cpu")
    run("train", *train)
    results = work / "nnUNet_results" / name / f"{trainer}__{DEFAULT_PLANS}__3d_fullres" / "fold_0"
    first = torch.load(results / "checkpoint_final.pth", weights_only=False)
    if resume:
        run("resume", *train, "--c", extra_env={"nnUNet_uda_epochs": "2"})
    raw = work / "nnUNet_raw" / name
    predictions = predict_test_sets(run, raw, dataset, trainer, work / "predictions", work)
    return dict(run=run, work=work, raw=raw, results=results, first=first, predictions=predictions,
                preprocessed=work / "nnUNet_preprocessed" / name)
