"""Conditional instance normalisation (AICL paper, eq. 1).

    CIN(z) = gamma_m * (z - mu(z)) / sigma(z) + beta_m

mu and sigma are channel-wise statistics of each instance; gamma_m and beta_m are learnable
per-channel parameters of the sample's domain m. Each sample of a batch selects its own domain's
parameters by indexing, so a batch mixing domains costs one normalisation, not one per domain.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DomainContext:
    """The domain index of every sample in the current forward pass, shared by all CIN layers.

    A network sets ``domains`` (a LongTensor of shape (B,)) once before running its encoder;
    the CIN layers read it. Keeping it outside the layers' signatures lets nnU-Net's unmodified
    encoder blocks call the norms as ``norm(x)``.
    """

    def __init__(self):
        self.domains: torch.Tensor | None = None


class ConditionalInstanceNorm(nn.Module):
    """Instance normalisation with one affine (gamma, beta) pair per domain, for 1D/2D/3D maps."""

    def __init__(self, num_features: int, num_domains: int, context: DomainContext, eps: float = 1e-5):
        super().__init__()
        self.num_features = num_features
        self.num_domains = num_domains
        self.eps = eps
        self.context = context
        self.weight = nn.Parameter(torch.ones(num_domains, num_features))
        self.bias = nn.Parameter(torch.zeros(num_domains, num_features))

    @classmethod
    def from_instance_norm(cls, norm: nn.modules.instancenorm._InstanceNorm, num_domains: int,
                           context: DomainContext) -> "ConditionalInstanceNorm":
        """A CIN layer whose every domain starts from ``norm``'s affine parameters (if it has any)."""
        cin = cls(norm.num_features, num_domains, context, eps=norm.eps)
        if norm.affine:
            with torch.no_grad():
                cin.weight.copy_(norm.weight.detach().expand(num_domains, -1))
                cin.bias.copy_(norm.bias.detach().expand(num_domains, -1))
        return cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        domains = self.context.domains
        if domains is None or domains.shape[0] != x.shape[0]:
            raise RuntimeError("ConditionalInstanceNorm needs one domain index per sample: call the network "
                               "that owns it (DomainConditionedUNet), which sets them for every forward pass")
        shape = (x.shape[0], self.num_features) + (1,) * (x.ndim - 2)
        normalised = F.instance_norm(x, eps=self.eps)
        return normalised * self.weight[domains].view(shape) + self.bias[domains].view(shape)

    def extra_repr(self) -> str:
        return f"{self.num_features}, num_domains={self.num_domains}, eps={self.eps}"
