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
