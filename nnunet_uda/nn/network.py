"""nnU-Net's U-Nets giving features in the same pass, optionally with a domain-conditioned encoder."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from nnunet_uda.nn.conditional_norm import DomainContext
from nnunet_uda.nn.surgery import replace_instance_norms

INFERENCE_DOMAIN_ENV = "nnUNet_uda_inference_domain"


@dataclass
class NetworkOutput:
    """Segmentation logits (a list, highest resolution first, under deep supervision) and features.

    ``encoder`` holds every encoder stage output (highest resolution first, the bottleneck last);
    ``decoder`` every decoder stage output (highest resolution first).
    """
    logits: torch.Tensor | list[torch.Tensor]
    encoder: list[torch.Tensor]
    decoder: list[torch.Tensor]


class FeatureUNet(nn.Module):
    """nnU-Net's PlainConvUNet or ResidualEncoderUNet giving its encoder and decoder features with the logits.

    The encoder and decoder of the network nnU-Net builds from the plans are taken over as they are, so the
    parameter names (and ``network_weights``) are nnU-Net's own. ``forward(x)`` with one tensor, as nnU-Net's
    predictor calls it, gives the logits; ``return_features=True`` gives a :class:`NetworkOutput` from the same
    pass.
    """

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.encoder = unet.encoder
        self.decoder = unet.decoder

    def encode(self, x: torch.Tensor, domains: torch.Tensor | None) -> list[torch.Tensor]:
        """Every encoder stage output of ``x`` (``domains`` is for subclasses that condition on it)."""
        return self.encoder(x)

    def forward(self, x: torch.Tensor, domains: torch.Tensor | None = None, return_features: bool = False):
        skips = self.encode(x, domains)
        if not return_features:
            return self.decoder(skips)
        logits, decoder_features = decode_with_features(self.decoder, skips)
        return NetworkOutput(logits, skips, decoder_features)


def decode_with_features(decoder: nn.Module, skips: list[torch.Tensor]):
    """The decoder's forward pass (as in dynamic_network_architectures' UNetDecoder), also returning every
    decoder stage output, highest resolution first."""
    x = skips[-1]
    features, logits = [], []
    for s, (up, stage) in enumerate(zip(decoder.transpconvs, decoder.stages)):
        x = stage(torch.cat((up(x), skips[-(s + 2)]), 1))
        features.append(x)
        if decoder.deep_supervision:
            logits.append(decoder.seg_layers[s](x))
    if not decoder.deep_supervision:
        logits = [decoder.seg_layers[-1](x)]
    logits = logits[::-1]
    return (logits if decoder.deep_supervision else logits[0]), features[::-1]


class DomainConditionedUNet(FeatureUNet):
    """A :class:`FeatureUNet` whose encoder norms are conditional on the domain (AICL eq. 1).

    Every instance norm of the encoder becomes a :class:`ConditionalInstanceNorm`. The decoder stays
    shared across domains, as in the AICL paper.

    ``forward(x)`` with one tensor, as nnU-Net's predictor calls it, uses the inference domain: the
    environment variable ``nnUNet_uda_inference_domain`` (a domain name) if set, else the domain
    stored with the weights in the buffer ``inference_domain`` (the first target domain unless
    changed).
    """

    def __init__(self, unet: nn.Module, domain_names: list[str], inference_domain: str):
        super().__init__(unet)
        if inference_domain not in domain_names:
            raise ValueError(f"inference domain {inference_domain!r} is not one of {domain_names}")
        self.domain_names = list(domain_names)
        self.context = DomainContext()
        replace_instance_norms(self.encoder, len(domain_names), self.context)
        self.register_buffer("inference_domain", torch.tensor(domain_names.index(inference_domain)))

    def inference_domains(self, x: torch.Tensor) -> torch.Tensor:
        """(B,) the inference domain for every sample of ``x``; read without a host synchronisation (no
        ``.item()``), so torch.compile traces it into the graph."""
        name = os.environ.get(INFERENCE_DOMAIN_ENV)
        if not name:
            return self.inference_domain.expand(x.shape[0])
        if name not in self.domain_names:
            raise ValueError(f"{INFERENCE_DOMAIN_ENV}={name!r} is not one of this model's domains "
                             f"({', '.join(self.domain_names)})")
        return torch.full((x.shape[0],), self.domain_names.index(name), dtype=torch.long, device=x.device)

    def encode(self, x: torch.Tensor, domains: torch.Tensor | None) -> list[torch.Tensor]:
        """Encoder outputs, each sample normalised with its domain's parameters (default: the inference domain)."""
        if domains is None:
            domains = self.inference_domains(x)
        self.context.domains = domains.to(device=x.device, dtype=torch.long)
        try:
            return self.encoder(x)
        finally:
            self.context.domains = None
