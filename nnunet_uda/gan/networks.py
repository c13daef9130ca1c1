"""The CycleGAN networks of the FLARE 2024 Task 3 pipeline (section 3.2): "the standard CycleGAN
architecture, where both the generators and discriminators follow the original ResNet-based
encoder-decoder design" (Zhu et al., ICCV 2017, appendix 7.2; Johnson et al. 2016).

- :class:`ResnetGenerator`: c7s1-64, d128, d256, nine residual blocks R256, u128, u64, c7s1-1 with
  tanh; instance norm, reflection padding. Images of any size: the input is padded to a multiple of
  4 (the two stride-2 steps), at least 8 (the bottleneck's reflection needs 2 pixels), reflecting
  where it can, and the output is cropped back, so a slice keeps its shape.
- :class:`PatchDiscriminator`: the 70 x 70 PatchGAN, C64 (no norm), C128, C256, C512 (stride 1),
  then a one-channel map of real/fake logits, LeakyReLU 0.2.

Both are 2D: the paper translates axial slices, and so does this package (:mod:`.translation`). CISFA's
segmentation discriminator judges 3D softmax maps in ``3d_fullres``: ``PatchDiscriminator(dims=3)``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _norm(channels: int, dims: int = 2) -> nn.Module:
    return (nn.InstanceNorm2d if dims == 2 else nn.InstanceNorm3d)(channels, affine=False)


class ResidualBlock(nn.Module):
    """Two reflection-padded 3 x 3 convolutions with instance norm, added to the input."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), _norm(channels), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), _norm(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """Image to image, (B, in_channels, H, W) in [-1, 1] to (B, out_channels, H, W) in [-1, 1]."""

    downsampling = 2
    min_size = 8
    #: the layers CISFA's patch contrast reads (CUT's choice): the (padded) input, the two downsampling
    #: convolutions, residual blocks 1 and 5
    patch_layers = (0, 4, 7, 10, 14)

    def __init__(self, in_channels: int = 1, out_channels: int = 1, width: int = 64, n_blocks: int = 9):
        super().__init__()
        layers = [nn.ReflectionPad2d(3), nn.Conv2d(in_channels, width, 7), _norm(width), nn.ReLU(True)]
        channels = width
        for _ in range(self.downsampling):
            layers += [nn.Conv2d(channels, channels * 2, 3, stride=2, padding=1), _norm(channels * 2), nn.ReLU(True)]
            channels *= 2
        layers += [ResidualBlock(channels) for _ in range(n_blocks)]
        for _ in range(self.downsampling):
            layers += [nn.ConvTranspose2d(channels, channels // 2, 3, stride=2, padding=1, output_padding=1),
                       _norm(channels // 2), nn.ReLU(True)]
            channels //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(channels, out_channels, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        return self.model(self._pad(x))[..., :height, :width]

    def encode(self, x: torch.Tensor, layers=None) -> list[torch.Tensor]:
        """The outputs of the given ``layers`` of the network (default :attr:`patch_layers`), in that order,
        running only as far as the last of them; the input is padded as :meth:`forward` pads it."""
        layers = self.patch_layers if layers is None else tuple(layers)
        outputs, x = {}, self._pad(x)
        for index, layer in enumerate(self.model[:max(layers) + 1]):
            x = layer(x)
            outputs[index] = x
        return [outputs[i] for i in layers]

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        """Pad (bottom, right) to a multiple of 4, at least 8, reflecting where the image is large enough."""
        height, width = x.shape[-2:]
        multiple = 2 ** self.downsampling
        pad_h, pad_w = (max(self.min_size, -(-n // multiple) * multiple) - n for n in (height, width))
        if pad_h or pad_w:
            mode = "reflect" if pad_h < height and pad_w < width else "replicate"  # reflect needs pad < size
            x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        return x


class PatchDiscriminator(nn.Module):
    """(B, in_channels, H, W) to (B, 1, H', W') logits (with ``dims`` 3: volumes, (B, in_channels, D, H, W)).
    ``n_layers`` 3 is the 70 x 70 PatchGAN
    (inputs of at least 24 pixels a side); 2 judges 34 x 34 patches (at least 12), 1 judges
    16 x 16 (at least 6), for small slices such as the phantom's."""

    def __init__(self, in_channels: int = 1, width: int = 64, n_layers: int = 3, dims: int = 2):
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        layers = [conv(in_channels, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        channels = width
        for i in range(1, n_layers + 1):
            stride = 2 if i < n_layers else 1
            out = width * min(2 ** i, 8)
            layers += [conv(channels, out, 4, stride=stride, padding=1), _norm(out, dims), nn.LeakyReLU(0.2, True)]
            channels = out
        layers += [conv(channels, 1, 4, stride=1, padding=1)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def init_weights(module: nn.Module, gain: float = 0.02) -> None:
    """CycleGAN's initialisation: convolution weights N(0, 0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
