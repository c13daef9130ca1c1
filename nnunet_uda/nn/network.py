"""nnU-Net's U-Nets with a domain-conditioned encoder and feature access in one pass."""
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


class DomainConditionedUNet(nn.Module):
    """An nnU-Net PlainConvUNet or ResidualEncoderUNet whose encoder norms are conditional (eq. 1).

    Built from the network nnU-Net constructs from the plans; its encoder and decoder are taken
    over as they are (parameter names stay nnU-Net's, e.g. ``encoder.stages.0...``), and every
    instance norm of the encoder becomes a :class:`ConditionalInstanceNorm`. The decoder stays
    shared across domains, as in the AICL paper.

    ``forward(x)`` with one tensor, as nnU-Net's predictor calls it, uses the inference domain: the
    environment variable ``nnUNet_uda_inference_domain`` (a domain name) if set, else the domain
    stored with the weights in the buffer ``inference_domain`` (the first target domain unless
    changed).
    """

    def __init__(self, unet: nn.Module, domain_names: list[str], inference_domain: str):
        super().__init__()
        if inference_domain not in domain_names:
            raise ValueError(f"inference domain {inference_domain!r} is not one of {domain_names}")
        self.domain_names = list(domain_names)
        self.context = DomainContext()
        self.encoder = unet.encoder
        self.decoder = unet.decoder
        replace_instance_norms(self.encoder, len(domain_names), self.context)
        self.register_buffer("inference_domain", torch.tensor(domain_names.index(inference_domain)))

    def resolve_inference_domain(self) -> int:
        name = os.environ.get(INFERENCE_DOMAIN_ENV)
        if not name:
            return int(self.inference_domain)
        if name not in self.domain_names:
            raise ValueError(f"{INFERENCE_DOMAIN_ENV}={name!r} is not one of this model's domains "
                             f"({', '.join(self.domain_names)})")
        return self.domain_names.index(name)

    def forward(self, x: torch.Tensor, domains: torch.Tensor | None = None, return_features: bool = False):
        """Segment ``x``; ``domains`` gives each sample's domain index (default: inference domain)."""
        if domains is None:
            domains = torch.full((x.shape[0],), self.resolve_inference_domain(), dtype=torch.long, device=x.device)
        self.context.domains = domains.to(device=x.device, dtype=torch.long)
        try:
            skips = self.encoder(x)
        finally:
            self.context.domains = None
        if not return_features:
            return self.decoder(skips)
        logits, decoder_features = self.decode_with_features(skips)
        return NetworkOutput(logits, skips, decoder_features)

    def decode_with_features(self, skips: list[torch.Tensor]):
        """The decoder's forward pass (as in dynamic_network_architectures' UNetDecoder), also
        returning every decoder stage output, highest resolution first."""
        dec = self.decoder
        x = skips[-1]
        features, logits = [], []
        for s, (up, stage) in enumerate(zip(dec.transpconvs, dec.stages)):
            x = stage(torch.cat((up(x), skips[-(s + 2)]), 1))
            features.append(x)
            if dec.deep_supervision:
                logits.append(dec.seg_layers[s](x))
        if not dec.deep_supervision:
            logits = [dec.seg_layers[-1](x)]
        logits = logits[::-1]
        return (logits if dec.deep_supervision else logits[0]), features[::-1]
